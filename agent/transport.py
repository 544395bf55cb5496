"""What a call's transport (SIP/RTP, WebRTC, the simulator) presents to a CallSession.

20 ms PCM packets in and out at the transport's own rate, plus typed call events. SIP, WebRTC
and the in-process simulator line all implement `CallTransport`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

Int16Array = npt.NDArray[np.int16]


@dataclass(frozen=True, eq=False)
class AudioReceived:
    """One packet of caller audio (mono int16 at the transport's rate; 20 ms nominally)."""

    samples: Int16Array


@dataclass(frozen=True)
class DtmfReceived:
    digit: str
    duration_ms: int = 0


@dataclass(frozen=True)
class HungUp:
    reason: str


@dataclass(frozen=True)
class PacketsPlayed:
    """Every agent packet up to `sequence` (the session's playout sequence, given with
    ``send_tracked``) has really left: sent on the wire (SIP), pulled by the encoder (WebRTC)."""

    sequence: int


TransportEvent = AudioReceived | DtmfReceived | HungUp | PacketsPlayed


class CallTransport(Protocol):
    @property
    def sample_rate(self) -> int: ...

    async def receive(self) -> TransportEvent:
        """The next caller event; HungUp is the last one."""
        ...

    def send(self, samples: Int16Array) -> None:
        """Queue one packet of agent audio (never blocks)."""
        ...

    def hang_up(self, reason: str) -> None:
        """End the call from the agent's side."""
        ...


class TrackedTransport(CallTransport, Protocol):
    """A transport that reports playout truth: ``send_tracked(samples, sequence)`` queues a packet
    and, once it has really left, `PacketsPlayed(sequence)` comes back through ``receive``; it can
    hold its queued audio (``pause_output``/``resume_output``) and drop it (``flush``)."""

    def send_tracked(self, samples: Int16Array, sequence: int | None) -> None: ...

    def pause_output(self) -> None: ...

    def resume_output(self) -> None: ...

    def flush(self) -> int: ...
