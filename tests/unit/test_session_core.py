"""SessionCore, one test per row of its transition table (agent/session_core.py), on a hand-moved clock."""

from __future__ import annotations

import numpy as np

from agent.engine_api import AddText, Feed, Greet, Interrupt, Rejected, ReplyEnded, Respond, Retract
from agent.session_core import (
    Ended,
    FlushOutput,
    HangUp,
    PauseOutput,
    ResumeOutput,
    SendAudio,
    SessionOptions,
)
from agent.turn_taking import TurnState
from tests.unit.scripted_engine import chunk_value
from tests.unit.session_harness import Harness, options, speech_packet


def answered(h: Harness, speech_ms: int = 400) -> None:
    """The caller speaks, pauses for the end of turn, and the agent's answer starts playing."""
    h.speak(speech_ms)
    h.silence(700)
    assert h.commands(Respond), "no answer was asked for"


def test_greeting_is_asked_for_first_and_played_in_order() -> None:
    h = Harness(SessionOptions(echo_gate=False, greeting="Hello"), reply_frames=3)
    h.start()
    assert h.commands(Greet) == [Greet(1, 1, "Hello")]
    h.silence(600)
    played = h.agent_packets()
    assert len(played) == 12  # 3 frames of 4 packets, nothing dropped or repeated
    assert [p.sequence for p in played] == list(range(12))
    turn = h.core.summary.turns[0]
    assert turn.text_heard == "r1:3" and turn.frames_heard == 3 and turn.first_audio_sent_ms is not None
    assert h.core.turns.state is TurnState.LISTENING


def test_speech_is_fed_from_the_preroll_and_the_end_of_turn_asks_for_an_answer() -> None:
    h = Harness()
    h.silence(400)
    h.speak(480)
    feeds = h.commands(Feed)
    assert feeds, "the caller's speech was not fed"
    assert all(f.pcm.shape == (1280,) and f.pcm.dtype == np.float32 for f in feeds)  # type: ignore[attr-defined]
    assert not h.commands(Respond)
    h.silence(700)
    assert [c.request for c in h.commands(Respond)] == [1]
    assert h.core.summary.end_of_turns and h.core.summary.turns[0].end_of_turn_ms == h.core.summary.end_of_turns[0]
    h.silence(600)
    assert len(h.agent_packets()) == 24  # the answer played (6 frames)


def test_early_answer_is_held_until_the_end_of_turn_is_confirmed() -> None:
    h = Harness(options(early_response_silence_ms=200))
    h.speak(400)
    h.silence(300)  # past the prediction, not yet the end of turn
    assert len(h.commands(Respond)) == 1
    assert h.core.playout.held and not h.agent_packets(), "the early answer must not be heard yet"
    h.silence(500)
    assert not h.core.playout.held and h.agent_packets(), "the confirmed answer plays"
    assert h.core.summary.withdrawn_answers == 0


def test_early_answer_is_withdrawn_when_the_caller_goes_on() -> None:
    h = Harness(options(early_response_silence_ms=200))
    h.speak(400)
    h.silence(300)
    fed_before = len(h.commands(Feed))
    h.speak(400)  # the caller only paused
    assert h.commands(Retract), "the held answer was not withdrawn"
    assert h.core.summary.withdrawn_answers == 1 and not h.core.summary.turns
    assert len(h.commands(Feed)) > fed_before + 4  # the pause and the new speech reach the engine
    assert not h.agent_packets()
    h.silence(800)
    assert len(h.commands(Respond)) == 2 and h.agent_packets()  # the real answer, in a new epoch
    assert {p.sequence for p in h.agent_packets()} and h.core.summary.turns[-1].epoch == h.commands(Respond)[-1].request


def test_suspected_interruption_holds_the_audio_and_a_false_one_resumes_it_without_loss() -> None:
    h = Harness(reply_frames=12)
    answered(h)
    h.silence(100)
    before = len(h.agent_packets())
    assert before > 0
    h.speak(100)  # a cough: shorter than barge_in_min_speech_ms
    assert h.count(PauseOutput) == 1 and h.core.playout.held
    held = len(h.agent_packets())
    h.silence(200)
    assert h.count(ResumeOutput) == 1 and h.core.summary.ignored_interruptions == 1
    assert not h.commands(Interrupt) and h.count(FlushOutput) == 0
    h.silence(1500)
    seqs = [p.sequence for p in h.agent_packets()]
    assert seqs == list(range(48)), "every packet of the reply is heard once, in order, none skipped"
    assert held < 48


def test_barge_in_flushes_and_keeps_exactly_the_frames_reported_played() -> None:
    h = Harness(reply_frames=40, auto_play=False)
    answered(h)
    h.silence(200)
    h.play_agent(9)  # the line sent 9 packets (2 whole frames + 1); the rest is still queued
    h.speak(500)
    interrupts = h.commands(Interrupt)
    assert len(interrupts) == 1 and interrupts[0].played_frames == 2  # type: ignore[attr-defined]
    assert h.count(FlushOutput) == 1 and not [p for p in h.line_queue if p.sequence is not None]
    barge = h.core.summary.barge_ins[0]
    assert barge.played_frames == 2 and barge.stopped_ms <= barge.detected_ms
    turn = h.core.summary.turns[0]
    assert turn.interrupted and turn.frames_heard == 2 and turn.text_heard == "r1:2"


def test_late_chunks_of_an_interrupted_reply_are_dropped() -> None:
    h = Harness(reply_frames=40)
    answered(h)
    h.speak(500)
    n = len(h.agent_packets())
    h.engine.calls[1].reply = None
    from agent.engine_api import AudioChunk

    h.do(h.core.engine(AudioChunk(1, 1, 30, np.full(1920, 0.1, np.float32)), h.now))
    h.silence(200)
    assert len(h.agent_packets()) == n and h.core.playout.stale_frames_dropped == 1


def test_dtmf_stops_the_agent_and_the_digits_reach_the_engine_as_text() -> None:
    h = Harness(reply_frames=40)
    answered(h)
    h.silence(200)
    h.do(h.core.dtmf("5", h.now))
    assert h.count(FlushOutput) == 1 and len(h.commands(Interrupt)) == 1
    h.do(h.core.dtmf("#", h.now))
    assert h.commands(AddText) == [AddText(1, "DTMF: 5#")]
    assert len(h.commands(Respond)) == 2 and h.core.summary.dtmf == "5#"


def test_dtmf_without_a_terminator_ends_after_the_timeout() -> None:
    h = Harness()
    h.silence(100)
    h.do(h.core.dtmf("1", h.now))
    h.do(h.core.dtmf("2", h.now))
    h.silence(1400)
    assert not h.commands(AddText)
    h.silence(200)
    assert h.commands(AddText) == [AddText(1, "DTMF: 12")] and len(h.commands(Respond)) == 1


def test_hang_up_mid_reply_ends_the_call_and_nothing_follows() -> None:
    h = Harness(reply_frames=40)
    answered(h)
    h.silence(100)
    h.do(h.core.hung_up("BYE", h.now))
    assert h.ended == [Ended("caller: BYE")] and not h.hangups
    n = len(h.actions)
    h.silence(200)
    h.do(h.core.dtmf("1", h.now))
    assert len(h.actions) == n, "a finished call takes no more actions"
    assert h.core.summary.ended_by == "caller: BYE"


def test_engine_fault_is_counted_and_the_call_goes_on() -> None:
    h = Harness()
    h.speak(400)
    h.engine.reply_frames = 0
    h.silence(640)
    assert h.commands(Respond)
    h.engine.fault(1)
    h.deliver()
    assert h.core.summary.engine_errors == 1 and not h.ended
    assert h.core.turns.state is TurnState.LISTENING
    h.engine.reply_frames = 4
    answered(h)
    h.silence(400)
    assert len(h.commands(Respond)) == 2 and h.agent_packets()


def test_a_rejected_command_is_counted_and_never_fails_the_call() -> None:
    h = Harness()
    h.engine.reject_next(Respond)
    h.speak(400)
    h.silence(700)
    assert h.core.summary.engine_rejections == 1 and not h.ended
    assert h.core.turns.state is TurnState.LISTENING
    answered(h)
    h.silence(600)
    assert h.agent_packets()


def test_transport_loss_hangs_up_and_ends() -> None:
    h = Harness()
    h.silence(100)
    h.do(h.core.transport_lost("socket closed", h.now))
    assert h.hangups == [HangUp("transport lost: socket closed")] and h.ended


def test_reply_ended_marks_the_end_so_the_agent_finishes_speaking() -> None:
    h = Harness(reply_frames=2)
    answered(h)
    h.silence(400)
    ended = [e for e in h.engine.submitted if isinstance(e, ReplyEnded)]
    assert not ended
    assert h.core.turns.state is TurnState.LISTENING and not h.core.turns.agent_audio_playing


def test_unreported_audio_is_not_heard_when_the_transport_reports_playout() -> None:
    h = Harness(reply_frames=40, auto_play=False)
    answered(h)
    h.silence(300)
    assert h.agent_packets()
    h.speak(500)
    assert h.commands(Interrupt)[0].played_frames == 0  # type: ignore[attr-defined]


def test_chunks_play_their_own_samples() -> None:
    h = Harness(reply_frames=1)
    answered(h)
    h.silence(300)
    first = next(p for p in h.sent if p.sequence is not None)
    assert isinstance(first, SendAudio) and first.samples.size == 320
    assert abs(int(np.median(first.samples)) - int(chunk_value(1, 0) * 32767)) < 400
    assert isinstance(h.engine.submitted[0], object) and not [e for e in h.actions if isinstance(e, Rejected)]


def test_a_second_dtmf_answer_first_cuts_the_reply_still_in_flight() -> None:
    """Found by the property test: "#" twice; the second must cut the first answer to what was heard
    (nothing) before asking for the next one, not cut the next one."""
    h = Harness(reply_frames=1, auto_play=False, engine_steps_per_tick=0)
    h.silence(60)
    h.do(h.core.dtmf("#", h.now))
    h.engine.step()
    h.engine.step()
    h.deliver()  # the first answer is complete in the engine, queued in playout, not heard
    h.do(h.core.dtmf("#", h.now))
    interrupts = h.commands(Interrupt)
    assert len(interrupts) == 1 and interrupts[0].played_frames == 0  # type: ignore[attr-defined]
    h.silence(60)
    first = h.core.summary.turns[0]
    assert first.interrupted and first.frames_heard == 0 and first.text_heard == "r1:0"


def test_the_engine_is_fed_the_line_once_and_in_order_from_the_preroll() -> None:
    """Found by bench/echo_feed.py: the packet that started the feed was fed twice."""
    h = Harness()
    h.silence(400)
    line = [speech_packet(h.k + i + 1) for i in range(20)]
    for p in line:
        h.tick(p)
    fed = np.concatenate([f.pcm for f in h.commands(Feed)])  # type: ignore[attr-defined]
    heard = np.concatenate([np.zeros(320 * 20, np.int16), *line]).astype(np.float32) / 32768
    start = heard.size - 320 * 20 - 240 * 16  # speech_preroll_ms before the onset
    np.testing.assert_array_equal(fed, heard[start : start + fed.size])
    assert fed.size >= 320 * 16


def _speculative_end(h: Harness) -> None:
    from agent.events import EndOfTurn, EndOfTurnReason

    h.core._act([EndOfTurn(h.now, h.now - 900, h.now - 500, 400, EndOfTurnReason.SILENCE, speculative=True)], h.now)
    h.do(h.core._take())


def test_speculative_end_of_turn_answers_at_once_and_a_false_start_withdraws_it() -> None:
    from agent.events import TurnContinued

    h = Harness(reply_frames=20)
    h.silence(100)
    _speculative_end(h)
    assert len(h.commands(Respond)) == 1 and not h.core.playout.held  # it plays while still withdrawable
    h.silence(200)
    assert h.agent_packets()
    h.core._act([TurnContinued(h.now, h.now, false_start=True)], h.now)
    h.do(h.core._take())
    assert h.count(FlushOutput) == 1 and h.commands(Retract)
    assert h.core.summary.false_starts == 1 and h.core.summary.withdrawn_answers == 1 and not h.core.summary.turns


def test_speculative_end_of_turn_confirmed_keeps_the_answer() -> None:
    from agent.events import TurnConfirmed

    h = Harness(reply_frames=8)
    h.silence(100)
    _speculative_end(h)
    h.core._act([TurnConfirmed(h.now)], h.now)
    h.do(h.core.dtmf("1", h.now))  # keys now stop the answer, they no longer withdraw it
    assert not h.commands(Retract) and len(h.core.summary.turns) == 1


def test_onset_hold_pauses_at_the_first_voiced_chunk_and_a_click_resumes_it_as_an_onset_hold() -> None:
    h = Harness(options(hold_at_voice_onset=True), reply_frames=40)
    answered(h)
    h.silence(100)
    h.speak(40)  # a click: one voiced chunk, shorter than vad.start_ms
    assert h.count(PauseOutput) == 1 and h.core.playout.held
    h.silence(200)
    assert h.count(ResumeOutput) == 1 and not h.core.playout.held
    assert h.core.summary.onset_holds == 1 and h.core.summary.ignored_interruptions == 0


def test_onset_hold_stops_a_barge_in_sooner_with_one_pause() -> None:
    stops = {}
    for onset in (False, True):
        h = Harness(options(hold_at_voice_onset=onset), reply_frames=40)
        answered(h)
        h.silence(100)
        cut_in = h.now
        h.speak(800)
        assert h.count(PauseOutput) == 1 and len(h.core.summary.barge_ins) == 1
        stops[onset] = h.core.summary.barge_ins[0].stopped_ms - cut_in
    assert stops[True] < stops[False], stops
