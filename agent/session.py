"""CallSession: the asyncio driver of one call's ``SessionCore`` (agent/session_core.py).

Theory of operation
-------------------
The decisions live in the sans-IO `SessionCore`; this module only moves values between it and the
real world, in three tasks of the call's own task group (one call's failure ends that call only):

* inbound: transport events (caller packets, DTMF, hang-up, playout reports) go to the core;
* outbound: ``core.tick`` runs on ONE 20 ms grid per call: the transport's own send deadlines
  where it offers them (``set_source``: SIP's RTP pacer, aiortc's frame clock), so a packet is
  made for the very deadline it leaves at; else a ticker on absolute deadlines from call start;
* engine: the call's engine events (``EngineClient.next_event``) go to the core.

Every input returns actions, executed at once in order: packets to the transport, commands to the
engine (``EngineClient.submit``, which never raises for a refusal), pause/resume/flush of the
transport's queued audio where the transport can, hang-up, end. The clock is read here only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from agent.engine_api import Close, EngineClient, Open
from agent.log import event, set_call_id
from agent.playout import Playout
from agent.session_core import (
    PACKET_MS,
    Action,
    BargeInMetrics,
    CallSummary,
    Ended,
    FlushOutput,
    HangUp,
    PauseOutput,
    ResumeOutput,
    SendAudio,
    SessionCore,
    SessionOptions,
    ToEngine,
    TurnMetrics,
)
from agent.transport import AudioReceived, CallTransport, DtmfReceived, HungUp, PacketsPlayed
from agent.turn_taking import TurnTaking
from agent.vad import VoiceDetector

if TYPE_CHECKING:
    from agent.call_recording import CallRecorder

__all__ = ["BargeInMetrics", "CallSession", "CallSummary", "SessionOptions", "TurnMetrics"]

log = logging.getLogger(__name__)


class CallSession:
    """One call. Construct, then `await run()`; it returns the call's summary when the call ends."""

    single_grid = True  # tick on the transport's send deadlines where it offers them (bench switch)

    def __init__(self, call_id: str, transport: CallTransport, engine: EngineClient, detector: VoiceDetector,
                 options: SessionOptions | None = None, clock: Callable[[], float] | None = None,
                 external_id: str = "", instructions: str = "", recorder: CallRecorder | None = None) -> None:
        self.call_id = call_id
        self.recorder = recorder  # taps the caller's and the agent's packets (server.record_dir)
        self.transport = transport
        self.engine = engine
        self.instructions = instructions
        self.engine_call = engine.new_call_id()
        self._clock = clock or time.monotonic
        self._t0 = self._clock()
        self._tracked = callable(getattr(transport, "send_tracked", None))
        self.core = SessionCore(call_id, self.engine_call, transport.sample_rate, detector,
                                options, external_id, playout_reported=self._tracked)
        self.summary = self.core.summary
        self._ended = asyncio.Event()

    # views of the core, for benches and tests
    @property
    def options(self) -> SessionOptions:
        return self.core.options

    @property
    def playout(self) -> Playout:
        return self.core.playout

    @property
    def turns(self) -> TurnTaking:
        return self.core.turns

    def now_ms(self) -> int:
        return int((self._clock() - self._t0) * 1000)

    # -- main ----------------------------------------------------------------------------------------
    async def run(self) -> CallSummary:
        set_call_id(self.call_id)
        event(log, "call.started", rate=self.transport.sample_rate)
        try:
            self.engine.submit(Open(self.engine_call, self.instructions))
            self._do(self.core.start(self.now_ms()))
            set_source = getattr(self.transport, "set_source", None)
            driven = self.single_grid and callable(set_source)
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._inbound()), tg.create_task(self._engine_events())]
                if driven:
                    set_source(self._tick)  # type: ignore[misc]
                else:
                    tasks.append(tg.create_task(self._outbound()))
                await self._ended.wait()
                if driven:
                    set_source(None)  # type: ignore[misc]
                for task in tasks:
                    task.cancel()
        except* Exception as group:
            self.summary.error = "; ".join(repr(e) for e in group.exceptions)
            event(log, "call.failed", logging.ERROR, error=self.summary.error)
            with contextlib.suppress(Exception):
                self.transport.hang_up("agent error")
        finally:
            self.engine.submit(Close(self.engine_call))
            self.summary.duration_ms = self.now_ms()
            self.summary.dropped_frames = self.core.playout.dropped_counts()
            event(log, "call.ended", by=self.summary.ended_by or "error", duration_ms=self.summary.duration_ms,
                  turns=len(self.summary.turns), barge_ins=len(self.summary.barge_ins))
        return self.summary

    def end(self, reason: str) -> None:
        """End the call from the agent's side (drain, shutdown)."""
        self._do(self.core.end(reason, self.now_ms()))

    def _do(self, actions: Iterable[Action]) -> None:
        transport = self.transport
        for action in actions:
            if isinstance(action, SendAudio):
                if self.recorder is not None:
                    self.recorder.agent(action.samples, action.sequence, self.now_ms())
                if self._tracked:
                    transport.send_tracked(action.samples, action.sequence)  # type: ignore[attr-defined]
                else:
                    transport.send(action.samples)
            elif isinstance(action, ToEngine):
                self.engine.submit(action.command)
            elif isinstance(action, PauseOutput):
                _optional(transport, "pause_output")
            elif isinstance(action, ResumeOutput):
                _optional(transport, "resume_output")
            elif isinstance(action, FlushOutput):
                _optional(transport, "flush")
            elif isinstance(action, HangUp):
                with contextlib.suppress(Exception):
                    transport.hang_up(action.reason)
            elif isinstance(action, Ended):
                self._ended.set()

    # -- tasks -----------------------------------------------------------------------------------------
    async def _inbound(self) -> None:
        core = self.core
        while True:
            try:
                ev = await self.transport.receive()
            except (OSError, ConnectionError, EOFError) as exc:
                self._do(core.transport_lost(repr(exc), self.now_ms()))
                return
            now = self.now_ms()
            if isinstance(ev, AudioReceived):
                if self.recorder is not None:
                    self.recorder.caller(ev.samples, now)
                self._do(core.caller_audio(ev.samples, now))
            elif isinstance(ev, PacketsPlayed):
                self._do(core.played(ev.sequence, now))
            elif isinstance(ev, DtmfReceived):
                self._do(core.dtmf(ev.digit, now))
            elif isinstance(ev, HungUp):
                self._do(core.hung_up(ev.reason, now))
                return

    async def _outbound(self) -> None:
        k = 0
        while True:
            k += 1
            deadline = self._t0 + k * PACKET_MS / 1000
            delay = deadline - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:  # the loop was stalled for a long time: skip ahead, keep the grid
                k += int(-delay * 1000 // PACKET_MS)
            self._do(self.core.tick(self.now_ms()))

    def _tick(self) -> None:
        """The transport's send deadline: make this deadline's packet now. A failure ends the call."""
        if self._ended.is_set():
            return
        try:
            self._do(self.core.tick(self.now_ms()))
        except Exception as exc:
            self.summary.error = repr(exc)
            event(log, "call.failed", logging.ERROR, error=self.summary.error)
            self._do(self.core.end("agent error", self.now_ms()))

    async def _engine_events(self) -> None:
        while True:
            ev = await self.engine.next_event(self.engine_call)
            self._do(self.core.engine(ev, self.now_ms()))


def _optional(transport: object, name: str) -> None:
    """Call the transport's optional method `name` (pause/resume/flush) where it has one."""
    method = getattr(transport, name, None)
    if callable(method):
        method()
