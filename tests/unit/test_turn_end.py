"""End-of-turn detectors, the combining policy, the learned detector's ONNX loading, and the
speculative end of turn in TurnTaking (explicit time everywhere)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.events import (
    AgentAudioStarted,
    EndOfTurn,
    TurnConfirmed,
    TurnContinued,
    TurnEvent,
    VadSpeechPaused,
    VadSpeechStarted,
    VadSpeechStopped,
)
from agent.turn_end import (
    AdaptiveDetector,
    EndpointPolicy,
    LearnedDetector,
    LearnedModelError,
    ProsodicDetector,
    SilenceDetector,
    frame_analysis,
    log_mel,
    policy_from_settings,
    prosodic_features,
)
from agent.turn_taking import TurnState, TurnTaking, TurnTakingSettings
from config.loader import load_settings

RATE = 16000


def tone(f0_start: float, f0_end: float, seconds: float, level_start: float = 0.3, level_end: float = 0.3) -> np.ndarray:
    """A harmonic voice-like tone with a linear pitch glide and level ramp, int16."""
    n = int(seconds * RATE)
    f0 = np.linspace(f0_start, f0_end, n)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 6))
    x = x / np.max(np.abs(x)) * np.linspace(level_start, level_end, n)
    return (x * 32767).astype(np.int16)


def feed_pieces(det: object, pcm: np.ndarray, voiced: bool, start_ms: int) -> int:
    """Feed in 20 ms pieces; returns the time after the last piece."""
    now = start_ms
    for i in range(pcm.size // 320):
        now += 20
        det.feed(pcm[i * 320:(i + 1) * 320], voiced, now)  # type: ignore[attr-defined]
    return now


def test_pitch_track_finds_the_fundamental() -> None:
    f0, strength, level = frame_analysis(tone(150, 150, 0.5).astype(np.float64) / 32768)
    assert np.median(f0) == pytest.approx(150, rel=0.03)
    assert np.median(strength) > 0.8
    assert np.median(level) > -20


def test_silence_detector_is_fixed_and_validated() -> None:
    det = SilenceDetector(900)
    feed_pieces(det, tone(150, 150, 0.4), True, 0)
    assert det.required_silence_ms(400) == 900
    with pytest.raises(ValueError):
        SilenceDetector(0)


def test_adaptive_detector_learns_pauses_inside_turns_not_gaps_between_turns() -> None:
    det = AdaptiveDetector(initial_ms=800, min_ms=500, max_ms=1600, margin_ms=250)
    speech, quiet = tone(150, 150, 0.4), np.zeros(int(0.7 * RATE), np.int16)
    t = feed_pieces(det, speech, True, 0)
    assert det.required_silence_ms(t) == 800  # nothing learned yet
    t = feed_pieces(det, quiet, False, t)
    t = feed_pieces(det, speech, True, t)  # went on after a 700 ms pause
    assert det.pauses == [700]
    assert det.required_silence_ms(t) == 950
    det.turn_ended(t)
    t = feed_pieces(det, np.zeros(int(1.2 * RATE), np.int16), False, t)
    feed_pieces(det, speech, True, t)
    assert det.pauses == [700]  # the gap after the end of a turn is not a pause
    short = AdaptiveDetector(initial_ms=800, min_ms=500, max_ms=1600, margin_ms=0)
    t = feed_pieces(short, speech, True, 0)
    t = feed_pieces(short, np.zeros(3200, np.int16), False, t)
    feed_pieces(short, speech, True, t)
    assert short.required_silence_ms(t) == 500  # bounded below


def test_prosodic_final_fall_and_fade_wait_less_than_a_level_contour() -> None:
    body = tone(140, 150, 1.2)
    falling = np.concatenate([body, tone(150, 105, 0.4, 0.3, 0.03)])
    level = np.concatenate([body, tone(150, 155, 0.4)])
    q_fall = ProsodicDetector(min_ms=200, max_ms=1600)
    q_level = ProsodicDetector(min_ms=200, max_ms=1600)
    feed_pieces(q_fall, falling, True, 0)
    feed_pieces(q_level, level, True, 0)
    f = prosodic_features(falling.astype(np.float64) / 32768, np.ones(falling.size, bool))
    assert f.final_pitch_st < -2 and f.pitch_drop_st < -2
    assert q_fall.probability() > q_level.probability()
    assert 200 <= q_fall.required_silence_ms(2000) < q_level.required_silence_ms(2000) <= 1600


def test_policy_combines_min_max_mean() -> None:
    dets = [SilenceDetector(400, name="a"), SilenceDetector(1000, name="b")]
    assert EndpointPolicy(dets, "min").required_silence_ms(0) == 400
    assert EndpointPolicy(dets, "max").required_silence_ms(0) == 1000
    assert EndpointPolicy(dets, "mean").required_silence_ms(0) == 700
    with pytest.raises(ValueError):
        EndpointPolicy(dets, "vote")


def test_policy_from_the_shipped_config() -> None:
    settings = load_settings()
    policy = policy_from_settings(settings)
    assert policy.name == "silence"
    assert policy.required_silence_ms(0) == settings.turn.end_of_turn_silence_ms


def test_policy_from_the_turn_fast_profile() -> None:
    settings = load_settings(Path(__file__).resolve().parents[2] / "config" / "turn-fast.yaml")
    policy = policy_from_settings(settings)
    assert policy.name == "prosodic" and settings.endpointing.speculative_window_ms > 0
    assert 250 <= policy.required_silence_ms(0) <= 1600


def _tiny_onnx(path: Path, rank: int) -> Path:
    """A test model: q = sigmoid(50 * (mean |x| - 0.05)) over the input (audio or log-mel)."""
    import onnx
    from onnx import TensorProto, helper

    shape = ["batch", "samples"] if rank == 2 else ["batch", 80, 100]
    inp = helper.make_tensor_value_info("input_values", TensorProto.FLOAT, shape)
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [])
    nodes = [
        helper.make_node("Abs", ["input_values"], ["a"]),
        helper.make_node("ReduceMean", ["a"], ["m"], keepdims=0),
        helper.make_node("Sub", ["m", "c"], ["d"]),
        helper.make_node("Mul", ["d", "k"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["logits"]),
    ]
    inits = [helper.make_tensor("c", TensorProto.FLOAT, [], [0.05 if rank == 2 else 0.5]),
             helper.make_tensor("k", TensorProto.FLOAT, [], [50.0])]
    model = helper.make_model(helper.make_graph(nodes, "tiny_turn", [inp], [out], inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_learned_detector_loads_an_onnx_model_and_maps_its_output(tmp_path: Path) -> None:
    path = _tiny_onnx(tmp_path / "turn.onnx", rank=2)
    loud, quiet = LearnedDetector(model_path=str(path), min_ms=200, max_ms=1600), \
        LearnedDetector(model_path=str(path), min_ms=200, max_ms=1600)
    feed_pieces(loud, tone(150, 150, 1.0, 0.5, 0.5), True, 0)
    feed_pieces(quiet, tone(150, 150, 1.0, 0.01, 0.01), True, 0)
    assert loud.probability() > 0.9 and quiet.probability() < 0.1
    assert loud.required_silence_ms(1000) < 300 and quiet.required_silence_ms(1000) > 1400


def test_learned_detector_feeds_log_mel_to_rank_3_models(tmp_path: Path) -> None:
    path = _tiny_onnx(tmp_path / "mel.onnx", rank=3)
    det = LearnedDetector(model_path=str(path), window_s=1.0)
    feed_pieces(det, tone(150, 150, 1.0), True, 0)
    assert 0.0 <= det.probability() <= 1.0
    feats = log_mel(np.zeros(RATE), frames=100)
    assert feats.shape == (80, 100)


def test_learned_detector_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(LearnedModelError, match="no ONNX file"):
        LearnedDetector(model_path=str(tmp_path / "missing.onnx"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(LearnedModelError, match="cannot load"):
        LearnedDetector(model_path=str(bad))


# ------------------------------------------------------------------ speculative end of turn


class FixedSilenceForTest:
    """Test double: a detector that always asks for the same silence, recording turn ends."""

    name = "fixed-for-test"

    def __init__(self, ms: int) -> None:
        self.ms = ms
        self.ended: list[int] = []

    def feed(self, pcm: np.ndarray, voiced: bool, now_ms: int) -> None:
        return None

    def required_silence_ms(self, now_ms: int) -> int:
        return self.ms

    def turn_ended(self, now_ms: int) -> None:
        self.ended.append(now_ms)


def speculative_turns(window_ms: int = 400) -> tuple[TurnTaking, FixedSilenceForTest]:
    det = FixedSilenceForTest(300)
    s = TurnTakingSettings(end_of_turn_silence_ms=1200, speculative_window_ms=window_ms)
    return TurnTaking(s, det), det


def _ticks(tt: TurnTaking, start: int, end: int) -> list[tuple[int, TurnEvent]]:
    return [(t, e) for t in range(start, end + 1, 20) for e in tt.tick(t)]


def test_the_detector_decides_the_silence() -> None:
    tt, det = speculative_turns()
    tt.speech_started(0, 100)
    tt.speech_paused(1000, 1000)
    events = _ticks(tt, 1000, 1400)
    ends = [(t, e) for t, e in events if isinstance(e, EndOfTurn)]
    assert [t for t, _ in ends] == [1300] and ends[0][1].speculative
    assert det.ended == [1300]


def test_caller_going_on_within_the_window_is_a_false_start_and_the_turn_continues() -> None:
    tt, _ = speculative_turns()
    tt.speech_started(0, 100)
    tt.speech_paused(1000, 1000)
    _ticks(tt, 1000, 1300)
    tt.agent_audio_started(1400)
    events = tt.speech_started(1550, 1600)  # 200 ms into the agent's audio
    assert any(isinstance(e, TurnContinued) and e.false_start for e in events)
    assert tt.state is TurnState.CALLER_SPEAKING and tt.false_starts == 1
    tt.handle(VadSpeechStopped(at_ms=2500), 2660)
    later = [e for _, e in _ticks(tt, 2660, 3000) if isinstance(e, EndOfTurn)]
    assert len(later) == 1 and later[0].speech_started_ms == 0  # the same turn, answered once
    assert later[0].voiced_ms == 1000 + 950


def test_after_the_window_the_end_is_confirmed_and_speech_is_an_interruption() -> None:
    tt, _ = speculative_turns()
    tt.handle(VadSpeechStarted(at_ms=0), 100)
    tt.handle(VadSpeechPaused(at_ms=1000), 1000)
    _ticks(tt, 1000, 1300)
    tt.handle(AgentAudioStarted(at_ms=1400, epoch=1), 1400)
    assert tt.next_deadline_ms() == 1800
    confirmed = [t for t, e in _ticks(tt, 1400, 1900) if isinstance(e, TurnConfirmed)]
    assert confirmed == [1800]
    events = tt.speech_started(2000, 2000)
    assert not any(isinstance(e, TurnContinued) for e in events)
    assert tt.state is TurnState.INTERRUPTION_PENDING


def test_window_off_means_no_speculation() -> None:
    tt, _ = speculative_turns(window_ms=0)
    tt.speech_started(0, 100)
    tt.speech_paused(1000, 1000)
    ends = [e for _, e in _ticks(tt, 1000, 1400) if isinstance(e, EndOfTurn)]
    assert ends and not ends[0].speculative
    tt.agent_audio_started(1400)
    assert tt.speech_started(1450, 1450)[-1].__class__.__name__ == "InterruptionSuspected"


class RecordingDetectorForTest(FixedSilenceForTest):
    """Test double: records what the session feeds the end-of-turn detector."""

    def __init__(self, ms: int) -> None:
        super().__init__(ms)
        self.fed: list[tuple[np.ndarray, bool]] = []

    def feed(self, pcm: np.ndarray, voiced: bool, now_ms: int) -> None:
        self.fed.append((pcm, voiced))


def test_the_session_feeds_the_detector_the_callers_own_int16_audio_with_the_vad_state() -> None:
    from agent.session_core import SessionOptions
    from tests.unit.session_harness import Harness

    det = RecordingDetectorForTest(300)
    h = Harness(SessionOptions(echo_gate=True, turn=TurnTakingSettings(end_of_turn_silence_ms=600),
                               turn_end=lambda: det))
    h.silence(200)
    h.speak(400)
    h.silence(500)
    assert det.fed and all(p.dtype == np.int16 for p, _ in det.fed)
    voiced = [p for p, v in det.fed if v]
    assert voiced, "the VAD state never reached the detector"
    assert max(int(np.abs(p).max()) for p in voiced) > 4000  # the caller's speech, not zeros
    assert h.core.summary.end_of_turns  # and the detector's 300 ms ended the turn
