"""StreamingResampler: chunked == offline, lengths, delay, and quality against ideal references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import numpy.typing as npt
import pytest

from agent.audio import AudioError
from agent.resample import StreamingResampler, resample_offline

RATES = (8000, 16000, 24000, 48000)
PAIRS = [(a, b) for a, b in itertools.product(RATES, RATES) if a != b]


def noise(num_samples: int, seed: int) -> npt.NDArray[np.float32]:
    return (0.25 * np.random.default_rng(seed).standard_normal(num_samples)).astype(np.float32)


def chunked(
    resampler: StreamingResampler, x: npt.NDArray[np.generic], sizes: list[int]
) -> npt.NDArray[np.generic]:
    outs: list[npt.NDArray[np.generic]] = []
    start = 0
    for size in itertools.cycle(sizes):
        if start >= x.shape[0]:
            break
        outs.append(resampler.process(x[start : start + size]))  # type: ignore[arg-type]
        start += size
    outs.append(resampler.flush())
    return np.concatenate(outs)


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_chunked_equals_offline_float32(in_rate: int, out_rate: int) -> None:
    x = noise(in_rate // 4, seed=in_rate + out_rate)
    offline = resample_offline(x, in_rate, out_rate)
    assert offline.dtype == np.float32
    assert offline.shape[0] == math.ceil(x.shape[0] * out_rate / in_rate)
    rng = np.random.default_rng(3)
    sizes = [int(s) for s in rng.integers(0, 700, 40)] + [0, 1, 333, 7]
    streamed = chunked(StreamingResampler(in_rate, out_rate), x, sizes)
    np.testing.assert_array_equal(streamed, offline)


@pytest.mark.parametrize(
    ("in_rate", "out_rate"), [(8000, 16000), (48000, 16000), (24000, 8000), (16000, 24000)]
)
def test_one_sample_chunks_equal_offline_int16(in_rate: int, out_rate: int) -> None:
    x = (noise(1500, seed=5) * 32767).astype(np.int16)
    offline = resample_offline(x, in_rate, out_rate)
    assert offline.dtype == np.int16
    streamed = chunked(StreamingResampler(in_rate, out_rate), x, [1, 0, 1, 2])
    assert streamed.dtype == np.int16
    np.testing.assert_array_equal(streamed, offline)


def test_int16_stream_matches_float32_stream_rounded() -> None:
    x16 = (noise(4000, seed=9) * 32767).astype(np.int16)
    y16 = resample_offline(x16, 8000, 16000)
    yf = resample_offline(x16.astype(np.float32) / np.float32(32768), 8000, 16000)
    np.testing.assert_array_equal(y16, np.clip(np.rint(yf.astype(np.float64) * 32768), -32768, 32767))


@pytest.mark.parametrize("num_samples", [0, 1, 2, 7, 31, 64, 100, 1001])
@pytest.mark.parametrize(
    ("in_rate", "out_rate"), [(8000, 16000), (16000, 8000), (48000, 16000), (24000, 16000)]
)
def test_short_streams_have_every_output_sample(num_samples: int, in_rate: int, out_rate: int) -> None:
    y = resample_offline(np.full(num_samples, 0.25, dtype=np.float32), in_rate, out_rate)
    assert y.shape[0] == math.ceil(num_samples * out_rate / in_rate)


def test_identity_passes_through_the_same_array() -> None:
    resampler = StreamingResampler(16000, 16000)
    x = np.arange(320, dtype=np.int16)
    assert resampler.process(x) is x
    assert resampler.delay_samples == 0
    assert resampler.flush().shape[0] == 0
    assert resampler.is_identity


@pytest.mark.parametrize(
    ("in_rate", "out_rate", "max_delay_ms"),
    [(8000, 16000, 5.0), (48000, 16000, 3.0), (24000, 8000, 5.0), (24000, 48000, 2.0), (16000, 24000, 3.0)],
)
def test_delay_is_small_and_constant(in_rate: int, out_rate: int, max_delay_ms: float) -> None:
    resampler = StreamingResampler(in_rate, out_rate)
    packet = in_rate // 50
    delays = []
    for i in range(30):
        resampler.process(noise(packet, seed=i))
        delays.append(resampler.delay_samples)
    steady = set(delays[3:])
    assert len(steady) == 1, delays
    assert 0 < resampler.delay_ms <= max_delay_ms


def tone(freq_hz: float, rate: int, num_samples: int, amplitude: float = 0.5) -> npt.NDArray[np.float64]:
    return amplitude * np.sin(2 * np.pi * freq_hz * np.arange(num_samples) / rate)


@pytest.mark.parametrize(
    ("in_rate", "out_rate"), [(8000, 16000), (48000, 16000), (24000, 8000), (16000, 24000)]
)
def test_in_band_tones_match_the_ideal_reference_without_shift(in_rate: int, out_rate: int) -> None:
    # The output is delay-compensated: compare with the analytic signal sampled at out_rate directly.
    nyquist = min(in_rate, out_rate) / 2
    freqs = [300.0, 1000.0 + 7.0, 0.8 * nyquist]
    x = np.sum([tone(f, in_rate, in_rate, 0.2) for f in freqs], axis=0)
    y = resample_offline(np.asarray(x, dtype=np.float32), in_rate, out_rate).astype(np.float64)
    ref = np.sum([tone(f, out_rate, out_rate, 0.2) for f in freqs], axis=0)
    edge = out_rate // 20
    err = y[edge:-edge] - ref[edge:-edge]
    snr_db = 10 * np.log10(np.mean(ref[edge:-edge] ** 2) / np.mean(err**2))
    assert snr_db > 80.0


@pytest.mark.parametrize(("in_rate", "out_rate"), [(48000, 16000), (24000, 8000), (16000, 8000)])
def test_tones_above_the_new_nyquist_are_rejected(in_rate: int, out_rate: int) -> None:
    for freq_hz in (1.1 * out_rate / 2, 0.9 * in_rate / 2):
        y = resample_offline(np.asarray(tone(freq_hz, in_rate, in_rate), dtype=np.float32), in_rate, out_rate)
        edge = out_rate // 20
        level_db = 10 * np.log10(np.mean(y[edge:-edge].astype(np.float64) ** 2) / 0.125)
        assert level_db < -80.0, (freq_hz, level_db)


def test_images_are_rejected_when_upsampling() -> None:
    y = resample_offline(np.asarray(tone(3000.0, 8000, 8000), dtype=np.float32), 8000, 48000).astype(
        np.float64
    )
    spectrum = np.abs(np.fft.rfft(y[4800:-4800] * np.hanning(y.shape[0] - 9600))) ** 2
    freqs = np.fft.rfftfreq(y.shape[0] - 9600, 1 / 48000)
    image_db = 10 * np.log10(spectrum[freqs > 4200].sum() / spectrum.sum())
    assert image_db < -80.0


def test_flush_starts_a_fresh_stream() -> None:
    resampler = StreamingResampler(8000, 16000)
    x = noise(800, seed=1)
    first = np.concatenate([resampler.process(x), resampler.flush()])
    second = np.concatenate([resampler.process(x), resampler.flush()])
    np.testing.assert_array_equal(first, second)
    assert resampler.input_samples == 0 and resampler.output_samples == 0


def test_reset_discards_the_tail_and_allows_a_new_dtype() -> None:
    resampler = StreamingResampler(8000, 16000)
    resampler.process(noise(800, seed=1))
    resampler.reset()
    out = resampler.process(np.zeros(800, dtype=np.int16))
    assert out.dtype == np.int16


def test_bad_input_is_rejected() -> None:
    resampler = StreamingResampler(8000, 16000)
    with pytest.raises(AudioError, match="int16 or float32"):
        resampler.process(np.zeros(10, dtype=np.float64))
    with pytest.raises(AudioError, match="mono"):
        resampler.process(np.zeros((10, 2), dtype=np.float32))
    with pytest.raises(AudioError, match="numpy array"):
        resampler.process([0.0, 1.0])  # type: ignore[call-overload]
    resampler.process(np.zeros(10, dtype=np.float32))
    with pytest.raises(AudioError, match="flush"):
        resampler.process(np.zeros(10, dtype=np.int16))
    with pytest.raises(AudioError, match="in_rate"):
        StreamingResampler(0, 16000)
    with pytest.raises(AudioError, match="out_rate"):
        StreamingResampler(8000, -1)
