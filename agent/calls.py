"""CallManager: admits calls up to capacity, runs each in its own CallSession, drains on request.

Every transport (SIP gateway, WebRTC server, simulator) hands an answered call to
`CallManager.run_call(transport)`. Capacity (`server.max_calls`) and draining are decided here,
once, so SIP (503), HTTP (503) and `/healthz` all report the same truth.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from agent.engine_compat import ClientConversation
from agent.log import event
from agent.session import CallSession, CallSummary, SessionOptions
from agent.transport import CallTransport
from agent.vad import VoiceDetector

if TYPE_CHECKING:
    from agent.engine_process import EngineHost
    from model.engine import CallConversation

log = logging.getLogger(__name__)


class CallRefused(Exception):
    """No call can be taken now; `reason` is 'full', 'draining', 'overloaded' or 'engine_restarting'."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
                 max_calls: int, instructions: str = "") -> None:
        """`instructions`: extra per-call text for the system prompt (the configured ones are the engine's)."""
        self.engine = engine
        self.options = options
        self.detector_factory = detector_factory
        self.max_calls = max_calls
        self.instructions = instructions
        self.draining = False
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
    def free_slots(self) -> int:
        return max(0, self.max_calls - len(self.active))

    def check_admission(self) -> None:
        """Raise CallRefused when a new call would be refused (answer 503 before ringing)."""
        if self.draining:
            self.counters.refused_draining += 1
            raise CallRefused("draining")
        if len(self.active) >= self.max_calls:
            self.counters.refused_full += 1
            raise CallRefused("full")
        refusal = self.engine.refusal()
        if refusal is not None:
            self.counters.refused_engine += 1
            raise CallRefused(refusal)

    def new_call_id(self, prefix: str = "c") -> str:
        return f"{prefix}-{next(self._ids)}-{secrets.token_hex(3)}"

    async def run_call(self, transport: CallTransport, call_id: str | None = None,
                       options: SessionOptions | None = None, external_id: str = "") -> CallSummary:
        """Run one call to its end. Raises CallRefused when at capacity or draining."""
        self.check_admission()
        call_id = call_id or self.new_call_id()
        # the session still takes a conversation handle: ClientConversation adapts the EngineClient
        conversation = cast("CallConversation", ClientConversation(self.engine, self.instructions))
        session = CallSession(call_id, transport, conversation, self.detector_factory(), options or self.options,
                              external_id=external_id)
        self.active[call_id] = session
        self._idle.clear()
        self.counters.started += 1
        try:
            summary = await session.run()
        finally:
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
