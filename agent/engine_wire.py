"""The wire between the call-handling process and the engine process: compact binary frames.

Every message is one frame: a 4-byte little-endian length, then the body. The body starts with
a kind byte and the call's conversation id (u32); the rest depends on the kind. Audio travels as
raw samples (caller audio as int16 or float32 at 16 kHz, about 2.5 or 5 KB per 80 ms; agent
audio as float32 at 24 kHz, 7.7 KB per 80 ms), strings as u32 length + UTF-8. Nothing is
pickled. A malformed frame raises ``WireError``.

Commands (call process -> engine): OPEN, FEED, TEXT, END_TURN, RESPOND, GREET, INTERRUPT (with a
request id; answered by INTERRUPT_RESULT), RETRACT, CLOSE, STOP.
Events (engine -> call process): READY (pid and what was loaded), AUDIO, FINISHED, ERROR,
INTERRUPT_RESULT, STATS (step times, active calls, frames the engine dropped).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

# -- kinds ------------------------------------------------------------------------------------------
OPEN, FEED, TEXT, END_TURN, RESPOND, GREET, INTERRUPT, RETRACT, CLOSE, STOP = range(1, 11)
READY, AUDIO, FINISHED, ERROR, INTERRUPT_RESULT, STATS = range(64, 70)
COMMAND_KINDS = frozenset(range(1, 11))
EVENT_KINDS = frozenset(range(64, 70))

LENGTH = struct.Struct("<I")
HEAD = struct.Struct("<BI")  # kind, conversation id
MAX_FRAME_BYTES = 1 << 20
_I64 = struct.Struct("<q")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_AUDIO = struct.Struct("<qiqB")  # reply_id, frame_index, tag, number of codes
_FINISHED = struct.Struct("<qiBiq")  # reply_id, frames, interrupted, generated_frames, tag
_INTERRUPT = struct.Struct("<Ii")  # request id, played frames
_STATS = struct.Struct("<QIII")  # steps, active calls, engine-dropped frames, step times that follow
_PCM_INT16, _PCM_FLOAT32 = 0, 1


class WireError(ValueError):
    """A frame that does not decode (truncated, unknown kind, bad string)."""


@dataclass(frozen=True)
class Message:
    """One decoded frame: its kind, conversation id and fields (kind-specific, see ``decode``)."""

    kind: int
    conv: int
    fields: tuple[Any, ...] = ()


# -- encoding ---------------------------------------------------------------------------------------
def _str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _U32.pack(len(raw)) + raw


def frame(body: bytes) -> bytes:
    if len(body) > MAX_FRAME_BYTES:
        raise WireError(f"frame of {len(body)} bytes exceeds {MAX_FRAME_BYTES}")
    return LENGTH.pack(len(body)) + body


def simple(kind: int, conv: int) -> bytes:
    """END_TURN, RETRACT, CLOSE, STOP, or OPEN without instructions."""
    return frame(HEAD.pack(kind, conv))


def open_call(conv: int, instructions: str) -> bytes:
    return frame(HEAD.pack(OPEN, conv) + _str(instructions))


def feed(conv: int, pcm: np.ndarray) -> bytes:
    if pcm.dtype == np.int16:
        return frame(HEAD.pack(FEED, conv) + bytes([_PCM_INT16]) + pcm.tobytes())
    return frame(HEAD.pack(FEED, conv) + bytes([_PCM_FLOAT32]) + np.asarray(pcm, np.float32).tobytes())


def text(conv: int, value: str) -> bytes:
    return frame(HEAD.pack(TEXT, conv) + _str(value))


def respond(conv: int, tag: int) -> bytes:
    return frame(HEAD.pack(RESPOND, conv) + _I64.pack(tag))


def greet(conv: int, value: str, tag: int) -> bytes:
    return frame(HEAD.pack(GREET, conv) + _I64.pack(tag) + _str(value))


def interrupt(conv: int, request: int, played_frames: int) -> bytes:
    return frame(HEAD.pack(INTERRUPT, conv) + _INTERRUPT.pack(request, played_frames))


def ready(pid: int, info: dict[str, Any]) -> bytes:
    return frame(HEAD.pack(READY, pid) + _str(json.dumps(info)))


def audio(conv: int, reply_id: int, frame_index: int, pcm: np.ndarray, reply_text: str, codes: tuple[int, ...],
          tag: int) -> bytes:
    return frame(HEAD.pack(AUDIO, conv) + _AUDIO.pack(reply_id, frame_index, tag, len(codes))
                 + np.asarray(codes, np.int32).tobytes() + _str(reply_text)
                 + np.asarray(pcm, np.float32).tobytes())


def _finished_fields(reply_id: int, reply_text: str, frames: int, interrupted: bool, generated: int,
                     tag: int) -> bytes:
    return _FINISHED.pack(reply_id, frames, int(interrupted), generated, tag) + _str(reply_text)


def finished(conv: int, reply_id: int, reply_text: str, frames: int, interrupted: bool, generated: int,
             tag: int) -> bytes:
    return frame(HEAD.pack(FINISHED, conv) + _finished_fields(reply_id, reply_text, frames, interrupted,
                                                                 generated, tag))


def error(conv: int, reply_id: int | None, message: str) -> bytes:
    return frame(HEAD.pack(ERROR, conv) + _I64.pack(-1 if reply_id is None else reply_id) + _str(message))


def interrupt_result(conv: int, request: int, result: tuple[int, str, int, bool, int, int] | None) -> bytes:
    """`result`: (reply_id, text, frames, interrupted, generated_frames, tag), or None (nothing was cut)."""
    body = HEAD.pack(INTERRUPT_RESULT, conv) + _U32.pack(request)
    if result is None:
        return frame(body + b"\x00")
    return frame(body + b"\x01" + _finished_fields(*result))


def stats(steps: int, active: int, dropped: int, step_seconds: list[float]) -> bytes:
    return frame(HEAD.pack(STATS, 0) + _STATS.pack(steps, active, dropped, len(step_seconds))
                 + np.asarray(step_seconds, np.float32).tobytes())


# -- decoding ---------------------------------------------------------------------------------------
class _Reader:
    def __init__(self, body: bytes | memoryview, at: int) -> None:
        self.body = memoryview(body)
        self.at = at

    def take(self, n: int) -> memoryview:
        if n < 0 or self.at + n > len(self.body):
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

    def rest(self) -> memoryview:
        return self.take(len(self.body) - self.at)


def decode(body: bytes | memoryview) -> Message:
    """One frame's body (without its length prefix) -> Message.

    Fields by kind: OPEN (instructions,); FEED (pcm,) int16 or float32; TEXT (text,); RESPOND (tag,);
    GREET (text, tag); INTERRUPT (request, played_frames); READY (info dict,) with ``conv`` = pid;
    AUDIO (reply_id, frame_index, pcm float32, text, codes, tag); FINISHED (reply_id, text, frames,
    interrupted, generated_frames, tag); ERROR (reply_id or None, message); INTERRUPT_RESULT
    (request, FINISHED fields or None); STATS (steps, active, dropped, step_seconds list).
    """
    r = _Reader(body, 0)
    kind, conv = r.unpack(HEAD)
    if kind in (END_TURN, RETRACT, CLOSE, STOP):
        return Message(kind, conv)
    if kind == OPEN:
        return Message(kind, conv, (r.string() if r.at < len(r.body) else "",))
    if kind == FEED:
        dtype = r.take(1)[0]
        raw = r.rest()
        if dtype == _PCM_INT16 and len(raw) % 2 == 0:
            return Message(kind, conv, (np.frombuffer(raw, np.int16).copy(),))
        if dtype == _PCM_FLOAT32 and len(raw) % 4 == 0:
            return Message(kind, conv, (np.frombuffer(raw, np.float32).copy(),))
        raise WireError(f"bad FEED samples (dtype {dtype}, {len(raw)} bytes)")
    if kind == TEXT:
        return Message(kind, conv, (r.string(),))
    if kind == RESPOND:
        return Message(kind, conv, r.unpack(_I64))
    if kind == GREET:
        (tag,) = r.unpack(_I64)
        return Message(kind, conv, (r.string(), tag))
    if kind == INTERRUPT:
        return Message(kind, conv, r.unpack(_INTERRUPT))
    if kind == READY:
        try:
            info = json.loads(r.string())
        except json.JSONDecodeError as exc:
            raise WireError(f"bad READY info: {exc}") from None
        return Message(kind, conv, (info,))
    if kind == AUDIO:
        reply_id, frame_index, tag, ncodes = r.unpack(_AUDIO)
        codes = tuple(int(c) for c in np.frombuffer(r.take(4 * ncodes), np.int32))
        reply_text = r.string()
        raw = r.rest()
        if len(raw) % 4:
            raise WireError(f"bad AUDIO samples ({len(raw)} bytes)")
        return Message(kind, conv, (reply_id, frame_index, np.frombuffer(raw, np.float32).copy(), reply_text,
                                    codes, tag))
    if kind == FINISHED:
        return Message(kind, conv, _read_finished(r))
    if kind == ERROR:
        (reply_id,) = r.unpack(_I64)
        return Message(kind, conv, (None if reply_id < 0 else reply_id, r.string()))
    if kind == INTERRUPT_RESULT:
        (request,) = r.unpack(_U32)
        has = r.take(1)[0]
        return Message(kind, conv, (request, _read_finished(r) if has else None))
    if kind == STATS:
        steps, active, dropped, n = r.unpack(_STATS)
        times = [float(x) for x in np.frombuffer(r.take(4 * n), np.float32)]
        return Message(kind, conv, (steps, active, dropped, times))
    raise WireError(f"unknown frame kind {kind}")


def _read_finished(r: _Reader) -> tuple[int, str, int, bool, int, int]:
    reply_id, frames, interrupted, generated, tag = r.unpack(_FINISHED)
    return reply_id, r.string(), frames, bool(interrupted), generated, tag


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
