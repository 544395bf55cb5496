"""Who has the floor: a pure state machine over VAD events, playout facts and explicit time.

Theory of operation
-------------------
Inputs (all with ``now_ms``, integer ms from call start, never decreasing):

- VAD events from ``VadTracker`` (``VadSpeechStarted/Paused/Resumed/Stopped``; their ``at_ms`` is when
  speech really began or paused). Feed the tracker the *echo-gated* caller audio (``EchoGate``), so
  that the agent's own voice coming back down the line never looks like caller speech.
- Playout facts: ``agent_audio_started(now)``, ``agent_audio_finished(now, interrupted)`` (or hand the
  ``AgentAudioStarted``/``AgentAudioFinished`` events to ``handle``).
- ``tick(now)``: call it after each frame (every 80 ms or 20 ms); deadlines are checked there and at
  the end of every other call.

Caller speech is measured as *voiced* time: the sum of the intervals between (re)start and pause, so
that the VAD's stop hangover does not inflate a cough or an "uh-huh". A turn's silence is measured
from the last pause (``VadSpeechPaused.at_ms``), so end of turn comes exactly
``end_of_turn_silence_ms`` after the caller stopped, whatever the VAD's confirmation delay.

States and transitions (S = settings; "speech" = VadSpeechStarted, or VadSpeechResumed):

=====================  ===========================================  =======================  ==============================================
state                  input / condition                            next state               events emitted
=====================  ===========================================  =======================  ==============================================
LISTENING              speech                                       CALLER_SPEAKING          SpeechStarted
LISTENING              agent_audio_started (greeting)               AGENT_SPEAKING           AgentStartedSpeaking
CALLER_SPEAKING        pause, silence >= S.early_response_sil.      CALLER_SPEAKING          EndOfTurnPredicted (answer starts, held)
CALLER_SPEAKING        speech again after EndOfTurnPredicted        CALLER_SPEAKING          TurnContinued (held answer withdrawn)
CALLER_SPEAKING        pause, then silence >= S.end_of_turn_sil.    AGENT_THINKING           EndOfTurn(reason=SILENCE)
CALLER_SPEAKING        speech again before that (a 400 ms pause)    CALLER_SPEAKING          none: the turn goes on
CALLER_SPEAKING        turn length >= S.max_turn_ms                 AGENT_THINKING           EndOfTurn(reason=MAX_TURN); the running
                                                                                             talkspurt is ignored until it stops
CALLER_SPEAKING        agent_audio_started (agent talks over)       INTERRUPTION_PENDING     AgentStartedSpeaking, InterruptionSuspected
                                                                                             (+ BargeIn at once if the caller already spoke
                                                                                             S.barge_in_min_speech_ms)
AGENT_THINKING         agent_audio_started                          AGENT_SPEAKING           AgentStartedSpeaking
AGENT_THINKING         speech                                       INTERRUPTION_PENDING     InterruptionSuspected
AGENT_THINKING         no audio for S.response_timeout_ms           LISTENING                ResponseTimedOut
AGENT_THINKING         agent_response_empty                         LISTENING                none
AGENT_SPEAKING         speech                                       INTERRUPTION_PENDING     InterruptionSuspected: the session holds
                                                                                             the agent's audio (kept) until decided
AGENT_SPEAKING         voice onset (S.hold_at_voice_onset)          AGENT_SPEAKING           InterruptionSuspected(onset_only): held at the
                                                                                             first voiced chunk; the onset dropped (or the
                                                                                             agent done) -> FalseInterruption(onset_only)
AGENT_SPEAKING         agent_audio_finished                         LISTENING                AgentFinishedSpeaking
INTERRUPTION_PENDING   voiced >= S.barge_in_min_speech_ms           CALLER_SPEAKING          BargeIn, SpeechStarted (the turn starts at the
                                                                                             interrupting speech's start)
INTERRUPTION_PENDING   VAD stopped with less voiced (backchannel,   AGENT_SPEAKING or        FalseInterruption (the session resumes the
                                                                                             held audio)
                       cough) and no speech again within
                       S.barge_in_gap_ms of its pause (0: at the    AGENT_THINKING
                       stop), or S.false_interruption_timeout_ms
                       passed without reaching it
INTERRUPTION_PENDING   speech again within S.barge_in_gap_ms        INTERRUPTION_PENDING     none: the same interruption, voiced time added
INTERRUPTION_PENDING   agent_audio_finished (agent done anyway)     CALLER_SPEAKING          AgentFinishedSpeaking, SpeechStarted
any (agent audio on)   agent_audio_finished                         (as above)               AgentFinishedSpeaking(interrupted)
=====================  ===========================================  =======================  ==============================================

End of turn, speculation and backchannels (docs/endpointing.md):

- "silence >= S.end_of_turn_silence_ms" above is really "silence >= the detector's required
  silence": a ``TurnEndDetector`` (agent.turn_end; default ``SilenceDetector(end_of_turn_silence_ms)``)
  fed through ``audio(pcm, voiced, now)``. EndOfTurnPredicted comes at
  min(S.early_response_silence_ms, half the required silence).
- With S.speculative_window_ms > 0 an EndOfTurn by silence is ``speculative``: caller speech before
  the agent's audio starts or within its first S.speculative_window_ms (AGENT_THINKING or
  AGENT_SPEAKING) -> CALLER_SPEAKING, TurnContinued(false_start=True), the same turn continuing
  (start and voiced time kept; ``false_starts`` counts them); after the window, TurnConfirmed.
- With S.barge_in_word_ms > 0 a ``BackchannelJudge`` (agent.backchannel) replaces the duration
  rule in INTERRUPTION_PENDING: BargeIn once the speech is shaped like words and
  S.barge_in_word_ms of it is voiced, or once S.backchannel_max_ms is voiced whatever its shape.

Why the agent never gets stuck: a barge-in turns the interrupting speech into an ordinary caller turn,
which ends in EndOfTurn (by silence, or by ``max_turn_ms``), so the agent answers again; a false
interruption returns to the agent's state without touching its audio; a response that never produces
audio times out back to LISTENING.

The session's side (see ``agent.playout.BargeInCoordinator``): on EndOfTurn start a response in a new
epoch; on BargeIn bump the epoch, clear the Playout and truncate the engine to what was played.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.backchannel import BackchannelJudge, Verdict
from agent.events import (
    AgentAudioFinished,
    AgentAudioStarted,
    AgentFinishedSpeaking,
    AgentStartedSpeaking,
    BargeIn,
    EndOfTurn,
    EndOfTurnPredicted,
    EndOfTurnReason,
    FalseInterruption,
    InterruptionSuspected,
    PlayoutEvent,
    ResponseTimedOut,
    SpeechStarted,
    TurnConfirmed,
    TurnContinued,
    TurnEvent,
    VadEvent,
    VadSpeechPaused,
    VadSpeechResumed,
    VadSpeechStarted,
    VadSpeechStopped,
    VadVoiceOnset,
    VadVoiceOnsetDropped,
)
from agent.turn_end import SilenceDetector, TurnEndDetector


class TurnState(enum.Enum):
    LISTENING = "listening"
    CALLER_SPEAKING = "caller_speaking"
    AGENT_THINKING = "agent_thinking"
    AGENT_SPEAKING = "agent_speaking"
    INTERRUPTION_PENDING = "interruption_pending"


@dataclass(frozen=True)
class TurnTakingSettings:
    end_of_turn_silence_ms: int = 600
    barge_in_min_speech_ms: int = 300
    false_interruption_timeout_ms: int = 1500
    max_turn_ms: int = 30_000
    response_timeout_ms: int = 5_000
    early_response_silence_ms: int = 0  # 0: off; else EndOfTurnPredicted after this much silence
    speculative_window_ms: int = 0  # 0: off; else caller speech within the agent's first N ms: false start
    barge_in_word_ms: int = 0  # 0: duration only; else a BackchannelJudge: WORDS barge in after this much voiced
    backchannel_max_ms: int = 1200  # with the judge: any speech over the agent this long (voiced) barges in
    hold_at_voice_onset: bool = False  # suspect at the VAD's first voiced chunk, not after its start_ms
    # 0: an interruption that stops short is false at the VAD's stop; else speech again within this
    # long of its pause continues the same interruption ("Excuse me, ... how long?"), audio still held
    barge_in_gap_ms: int = 0

    def __post_init__(self) -> None:
        for name in ("end_of_turn_silence_ms", "barge_in_min_speech_ms", "false_interruption_timeout_ms",
                     "max_turn_ms", "response_timeout_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TurnTakingSettings.{name} must be positive, got {getattr(self, name)}")
        if self.barge_in_word_ms < 0 or (self.barge_in_word_ms and not
                                         self.barge_in_word_ms <= self.backchannel_max_ms
                                         < self.false_interruption_timeout_ms):
            raise ValueError(
                f"need 0 < barge_in_word_ms ({self.barge_in_word_ms}) <= backchannel_max_ms "
                f"({self.backchannel_max_ms}) < false_interruption_timeout_ms ({self.false_interruption_timeout_ms})"
            )
        if self.barge_in_gap_ms < 0:
            raise ValueError(f"barge_in_gap_ms must be >= 0, got {self.barge_in_gap_ms}")
        if self.speculative_window_ms < 0:
            raise ValueError(f"speculative_window_ms must be >= 0, got {self.speculative_window_ms}")
        if not 0 <= self.early_response_silence_ms < self.end_of_turn_silence_ms:
            raise ValueError(
                f"early_response_silence_ms ({self.early_response_silence_ms}) must be >= 0 and below "
                f"end_of_turn_silence_ms ({self.end_of_turn_silence_ms})"
            )
        if self.false_interruption_timeout_ms <= self.barge_in_min_speech_ms:
            raise ValueError(
                f"false_interruption_timeout_ms ({self.false_interruption_timeout_ms}) must exceed "
                f"barge_in_min_speech_ms ({self.barge_in_min_speech_ms})"
            )


class TurnTaking:
    """Feed VAD events, playout facts and ticks; each call returns the turn events it caused, in order."""

    def __init__(self, settings: TurnTakingSettings | None = None, detector: TurnEndDetector | None = None) -> None:
        self.settings = settings or TurnTakingSettings()
        # how much silence ends the turn: asked at every check (default: the fixed end_of_turn_silence_ms)
        self.detector: TurnEndDetector = detector or SilenceDetector(self.settings.end_of_turn_silence_ms)
        self.false_starts = 0
        # speech over the agent: barge-in or backchannel, by its shape (None: by duration only)
        self.judge = BackchannelJudge() if self.settings.barge_in_word_ms else None
        self._speculative = False  # an EndOfTurn whose window has not passed
        self._speculative_until: int | None = None  # the window's end, once the agent's audio started
        self._turn_voiced_ms = 0  # the ended turn's voiced time (kept for a false start)
        self.state = TurnState.LISTENING
        self.agent_audio_playing = False
        self._now_ms: int | None = None
        self._talkspurt = False  # the VAD is between Started and Stopped
        self._ignore_talkspurt = False  # after a MAX_TURN end or an interruption timeout
        # The speech being measured (a caller turn, or a pending interruption):
        self._speech_start_ms = 0
        self._closed_voiced_ms = 0
        self._segment_start_ms: int | None = None  # voiced right now since then, or None when paused
        self._silence_since_ms: int | None = None
        self._end_of_turn_ms = 0
        self._predicted = False  # EndOfTurnPredicted was sent for the current silence
        self._onset_ms: int | None = None  # held at a voice onset that is not speech yet (hold_at_voice_onset)

    # --- inputs ---------------------------------------------------------------------------------

    def handle(self, event: VadEvent | PlayoutEvent, now_ms: int) -> list[TurnEvent]:
        """Dispatch one VAD or playout event (``now_ms`` is when it is being handled)."""
        if isinstance(event, VadSpeechStarted):
            return self.speech_started(event.at_ms, now_ms)
        if isinstance(event, VadSpeechResumed):
            return self.speech_resumed(event.at_ms, now_ms)
        if isinstance(event, VadSpeechPaused):
            return self.speech_paused(event.at_ms, now_ms)
        if isinstance(event, VadSpeechStopped):
            return self.speech_stopped(event.at_ms, now_ms)
        if isinstance(event, VadVoiceOnset):
            return self.voice_onset(event.at_ms, now_ms)
        if isinstance(event, VadVoiceOnsetDropped):
            return self.voice_onset_dropped(now_ms)
        if isinstance(event, AgentAudioStarted):
            return self.agent_audio_started(now_ms)
        if isinstance(event, AgentAudioFinished):
            return self.agent_audio_finished(now_ms, interrupted=event.interrupted)
        raise TypeError(f"TurnTaking cannot handle {type(event).__name__}")

    def audio(self, pcm: npt.NDArray[np.int16], voiced: bool, now_ms: int) -> None:
        """16 kHz caller audio (echo-gated) ending at ``now_ms`` with the VAD's state, for the detector."""
        self.detector.feed(pcm, voiced, now_ms)
        if self.judge is not None:
            self.judge.feed(pcm, voiced, now_ms, self.agent_audio_playing)

    def voice_onset(self, at_ms: int, now_ms: int) -> list[TurnEvent]:
        """The VAD's first voiced chunk, before it is speech: over the agent (with
        S.hold_at_voice_onset) the agent's audio is held at once, ``vad.start_ms`` sooner."""
        self._advance(now_ms)
        if self.settings.hold_at_voice_onset and self.state is TurnState.AGENT_SPEAKING \
                and self._onset_ms is None and not self._in_window(now_ms):
            self._onset_ms = at_ms
            return [InterruptionSuspected(at_ms=now_ms, speech_started_ms=at_ms, onset_only=True)]
        return self._evaluate(now_ms)

    def voice_onset_dropped(self, now_ms: int) -> list[TurnEvent]:
        self._advance(now_ms)
        return self._release_onset(now_ms) + self._evaluate(now_ms)

    def speech_started(self, at_ms: int, now_ms: int) -> list[TurnEvent]:
        self._advance(now_ms)
        self._onset_ms = None  # the onset became speech: the hold goes on as an ordinary suspicion
        self._talkspurt = True
        self._ignore_talkspurt = False
        return self._voice_on(at_ms, now_ms)

    def speech_resumed(self, at_ms: int, now_ms: int) -> list[TurnEvent]:
        self._advance(now_ms)
        if self._ignore_talkspurt:
            return self._evaluate(now_ms)
        return self._voice_on(at_ms, now_ms)

    def speech_paused(self, at_ms: int, now_ms: int) -> list[TurnEvent]:
        self._advance(now_ms)
        if self.state in (TurnState.CALLER_SPEAKING, TurnState.INTERRUPTION_PENDING) and not self._ignore_talkspurt:
            self._close_segment(at_ms)
        return self._evaluate(now_ms)

    def speech_stopped(self, at_ms: int, now_ms: int) -> list[TurnEvent]:
        self._advance(now_ms)
        ignored = self._ignore_talkspurt
        self._talkspurt = False
        self._ignore_talkspurt = False
        if ignored or self.state not in (TurnState.CALLER_SPEAKING, TurnState.INTERRUPTION_PENDING):
            return self._evaluate(now_ms)
        self._close_segment(at_ms)
        if self.state is TurnState.INTERRUPTION_PENDING:
            voiced_ms = self._voiced_ms(now_ms)
            if self._interrupts(voiced_ms, now_ms):
                return self._barge_in(now_ms, voiced_ms) + self._evaluate(now_ms)
            if not self.settings.barge_in_gap_ms:
                return [self._false_interruption(now_ms, voiced_ms), *self._evaluate(now_ms)]
        return self._evaluate(now_ms)  # with barge_in_gap_ms: false once the gap passes (_evaluate)

    def agent_audio_started(self, now_ms: int) -> list[TurnEvent]:
        self._advance(now_ms)
        if self.agent_audio_playing:
            return self._evaluate(now_ms)
        self.agent_audio_playing = True
        if self._speculative and self._speculative_until is None:
            self._speculative_until = now_ms + self.settings.speculative_window_ms
        events: list[TurnEvent] = [AgentStartedSpeaking(at_ms=now_ms)]
        if self.state in (TurnState.LISTENING, TurnState.AGENT_THINKING):
            self.state = TurnState.AGENT_SPEAKING
        elif self.state is TurnState.CALLER_SPEAKING:
            # The agent talks over a caller turn in progress: the caller keeps the floor if they spoke enough.
            self.state = TurnState.INTERRUPTION_PENDING
            events.append(InterruptionSuspected(at_ms=now_ms, speech_started_ms=self._speech_start_ms))
        return events + self._evaluate(now_ms)

    def agent_audio_finished(self, now_ms: int, *, interrupted: bool = False) -> list[TurnEvent]:
        self._advance(now_ms)
        if not self.agent_audio_playing:
            return self._evaluate(now_ms)
        self.agent_audio_playing = False
        events: list[TurnEvent] = [*self._release_onset(now_ms), AgentFinishedSpeaking(at_ms=now_ms, interrupted=interrupted)]
        if self.state is TurnState.AGENT_SPEAKING:
            self.state = TurnState.LISTENING
        elif self.state is TurnState.INTERRUPTION_PENDING:
            # The agent is done anyway: what the caller is saying is now simply their turn.
            self.state = TurnState.CALLER_SPEAKING
            events.append(SpeechStarted(at_ms=self._speech_start_ms))
        return events + self._evaluate(now_ms)

    def agent_response_empty(self, now_ms: int) -> list[TurnEvent]:
        """The engine answered without any audio: stop waiting for it."""
        self._advance(now_ms)
        if self.state is TurnState.AGENT_THINKING:
            self.state = TurnState.LISTENING
        self._speculative = False
        return self._evaluate(now_ms)

    def tick(self, now_ms: int) -> list[TurnEvent]:
        self._advance(now_ms)
        return self._evaluate(now_ms)

    def next_deadline_ms(self) -> int | None:
        """The next time at which ``tick`` could emit something without new input (None: no timer)."""
        timer = self._state_deadline_ms()
        if self._onset_ms is None:
            return timer
        onset_end = self._onset_ms + self.settings.false_interruption_timeout_ms
        return onset_end if timer is None else min(timer, onset_end)

    def _state_deadline_ms(self) -> int | None:
        s = self.settings
        if self._speculative and self._speculative_until is not None and \
                self.state in (TurnState.AGENT_THINKING, TurnState.AGENT_SPEAKING):
            return self._speculative_until
        if self.state is TurnState.CALLER_SPEAKING:
            turn_end = self._speech_start_ms + s.max_turn_ms
            if self._silence_since_ms is not None:
                required = self._required_silence_ms(self._silence_since_ms)
                end = self._silence_since_ms + required
                if s.early_response_silence_ms and not self._predicted:
                    end = self._silence_since_ms + self._early_silence_ms(required)
                return min(turn_end, end)
            return turn_end
        if self.state is TurnState.AGENT_THINKING:
            return self._end_of_turn_ms + s.response_timeout_ms
        if self.state is TurnState.INTERRUPTION_PENDING:
            timeout = self._speech_start_ms + s.false_interruption_timeout_ms
            gap_end = self._gap_end_ms()
            if gap_end is not None:
                return min(timeout, gap_end)
            if self._segment_start_ms is not None:
                need = s.barge_in_word_ms if self.judge is not None else s.barge_in_min_speech_ms
                missing = need - self._closed_voiced_ms
                return min(timeout, self._segment_start_ms + missing)
            return timeout
        return None

    # --- internals ------------------------------------------------------------------------------

    def _advance(self, now_ms: int) -> None:
        if self._now_ms is not None and now_ms < self._now_ms:
            raise ValueError(f"time went backwards: now_ms={now_ms} after {self._now_ms}")
        self._now_ms = now_ms

    def _begin_speech(self, at_ms: int) -> None:
        self._speech_start_ms = at_ms
        self._closed_voiced_ms = 0
        self._segment_start_ms = at_ms
        self._silence_since_ms = None

    def _voice_on(self, at_ms: int, now_ms: int) -> list[TurnEvent]:
        events: list[TurnEvent] = []
        if self.state is TurnState.LISTENING:
            self._begin_speech(at_ms)
            self.state = TurnState.CALLER_SPEAKING
            events.append(SpeechStarted(at_ms=at_ms))
        elif self.state in (TurnState.AGENT_THINKING, TurnState.AGENT_SPEAKING) and self._in_window(now_ms):
            # the caller goes on within the agent's first N ms: a false start, the turn continues
            self._speculative = False
            self.false_starts += 1
            self.state = TurnState.CALLER_SPEAKING
            self._closed_voiced_ms = self._turn_voiced_ms
            self._segment_start_ms = at_ms
            self._silence_since_ms = None
            events.append(TurnContinued(at_ms=now_ms, resumed_ms=at_ms, false_start=True))
        elif self.state in (TurnState.AGENT_THINKING, TurnState.AGENT_SPEAKING):
            self._begin_speech(at_ms)
            self.state = TurnState.INTERRUPTION_PENDING
            events.append(InterruptionSuspected(at_ms=now_ms, speech_started_ms=at_ms))
        elif self._segment_start_ms is None:  # CALLER_SPEAKING or INTERRUPTION_PENDING, after a pause
            self._segment_start_ms = max(at_ms, self._silence_since_ms or at_ms)
            self._silence_since_ms = None
            if self._predicted:
                self._predicted = False
                events.append(TurnContinued(at_ms=now_ms, resumed_ms=self._segment_start_ms))
        return events + self._evaluate(now_ms)

    def _close_segment(self, at_ms: int) -> None:
        if self._segment_start_ms is None:
            return
        self._closed_voiced_ms += max(0, at_ms - self._segment_start_ms)
        self._segment_start_ms = None
        self._silence_since_ms = at_ms

    def _voiced_ms(self, now_ms: int) -> int:
        running = 0 if self._segment_start_ms is None else max(0, now_ms - self._segment_start_ms)
        return self._closed_voiced_ms + running

    def _gap_end_ms(self) -> int | None:
        """With barge_in_gap_ms: when a pending interruption whose talkspurt has stopped short is false."""
        if not self.settings.barge_in_gap_ms or self._talkspurt or self._silence_since_ms is None:
            return None
        return self._silence_since_ms + self.settings.barge_in_gap_ms

    def _agent_state(self) -> TurnState:
        return TurnState.AGENT_SPEAKING if self.agent_audio_playing else TurnState.AGENT_THINKING

    def _barge_in(self, now_ms: int, voiced_ms: int) -> list[TurnEvent]:
        self.state = TurnState.CALLER_SPEAKING
        return [
            BargeIn(at_ms=now_ms, speech_started_ms=self._speech_start_ms, voiced_ms=voiced_ms,
                    agent_was_speaking=self.agent_audio_playing),
            SpeechStarted(at_ms=self._speech_start_ms),
        ]

    def _false_interruption(self, now_ms: int, voiced_ms: int) -> FalseInterruption:
        self.state = self._agent_state()
        return FalseInterruption(at_ms=now_ms, speech_started_ms=self._speech_start_ms, voiced_ms=voiced_ms)

    def _release_onset(self, now_ms: int) -> list[TurnEvent]:
        """End a hold taken at a voice onset that did not become speech (the agent resumes)."""
        if self._onset_ms is None:
            return []
        started, self._onset_ms = self._onset_ms, None
        return [FalseInterruption(at_ms=now_ms, speech_started_ms=started, voiced_ms=0, onset_only=True)]

    def _evaluate(self, now_ms: int) -> list[TurnEvent]:
        s = self.settings
        if self._onset_ms is not None and (self.state is not TurnState.AGENT_SPEAKING or
                                           now_ms - self._onset_ms >= s.false_interruption_timeout_ms):
            return self._release_onset(now_ms) + self._evaluate(now_ms)  # never held for good by an onset
        if self.state is TurnState.INTERRUPTION_PENDING:
            voiced_ms = self._voiced_ms(now_ms)
            if self._interrupts(voiced_ms, now_ms):
                return self._barge_in(now_ms, voiced_ms) + self._evaluate(now_ms)
            if now_ms - self._speech_start_ms >= s.false_interruption_timeout_ms:
                self._ignore_talkspurt = self._talkspurt
                return [self._false_interruption(now_ms, voiced_ms), *self._evaluate(now_ms)]
            gap_end = self._gap_end_ms()
            if gap_end is not None and now_ms >= gap_end:  # the caller stopped short and did not go on
                return [self._false_interruption(now_ms, voiced_ms), *self._evaluate(now_ms)]
            return []
        if self._speculative and self._speculative_until is not None and now_ms >= self._speculative_until:
            self._speculative = False
            return [TurnConfirmed(at_ms=now_ms), *self._evaluate(now_ms)]
        if self.state is TurnState.CALLER_SPEAKING:
            silence_since = self._silence_since_ms
            if silence_since is not None and now_ms - silence_since >= self._required_silence_ms(now_ms):
                return [self._end_turn(now_ms, silence_since, EndOfTurnReason.SILENCE)]
            if (silence_since is not None and s.early_response_silence_ms and not self._predicted
                    and now_ms - silence_since >= self._early_silence_ms(self._required_silence_ms(now_ms))):
                self._predicted = True
                return [EndOfTurnPredicted(at_ms=now_ms, speech_started_ms=self._speech_start_ms,
                                           speech_ended_ms=silence_since)]
            if now_ms - self._speech_start_ms >= s.max_turn_ms:
                self._ignore_talkspurt = self._talkspurt
                return [self._end_turn(now_ms, silence_since or now_ms, EndOfTurnReason.MAX_TURN)]
            return []
        if self.state is TurnState.AGENT_THINKING and now_ms - self._end_of_turn_ms >= s.response_timeout_ms:
            self.state = TurnState.LISTENING
            self._speculative = False
            return [ResponseTimedOut(at_ms=now_ms, end_of_turn_ms=self._end_of_turn_ms)]
        return []

    def _interrupts(self, voiced_ms: int, now_ms: int) -> bool:
        """Speech over the agent is a barge-in: long enough, and (with the judge) shaped like words."""
        s = self.settings
        if self.judge is None:
            return voiced_ms >= s.barge_in_min_speech_ms
        if voiced_ms >= s.backchannel_max_ms:
            return True
        return voiced_ms >= s.barge_in_word_ms and \
            self.judge.verdict(self._speech_start_ms, now_ms) is Verdict.WORDS

    def _early_silence_ms(self, required_ms: int) -> int:
        """When the held answer starts: early_response_silence_ms, or half the required silence when
        the detector asks for little (so that the engine's first audio is ready at the end of turn)."""
        return min(self.settings.early_response_silence_ms, max(1, required_ms // 2))

    def _required_silence_ms(self, now_ms: int) -> int:
        return max(1, self.detector.required_silence_ms(now_ms))

    def _in_window(self, now_ms: int) -> bool:
        """An EndOfTurn is still speculative: before the agent's audio, or within its first N ms."""
        if not self._speculative:
            return False
        return self._speculative_until is None or now_ms < self._speculative_until

    def _end_turn(self, now_ms: int, speech_ended_ms: int, reason: EndOfTurnReason) -> EndOfTurn:
        self._predicted = False
        self.detector.turn_ended(now_ms)
        self._speculative = self.settings.speculative_window_ms > 0 and reason is EndOfTurnReason.SILENCE
        self._speculative_until = None
        voiced_ms = self._voiced_ms(speech_ended_ms if reason is EndOfTurnReason.SILENCE else now_ms)
        self._turn_voiced_ms = voiced_ms
        self.state = self._agent_state()
        self._end_of_turn_ms = now_ms
        self._segment_start_ms = None
        self._silence_since_ms = None
        return EndOfTurn(at_ms=now_ms, speech_started_ms=self._speech_start_ms, speech_ended_ms=speech_ended_ms,
                         voiced_ms=voiced_ms, reason=reason, speculative=self._speculative)
