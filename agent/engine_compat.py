"""ClientConversation: the old per-call engine handle (``model.engine.CallConversation``'s methods and
events) over any ``agent.engine_api.EngineClient``.

Transitional: ``agent.session.CallSession`` still talks to a conversation object (``feed``,
``respond(tag)``, ``request_interrupt`` -> future, ``events`` with ``AgentAudio`` /
``ReplyFinished`` / ``EngineError``). This adapter turns those calls into engine_api commands
(the session's turn epoch is the reply's request id) and the client's events back into the old
ones, so the same session runs on the in-thread engine and on the engine process. It goes away
when CallSession takes an EngineClient itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import TYPE_CHECKING

import numpy as np

from agent.engine_api import (
    AddText,
    AudioChunk,
    Close,
    EndTurn,
    EngineClient,
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

if TYPE_CHECKING:
    from model.engine import EngineEvent, ReplyFinished

_INTERRUPT_IDS = itertools.count(1 << 40)  # never a turn epoch


class ClientConversation:
    def __init__(self, client: EngineClient, instructions: str = "") -> None:
        self.client = client
        self.id = client.new_call_id()
        self.events: asyncio.Queue[EngineEvent] = asyncio.Queue()
        self.dropped_frames = 0
        self.rejected: dict[str, int] = {}
        self._texts: dict[int, str] = {}
        self._last_ended: ReplyFinished | None = None
        self._interrupts: dict[int, asyncio.Future[ReplyFinished | None]] = {}
        client.submit(Open(self.id, instructions))
        self._pump = asyncio.get_running_loop().create_task(self._run())

    def feed(self, frame: np.ndarray) -> None:
        """80 ms of caller audio at 16 kHz (int16, or float32 in [-1, 1))."""
        pcm = np.asarray(frame)
        pcm = pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm.astype(np.float32, copy=False)
        self.client.submit(Feed(self.id, pcm))

    def add_text(self, text: str) -> None:
        self.client.submit(AddText(self.id, text))

    def end_turn(self) -> None:
        self.client.submit(EndTurn(self.id))

    def respond(self, tag: int = 0) -> None:
        self.client.submit(Respond(self.id, tag))

    def greet(self, text: str, tag: int = 0) -> None:
        self.client.submit(Greet(self.id, tag, text))

    def retract(self) -> None:
        self.client.submit(Retract(self.id))

    def request_interrupt(self, played_frames: int) -> asyncio.Future[ReplyFinished | None]:
        future: asyncio.Future[ReplyFinished | None] = asyncio.get_running_loop().create_future()
        request = next(_INTERRUPT_IDS)
        self._interrupts[request] = future
        self._last_ended = None
        self.client.submit(Interrupt(self.id, request, int(played_frames)))
        return future

    async def interrupt(self, played_frames: int) -> ReplyFinished | None:
        return await self.request_interrupt(played_frames)

    def close(self) -> None:
        self.client.submit(Close(self.id))
        self._pump.cancel()
        for future in self._interrupts.values():
            if not future.done():
                future.set_result(None)
        self._interrupts.clear()

    async def _run(self) -> None:
        from model.engine import AgentAudio, EngineError, ReplyFinished

        with contextlib.suppress(LookupError):
            while True:
                ev = await self.client.next_event(self.id)
                if isinstance(ev, TextDelta):
                    self._texts[ev.request] = self._texts.get(ev.request, "") + ev.text
                elif isinstance(ev, AudioChunk):
                    self.events.put_nowait(AgentAudio(ev.request, ev.frame_index, ev.pcm,
                                                      self._texts.get(ev.request, ""), ev.codes, ev.request))
                elif isinstance(ev, ReplyEnded):
                    self._texts.pop(ev.request, None)
                    ended = ReplyFinished(ev.request, ev.text, ev.frames, ev.interrupted, ev.generated_frames,
                                          ev.request)
                    self._last_ended = ended
                    self.events.put_nowait(ended)
                elif isinstance(ev, InterruptDone):
                    future = self._interrupts.pop(ev.request, None)
                    if future is not None and not future.done():
                        future.set_result(self._last_ended if ev.cut else None)
                elif isinstance(ev, Rejected):
                    self.rejected[ev.command] = self.rejected.get(ev.command, 0) + 1
                    if ev.command == "Feed":
                        self.dropped_frames += 1
                    future = self._interrupts.pop(ev.request, None) if ev.command == "Interrupt" else None
                    if future is not None and not future.done():
                        future.set_result(None)
                    if ev.command in ("Respond", "Greet"):  # no reply will come: the session stops waiting
                        self.events.put_nowait(EngineError(ev.request, f"{ev.command} rejected: {ev.reason}"))
                elif isinstance(ev, EngineFault):
                    self._texts.clear()
                    self.events.put_nowait(EngineError(ev.request, ev.message))
