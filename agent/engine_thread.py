"""`EngineClient` over the in-thread engine (``model.engine.Engine``): commands in, events out.

The engine's worker thread delivers its own events (``AgentAudio``, ``ReplyFinished``,
``EngineError``) onto the event loop's thread through the sink given to ``Engine.open``; here they
become ``agent.engine_api`` events on the call's queue, tagged with the request id of the reply
they belong to (the engine's ``tag``). A command the engine's queue refuses becomes a `Rejected`
event on the same queue, so a full queue is one counted event, never an exception in a call.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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
    command_name,
)

if TYPE_CHECKING:
    from model.engine import CallConversation, Engine
    from model.engine import EngineEvent as WorkerEvent


@dataclass
class _Link:
    events: asyncio.Queue[EngineEvent] = field(default_factory=asyncio.Queue)
    handle: CallConversation | None = None
    texts: dict[int, str] = field(default_factory=dict)  # reply request -> transcript so far
    running: list[int] = field(default_factory=list)  # replies asked for, not ended yet


class ThreadEngineClient:
    """The in-process engine thread behind the `EngineClient` protocol."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._ids = itertools.count(1)
        self._links: dict[int, _Link] = {}
        self.rejected = 0

    def new_call_id(self) -> int:
        return next(self._ids)

    @property
    def dropped_frames(self) -> int:
        return sum(link.handle.dropped_frames for link in self._links.values() if link.handle is not None)

    def submit(self, command: EngineCommand) -> None:
        from model.engine import EngineQueueFull

        link = self._links.get(command.call)
        if isinstance(command, Open):
            if link is not None:
                raise ValueError(f"call {command.call} is already open")
            link = self._links[command.call] = _Link()
            try:
                link.handle = self.engine.open(command.instructions, sink=functools.partial(self._on_worker, command.call))
            except EngineQueueFull as exc:
                self._reject(link, command, str(exc))
            return
        if link is None:
            return  # closed or never opened: nothing can follow, nobody listens
        if link.handle is None:
            self._reject(link, command, "call not open")
            return
        handle = link.handle
        try:
            if isinstance(command, Feed):
                before = handle.dropped_frames
                handle.feed(command.pcm)
                if handle.dropped_frames != before:
                    self._reject(link, command, "engine command queue full")
            elif isinstance(command, AddText):
                handle.add_text(command.text)
            elif isinstance(command, EndTurn):
                handle.end_turn()
            elif isinstance(command, Respond):
                handle.respond(tag=command.request)
                link.running.append(command.request)
            elif isinstance(command, Greet):
                handle.greet(command.text, tag=command.request)
                link.running.append(command.request)
            elif isinstance(command, Interrupt):
                future = handle.request_interrupt(command.played_frames)
                future.add_done_callback(functools.partial(_interrupt_done, link.events, command))
            elif isinstance(command, Retract):
                handle.retract()
            elif isinstance(command, Close):
                handle.close()
                del self._links[command.call]
        except EngineQueueFull as exc:
            self._reject(link, command, str(exc))

    async def next_event(self, call: int) -> EngineEvent:
        link = self._links.get(call)
        if link is None:
            raise LookupError(f"call {call} is not open")
        return await link.events.get()

    # -- the worker's events, on the loop thread --------------------------------------------------
    def _reject(self, link: _Link, command: EngineCommand, reason: str) -> None:
        self.rejected += 1
        link.events.put_nowait(Rejected(command.call, command.request, command_name(command), reason))

    @staticmethod
    def _text(link: _Link, call: int, request: int, text: str) -> None:
        old = link.texts.get(request, "")
        if text != old:
            delta = text[len(old):] if text.startswith(old) else text
            link.texts[request] = text
            link.events.put_nowait(TextDelta(call, request, delta))

    def _on_worker(self, call: int, ev: WorkerEvent) -> None:
        from model.engine import AgentAudio, ReplyFinished

        link = self._links.get(call)
        if link is None:
            return
        if isinstance(ev, AgentAudio):
            self._text(link, call, ev.tag, ev.text)
            link.events.put_nowait(AudioChunk(call, ev.tag, ev.frame_index, np.asarray(ev.pcm, np.float32), ev.codes))
        elif isinstance(ev, ReplyFinished):
            if ev.tag in link.running:
                link.running.remove(ev.tag)
            if not ev.interrupted:  # text generated after the last chunk
                self._text(link, call, ev.tag, ev.text)
            link.texts.pop(ev.tag, None)
            link.events.put_nowait(ReplyEnded(call, ev.tag, ev.text, ev.frames, ev.interrupted, ev.generated_frames))
        else:
            request = link.running[-1] if link.running else None
            link.running.clear()
            link.texts.clear()
            link.events.put_nowait(EngineFault(call, request, ev.message, "worker died" in ev.message))


def _interrupt_done(events: asyncio.Queue[EngineEvent], command: Interrupt, future: asyncio.Future[object]) -> None:
    events.put_nowait(InterruptDone(command.call, command.request, not future.cancelled() and future.result() is not None))
