"""Framer (packets -> 80 ms frames) and Packetizer (80 ms chunks -> 20 ms packets): exact and continuous."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from agent.audio import AudioError, PcmFrame
from agent.framer import Framer, Packetizer
from agent.resample import resample_offline

RATES = (8000, 16000, 24000, 48000)


def speechlike(num_samples: int, rate: int, seed: int) -> npt.NDArray[np.int16]:
    """Noise shaped by a slow envelope plus a tone, int16 at about -16 dBFS."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)
    x = 0.1 * envelope * rng.standard_normal(num_samples) + 0.1 * np.sin(2 * np.pi * 440.0 * t)
    return np.clip(np.rint(x * 32768), -32768, 32767).astype(np.int16)


def split(pcm: npt.NDArray[np.int16], sizes: list[int], rate: int, start: int = 0) -> list[PcmFrame]:
    packets = []
    offset = 0
    for size in itertools.cycle(sizes):
        if offset >= pcm.shape[0]:
            break
        chunk = pcm[offset : offset + size]
        packets.append(PcmFrame(chunk, rate, start + offset))
        offset += chunk.shape[0]
    return packets


def check_stream(
    frames: list[PcmFrame], size: int, rate: int, first_timestamp: int, expected: npt.NDArray[np.int16]
) -> None:
    assert all(f.num_samples == size for f in frames)
    assert all(f.sample_rate == rate for f in frames)
    assert [f.timestamp for f in frames] == [first_timestamp + i * size for i in range(len(frames))]
    got = np.concatenate([f.samples for f in frames])
    padded = np.concatenate([expected, np.zeros(-expected.shape[0] % size, dtype=np.int16)])
    assert got.shape[0] == padded.shape[0]
    np.testing.assert_array_equal(got, padded)


PACKET_SIZES: dict[str, Callable[[int], list[int]]] = {
    "10ms": lambda rate: [rate // 100],
    "20ms": lambda rate: [rate // 50],
    "30ms": lambda rate: [rate * 3 // 100],
    "60ms": lambda rate: [rate * 6 // 100],
    "7": lambda rate: [7],
    "333": lambda rate: [333],
    "mixed": lambda rate: [1, 333, 7, rate // 50, 0 + 2, 1000],
}


@pytest.mark.parametrize("in_rate", RATES)
@pytest.mark.parametrize("packets", sorted(PACKET_SIZES))
def test_framer_frames_equal_offline_resampling(in_rate: int, packets: str) -> None:
    pcm = speechlike(in_rate * 7 // 10 + 13, in_rate, seed=in_rate)
    framer = Framer(in_rate)
    assert framer.frame_samples == 1280
    frames: list[PcmFrame] = []
    for packet in split(pcm, PACKET_SIZES[packets](in_rate), in_rate):
        out = framer.push(packet)
        frames.extend(out)
    frames.extend(framer.flush())
    expected = resample_offline(pcm, in_rate, 16000)
    check_stream(frames, 1280, 16000, 0, expected)


def test_framer_emits_frames_as_soon_as_they_are_complete() -> None:
    framer = Framer(8000)
    counts = [len(framer.push(p)) for p in split(speechlike(8000, 8000, 1), [160], 8000)]
    # 1 s of audio: at most one frame late (the resampler delay is 4 ms, far below one frame).
    assert sum(counts) >= 11
    assert max(counts) == 1
    assert framer.delay_samples == 64


@pytest.mark.parametrize("out_rate", [8000, 16000, 48000])
@pytest.mark.parametrize("chunking", ["80ms", "odd"])
def test_packetizer_packets_equal_offline_resampling(out_rate: int, chunking: str) -> None:
    pcm = speechlike(24000 * 13 // 10 + 5, 24000, seed=out_rate)
    packetizer = Packetizer(out_rate=out_rate)
    packet_samples = out_rate // 50
    assert packetizer.packet_samples == packet_samples
    sizes = [1920] if chunking == "80ms" else [1919, 1, 333, 2000]
    packets: list[PcmFrame] = []
    for chunk in split(pcm, sizes, 24000):
        packets.extend(packetizer.push(chunk))
    packets.extend(packetizer.flush())
    expected = resample_offline(pcm, 24000, out_rate)
    check_stream(packets, packet_samples, out_rate, 0, expected)


def test_timestamps_start_from_the_first_packet_and_scale_with_the_rate() -> None:
    framer = Framer(8000)
    frames = []
    for packet in split(speechlike(4000, 8000, 2), [160], 8000, start=8000):
        frames.extend(framer.push(packet))
    frames.extend(framer.flush())
    assert frames[0].timestamp == 16000
    assert frames[-1].end_timestamp == 16000 + 1280 * len(frames)


def test_gaps_are_filled_with_silence_and_overlaps_rejected() -> None:
    pcm = speechlike(1600, 8000, 3)
    framer = Framer(8000)
    frames = framer.push(PcmFrame(pcm[:800], 8000, 0))
    frames += framer.push(PcmFrame(pcm[1000:], 8000, 1000))  # 200 samples lost
    frames += framer.flush()
    assert framer.gap_samples_filled == 200
    filled = pcm.copy()
    filled[800:1000] = 0
    check_stream(frames, 1280, 16000, 0, resample_offline(filled, 8000, 16000))

    framer.push(PcmFrame(pcm[:800], 8000, 0))
    with pytest.raises(AudioError, match="overlaps"):
        framer.push(PcmFrame(pcm[:800], 8000, 700))
    with pytest.raises(AudioError, match="gap"):
        framer.push(PcmFrame(pcm[:800], 8000, 800 + 8000 * 3))
    with pytest.raises(AudioError, match="8000 Hz"):
        framer.push(PcmFrame(pcm[:800], 16000, 800))


def test_identity_framer_copies_caller_buffers() -> None:
    framer = Framer(16000)
    buffer = np.ones(1000, dtype=np.int16)
    assert framer.push(PcmFrame(buffer, 16000, 0)) == []
    buffer[:] = 7  # a transport reusing its receive buffer
    frames = framer.push(PcmFrame(buffer, 16000, 1000))
    assert len(frames) == 1
    np.testing.assert_array_equal(frames[0].samples[:1000], 1)
    np.testing.assert_array_equal(frames[0].samples[1000:], 7)


def test_flush_without_padding_returns_the_partial_frame() -> None:
    framer = Framer(16000)
    framer.push(PcmFrame(np.ones(1300, dtype=np.int16), 16000, 0))
    last = framer.flush(pad=False)
    assert [f.num_samples for f in last] == [20]
    assert last[0].timestamp == 1280
    assert framer.flush() == []


def test_packetizer_clear_drops_buffered_audio_and_counts_it() -> None:
    packetizer = Packetizer(out_rate=8000)
    chunk = speechlike(1920, 24000, 4)
    packets = packetizer.push(PcmFrame(chunk, 24000, 0))
    # 80 ms in: 3 whole 20 ms packets are out, the 4th is held back by the 4 ms resampler delay.
    assert len(packets) == 3
    dropped = packetizer.clear()
    assert dropped == 1920 - 3 * 480
    assert packetizer.buffered_input_samples == 0
    # A new segment starts wherever the next chunk says.
    after = packetizer.push(PcmFrame(chunk, 24000, 48000))
    assert after[0].timestamp == 16000
    assert len(after) == 3
    assert packetizer.clear() == 480
    assert packetizer.clear() == 0


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(AudioError, match="whole number"):
        Framer(8000, frame_ms=80, out_rate=44100 + 1)
    with pytest.raises(AudioError, match="positive"):
        Packetizer(out_rate=8000, packet_ms=0)
    with pytest.raises(AudioError, match="in_rate"):
        Framer(0)
