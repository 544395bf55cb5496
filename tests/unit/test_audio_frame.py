"""PcmFrame, constants and level helpers in agent.audio."""

from __future__ import annotations

import numpy as np
import pytest

from agent.audio import (
    FRAME_MS,
    MODEL_INPUT_RATE,
    MODEL_OUTPUT_RATE,
    PACKET_MS,
    SILENCE_DBFS,
    AudioError,
    PcmFrame,
    rms_dbfs,
    samples_per_ms,
)


def test_constants_describe_the_model_frame() -> None:
    assert samples_per_ms(MODEL_INPUT_RATE, FRAME_MS) == 1280
    assert samples_per_ms(MODEL_OUTPUT_RATE, FRAME_MS) == 1920
    assert samples_per_ms(8000, PACKET_MS) == 160
    assert samples_per_ms(48000, PACKET_MS) == 960


def test_samples_per_ms_rejects_fractional_and_bad_rates() -> None:
    assert samples_per_ms(44100, 20) == 882
    with pytest.raises(AudioError, match="not a whole number"):
        samples_per_ms(44100, 1)
    with pytest.raises(AudioError, match="positive"):
        samples_per_ms(0, 20)
    with pytest.raises(AudioError, match="negative"):
        samples_per_ms(8000, -20)


def test_frame_properties() -> None:
    frame = PcmFrame(np.arange(160, dtype=np.int16), 8000, timestamp=320)
    assert frame.num_samples == 160
    assert frame.duration_ms == pytest.approx(20.0)
    assert frame.end_timestamp == 480
    assert frame.start_ms == pytest.approx(40.0)
    assert PcmFrame.silence(1280, 16000, 1280).end_timestamp == 2560


@pytest.mark.parametrize(
    ("samples", "rate", "timestamp", "message"),
    [
        (np.zeros(10, dtype=np.float32), 8000, 0, "int16"),
        (np.zeros((10, 2), dtype=np.int16), 8000, 0, "mono"),
        (np.zeros(10, dtype=np.int16), 0, 0, "positive"),
        (np.zeros(10, dtype=np.int16), -8000, 0, "positive"),
        (np.zeros(10, dtype=np.int16), 8000.0, 0, "int"),
        (np.zeros(10, dtype=np.int16), 8000, -1, "negative"),
        ([0, 1, 2], 8000, 0, "numpy array"),
    ],
)
def test_frame_validation(samples: object, rate: object, timestamp: int, message: str) -> None:
    with pytest.raises(AudioError, match=message):
        PcmFrame(samples, rate, timestamp)  # type: ignore[arg-type]


def test_audio_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        PcmFrame(np.zeros(3, dtype=np.int32), 8000)


def test_float_round_trip_is_exact_for_int16() -> None:
    pcm = np.array([-32768, -1, 0, 1, 12345, 32767], dtype=np.int16)
    frame = PcmFrame(pcm, 16000, 7)
    x = frame.to_float32()
    assert x.dtype == np.float32
    assert x[0] == -1.0 and x[2] == 0.0
    back = PcmFrame.from_float32(x, 16000, 7)
    np.testing.assert_array_equal(back.samples, pcm)
    assert back.timestamp == 7 and back.sample_rate == 16000


def test_from_float32_clips_and_rounds() -> None:
    x = np.array([-2.0, -1.0, 0.99999, 1.0, 5.0, 0.5 / 32768, 1.6 / 32768, -1.6 / 32768], dtype=np.float64)
    frame = PcmFrame.from_float32(x, 8000)
    np.testing.assert_array_equal(frame.samples, [-32768, -32768, 32767, 32767, 32767, 0, 2, -2])
    with pytest.raises(AudioError, match="float"):
        PcmFrame.from_float32(np.zeros(4, dtype=np.int16), 8000)
    with pytest.raises(AudioError, match="mono"):
        PcmFrame.from_float32(np.zeros((4, 2)), 8000)


def test_rms_dbfs_reference_levels() -> None:
    full_square = np.array([32767, -32768] * 100, dtype=np.int16)
    assert rms_dbfs(full_square) == pytest.approx(0.0, abs=0.001)
    t = np.arange(16000) / 16000
    sine = np.sin(2 * np.pi * 1000 * t)
    assert rms_dbfs(sine) == pytest.approx(-3.0103, abs=0.01)
    assert rms_dbfs((0.1 * sine).astype(np.float32)) == pytest.approx(-23.0103, abs=0.01)
    assert rms_dbfs(np.zeros(100, dtype=np.int16)) == SILENCE_DBFS
    assert rms_dbfs(np.zeros(0, dtype=np.int16)) == SILENCE_DBFS
