"""Structured logging: one line per event, call id on every line, secrets masked."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from agent.log import call_context, configure_logging, event, get_logger


def test_text_lines_carry_call_id_and_fields() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "text", stream)
    log = get_logger("agent.test")
    with call_context("c-42"):
        event(log, "call.answered", codec="PCMU", note="two words")
    event(log, "server.started", port=8080)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert " INFO agent.test call.answered call=c-42 codec=PCMU note=\"two words\"" in lines[0]
    assert "call=- port=8080" in lines[1]


def test_json_format_and_secret_masking() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream)
    with call_context("c-7"):
        event(get_logger("x"), "auth", auth_password="hunter2", user="bob")
    obj = json.loads(stream.getvalue())
    assert obj["call"] == "c-7" and obj["event"] == "auth" and obj["user"] == "bob"
    assert obj["auth_password"] == "***"


def test_level_filters() -> None:
    stream = io.StringIO()
    configure_logging("WARNING", "text", stream)
    event(get_logger("x"), "quiet")
    assert stream.getvalue() == ""


def test_console_level_log_file_and_a_child_process_that_follows(tmp_path: Path) -> None:
    """simulate's setup: the console shows errors only, every line goes to log.jsonl, and a spawned
    process (the engine) appends to the same file and keeps the same console."""
    from agent.log import configure_child_logging, log_counts

    console = io.StringIO()
    log_file = tmp_path / "run" / "log.jsonl"
    configure_logging("INFO", "text", console, console_level="ERROR", log_file=log_file)
    event(get_logger("x"), "call.started", n=1)
    event(get_logger("x"), "odd", logging.WARNING)
    assert console.getvalue() == "" and log_counts().warnings == 1
    configure_child_logging("INFO", "text")  # as the engine process does, from the environment
    event(get_logger("engine"), "engine.ready")
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [line["event"] for line in lines] == ["call.started", "odd", "engine.ready"]
    configure_logging("INFO", "text", console)  # back to the console only
    event(get_logger("x"), "shown")
    assert "shown" in console.getvalue()
