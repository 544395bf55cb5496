"""TurnTaking: every transition with explicit time, and each common voice-agent complaint as a named test."""

from __future__ import annotations

import dataclasses

import pytest

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
    FinishReason,
    InterruptionSuspected,
    ResponseTimedOut,
    SpeechStarted,
    TurnContinued,
    TurnEvent,
    VadSpeechPaused,
    VadSpeechResumed,
    VadSpeechStarted,
    VadSpeechStopped,
)
from agent.turn_taking import TurnState, TurnTaking, TurnTakingSettings
from agent.vad import VadSettings, VadTracker

SETTINGS = TurnTakingSettings(end_of_turn_silence_ms=600, barge_in_min_speech_ms=300,
                              false_interruption_timeout_ms=1500, max_turn_ms=20_000, response_timeout_ms=5000)


class Caller:
    """Drives TurnTaking through a real VadTracker with 32 ms probability chunks, ticking every chunk."""

    CHUNK_MS = 32

    def __init__(self, settings: TurnTakingSettings = SETTINGS) -> None:
        self.turns = TurnTaking(settings)
        self.vad = VadTracker(settings=VadSettings(start_ms=64, stop_ms=160))
        self.now_ms = 0
        self.events: list[tuple[int, TurnEvent]] = []

    def _record(self, events: list[TurnEvent]) -> None:
        self.events += [(self.now_ms, e) for e in events]

    def run(self, duration_ms: int, speaking: bool) -> None:
        for _ in range(duration_ms // self.CHUNK_MS):
            start = self.now_ms
            self.now_ms += self.CHUNK_MS
            for vad_event in self.vad.update(0.95 if speaking else 0.02, start, self.CHUNK_MS):
                self._record(self.turns.handle(vad_event, self.now_ms))
            self._record(self.turns.tick(self.now_ms))

    def speak(self, duration_ms: int) -> None:
        self.run(duration_ms, True)

    def silence(self, duration_ms: int) -> None:
        self.run(duration_ms, False)

    def agent_starts(self) -> None:
        self._record(self.turns.agent_audio_started(self.now_ms))

    def agent_finishes(self, interrupted: bool = False) -> None:
        self._record(self.turns.agent_audio_finished(self.now_ms, interrupted=interrupted))

    def of(self, kind: type) -> list[tuple[int, TurnEvent]]:
        return [(t, e) for t, e in self.events if isinstance(e, kind)]


def agent_speaking_call() -> Caller:
    """A caller turn, its end, and the agent talking."""
    call = Caller()
    call.silence(320)
    call.speak(1600)
    call.silence(800)
    call.agent_starts()
    assert call.turns.state is TurnState.AGENT_SPEAKING
    call.events.clear()
    return call


# --- transitions, one by one, with hand-made VAD events --------------------------------------------


def test_listening_to_caller_speaking_on_speech_started() -> None:
    turns = TurnTaking(SETTINGS)
    assert turns.handle(VadSpeechStarted(at_ms=1000), 1064) == [SpeechStarted(at_ms=1000)]
    assert turns.state is TurnState.CALLER_SPEAKING


def test_end_of_turn_exactly_after_the_configured_silence_from_the_real_pause() -> None:
    turns = TurnTaking(SETTINGS)
    turns.handle(VadSpeechStarted(at_ms=1000), 1064)
    assert turns.handle(VadSpeechPaused(at_ms=2000), 2032) == []
    assert turns.handle(VadSpeechStopped(at_ms=2000), 2160) == []
    assert turns.next_deadline_ms() == 2600
    assert turns.tick(2599) == []
    assert turns.tick(2600) == [EndOfTurn(at_ms=2600, speech_started_ms=1000, speech_ended_ms=2000, voiced_ms=1000,
                                          reason=EndOfTurnReason.SILENCE)]
    assert turns.state is TurnState.AGENT_THINKING


def test_thinking_to_speaking_to_listening_with_playout_facts() -> None:
    turns = TurnTaking(SETTINGS)
    turns.handle(VadSpeechStarted(at_ms=0), 64)
    turns.handle(VadSpeechPaused(at_ms=500), 532)
    turns.tick(1100)
    assert turns.handle(AgentAudioStarted(at_ms=1400, epoch=1), 1400) == [AgentStartedSpeaking(at_ms=1400)]
    assert turns.state is TurnState.AGENT_SPEAKING
    finished = AgentAudioFinished(at_ms=3000, epoch=1, reason=FinishReason.COMPLETED, played_ms=1600)
    assert turns.handle(finished, 3000) == [AgentFinishedSpeaking(at_ms=3000, interrupted=False)]
    assert turns.state is TurnState.LISTENING


def test_agent_may_speak_first_greeting() -> None:
    turns = TurnTaking(SETTINGS)
    assert turns.agent_audio_started(200) == [AgentStartedSpeaking(at_ms=200)]
    assert turns.state is TurnState.AGENT_SPEAKING


def test_speech_during_agent_speech_is_pending_then_barge_in_after_min_voiced() -> None:
    turns = TurnTaking(SETTINGS)
    turns.agent_audio_started(0)
    # the agent's audio is held at once; the decision waits for enough voiced speech
    assert turns.handle(VadSpeechStarted(at_ms=1000), 1064) == [
        InterruptionSuspected(at_ms=1064, speech_started_ms=1000)]
    assert turns.state is TurnState.INTERRUPTION_PENDING
    assert turns.next_deadline_ms() == 1300
    assert turns.tick(1299) == []
    assert turns.tick(1300) == [BargeIn(at_ms=1300, speech_started_ms=1000, voiced_ms=300, agent_was_speaking=True),
                                SpeechStarted(at_ms=1000)]
    assert turns.state is TurnState.CALLER_SPEAKING
    assert turns.agent_audio_finished(1320, interrupted=True) == [AgentFinishedSpeaking(at_ms=1320, interrupted=True)]
    assert turns.state is TurnState.CALLER_SPEAKING


def test_voiced_time_excludes_pauses_inside_an_interruption() -> None:
    turns = TurnTaking(SETTINGS)
    turns.agent_audio_started(0)
    turns.handle(VadSpeechStarted(at_ms=1000), 1064)
    turns.handle(VadSpeechPaused(at_ms=1150), 1182)  # 150 ms voiced
    assert turns.tick(1400) == []  # 400 ms elapsed, only 150 voiced
    turns.handle(VadSpeechResumed(at_ms=1400), 1432)
    assert turns.tick(1549) == []
    events = turns.tick(1550)
    assert events[0] == BargeIn(at_ms=1550, speech_started_ms=1000, voiced_ms=300, agent_was_speaking=True)


def test_stopped_short_sound_is_a_false_interruption_and_agent_keeps_speaking() -> None:
    turns = TurnTaking(SETTINGS)
    turns.agent_audio_started(0)
    turns.handle(VadSpeechStarted(at_ms=1000), 1064)
    turns.handle(VadSpeechPaused(at_ms=1200), 1232)
    assert turns.handle(VadSpeechStopped(at_ms=1200), 1360) == [
        FalseInterruption(at_ms=1360, speech_started_ms=1000, voiced_ms=200)]
    assert turns.state is TurnState.AGENT_SPEAKING


def test_interruption_that_never_reaches_the_minimum_times_out() -> None:
    turns = TurnTaking(SETTINGS)
    turns.agent_audio_started(0)
    turns.handle(VadSpeechStarted(at_ms=1000), 1064)
    turns.handle(VadSpeechPaused(at_ms=1100), 1132)
    assert turns.tick(2499) == []
    assert turns.tick(2500) == [FalseInterruption(at_ms=2500, speech_started_ms=1000, voiced_ms=100)]
    assert turns.state is TurnState.AGENT_SPEAKING
    # The rest of that talkspurt is ignored; the next one is judged afresh.
    assert turns.handle(VadSpeechResumed(at_ms=2600), 2632) == []
    assert turns.tick(3000) == []
    turns.handle(VadSpeechStopped(at_ms=3000), 3160)
    turns.handle(VadSpeechStarted(at_ms=4000), 4064)
    assert isinstance(turns.tick(4300)[0], BargeIn)


def test_agent_finishing_during_a_pending_interruption_hands_the_floor_to_the_caller() -> None:
    turns = TurnTaking(SETTINGS)
    turns.agent_audio_started(0)
    turns.handle(VadSpeechStarted(at_ms=1000), 1064)
    assert turns.agent_audio_finished(1100) == [AgentFinishedSpeaking(at_ms=1100, interrupted=False),
                                                SpeechStarted(at_ms=1000)]
    assert turns.state is TurnState.CALLER_SPEAKING


def test_speech_while_thinking_cancels_the_response_only_if_long_enough() -> None:
    turns = TurnTaking(SETTINGS)
    turns.handle(VadSpeechStarted(at_ms=0), 64)
    turns.handle(VadSpeechPaused(at_ms=1000), 1032)
    assert isinstance(turns.tick(1600)[0], EndOfTurn)
    turns.handle(VadSpeechResumed(at_ms=1700), 1732)  # the caller goes on after all
    assert turns.state is TurnState.INTERRUPTION_PENDING
    assert turns.tick(2000) == [BargeIn(at_ms=2000, speech_started_ms=1700, voiced_ms=300, agent_was_speaking=False),
                                SpeechStarted(at_ms=1700)]


def test_response_timeout_returns_to_listening() -> None:
    turns = TurnTaking(SETTINGS)
    turns.handle(VadSpeechStarted(at_ms=0), 64)
    turns.handle(VadSpeechPaused(at_ms=1000), 1032)
    turns.tick(1600)
    assert turns.next_deadline_ms() == 6600
    assert turns.tick(6600) == [ResponseTimedOut(at_ms=6600, end_of_turn_ms=1600)]
    assert turns.state is TurnState.LISTENING


def test_empty_response_returns_to_listening() -> None:
    turns = TurnTaking(SETTINGS)
    turns.handle(VadSpeechStarted(at_ms=0), 64)
    turns.handle(VadSpeechPaused(at_ms=1000), 1032)
    turns.tick(1600)
    assert turns.agent_response_empty(1700) == []
    assert turns.state is TurnState.LISTENING


def test_max_turn_ends_an_endless_turn_and_ignores_the_rest_of_that_talkspurt() -> None:
    turns = TurnTaking(TurnTakingSettings(max_turn_ms=5000))
    turns.handle(VadSpeechStarted(at_ms=0), 64)
    events = turns.tick(5000)
    assert events == [EndOfTurn(at_ms=5000, speech_started_ms=0, speech_ended_ms=5000, voiced_ms=5000,
                                reason=EndOfTurnReason.MAX_TURN)]
    turns.agent_audio_started(5500)
    assert turns.tick(7000) == []  # the same noise/talkspurt does not barge in on the answer
    assert turns.state is TurnState.AGENT_SPEAKING


def test_agent_audio_starting_over_a_long_caller_turn_is_barged_in_at_once() -> None:
    turns = TurnTaking(SETTINGS)
    turns.handle(VadSpeechStarted(at_ms=0), 64)
    events = turns.agent_audio_started(500)
    assert events[0] == AgentStartedSpeaking(at_ms=500)
    assert events[1] == InterruptionSuspected(at_ms=500, speech_started_ms=0)
    assert events[2] == BargeIn(at_ms=500, speech_started_ms=0, voiced_ms=500, agent_was_speaking=True)


def test_time_must_not_go_backwards_and_settings_are_checked() -> None:
    turns = TurnTaking(SETTINGS)
    turns.tick(1000)
    with pytest.raises(ValueError, match="backwards"):
        turns.tick(999)
    with pytest.raises(ValueError, match="false_interruption_timeout_ms"):
        TurnTakingSettings(barge_in_min_speech_ms=500, false_interruption_timeout_ms=400)
    with pytest.raises(ValueError, match="end_of_turn_silence_ms"):
        TurnTakingSettings(end_of_turn_silence_ms=0)


# --- the complaints, end to end through the VAD hysteresis -----------------------------------------


def test_complaint_a_one_second_pause_does_not_cut_the_caller_off_with_a_longer_setting() -> None:
    call = Caller(TurnTakingSettings(end_of_turn_silence_ms=1200))
    call.silence(320)
    call.speak(1600)
    call.silence(992)  # "let me think..."
    call.speak(960)
    assert call.of(EndOfTurn) == []
    call.silence(1600)
    (_, eot), = call.of(EndOfTurn)
    assert isinstance(eot, EndOfTurn) and eot.speech_started_ms == 320


def test_complaint_a_400ms_pause_does_not_end_the_turn_at_600ms() -> None:
    call = Caller()
    call.speak(1280)
    call.silence(416)
    call.speak(960)
    assert call.of(EndOfTurn) == []
    assert call.turns.state is TurnState.CALLER_SPEAKING


def test_complaint_end_of_turn_is_not_slow() -> None:
    call = Caller()
    call.silence(320)
    call.speak(1600)
    speech_end_ms = call.now_ms
    call.silence(1600)
    (t, eot), = call.of(EndOfTurn)
    assert isinstance(eot, EndOfTurn)
    assert eot.speech_ended_ms == speech_end_ms
    # Decided 600 ms after the caller stopped, within one 32 ms tick.
    assert 600 <= t - speech_end_ms < 600 + Caller.CHUNK_MS


def test_complaint_uh_huh_does_not_stop_the_agent() -> None:
    call = agent_speaking_call()
    call.speak(128)  # "uh"
    call.silence(96)
    call.speak(128)  # "huh"
    call.silence(1000)
    assert call.of(BargeIn) == []
    assert len(call.of(FalseInterruption)) == 1
    assert call.turns.state is TurnState.AGENT_SPEAKING


def test_complaint_a_cough_does_not_stop_the_agent() -> None:
    call = agent_speaking_call()
    call.speak(192)
    call.silence(600)
    assert call.of(BargeIn) == []
    assert call.turns.state is TurnState.AGENT_SPEAKING


def test_complaint_a_real_barge_in_stops_the_agent_promptly() -> None:
    call = agent_speaking_call()
    start_ms = call.now_ms
    call.speak(800)
    (t, barge_in), = call.of(BargeIn)
    assert isinstance(barge_in, BargeIn) and barge_in.speech_started_ms == start_ms
    assert t - start_ms <= 300 + Caller.CHUNK_MS


def test_complaint_the_agent_answers_again_after_an_interruption() -> None:
    call = agent_speaking_call()
    call.speak(1200)  # barge-in, then the caller's new turn
    assert call.of(BargeIn)
    (_, barge_in), = call.of(BargeIn)
    call.agent_finishes(interrupted=True)  # what Playout reports after clear()
    call.silence(800)
    (_, eot), = call.of(EndOfTurn)
    assert isinstance(eot, EndOfTurn) and isinstance(barge_in, BargeIn)
    assert eot.speech_started_ms == barge_in.speech_started_ms  # the interruption became the caller's turn
    assert call.turns.state is TurnState.AGENT_THINKING
    call.agent_starts()
    assert call.turns.state is TurnState.AGENT_SPEAKING


def test_complaint_the_agent_goes_on_after_a_false_interruption_and_can_still_be_interrupted() -> None:
    call = agent_speaking_call()
    call.speak(160)
    call.silence(500)
    assert call.of(FalseInterruption) and call.turns.state is TurnState.AGENT_SPEAKING
    call.speak(640)
    assert len(call.of(BargeIn)) == 1


EARLY = TurnTakingSettings(end_of_turn_silence_ms=1200, barge_in_min_speech_ms=300, early_response_silence_ms=400,
                           false_interruption_timeout_ms=1500, max_turn_ms=20_000, response_timeout_ms=5000)


def test_a_one_second_pause_mid_sentence_is_predicted_then_continued_not_ended() -> None:
    """Complaint: end of turn cuts callers off mid-number. The answer starts early but stays held."""
    caller = Caller(EARLY)
    caller.speak(1500)
    caller.silence(1000)  # "my number is five five five ... (pause)"
    caller.speak(800)
    kinds = [type(e).__name__ for _, e in caller.events]
    assert "EndOfTurnPredicted" in kinds and "TurnContinued" in kinds
    assert "EndOfTurn" not in kinds  # the turn was never ended during the pause
    predicted = next(e for _, e in caller.events if isinstance(e, EndOfTurnPredicted))
    continued_at = next(t for t, e in caller.events if isinstance(e, TurnContinued))
    assert predicted.speech_ended_ms <= predicted.at_ms - 400 and continued_at > predicted.at_ms
    caller.silence(1400)
    ends = [e for _, e in caller.events if isinstance(e, EndOfTurn)]
    assert len(ends) == 1 and ends[0].speech_started_ms < predicted.at_ms  # one turn, whole sentence
    assert caller.turns.state is TurnState.AGENT_THINKING


def test_predicted_end_then_silence_confirms_with_one_prediction_per_pause() -> None:
    caller = Caller(EARLY)
    caller.speak(1000)
    caller.silence(1400)
    events = [e for _, e in caller.events if isinstance(e, (EndOfTurnPredicted, EndOfTurn))]
    assert [type(e).__name__ for e in events] == ["EndOfTurnPredicted", "EndOfTurn"]
    assert events[1].at_ms - events[0].at_ms == pytest.approx(800, abs=40)  # 1200 - 400 ms


def test_early_response_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="early_response_silence_ms"):
        TurnTakingSettings(end_of_turn_silence_ms=600, early_response_silence_ms=600)


# --- holding at the voice onset (turn.hold_at_voice_onset) ---------------------------------------------

ONSET = dataclasses.replace(SETTINGS, hold_at_voice_onset=True)


def onset_call(settings: TurnTakingSettings = ONSET) -> Caller:
    call = Caller(settings)
    call.silence(320)
    call.speak(1600)
    call.silence(800)
    call.agent_starts()
    call.events.clear()
    return call


def test_onset_hold_suspects_at_the_first_voiced_chunk_then_barges_in_without_a_second_hold() -> None:
    call = onset_call()
    start_ms = call.now_ms
    call.speak(800)
    suspected = call.of(InterruptionSuspected)
    assert [(t - start_ms, e.onset_only) for t, e in suspected] == [(Caller.CHUNK_MS, True), (2 * Caller.CHUNK_MS, False)]
    (_, barge_in), = call.of(BargeIn)
    assert isinstance(barge_in, BargeIn) and barge_in.speech_started_ms == start_ms
    assert call.of(FalseInterruption) == []


def test_a_click_that_never_becomes_speech_releases_the_onset_hold_and_a_barge_in_still_works() -> None:
    call = onset_call()
    call.speak(Caller.CHUNK_MS)
    call.silence(320)
    (_, released), = call.of(FalseInterruption)
    assert isinstance(released, FalseInterruption) and released.onset_only and released.voiced_ms == 0
    assert call.turns.state is TurnState.AGENT_SPEAKING and call.of(BargeIn) == []
    call.events.clear()
    call.speak(800)
    assert len(call.of(BargeIn)) == 1


def test_the_onset_hold_ends_when_the_agent_finishes_and_is_off_unless_configured() -> None:
    call = onset_call()
    call.speak(Caller.CHUNK_MS)
    call.agent_finishes()
    kinds = [type(e) for _, e in call.events]
    assert kinds[:3] == [InterruptionSuspected, FalseInterruption, AgentFinishedSpeaking]
    assert call.turns.next_deadline_ms() is None or call.turns.state is not TurnState.AGENT_SPEAKING
    plain = onset_call(SETTINGS)
    plain.speak(Caller.CHUNK_MS)
    assert plain.of(InterruptionSuspected) == []


def test_an_onset_while_the_caller_has_the_floor_holds_nothing() -> None:
    call = Caller(ONSET)
    call.speak(Caller.CHUNK_MS)
    assert call.of(InterruptionSuspected) == [] and call.turns.state is TurnState.LISTENING


# --- one interruption across a short gap (barge_in_gap_ms) ------------------------------------------

GAP = dataclasses.replace(ONSET, barge_in_min_speech_ms=600, barge_in_gap_ms=400)


def _excuse_me(settings: TurnTakingSettings) -> tuple[Caller, int]:
    """"Excuse me," (320 ms), a 288 ms comma pause, "how long does that take?" (800 ms), over the agent."""
    call = onset_call(settings)
    start_ms = call.now_ms
    call.speak(320)
    call.silence(288)
    call.speak(800)
    call.silence(800)
    return call, start_ms


def test_speech_again_within_the_gap_continues_the_interruption_and_barges_in() -> None:
    call, start_ms = _excuse_me(GAP)
    assert call.of(FalseInterruption) == []  # the agent stays held from the first onset
    (held_at, first), = call.of(InterruptionSuspected)[:1]
    assert isinstance(first, InterruptionSuspected) and first.onset_only and held_at == start_ms + Caller.CHUNK_MS
    (_, barge_in), = call.of(BargeIn)
    assert isinstance(barge_in, BargeIn) and barge_in.speech_started_ms == start_ms
    assert barge_in.voiced_ms >= 600


def test_without_the_gap_the_agent_resumes_between_the_fragments() -> None:
    call, _ = _excuse_me(dataclasses.replace(GAP, barge_in_gap_ms=0))
    assert len(call.of(FalseInterruption)) == 1  # "Excuse me," alone was too short: the agent resumed
    assert len(call.of(BargeIn)) == 1  # and stopped again on the rest


def test_a_backchannel_is_false_once_the_gap_has_passed_since_its_pause() -> None:
    call = onset_call(GAP)
    call.speak(320)  # "uh-huh"
    pause_ms = call.now_ms
    call.silence(320)  # the VAD has stopped (stop_ms 160) but the gap is not over
    assert call.of(FalseInterruption) == [] and call.turns.state is TurnState.INTERRUPTION_PENDING
    assert call.turns.next_deadline_ms() == pause_ms + 400
    call.silence(160)
    (at, false), = call.of(FalseInterruption)
    assert isinstance(false, FalseInterruption) and pause_ms + 400 <= at < pause_ms + 400 + Caller.CHUNK_MS
    assert call.turns.state is TurnState.AGENT_SPEAKING
    assert call.of(BargeIn) == []


def test_the_gap_must_not_be_negative() -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(SETTINGS, barge_in_gap_ms=-1)
