"""Structured logging: one line per event, the call id on every line.

Usage::

    log = get_logger(__name__)
    with call_context("c-1a2b"):
        event(log, "call.answered", codec="PCMU", remote="127.0.0.1:5090")

prints ``2026-11-27T13:40:01.123Z INFO agent.session call.answered call=c-1a2b codec=PCMU
remote=127.0.0.1:5090`` (or the same as one JSON object per line with ``format: json``). The call
id comes from a context variable, so every task of a call logs it without passing it around.
Values whose key looks like a secret (password, token, authorization) are masked.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

_call_id: contextvars.ContextVar[str] = contextvars.ContextVar("lfmcall_call_id", default="-")
_SECRET_WORDS = ("password", "token", "authorization", "secret")


def current_call_id() -> str:
    return _call_id.get()


@contextmanager
def call_context(call_id: str) -> Iterator[None]:
    """Tag every log line emitted inside this block (and tasks created in it) with call_id."""
    token = _call_id.set(call_id)
    try:
        yield
    finally:
        _call_id.reset(token)


def set_call_id(call_id: str) -> None:
    """Set the call id for the current task (use at the top of a call's own task)."""
    _call_id.set(call_id)


def _mask(key: str, value: Any) -> Any:
    return "***" if any(w in key.lower() for w in _SECRET_WORDS) and value else value


def _fmt_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n'):
        return json.dumps(text)
    return text


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str) -> None:
        super().__init__()
        self._json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ts += f".{int(record.msecs):03d}Z"
        fields: dict[str, Any] = dict(getattr(record, "fields", {}))
        call = getattr(record, "call_id", None) or _call_id.get()
        message = record.getMessage()
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info).replace("\n", " | ")
        if self._json:
            obj = {"ts": ts, "level": record.levelname, "logger": record.name, "event": message,
                   "call": call}
            obj.update({k: _mask(k, v) for k, v in fields.items()})
            return json.dumps(obj, default=str)
        parts = [ts, record.levelname, record.name, message, f"call={call}"]
        parts += [f"{k}={_fmt_value(_mask(k, v))}" for k, v in fields.items()]
        return " ".join(parts)


class _CountingHandler(logging.Handler):
    """Counts warnings and errors (``LogCounts``) whatever the console shows."""

    def __init__(self, counts: LogCounts) -> None:
        super().__init__(logging.WARNING)
        self.counts = counts

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.counts.errors += 1
        else:
            self.counts.warnings += 1


class LogCounts:
    """Warnings and errors logged since ``configure_logging`` (for a command's closing summary)."""

    def __init__(self) -> None:
        self.warnings = 0
        self.errors = 0


_counts = LogCounts()


def log_counts() -> LogCounts:
    return _counts


# where this process's log lines go, for the processes it spawns (the engine process)
_ENV_CONSOLE = "LFM_CALL_LOG_CONSOLE"
_ENV_FILE = "LFM_CALL_LOG_FILE"


def configure_logging(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None, *,
                      console_level: str | None = None, log_file: str | Path | None = None,
                      append: bool = False) -> None:
    """Install the structured formatter on the root logger (idempotent).

    ``level`` is what is logged at all; the console (``stream``, default stderr) shows records at
    ``console_level`` and above (default: ``level``; ``"OFF"``: nothing). With ``log_file`` every
    record at ``level`` is also written there, one JSON object per line (the file is started anew
    unless ``append``). Processes spawned later follow the same choice (``configure_child_logging``).
    """
    os.environ[_ENV_CONSOLE] = console_level or level
    if log_file is None:
        os.environ.pop(_ENV_FILE, None)
    else:
        os.environ[_ENV_FILE] = str(log_file)
    global _counts
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_lfmcall", False):
            root.removeHandler(handler)
            handler.close()
    handlers: list[logging.Handler] = []
    if console_level != "OFF":
        console = logging.StreamHandler(stream or sys.stderr)
        console.setFormatter(_Formatter(fmt))
        console.setLevel(console_level or level)
        handlers.append(console)
    if log_file is not None:
        path = Path(log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(path, mode="a" if append else "w", encoding="utf-8")
        to_file.setFormatter(_Formatter("json"))
        handlers.append(to_file)
    _counts = LogCounts()
    handlers.append(_CountingHandler(_counts))
    for handler in handlers:
        handler._lfmcall = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


def configure_child_logging(level: str = "INFO", fmt: str = "text") -> None:
    """In a spawned process: log where the parent process logs (its console level, its log file,
    appended to)."""
    console = os.environ.get(_ENV_CONSOLE)
    log_file = os.environ.get(_ENV_FILE)
    configure_logging(level, fmt, console_level=console if console in ("OFF", *_LEVELS) else None,
                      log_file=log_file or None, append=True)


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event with key=value fields (the call id is added by the formatter)."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields})
