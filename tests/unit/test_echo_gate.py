"""EchoGate on simulated phone lines: echo alone never barges in, a caller talking over the echo still does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soxr

from agent.echo_gate import EchoGate, EchoGateSettings
from agent.events import BargeIn, SpeechStarted, TurnEvent
from agent.turn_taking import TurnTaking, TurnTakingSettings
from agent.vad import EnergyVad, EnergyVadSettings, SileroVad, VadSettings, VadTracker, VoiceDetector
from tests.unit.test_vad import espeak

RATE = 16000
FRAME = 1280  # 80 ms
Signal = npt.NDArray[np.float64]


def speech_like(duration_ms: int, seed: int, f0_hz: float, level_dbfs: float) -> tuple[Signal, npt.NDArray[np.bool_]]:
    """A voiced, formant-shaped harmonic signal with syllable envelopes (120-260 ms, gaps 40-140 ms)."""
    rng = np.random.default_rng(seed)
    n = RATE * duration_ms // 1000
    t = np.arange(n) / RATE
    f0 = f0_hz * (1 + 0.08 * np.sin(2 * np.pi * 3.1 * t + rng.uniform(0, 6)) + 0.03 * np.sin(2 * np.pi * 7.3 * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    formants = rng.uniform([500, 1200, 2400], [800, 1800, 3000])
    x = np.zeros(n)
    for h in range(1, int(3800 / f0_hz)):
        amp = sum(np.exp(-((h * f0_hz - f) / 250.0) ** 2) for f in formants) + 0.1
        x += amp / h * np.sin(h * phase + rng.uniform(0, 6))
    envelope = np.zeros(n)
    pos = int(rng.integers(0, RATE // 20))
    while pos < n:
        syllable = int(rng.integers(RATE * 120 // 1000, RATE * 260 // 1000))
        end = min(n, pos + syllable)
        envelope[pos:end] = np.sin(np.pi * np.arange(end - pos) / syllable) ** 0.6
        pos = end + int(rng.integers(RATE * 40 // 1000, RATE * 140 // 1000))
    x *= envelope
    voiced = envelope > 0.3
    x *= 10 ** (level_dbfs / 20) / np.sqrt(np.mean(x[voiced] ** 2))
    return x, voiced


def mu_law(x: Signal) -> Signal:
    """8-bit mu-law companding round trip (quantisation as on a G.711 line)."""
    y = np.sign(x) * np.log1p(255 * np.minimum(np.abs(x), 1.0)) / np.log(256)
    q = np.round(y * 127) / 127
    return np.sign(q) * np.expm1(np.abs(q) * np.log(256)) / 255


def phone_line(x: Signal, noise_dbfs: float = -60.0, seed: int = 0) -> Signal:
    """16 kHz -> 8 kHz -> G.711 -> 16 kHz, plus line noise."""
    narrow = mu_law(soxr.resample(x, RATE, 8000))
    y = np.asarray(soxr.resample(narrow, 8000, RATE), dtype=np.float64)[: x.size]
    y = np.pad(y, (0, x.size - y.size))
    return y + np.random.default_rng(seed).normal(0, 10 ** (noise_dbfs / 20), x.size)


def delayed(x: Signal, delay_ms: int, gain_db: float) -> Signal:
    d = RATE * delay_ms // 1000
    out = np.zeros(x.size)
    out[d:] = x[: x.size - d] * 10 ** (gain_db / 20)
    return out


def run_call(reference: Signal, mic: Signal, detector: VoiceDetector, *, gate: EchoGate | None,
             agent_end_ms: int) -> list[tuple[int, TurnEvent]]:
    """The session's wiring: played audio -> gate reference; caller audio -> gate -> VAD -> TurnTaking."""
    turns = TurnTaking(TurnTakingSettings(barge_in_min_speech_ms=300))
    vad = VadTracker(detector, VadSettings(start_ms=64, stop_ms=160))
    events: list[tuple[int, TurnEvent]] = [(0, e) for e in turns.agent_audio_started(0)]
    for i in range(mic.size // FRAME):
        start_ms = i * 80
        now_ms = start_ms + 80
        frame = mic[i * FRAME : (i + 1) * FRAME]
        vad_input = frame.astype(np.float32)
        if gate is not None:
            gate.push_reference(reference[i * FRAME : (i + 1) * FRAME].astype(np.float32), start_ms)
            vad_input = gate.process(frame.astype(np.float32), start_ms).cleaned
        for vad_event in vad.feed(vad_input, start_ms):
            events += [(now_ms, e) for e in turns.handle(vad_event, now_ms)]
        if now_ms == agent_end_ms:
            events += [(now_ms, e) for e in turns.agent_audio_finished(now_ms)]
        events += [(now_ms, e) for e in turns.tick(now_ms)]
    return events


def energy_vad() -> EnergyVad:
    return EnergyVad(EnergyVadSettings(chunk_ms=20, silence_dbfs=-50, speech_dbfs=-35))


def agent_then_silence(duration_ms: int = 4000, tail_ms: int = 800) -> Signal:
    agent, _ = speech_like(duration_ms, seed=1, f0_hz=120, level_dbfs=-16)
    return np.concatenate([agent, np.zeros(RATE * tail_ms // 1000)])


@pytest.mark.parametrize("delay_ms", [40, 120, 250])
@pytest.mark.parametrize("gain_db", [-6, -12, -20])
def test_echo_alone_never_barges_in_nor_starts_a_turn(delay_ms: int, gain_db: int) -> None:
    reference = agent_then_silence()
    mic = phone_line(delayed(reference, delay_ms, gain_db))
    gate = EchoGate()
    events = run_call(reference, mic, energy_vad(), gate=gate, agent_end_ms=4000)
    assert [e for _, e in events if isinstance(e, BargeIn | SpeechStarted)] == []
    path = gate.path
    assert path is not None
    assert abs(path.delay_samples / 16 - delay_ms) <= 1
    assert abs(path.gain_db - gain_db) < 5
    assert path.erle_db >= 15
    assert gate.converged_at_ms is not None and gate.converged_at_ms <= delay_ms + 320


@pytest.mark.parametrize("delay_ms", [40, 250])
def test_without_the_gate_the_same_echo_would_barge_in(delay_ms: int) -> None:
    reference = agent_then_silence()
    mic = phone_line(delayed(reference, delay_ms, -12))
    events = run_call(reference, mic, energy_vad(), gate=None, agent_end_ms=4000)
    assert any(isinstance(e, BargeIn) for _, e in events)


@pytest.mark.parametrize("delay_ms", [40, 120, 250])
@pytest.mark.parametrize(("echo_db", "talker_dbfs"), [(-6, -20), (-12, -26), (-20, -30)])
def test_a_caller_talking_over_the_echo_still_barges_in(delay_ms: int, echo_db: int, talker_dbfs: int) -> None:
    reference = agent_then_silence()
    talker, _ = speech_like(2000, seed=7, f0_hz=210, level_dbfs=talker_dbfs)
    caller = np.zeros(reference.size)
    caller[RATE * 2 : RATE * 4] = talker  # cuts in two seconds into the agent's speech
    mic = phone_line(delayed(reference, delay_ms, echo_db) + caller)
    events = run_call(reference, mic, energy_vad(), gate=EchoGate(), agent_end_ms=4000)
    barge_ins = [(t, e) for t, e in events if isinstance(e, BargeIn)]
    assert len(barge_ins) == 1
    t, barge_in = barge_ins[0]
    assert isinstance(barge_in, BargeIn)
    assert 2000 <= barge_in.speech_started_ms <= 2150
    assert t <= 2000 + 600


def test_talker_blocks_pass_and_echo_blocks_are_gated() -> None:
    reference = agent_then_silence(tail_ms=0)
    talker, voiced = speech_like(2000, seed=7, f0_hz=210, level_dbfs=-20)
    caller = np.zeros(reference.size)
    caller[RATE * 2 :] = talker
    talker_voiced = np.zeros(reference.size, dtype=bool)
    talker_voiced[RATE * 2 :] = voiced
    mic = phone_line(delayed(reference, 120, -6) + caller)
    gate = EchoGate(EchoGateSettings(block_ms=20))
    gated: list[bool] = []
    for i in range(mic.size // FRAME):
        gate.push_reference(reference[i * FRAME : (i + 1) * FRAME].astype(np.float32), i * 80)
        verdict = gate.process(mic[i * FRAME : (i + 1) * FRAME].astype(np.float32), i * 80)
        gated += [not verdict.cleaned[b * 320 : (b + 1) * 320].any() for b in range(4)]
    gated_blocks = np.array(gated)
    talker_blocks = talker_voiced[: gated_blocks.size * 320].reshape(-1, 320).mean(axis=1) > 0.5
    echo = delayed(reference, 120, -6)[: gated_blocks.size * 320].reshape(-1, 320)
    echo_blocks = 10 * np.log10(np.mean(echo**2, axis=1) + 1e-15) > -45  # audible echo...
    echo_blocks[: (120 + 600) // 20] = False  # ...after convergence
    echo_blocks[2000 // 20 :] = False  # ...before the talker
    passed = 1.0 - gated_blocks[talker_blocks].mean()
    assert passed >= 0.9, f"only {passed:.0%} of the talker's voiced blocks reached the VAD"
    assert gated_blocks[echo_blocks].mean() >= 0.95


def test_a_line_without_echo_passes_audio_unchanged_after_the_grace_period() -> None:
    reference = agent_then_silence(tail_ms=0)
    talker, _ = speech_like(2000, seed=3, f0_hz=200, level_dbfs=-20)
    mic = np.zeros(reference.size)
    mic[RATE * 2 :] = talker
    gate = EchoGate()
    for i in range(mic.size // FRAME):
        gate.push_reference(reference[i * FRAME : (i + 1) * FRAME].astype(np.float32), i * 80)
        verdict = gate.process(mic[i * FRAME : (i + 1) * FRAME].astype(np.float32), i * 80)
        if i * 80 >= 600:
            np.testing.assert_allclose(verdict.cleaned, mic[i * FRAME : (i + 1) * FRAME], atol=1e-6)
    assert gate.path is None


def test_bad_input_is_rejected() -> None:
    gate = EchoGate()
    with pytest.raises(ValueError, match="mono"):
        gate.process(np.zeros((2, 10), dtype=np.float32), 0)
    with pytest.raises(ValueError, match="int16 or float32"):
        gate.push_reference(np.zeros(10, dtype=np.float64), 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="whole samples"):
        EchoGateSettings(block_ms=0)


@pytest.fixture(scope="module")
def silero() -> SileroVad:
    return SileroVad.load()


@pytest.mark.integration  # espeak-ng speech: runs with the peers, not under -m unit
def test_synthesised_voices_with_silero_echo_alone_vs_caller_cutting_in(silero: SileroVad, tmp_path: Path) -> None:
    agent = espeak("Thanks for calling. Your appointment is confirmed for Tuesday at ten in the morning, "
                   "and I have sent the details to your phone.", tmp_path).astype(np.float64) / 32768.0
    caller = espeak("No wait, I need Thursday instead.", tmp_path, voice="en+f3").astype(np.float64) / 32768.0
    agent_ms = agent.size // 16 // 80 * 80
    reference = np.concatenate([agent[: agent_ms * 16], np.zeros(RATE)])
    echo = delayed(reference, 120, -12)

    quiet_events = run_call(reference, phone_line(echo), silero.fork(), gate=EchoGate(), agent_end_ms=agent_ms)
    assert [e for _, e in quiet_events if isinstance(e, BargeIn | SpeechStarted)] == []

    ungated = run_call(reference, phone_line(echo), silero.fork(), gate=None, agent_end_ms=agent_ms)
    assert any(isinstance(e, BargeIn) for _, e in ungated)  # the problem the gate solves

    cut_in = np.zeros(reference.size)
    cut_in[RATE * 2 : RATE * 2 + caller.size] = caller[: reference.size - RATE * 2]
    events = run_call(reference, phone_line(echo + cut_in), silero.fork(), gate=EchoGate(), agent_end_ms=agent_ms)
    barge_ins = [(t, e) for t, e in events if isinstance(e, BargeIn)]
    assert len(barge_ins) == 1
    t, barge_in = barge_ins[0]
    assert isinstance(barge_in, BargeIn) and 1900 <= barge_in.speech_started_ms <= 2400
    assert t <= 2000 + 900


def _cut_in_at(start_ms: int, reference: Signal, talker_dbfs: float, echo: tuple[int, int] | None) -> Signal:
    talker, _ = speech_like(1500, seed=5, f0_hz=220, level_dbfs=talker_dbfs)
    caller = np.zeros(reference.size)
    a = RATE * start_ms // 1000
    caller[a : a + talker.size] = talker[: reference.size - a]
    line = caller if echo is None else delayed(reference, *echo) + caller
    return phone_line(line)


@pytest.mark.parametrize("talker_dbfs", [-20, -29])
def test_a_caller_cutting_in_during_the_grace_on_a_line_without_echo_reaches_the_vad_early(talker_dbfs: int) -> None:
    """The agent's first words: without a path yet, everything is taken for echo. A fit that explains
    none of a loud caller sound ends that at once: the cut-in 200 ms in is heard well before 600 ms."""
    reference = agent_then_silence(tail_ms=0)
    mic = _cut_in_at(200, reference, talker_dbfs, echo=None)
    gate = EchoGate()
    first_passed = None
    for i in range(mic.size // FRAME):
        gate.push_reference(reference[i * FRAME : (i + 1) * FRAME].astype(np.float32), i * 80)
        verdict = gate.process(mic[i * FRAME : (i + 1) * FRAME].astype(np.float32), i * 80)
        if first_passed is None and verdict.echo_blocks < verdict.blocks and np.abs(verdict.cleaned).max() > 0.01:
            first_passed = i * 80
    assert gate.grace_released_at_ms is not None and gate.grace_released_at_ms <= 400
    assert first_passed is not None and first_passed <= 400
    events = run_call(reference, mic, energy_vad(), gate=EchoGate(), agent_end_ms=4000)
    starts = [e for _, e in events if isinstance(e, SpeechStarted)]
    assert starts and starts[0].at_ms <= 450


@pytest.mark.parametrize("delay_ms", [40, 250])
def test_echo_with_the_caller_talking_over_it_does_not_end_the_grace(delay_ms: int) -> None:
    """A line with strong echo: the fit explains most of the sound, so the grace holds and the
    path is found as before; echo alone after the caller stops never starts speech."""
    reference = agent_then_silence()
    mic = _cut_in_at(200, reference, -26, echo=(delay_ms, -6))
    gate = EchoGate()
    for i in range(mic.size // FRAME):
        gate.push_reference(reference[i * FRAME : (i + 1) * FRAME].astype(np.float32), i * 80)
        gate.process(mic[i * FRAME : (i + 1) * FRAME].astype(np.float32), i * 80)
    assert gate.grace_released_at_ms is None
    assert gate.path is not None and abs(gate.path.delay_samples / 16 - delay_ms) <= 1
