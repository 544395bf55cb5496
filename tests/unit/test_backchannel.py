"""BackchannelJudge: the shape of speech over the agent (espeak-ng words, a synthetic cough) and
TurnTaking's use of it (explicit time)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.backchannel import BackchannelJudge, Verdict, classify, shape_features
from agent.caller_voice import render_say, render_wav
from agent.events import BargeIn, FalseInterruption
from agent.turn_taking import TurnState, TurnTaking, TurnTakingSettings

COUGH = Path(__file__).resolve().parents[2] / "config" / "scenarios-turn" / "clips" / "cough.wav"
BACKCHANNELS = [("uh-huh", 160), ("mm-hmm", 160), ("mm-hmm", 125), ("yeah", 160), ("right", 160)]
BARGE_INS = [("No, stop.", 160), ("Hold on.", 160), ("Wait.", 160), ("Stop.", 160), ("Wait a second.", 160)]


def verdict(pcm: np.ndarray) -> Verdict:
    f = shape_features(pcm.astype(np.float64) / 32768)
    assert f is not None
    return classify(f, None)


@pytest.mark.integration  # espeak-ng speech: runs with the peers, not under -m unit
@pytest.mark.parametrize(("text", "rate"), BACKCHANNELS)
def test_backchannels_are_not_words(text: str, rate: int) -> None:
    assert verdict(render_say(text, "en-us", rate)) is Verdict.BACKCHANNEL


@pytest.mark.integration  # espeak-ng speech: runs with the peers, not under -m unit
@pytest.mark.parametrize(("text", "rate"), BARGE_INS)
def test_short_real_barge_ins_are_words(text: str, rate: int) -> None:
    assert verdict(render_say(text, "en-us", rate)) is Verdict.WORDS


def test_a_cough_is_a_cough() -> None:
    assert verdict(render_wav(COUGH)) is Verdict.COUGH


@pytest.mark.integration  # espeak-ng speech: runs with the peers, not under -m unit
def test_speech_far_below_the_callers_own_level_is_a_backchannel() -> None:
    judge = BackchannelJudge()
    loud = render_say("I would like to book a table for two.", "en-us", 160)
    t = 0
    for i in range(loud.size // 320):
        t += 20
        judge.feed(loud[i * 320:(i + 1) * 320], True, t, agent_speaking=False)
    assert judge.caller_level_db is not None
    quiet = (render_say("No, stop.", "en-us", 160) * 0.1).astype(np.int16)
    start = t + 1000
    t = start
    for i in range(quiet.size // 320):
        t += 20
        judge.feed(quiet[i * 320:(i + 1) * 320], True, t, agent_speaking=True)
    assert judge.verdict(start, t) is Verdict.BACKCHANNEL
    assert judge.verdict(start, start + 100) is Verdict.UNSURE  # too little yet


def _over_agent(text: str, rate: int = 160) -> TurnTaking:
    """The agent talks; the caller says `text` over it (the VAD is driven by the audio's level)."""
    s = TurnTakingSettings(barge_in_min_speech_ms=600, barge_in_word_ms=300, backchannel_max_ms=1200,
                           false_interruption_timeout_ms=1500)
    tt = TurnTaking(s)
    tt.agent_audio_started(0)
    pcm = np.concatenate([render_say(text, "en-us", rate), np.zeros(8000, np.int16)])
    t, talking, start = 1000, False, 0
    for i in range(pcm.size // 320):
        piece = pcm[i * 320:(i + 1) * 320]
        t += 20
        loud = float(np.sqrt(np.mean(piece.astype(np.float64) ** 2))) > 300
        if loud and not talking:
            talking, start = True, t - 20
            tt.speech_started(start, t)
        tt.audio(piece, talking, t)
        if talking and not loud and t - start > 200 and i * 320 > pcm.size - 8000:
            talking = False
            tt.speech_stopped(t - 20, t)
        tt.tick(t)
        if tt.state is TurnState.CALLER_SPEAKING:
            break
    tt.tick(t + 2000)
    return tt


@pytest.mark.integration  # espeak-ng speech: runs with the peers, not under -m unit
def test_turn_taking_barges_in_on_words_but_not_on_a_backchannel() -> None:
    tt = _over_agent("No, stop.")
    assert tt.state is TurnState.CALLER_SPEAKING
    tt = _over_agent("mm-hmm", 125)
    assert tt.state is TurnState.AGENT_SPEAKING


def test_without_the_judge_it_is_duration_only() -> None:
    s = TurnTakingSettings(barge_in_min_speech_ms=300)
    tt = TurnTaking(s)
    assert tt.judge is None
    tt.agent_audio_started(0)
    tt.speech_started(100, 100)
    events = tt.tick(400)
    assert any(isinstance(e, BargeIn) for e in events)
    tt2 = TurnTaking(s)
    tt2.agent_audio_started(0)
    tt2.speech_started(100, 100)
    assert any(isinstance(e, FalseInterruption) for e in tt2.speech_stopped(250, 300))
