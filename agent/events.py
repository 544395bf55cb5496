"""Typed events exchanged by the VAD, TurnTaking and Playout (facts, frozen, named in the past tense).

Time is always integer milliseconds from the start of the call (``*_ms``). An event's ``at_ms`` is the
moment the fact became true on the call's timeline, which for speech is when the caller really began
or stopped talking, not the (later) moment the detector became sure of it.

Boundaries:

- ``VadEvent``: VadTracker -> TurnTaking.
- ``PlayoutEvent``: Playout -> TurnTaking (and the session's metrics).
- ``TurnEvent``: TurnTaking -> CallSession, which acts on them (respond, barge in, log).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# --- VAD (agent/vad.py) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VadSpeechStarted:
    """Speech was confirmed; it began at ``at_ms`` (``start_ms`` of continuous speech earlier)."""

    at_ms: int


@dataclass(frozen=True)
class VadSpeechPaused:
    """Inside confirmed speech, the voice dropped below the stop threshold at ``at_ms``.

    Emitted one chunk after the fact, long before ``VadSpeechStopped`` confirms the silence; it lets
    TurnTaking count only voiced time (a short cough is not inflated by the stop hangover).
    """

    at_ms: int


@dataclass(frozen=True)
class VadSpeechResumed:
    """After a ``VadSpeechPaused``, speech came back at ``at_ms`` before the silence was confirmed."""

    at_ms: int


@dataclass(frozen=True)
class VadSpeechStopped:
    """Silence was confirmed (``stop_ms`` long); the speech ended at ``at_ms`` (the last pause)."""

    at_ms: int


@dataclass(frozen=True)
class VadVoiceOnset:
    """The voice crossed the start threshold at ``at_ms``; not yet ``start_ms`` long (it may be a click).

    Followed by ``VadSpeechStarted`` (the same ``at_ms``) or ``VadVoiceOnsetDropped``."""

    at_ms: int


@dataclass(frozen=True)
class VadVoiceOnsetDropped:
    """The onset fell below the stop threshold at ``at_ms`` before it became speech."""

    at_ms: int


VadEvent = VadSpeechStarted | VadSpeechPaused | VadSpeechResumed | VadSpeechStopped | VadVoiceOnset | VadVoiceOnsetDropped

# --- Playout (agent/playout.py) -------------------------------------------------------------------


class FinishReason(enum.Enum):
    COMPLETED = "completed"  # the response was marked complete and every packet has been played
    INTERRUPTED = "interrupted"  # cleared (barge-in) or superseded by a newer epoch
    STALLED = "stalled"  # the queue ran dry and nothing came for ``stall_timeout_ms``


@dataclass(frozen=True)
class AgentAudioStarted:
    """The first packet of ``epoch`` was handed to the transport at ``at_ms``."""

    at_ms: int
    epoch: int


@dataclass(frozen=True)
class AgentAudioFinished:
    """The agent's audio of ``epoch`` stopped reaching the caller at ``at_ms``."""

    at_ms: int
    epoch: int
    reason: FinishReason
    played_ms: int

    @property
    def interrupted(self) -> bool:
        return self.reason is FinishReason.INTERRUPTED


@dataclass(frozen=True)
class PlayoutCleared:
    """Result of ``Playout.clear``: what the caller actually heard of ``epoch``.

    ``played_frames`` counts whole 80 ms frames (the unit ``Engine.interrupt`` truncates to);
    ``played_ms`` is the heard audio in ms (packet resolution); ``played_text`` joins the ``text`` of
    the fully heard frames; ``dropped_frames`` is how many pushed frames were (partly) never heard.
    """

    at_ms: int
    epoch: int
    played_frames: int
    played_ms: int
    played_text: str
    dropped_frames: int


PlayoutEvent = AgentAudioStarted | AgentAudioFinished

# --- TurnTaking (agent/turn_taking.py) ------------------------------------------------------------


class EndOfTurnReason(enum.Enum):
    SILENCE = "silence"  # the caller was silent for ``end_of_turn_silence_ms``
    MAX_TURN = "max_turn"  # the caller's turn reached ``max_turn_ms``


@dataclass(frozen=True)
class SpeechStarted:
    """A caller turn began (speech at ``at_ms``), either from silence or by a barge-in."""

    at_ms: int


@dataclass(frozen=True)
class EndOfTurn:
    """The caller's turn is over; the agent should answer now (decided at ``at_ms``).

    ``speech_started_ms``/``speech_ended_ms`` bound the turn's speech; ``voiced_ms`` is its voiced time.
    """

    at_ms: int
    speech_started_ms: int
    speech_ended_ms: int
    voiced_ms: int
    reason: EndOfTurnReason
    speculative: bool = False  # withdrawn (TurnContinued(false_start)) if the caller goes on soon


@dataclass(frozen=True)
class BargeIn:
    """The caller cut in on the agent; stop its audio now (decided at ``at_ms``).

    ``speech_started_ms`` is when the interrupting speech began; ``voiced_ms`` how much of it there was.
    ``agent_was_speaking`` is False when the agent was still thinking (nothing played yet).
    """

    at_ms: int
    speech_started_ms: int
    voiced_ms: int
    agent_was_speaking: bool


@dataclass(frozen=True)
class FalseInterruption:
    """Caller sound during the agent's turn that did not count (backchannel, cough); the agent goes on."""

    at_ms: int
    speech_started_ms: int
    voiced_ms: int
    onset_only: bool = False  # a hold at a voice onset that never became speech (not counted as ignored)


@dataclass(frozen=True)
class AgentStartedSpeaking:
    at_ms: int


@dataclass(frozen=True)
class AgentFinishedSpeaking:
    at_ms: int
    interrupted: bool


@dataclass(frozen=True)
class ResponseTimedOut:
    """After an EndOfTurn no agent audio came for ``response_timeout_ms``; back to listening."""

    at_ms: int
    end_of_turn_ms: int


@dataclass(frozen=True)
class EndOfTurnPredicted:
    """The caller has been silent for ``early_response_silence_ms``: start the answer now, hold its audio.

    Either ``EndOfTurn`` follows (play the held answer at once) or ``TurnContinued`` (the caller only
    paused: withdraw the answer, the turn goes on).
    """

    at_ms: int
    speech_started_ms: int
    speech_ended_ms: int


@dataclass(frozen=True)
class TurnContinued:
    """The caller spoke again after ``EndOfTurnPredicted`` and before ``EndOfTurn``: a pause, not an end.

    ``false_start``: after a speculative ``EndOfTurn``, within the agent's first
    ``speculative_window_ms`` of audio: the started answer is withdrawn and the caller's turn goes on.
    """

    at_ms: int
    resumed_ms: int
    false_start: bool = False


@dataclass(frozen=True)
class TurnConfirmed:
    """The speculative window after ``EndOfTurn`` passed without the caller going on: the answer stays."""

    at_ms: int


@dataclass(frozen=True)
class InterruptionSuspected:
    """The caller started speaking over the agent; hold its audio until it is a BargeIn or not.

    Holding at once is what makes barge-in fast at the caller's ear; a FalseInterruption that
    follows (backchannel, cough) resumes the held audio where it stopped, nothing lost.
    ``onset_only``: suspected at the voice onset, before the VAD confirmed speech (``vad.start_ms``).
    """

    at_ms: int
    speech_started_ms: int
    onset_only: bool = False


TurnEvent = (
    SpeechStarted
    | EndOfTurnPredicted
    | TurnContinued
    | TurnConfirmed
    | EndOfTurn
    | BargeIn
    | InterruptionSuspected
    | FalseInterruption
    | AgentStartedSpeaking
    | AgentFinishedSpeaking
    | ResponseTimedOut
)
