"""The in-process transport: a simulated caller wired straight to a CallSession in this process.

No network: the caller's packets are handed to the session as they are sent, and the session's
packets are collected for the caller's ear. Line conditions (codec, loss, jitter, echo, noise) are
applied by the simulator around the leg, as for every other transport.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from agent.caller_leg import LEG_RATE, Int16Array
from agent.calls import CallManager
from agent.session import CallSummary
from agent.transport import AudioReceived, DtmfReceived, HungUp, TransportEvent


class InprocAgentTransport:
    """The agent's side (a CallTransport at 16 kHz)."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[TransportEvent] = asyncio.Queue()
        self.sent: deque[Int16Array] = deque()
        self.hung_up_by_agent = False

    @property
    def sample_rate(self) -> int:
        return LEG_RATE

    async def receive(self) -> TransportEvent:
        return await self.events.get()

    def send(self, samples: Int16Array) -> None:
        self.sent.append(samples)

    def hang_up(self, reason: str) -> None:
        self.hung_up_by_agent = True


class InprocLeg:
    """The caller's side (a CallerLeg)."""

    def __init__(self, calls: CallManager, call_id: str | None = None) -> None:
        self.calls = calls
        self.call_id = call_id or calls.new_call_id("sim")
        self.agent = InprocAgentTransport()
        self.summary: CallSummary | None = None
        self._task: asyncio.Task[CallSummary] | None = None

    @property
    def description(self) -> str:
        return "inproc"

    async def connect(self) -> None:
        self.calls.check_admission()
        self._task = asyncio.get_running_loop().create_task(self.calls.run_call(self.agent, self.call_id))
        await asyncio.sleep(0)  # let the session start

    def send_audio(self, samples: Int16Array) -> None:
        self.agent.events.put_nowait(AudioReceived(samples))

    def receive_audio(self) -> list[Int16Array]:
        out = list(self.agent.sent)
        self.agent.sent.clear()
        return out

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        self.agent.events.put_nowait(DtmfReceived(digit, duration_ms))

    async def hang_up(self) -> None:
        self.agent.events.put_nowait(HungUp("caller hung up"))
        await self.finished()

    async def finished(self) -> CallSummary | None:
        if self._task is not None and self.summary is None:
            with contextlib.suppress(asyncio.CancelledError):
                self.summary = await self._task
        return self.summary

    @property
    def remote_hung_up(self) -> bool:
        return self.agent.hung_up_by_agent or (self._task is not None and self._task.done())
