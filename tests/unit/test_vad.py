"""VadTracker hysteresis (explicit time), chunking of 80 ms frames, EnergyVad and SileroVad."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from agent.events import (
    VadEvent,
    VadSpeechPaused,
    VadSpeechResumed,
    VadSpeechStarted,
    VadSpeechStopped,
    VadVoiceOnset,
    VadVoiceOnsetDropped,
)
from agent.vad import EnergyVad, EnergyVadSettings, SileroVad, VadSettings, VadState, VadTracker

CHUNK_MS = 32


def run_probabilities(tracker: VadTracker, probabilities: list[float]) -> list[tuple[int, VadEvent]]:
    """Feed one probability per 32 ms chunk; return (chunk end ms, event) pairs."""
    out: list[tuple[int, VadEvent]] = []
    for i, p in enumerate(probabilities):
        for event in tracker.update(p, i * CHUNK_MS, CHUNK_MS):
            out.append(((i + 1) * CHUNK_MS, event))
    return out


def test_speech_start_is_confirmed_after_start_ms_but_dated_at_real_start() -> None:
    tracker = VadTracker(settings=VadSettings(start_ms=96, stop_ms=160))
    events = run_probabilities(tracker, [0.0, 0.0, 0.9, 0.9, 0.9, 0.9])
    # the onset is told at once (the agent may hold its audio), the speech once it lasted start_ms
    assert events == [(3 * CHUNK_MS, VadVoiceOnset(at_ms=2 * CHUNK_MS)), (5 * CHUNK_MS, VadSpeechStarted(at_ms=2 * CHUNK_MS))]
    assert tracker.state is VadState.SPEAKING


def test_blip_shorter_than_start_ms_is_not_speech() -> None:
    tracker = VadTracker(settings=VadSettings(start_ms=96))
    assert run_probabilities(tracker, [0.9, 0.9, 0.1, 0.0, 0.9, 0.1]) == [
        (CHUNK_MS, VadVoiceOnset(at_ms=0)), (3 * CHUNK_MS, VadVoiceOnsetDropped(at_ms=2 * CHUNK_MS)),
        (5 * CHUNK_MS, VadVoiceOnset(at_ms=4 * CHUNK_MS)), (6 * CHUNK_MS, VadVoiceOnsetDropped(at_ms=5 * CHUNK_MS)),
    ]
    assert tracker.state is VadState.QUIET


def test_pause_resume_and_stop_carry_the_real_times() -> None:
    tracker = VadTracker(settings=VadSettings(start_ms=64, stop_ms=128))
    probs = [0.9, 0.9, 0.9, 0.1, 0.1, 0.8, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0]
    events = run_probabilities(tracker, probs)
    assert [e for _, e in events] == [
        VadVoiceOnset(at_ms=0),
        VadSpeechStarted(at_ms=0),
        VadSpeechPaused(at_ms=3 * CHUNK_MS),
        VadSpeechResumed(at_ms=5 * CHUNK_MS),
        VadSpeechPaused(at_ms=7 * CHUNK_MS),
        VadSpeechStopped(at_ms=7 * CHUNK_MS),
    ]
    # Stopped is confirmed only once 128 ms of silence have passed.
    assert events[-1][0] == 11 * CHUNK_MS


def test_hysteresis_between_thresholds_keeps_the_current_state() -> None:
    tracker = VadTracker(settings=VadSettings(start_threshold=0.6, stop_threshold=0.3, start_ms=32, stop_ms=64))
    # 0.45 neither starts speech from quiet nor stops it while speaking.
    assert run_probabilities(tracker, [0.45, 0.45]) == []
    events = run_probabilities(tracker, [0.7, 0.45, 0.45, 0.45])
    assert [type(e) for _, e in events] == [VadVoiceOnset, VadSpeechStarted]
    assert tracker.state is VadState.SPEAKING


def test_settings_and_inputs_are_validated() -> None:
    with pytest.raises(ValueError, match="stop_threshold"):
        VadSettings(start_threshold=0.3, stop_threshold=0.5)
    with pytest.raises(ValueError, match="negative"):
        VadSettings(start_ms=-1)
    tracker = VadTracker()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tracker.update(1.5, 0, 32)
    with pytest.raises(ValueError, match="positive"):
        tracker.update(0.5, 0, 0)
    with pytest.raises(ValueError, match="detector"):
        tracker.feed(np.zeros(512, dtype=np.int16), 0)


class RecordingDetector:
    """Probability = 1 if the chunk's mean is positive; records chunk sizes and first samples."""

    sample_rate = 16000
    chunk_samples = 512

    def __init__(self) -> None:
        self.first_samples: list[float] = []
        self.resets = 0

    def speech_probability(self, chunk: npt.NDArray[np.float32]) -> float:
        assert chunk.shape == (512,) and chunk.dtype == np.float32
        self.first_samples.append(float(chunk[0]))
        return 1.0 if float(chunk.mean()) > 0 else 0.0

    def reset(self) -> None:
        self.resets += 1


def ramp_audio(num_samples: int) -> npt.NDArray[np.int16]:
    return (np.arange(num_samples) % 30000).astype(np.int16)


def test_80ms_frames_are_cut_into_512_sample_chunks_with_carry() -> None:
    detector = RecordingDetector()
    tracker = VadTracker(detector, VadSettings(start_ms=0))
    audio = ramp_audio(1280 * 5)
    for i in range(5):
        tracker.feed(audio[i * 1280 : (i + 1) * 1280], i * 80)
    # 6400 samples = 12 whole chunks (6144), 256 carried.
    assert len(detector.first_samples) == 12
    assert detector.first_samples == [float(audio[k * 512]) / 32768.0 for k in range(12)]


def test_chunked_feeding_equals_one_offline_feed() -> None:
    rng = np.random.default_rng(3)
    level = np.repeat(rng.choice([0, 8000], size=40), 400)
    audio = (level * np.sign(rng.standard_normal(level.size)) + 1).astype(np.int16)
    audio[level == 0] = -5  # mean <= 0 -> probability 0

    offline = VadTracker(RecordingDetector(), VadSettings(start_ms=64, stop_ms=96)).feed(audio, 1000)
    streaming = VadTracker(RecordingDetector(), VadSettings(start_ms=64, stop_ms=96))
    chunked: list[VadEvent] = []
    for i in range(0, audio.size, 1280):
        chunked += streaming.feed(audio[i : i + 1280], 1000 + i // 16)
    assert chunked == offline
    assert len(offline) >= 4


def test_a_gap_in_the_stream_drops_the_carried_remainder() -> None:
    detector = RecordingDetector()
    tracker = VadTracker(detector, VadSettings(start_ms=0))
    tracker.feed(ramp_audio(1280), 0)  # 2 chunks, 256 carried
    tracker.feed(ramp_audio(1280), 500)  # not contiguous (expected 80 ms): new stream
    assert len(detector.first_samples) == 4
    assert detector.first_samples[2] == 0.0  # the carry from the first frame was not prepended


def test_energy_vad_maps_level_to_probability() -> None:
    vad = EnergyVad(EnergyVadSettings(chunk_ms=20, silence_dbfs=-50, speech_dbfs=-30))
    assert vad.chunk_samples == 320
    quiet = np.full(320, 10 ** (-60 / 20), dtype=np.float32)
    loud = np.full(320, 10 ** (-20 / 20), dtype=np.float32)
    middle = np.full(320, 10 ** (-40 / 20), dtype=np.float32)
    assert vad.speech_probability(quiet) == 0.0
    assert vad.speech_probability(loud) == 1.0
    assert vad.speech_probability(middle) == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="320 samples"):
        vad.speech_probability(np.zeros(512, dtype=np.float32))


ESPEAK_INSTALL = "apt-get install -y espeak-ng sox"


def espeak(text: str, tmp_path: Path, voice: str = "en-us") -> npt.NDArray[np.int16]:
    """Speak ``text`` with espeak-ng and return 16 kHz int16 samples."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.fail(f"espeak-ng and sox are needed: {ESPEAK_INSTALL}")
    wav = tmp_path / f"{abs(hash((text, voice)))}.wav"
    raw = tmp_path / f"{abs(hash((text, voice)))}.raw"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True)
    subprocess.run(["sox", str(wav), "-r", "16000", "-c", "1", "-b", "16", "-e", "signed", "-t", "raw", str(raw)],
                   check=True)
    return np.frombuffer(raw.read_bytes(), dtype=np.int16).copy()


@pytest.fixture(scope="module")
def silero() -> SileroVad:
    return SileroVad.load()


@pytest.mark.integration  # espeak-ng speech: runs with the peers, not under -m unit
def test_silero_detects_synthesised_speech_and_not_silence(silero: SileroVad, tmp_path: Path) -> None:
    speech = espeak("Hello, I would like to change my booking for tomorrow afternoon please.", tmp_path)
    rng = np.random.default_rng(0)
    silence = (rng.standard_normal(16000) * 30).astype(np.int16)
    audio = np.concatenate([silence, speech, silence, silence])
    tracker = VadTracker(silero.fork(), VadSettings())
    events: list[VadEvent] = []
    for i in range(0, audio.size - 1280 + 1, 1280):
        events += tracker.feed(audio[i : i + 1280], i // 16)
    starts = [e.at_ms for e in events if isinstance(e, VadSpeechStarted)]
    stops = [e.at_ms for e in events if isinstance(e, VadSpeechStopped)]
    speech_ms = speech.size // 16
    assert starts and abs(starts[0] - 1000) <= 200
    assert stops and abs(stops[-1] - (1000 + speech_ms)) <= 400
    assert tracker.state is VadState.QUIET


def test_silero_fork_has_independent_state(silero: SileroVad) -> None:
    t = np.arange(512, dtype=np.float32) / 16000
    chunk = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    a, b = silero.fork(), silero.fork()
    first = a.speech_probability(chunk)
    for _ in range(5):
        a.speech_probability(chunk)
    assert b.speech_probability(chunk) == pytest.approx(first, abs=1e-6)
    with pytest.raises(ValueError, match="512 samples"):
        a.speech_probability(np.zeros(256, dtype=np.float32))


def test_silero_fork_matches_the_packaged_stateful_model(silero: SileroVad) -> None:
    """The shared network with per-fork state gives what the package's own wrapper gives, chunk
    for chunk, over speech-like audio with silence around it (state and context carried)."""
    import torch
    from silero_vad import load_silero_vad

    packaged = load_silero_vad()
    rng = np.random.default_rng(3)
    t = np.arange(512 * 40, dtype=np.float32) / 16000
    voiced = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(t.size)
    audio = np.concatenate([0.001 * rng.standard_normal(512 * 10), voiced, 0.001 * rng.standard_normal(512 * 10)])
    ours = silero.fork()
    mine, theirs = [], []
    for i in range(0, audio.size, 512):
        chunk = audio[i : i + 512].astype(np.float32)
        mine.append(ours.speech_probability(chunk))
        with torch.inference_mode():
            theirs.append(float(packaged(torch.from_numpy(chunk), 16000).item()))
    assert max(theirs) > 0.5 > min(theirs)  # the audio really moves the detector
    np.testing.assert_allclose(mine, theirs, atol=1e-5)
    ours.reset()
    packaged.reset_states()
    first = audio[512 * 12 : 512 * 13].astype(np.float32)
    with torch.inference_mode():
        assert ours.speech_probability(first) == pytest.approx(float(packaged(torch.from_numpy(first), 16000).item()),
                                                               abs=1e-5)
