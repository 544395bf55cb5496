"""ScriptedEngineDouble: a test double of `agent.engine_api.EngineClient` (unit tests only).

It keeps every submitted command, and answers them the way the engine's contract says, one
scripted reply at a time: `Respond`/`Greet` start a reply of ``reply_frames`` chunks (each a
constant 80 ms tone whose value encodes (request, frame) so tests can tell chunks apart) that
`step()` releases one chunk per call per step; `Interrupt` cuts the running (or last) reply to the
frames played; `Retract` withdraws it. Faults are injected by hand (`fault`, `reject_next`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from agent.engine_api import (
    CHUNK_SAMPLES,
    AudioChunk,
    Close,
    EngineCommand,
    EngineEvent,
    EngineFault,
    Greet,
    Interrupt,
    InterruptDone,
    Open,
    Rejected,
    ReplyEnded,
    Respond,
    Retract,
    TextDelta,
    command_name,
)


def chunk_value(request: int, frame: int) -> float:
    """The constant sample value of scripted chunk `frame` of reply `request` (distinct per chunk)."""
    return ((request * 37 + frame) % 200 + 1) / 1000.0


@dataclass
class _Reply:
    request: int
    frames: int
    sent: int = 0
    words: list[str] = field(default_factory=list)


@dataclass
class _Call:
    events: deque[EngineEvent] = field(default_factory=deque)
    reply: _Reply | None = None
    last: _Reply | None = None
    fed_frames: int = 0


class ScriptedEngineDouble:
    """Scripted stand-in for the engine; events wait in per-call queues until `next_event`."""

    def __init__(self, reply_frames: int = 6) -> None:
        self.reply_frames = reply_frames
        self.submitted: list[EngineCommand] = []
        self.calls: dict[int, _Call] = {}
        self._ids = itertools.count(1)
        self._reject: set[str] = set()
        self._wake = asyncio.Event() if _loop_running() else None

    # -- EngineClient ------------------------------------------------------------------------------
    def new_call_id(self) -> int:
        return next(self._ids)

    def submit(self, command: EngineCommand) -> None:
        self.submitted.append(command)
        name = command_name(command)
        if name in self._reject:
            self._reject.discard(name)
            self._emit(command.call, Rejected(command.call, command.request, name, "scripted rejection"))
            return
        if isinstance(command, Open):
            self.calls[command.call] = _Call()
            return
        call = self.calls.get(command.call)
        if call is None:
            return
        if isinstance(command, (Respond, Greet)):
            call.reply = _Reply(command.request, self.reply_frames)
        elif isinstance(command, Interrupt):
            target = call.reply or call.last
            cut = False
            if target is not None:
                keep = min(command.played_frames, target.sent)
                self._emit(command.call, ReplyEnded(command.call, target.request, f"r{target.request}:{keep}",
                                                    keep, True, target.sent))
                cut = True
                call.reply = call.last = None
            self._emit(command.call, InterruptDone(command.call, command.request, cut))
        elif isinstance(command, Retract):
            target = call.reply or call.last
            if target is not None:
                self._emit(command.call, ReplyEnded(command.call, target.request, "", 0, True, target.sent))
            call.reply = call.last = None
        elif isinstance(command, Close):
            del self.calls[command.call]
        else:
            call.fed_frames += 1

    async def next_event(self, call: int) -> EngineEvent:
        while True:
            c = self.calls.get(call)
            if c is None:
                raise LookupError(f"call {call} is not open")
            if c.events:
                return c.events.popleft()
            if self._wake is None:
                self._wake = asyncio.Event()
            self._wake.clear()
            await self._wake.wait()

    # -- scripting ------------------------------------------------------------------------------------
    def step(self) -> None:
        """One engine step: every running reply sends its next chunk, or ends."""
        for cid, call in self.calls.items():
            r = call.reply
            if r is None:
                continue
            if r.sent < r.frames:
                pcm = np.full(CHUNK_SAMPLES, chunk_value(r.request, r.sent), np.float32)
                self._emit(cid, TextDelta(cid, r.request, f"w{r.sent} "))
                self._emit(cid, AudioChunk(cid, r.request, r.sent, pcm))
                r.sent += 1
            else:
                self._emit(cid, ReplyEnded(cid, r.request, f"r{r.request}:{r.sent}", r.sent, False, r.sent))
                call.last, call.reply = r, None

    def fault(self, call: int, message: str = "scripted fault") -> None:
        c = self.calls[call]
        request = c.reply.request if c.reply is not None else None
        c.reply = c.last = None
        self._emit(call, EngineFault(call, request, message))

    def reject_next(self, command: type) -> None:
        self._reject.add(command.__name__)

    def drain(self, call: int) -> list[EngineEvent]:
        c = self.calls.get(call)
        if c is None:
            return []
        out = list(c.events)
        c.events.clear()
        return out

    def _emit(self, call: int, event: EngineEvent) -> None:
        c = self.calls.get(call)
        if c is not None:
            c.events.append(event)
            if self._wake is not None:
                self._wake.set()


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False
