"""CallManager: admits calls up to capacity, runs each in its own CallSession, drains on request.

Every transport (SIP gateway, WebRTC server, simulator) reserves a slot at the offer
(`CallManager.reserve`, agent/capacity.py) and hands the answered call, with its reservation, to
`CallManager.run_call(transport, reservation=...)`. Capacity (`server.max_calls`) and draining are
decided there, once, so SIP (503, OPTIONS), HTTP (503) and `/healthz` all report the same truth.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.capacity import CallRefused, Capacity, Reservation
from agent.engine_api import EngineClient
from agent.log import event
from agent.session import CallSession, CallSummary, SessionOptions
from agent.transport import CallTransport
from agent.vad import VoiceDetector

__all__ = ["CallCounters", "CallManager", "CallRefused"]

if TYPE_CHECKING:
    from agent.call_recording import CallRecordings
    from agent.engine_process import EngineHost

log = logging.getLogger(__name__)


@dataclass
class CallCounters:
    started: int = 0
    completed: int = 0
    failed: int = 0
    refused_full: int = 0
    refused_draining: int = 0
    refused_engine: int = 0  # the engine is restarting, or its step time leaves no room (overloaded)
    ended_engine_lost: int = 0  # live calls ended because the engine process died
    by_result: dict[str, int] = field(default_factory=dict)


class CallManager:
    def __init__(self, engine: EngineHost, options: SessionOptions, detector_factory: Callable[[], VoiceDetector],
                 max_calls: int, instructions: str = "", recordings: CallRecordings | None = None) -> None:
        """`instructions`: extra per-call text for the system prompt (the configured ones are the engine's);
        `recordings`: where each call's stereo recording and signed record go (server.record_dir)."""
        self.recordings = recordings
        self.engine = engine
        self.client: EngineClient = engine  # an EngineHost: the engine process, or the engine in this process
        self.options = options
        self.detector_factory = detector_factory
        self.capacity = Capacity(max_calls)
        self.instructions = instructions
        self.active: dict[str, CallSession] = {}
        self.counters = CallCounters()
        self.summaries: list[CallSummary] = []
        self._ids = itertools.count(1)
        self._idle = asyncio.Event()
        self._idle.set()
        self.on_call_finished: list[Callable[[CallSummary], None]] = []
        engine.on_lost.append(self._engine_lost)

    def _engine_lost(self, message: str) -> None:
        """The engine process died: every live call ends now (BYE / data-channel "ended"), counted."""
        from agent.engine_process import ENGINE_LOST

        sessions = list(self.active.values())
        self.counters.ended_engine_lost += len(sessions)
        event(log, "calls.engine_lost", logging.ERROR, calls=len(sessions), message=message)
        for session in sessions:
            session.end(ENGINE_LOST)

    @property
    def max_calls(self) -> int:
        return self.capacity.max_calls

    @property
    def draining(self) -> bool:
        return self.capacity.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.capacity.draining = value

    @property
    def free_slots(self) -> int:
        """Slots neither reserved (offered, not answered yet) nor committed (running), on every transport."""
        return self.capacity.free_slots

    def check_admission(self) -> None:
        """Raise CallRefused when a new call would be refused (answer 503 before ringing)."""
        try:
            self.capacity.check()
        except CallRefused as exc:
            if exc.reason == "draining":
                self.counters.refused_draining += 1
            else:
                self.counters.refused_full += 1
            raise
        refusal = self.engine.refusal()
        if refusal is not None:
            self.counters.refused_engine += 1
            raise CallRefused(refusal)

    def reserve(self, transport: str) -> Reservation:
        """Hold a slot from the offer on (SIP INVITE, WebRTC offer, dial); CallRefused when none is free."""
        self.check_admission()
        return self.capacity.reserve(transport)

    def new_call_id(self, prefix: str = "c") -> str:
        return f"{prefix}-{next(self._ids)}-{secrets.token_hex(3)}"

    async def run_call(self, transport: CallTransport, call_id: str | None = None,
                       options: SessionOptions | None = None, external_id: str = "",
                       reservation: Reservation | None = None) -> CallSummary:
        """Run one call to its end; its slot is released when it ends.

        With a `reservation` (taken at the offer) the call was answered and is never refused; without
        one a slot is reserved now (CallRefused when at capacity or draining).
        """
        if reservation is None:
            reservation = self.reserve("inproc")
        reservation.commit()
        try:
            return await self._run_session(transport, call_id, options, external_id)
        finally:
            reservation.release()

    async def _run_session(self, transport: CallTransport, call_id: str | None, options: SessionOptions | None,
                           external_id: str) -> CallSummary:
        call_id = call_id or self.new_call_id()
        recordings = self.recordings
        recorder = recordings.start(call_id, transport.sample_rate) if recordings is not None else None
        session = CallSession(call_id, transport, self.client, self.detector_factory(), options or self.options,
                              external_id=external_id, instructions=self.instructions, recorder=recorder)
        self.active[call_id] = session
        self._idle.clear()
        self.counters.started += 1
        try:
            summary = await session.run()
            if recordings is not None and recorder is not None:  # before the call counts as gone (drain)
                await asyncio.to_thread(recordings.finish, recorder, summary)
        finally:
            if recorder is not None:
                recorder.discard()
            del self.active[call_id]
            if not self.active:
                self._idle.set()
        result = "failed" if summary.error else "completed"
        if summary.error:
            self.counters.failed += 1
        else:
            self.counters.completed += 1
        self.counters.by_result[result] = self.counters.by_result.get(result, 0) + 1
        self.summaries.append(summary)
        del self.summaries[:-1000]
        for callback in self.on_call_finished:
            callback(summary)
        return summary

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new calls; wait for the active ones (at most timeout_s). True if all finished."""
        self.draining = True
        event(log, "server.draining", active=len(self.active), timeout_s=timeout_s)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            for session in list(self.active.values()):
                session.end("drain timeout")
            return False
