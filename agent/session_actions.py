"""What `agent.session_core.SessionCore` asks its driver to do: the closed set of actions.

Every input method of the core returns a list of these; the asyncio driver (`agent.session`) carries
them out in order against the transport and the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.engine_api import EngineCommand
from agent.transport import Int16Array


@dataclass(frozen=True, eq=False)
class SendAudio:
    """Queue one packet (transport rate); report ``sequence`` back through ``played`` once it left."""

    samples: Int16Array
    sequence: int | None


@dataclass(frozen=True)
class ToEngine:
    command: EngineCommand


@dataclass(frozen=True)
class PauseOutput:
    """Stop sending the transport's queued agent audio, keep it (a suspected interruption)."""


@dataclass(frozen=True)
class ResumeOutput:
    """Send the paused audio on (the interruption was not one)."""


@dataclass(frozen=True)
class FlushOutput:
    """Drop the transport's queued agent audio (a barge-in: the caller has the floor)."""


@dataclass(frozen=True)
class HangUp:
    reason: str


@dataclass(frozen=True)
class Ended:
    """The call is over; the driver stops. ``reason`` goes into the summary's ``ended_by``."""

    reason: str


Action = SendAudio | ToEngine | PauseOutput | ResumeOutput | FlushOutput | HangUp | Ended
