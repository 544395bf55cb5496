"""Caller audio: espeak-ng speech (level, cache, missing binary), DTMF frequencies, WAV clips."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from agent import caller_voice
from agent.caller_voice import (
    CallerVoiceError,
    active_level_dbfs,
    render_dtmf,
    render_say,
    render_step,
    render_wav,
)
from agent.line import NOMINAL_SPEECH_LEVEL_DBFS
from agent.scenario import CallerConfig, DtmfStep, SayStep, When
from agent.wavio import write_wav

# speech from espeak-ng: these run with the peers (integration), not under -m unit; a missing
# espeak-ng fails them with the install line (agent.caller_voice), it does not skip them
needs_espeak = pytest.mark.integration


def _goertzel_power(x: npt.NDArray[np.float64], freq: float, rate: int) -> float:
    t = np.arange(x.size) / rate
    return float(abs(np.dot(x, np.exp(-2j * np.pi * freq * t))) ** 2)


@needs_espeak
def test_render_say_level_length_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    audio = render_say("Hello, what are your opening hours?", rate_wpm=160, volume_db=-6.0,
                       sample_rate=16000, cache_dir=tmp_path)
    assert audio.dtype == np.int16 and audio.ndim == 1
    assert 1.0 < audio.size / 16000 < 4.0
    assert active_level_dbfs(audio, 16000) == pytest.approx(NOMINAL_SPEECH_LEVEL_DBFS - 6.0, abs=0.3)
    assert len(list(tmp_path.glob("*.wav"))) == 1

    def boom(*args: object) -> None:
        raise AssertionError("espeak-ng must not run on a cache hit")

    monkeypatch.setattr(caller_voice, "_synthesise", boom)
    again = render_say("Hello, what are your opening hours?", rate_wpm=160, volume_db=-6.0,
                       sample_rate=16000, cache_dir=tmp_path)
    assert np.array_equal(again, audio)


@needs_espeak
def test_render_say_rate_changes_duration_and_24k(tmp_path: Path) -> None:
    slow = render_say("one two three four five six", rate_wpm=120, sample_rate=24000, cache_dir=tmp_path)
    fast = render_say("one two three four five six", rate_wpm=300, sample_rate=24000, cache_dir=tmp_path)
    assert slow.size > 1.5 * fast.size


@needs_espeak
def test_render_say_bad_voice_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CallerVoiceError, match=r"no voice .no-such-voice-xx"):
        render_say("hello", voice="no-such-voice-xx", cache_dir=tmp_path)


def test_missing_espeak_names_install_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(CallerVoiceError, match="apt-get install -y espeak-ng"):
        render_say("hello", cache_dir=tmp_path)


@pytest.mark.parametrize(("digit", "low", "high"), [("1", 697, 1209), ("5", 770, 1336), ("#", 941, 1477),
                                                      ("0", 941, 1336), ("D", 941, 1633)])
def test_dtmf_frequency_pairs(digit: str, low: int, high: int) -> None:
    x = render_dtmf(digit, tone_ms=100, gap_ms=80, sample_rate=8000).astype(np.float64)
    assert x.size == 800
    powers = {f: _goertzel_power(x, f, 8000) for f in (697, 770, 852, 941, 1209, 1336, 1477, 1633)}
    strongest = sorted(powers, key=lambda f: powers[f], reverse=True)[:2]
    assert sorted(strongest) == [low, high]
    assert min(powers[low], powers[high]) > 100 * max(p for f, p in powers.items() if f not in (low, high))


def test_dtmf_timing_and_validation() -> None:
    x = render_dtmf("123#", tone_ms=100, gap_ms=80, sample_rate=16000)
    assert x.size == 16 * (4 * 100 + 3 * 80)
    gap = x[1600:1600 + 1280]
    assert not gap.any()
    assert np.abs(x[:1600]).max() > 10000 and abs(int(x[0])) < 100  # ramped edge, no click
    with pytest.raises(ValueError, match="DTMF digit"):
        render_dtmf("12x")


def test_render_wav_resamples_and_scales(tmp_path: Path) -> None:
    t = np.arange(8000) / 8000
    tone = np.rint(np.sin(2 * np.pi * 300 * t) * 8000).astype(np.int16)
    path = tmp_path / "clip.wav"
    write_wav(path, tone, 8000)
    out = render_wav(path, volume_db=-6.0, sample_rate=16000)
    assert out.size == 16000
    assert np.abs(out[2000:14000]).max() == pytest.approx(8000 * 10 ** (-6 / 20), rel=0.02)


def test_render_step_dispatches(tmp_path: Path) -> None:
    caller = CallerConfig(volume_db=-6.0)
    dtmf = DtmfStep("1", 100, 80, When(), 1)
    assert np.array_equal(render_step(dtmf, caller, 8000), render_dtmf("1", 100, 80, 8000))
    path = tmp_path / "c.wav"
    write_wav(path, np.full(800, 1000, dtype=np.int16), 8000)
    wav_step = SayStep(None, path, When(), 1)
    out = render_step(wav_step, caller, 8000)
    assert np.array_equal(out, render_wav(path, -6.0, 8000)) and int(out[400]) == 501
