"""The wire between the call-handling process and the engine process: compact binary frames.

Every message is one frame: a 4-byte little-endian length, then the body. The body is a kind
byte, then the fields of one ``agent.engine_api`` command or event in declaration order, each
packed by a fixed code: ``i`` int64, ``o`` optional int64, ``b`` bool, ``s`` string (u32 length +
UTF-8), ``p`` float32 samples (u32 count + raw), ``c`` codes (u8 count + int32 each). Caller audio
is 5 KB per 80 ms (1280 float32), agent audio 7.7 KB (1920 float32). Nothing is pickled.

Besides the engine_api values, four control frames: STOP (call process -> engine: exit),
READY (engine -> call process: its pid and what it loaded, JSON), FAILED (engine -> call process,
instead of READY: why it could not start, e.g. a checkpoint error, UTF-8) and STATS (engine -> call
process every 200 ms: step count, open calls, frames its bounded queue refused, new step times).
A malformed frame raises ``WireError``.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import typing
from typing import Any

import numpy as np

from agent.engine_api import (
    AddText,
    AudioChunk,
    Close,
    EndTurn,
    EngineCommand,
    EngineEvent,
    EngineFault,
    Feed,
    Greet,
    Interrupt,
    InterruptDone,
    Open,
    Rejected,
    ReplyEnded,
    Respond,
    Retract,
    TextDelta,
)

LENGTH = struct.Struct("<I")
MAX_FRAME_BYTES = 1 << 20
STOP, READY, STATS, FAILED = 10, 96, 97, 98

# kind byte and field codes of every engine_api value, in dataclass field order
SPECS: dict[type, tuple[int, str]] = {
    Open: (1, "isi"), Feed: (2, "ipi"), AddText: (3, "isi"), EndTurn: (4, "ii"), Respond: (5, "ii"),
    Greet: (6, "iis"), Interrupt: (7, "iii"), Retract: (8, "ii"), Close: (9, "ii"),
    AudioChunk: (64, "iiipc"), TextDelta: (65, "iis"), ReplyEnded: (66, "iisibi"), InterruptDone: (67, "iib"),
    Rejected: (68, "iiss"), EngineFault: (69, "iosb"),
}
COMMANDS: tuple[type, ...] = typing.get_args(EngineCommand)  # in declaration order: the kind bytes
EVENTS: tuple[type, ...] = typing.get_args(EngineEvent)
BY_KIND: dict[int, tuple[type, str]] = {kind: (cls, codes) for cls, (kind, codes) in SPECS.items()}
for _cls, (_kind, _codes) in SPECS.items():
    assert len(dataclasses.fields(_cls)) == len(_codes), _cls  # the spec follows engine_api

_I64 = struct.Struct("<q")
_U32 = struct.Struct("<I")
_STATS = struct.Struct("<QIII")  # steps, open calls, refused frames, step times that follow
_NONE = -(1 << 63)


class WireError(ValueError):
    """A frame that does not decode (truncated, unknown kind, bad string or samples)."""


def frame(body: bytes) -> bytes:
    if len(body) > MAX_FRAME_BYTES:
        raise WireError(f"frame of {len(body)} bytes exceeds {MAX_FRAME_BYTES}")
    return LENGTH.pack(len(body)) + body


# -- engine_api values ------------------------------------------------------------------------------
def encode(value: EngineCommand | EngineEvent) -> bytes:
    """One command or event -> one frame (length prefix included)."""
    kind, codes = SPECS[type(value)]
    parts = [bytes([kind])]
    for code, f in zip(codes, dataclasses.fields(value), strict=True):
        v = getattr(value, f.name)
        if code == "i":
            parts.append(_I64.pack(int(v)))
        elif code == "o":
            parts.append(_I64.pack(_NONE if v is None else int(v)))
        elif code == "b":
            parts.append(b"\x01" if v else b"\x00")
        elif code == "s":
            raw = str(v).encode("utf-8")
            parts += [_U32.pack(len(raw)), raw]
        elif code == "p":
            pcm = np.ascontiguousarray(v, dtype=np.float32)
            parts += [_U32.pack(pcm.size), pcm.tobytes()]
        else:  # "c"
            parts += [bytes([len(v)]), np.asarray(v, np.int32).tobytes()]
    return frame(b"".join(parts))


class _Reader:
    def __init__(self, body: bytes) -> None:
        self.body = memoryview(body)
        self.at = 0

    def take(self, n: int) -> memoryview:
        if self.at + n > len(self.body):
            raise WireError(f"truncated frame: needs {n} bytes at {self.at}, has {len(self.body) - self.at}")
        out = self.body[self.at : self.at + n]
        self.at += n
        return out

    def unpack(self, st: struct.Struct) -> tuple[Any, ...]:
        return st.unpack(self.take(st.size))

    def string(self) -> str:
        (n,) = self.unpack(_U32)
        try:
            return bytes(self.take(n)).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError(f"bad UTF-8 in frame: {exc}") from None


def decode(body: bytes) -> EngineCommand | EngineEvent:
    """One frame's body (without its length prefix) -> the engine_api value it carries."""
    if not body:
        raise WireError("empty frame")
    spec = BY_KIND.get(body[0])
    if spec is None:
        raise WireError(f"unknown frame kind {body[0]}")
    cls, codes = spec
    r = _Reader(body)
    r.take(1)
    values: list[Any] = []
    for code in codes:
        if code == "i":
            values.append(r.unpack(_I64)[0])
        elif code == "o":
            (v,) = r.unpack(_I64)
            values.append(None if v == _NONE else v)
        elif code == "b":
            values.append(r.take(1)[0] != 0)
        elif code == "s":
            values.append(r.string())
        elif code == "p":
            (n,) = r.unpack(_U32)
            values.append(np.frombuffer(r.take(4 * n), np.float32).copy())
        else:
            n = r.take(1)[0]
            values.append(tuple(int(c) for c in np.frombuffer(r.take(4 * n), np.int32)))
    if r.at != len(body):
        raise WireError(f"{len(body) - r.at} stray bytes after a {cls.__name__} frame")
    value: EngineCommand | EngineEvent = cls(*values)
    return value


def decode_command(body: bytes) -> EngineCommand:
    value = decode(body)
    if not isinstance(value, EngineCommand):
        raise WireError(f"{type(value).__name__} is not a command")
    return value


def decode_event(body: bytes) -> EngineEvent:
    value = decode(body)
    if not isinstance(value, EngineEvent):
        raise WireError(f"{type(value).__name__} is not an event")
    return value


# -- control frames ---------------------------------------------------------------------------------
def stop() -> bytes:
    return frame(bytes([STOP]))


def ready(pid: int, info: dict[str, Any]) -> bytes:
    return frame(bytes([READY]) + _U32.pack(pid) + json.dumps(info).encode("utf-8"))


def failed(message: str) -> bytes:
    return frame(bytes([FAILED]) + message.encode("utf-8"))


def decode_failed(body: bytes) -> str:
    return bytes(body[1:]).decode("utf-8", errors="replace")


def decode_ready(body: bytes) -> tuple[int, dict[str, Any]]:
    r = _Reader(body)
    r.take(1)
    (pid,) = r.unpack(_U32)
    try:
        info = json.loads(bytes(r.body[r.at :]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"bad READY info: {exc}") from None
    if not isinstance(info, dict):
        raise WireError("READY info is not an object")
    return pid, info


def stats(steps: int, calls: int, refused: int, step_seconds: list[float]) -> bytes:
    return frame(bytes([STATS]) + _STATS.pack(steps, calls, refused, len(step_seconds))
                 + np.asarray(step_seconds, np.float32).tobytes())


def decode_stats(body: bytes) -> tuple[int, int, int, list[float]]:
    r = _Reader(body)
    r.take(1)
    steps, calls, refused, n = r.unpack(_STATS)
    return steps, calls, refused, [float(x) for x in np.frombuffer(r.take(4 * n), np.float32)]


class FrameBuffer:
    """Reassembles frames from a byte stream (partial reads welcome)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def push(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        at = 0
        while len(self._buf) - at >= LENGTH.size:
            (n,) = LENGTH.unpack_from(self._buf, at)
            if n > MAX_FRAME_BYTES:
                raise WireError(f"frame length {n} exceeds {MAX_FRAME_BYTES}")
            if len(self._buf) - at - LENGTH.size < n:
                break
            out.append(bytes(self._buf[at + LENGTH.size : at + LENGTH.size + n]))
            at += LENGTH.size + n
        if at:
            del self._buf[:at]
        return out
