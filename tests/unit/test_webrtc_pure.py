"""Pure parts of the WebRTC adapters: frame conversion, data-channel messages, pacing, the send FIFO."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from agent.transport import DtmfReceived, HungUp
from agent.webrtc import (
    PACKET_SAMPLES,
    RECEIVE_PREFETCH_PACKETS,
    DeadlinePacer,
    PacedAudioTrack,
    PacingStats,
    SampleFifo,
    frame_to_mono,
    low_latency_receive,
    mono_frame,
    parse_data_message,
    peer_connection,
)


def _stereo_packed(left: np.ndarray, right: np.ndarray) -> av.AudioFrame:
    inter = np.empty(left.size * 2, np.int16)
    inter[0::2], inter[1::2] = left, right
    frame = av.AudioFrame.from_ndarray(inter.reshape(1, -1), format="s16", layout="stereo")
    frame.sample_rate = 48000
    return frame


def test_stereo_packed_frame_is_mixed_to_mono() -> None:
    left = np.arange(960, dtype=np.int16)
    right = -np.arange(960, dtype=np.int16) + 100
    mono = frame_to_mono(_stereo_packed(left, right))
    assert mono.dtype == np.int16 and mono.shape == (960,)
    expected = ((left.astype(np.int32) + right.astype(np.int32)) // 2).astype(np.int16)
    np.testing.assert_array_equal(mono, expected)


def test_planar_stereo_frame_is_mixed_to_mono() -> None:
    left = np.full(480, 1000, np.int16)
    right = np.full(480, 3000, np.int16)
    frame = av.AudioFrame.from_ndarray(np.stack([left, right]), format="s16p", layout="stereo")
    np.testing.assert_array_equal(frame_to_mono(frame), np.full(480, 2000, np.int16))


def test_full_scale_stereo_does_not_overflow() -> None:
    loud = np.full(960, 32767, np.int16)
    assert int(frame_to_mono(_stereo_packed(loud, loud)).min()) == 32767


def test_mono_frame_round_trips_and_is_stamped() -> None:
    samples = (np.sin(np.arange(960) / 10) * 10000).astype(np.int16)
    frame = mono_frame(samples, 48000, pts=960 * 7)
    assert frame.sample_rate == 48000 and frame.pts == 6720 and frame.samples == 960
    np.testing.assert_array_equal(frame_to_mono(frame), samples)


def test_float_frames_are_refused() -> None:
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="flt", layout="mono")
    with pytest.raises(ValueError, match="not s16"):
        frame_to_mono(frame)


def test_dtmf_and_hangup_messages() -> None:
    assert parse_data_message('{"type": "dtmf", "digit": "5"}') == DtmfReceived("5", 0)
    assert parse_data_message(json.dumps({"type": "dtmf", "digit": "#", "duration_ms": 120})) == DtmfReceived("#", 120)
    assert isinstance(parse_data_message('{"type": "hangup"}'), HungUp)


@pytest.mark.parametrize(("message", "error"), [
    (b'{"type": "dtmf"}', "binary"),
    ("not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"type": "dtmf", "digit": "55"}', "DTMF digit"),
    ('{"type": "dtmf", "digit": 5}', "DTMF digit"),
    ('{"type": "dtmf", "digit": "5", "duration_ms": -1}', "duration_ms"),
    ('{"type": "reboot"}', "unknown"),
    ('{"type": "dtmf", "digit": "1", "pad": "' + "x" * 5000 + '"}', "exceeds"),
])
def test_bad_data_messages_raise_precise_errors(message: str | bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_data_message(message)


def test_pacer_deadlines_are_absolute_over_ten_minutes() -> None:
    pacer = DeadlinePacer(start_s=100.0, period_s=0.02)
    now = 100.0
    for _ in range(30000):  # 10 minutes of 20 ms packets, each sent 3 ms late
        now = pacer.deadline() + 0.003
        pacer.advance(now)
    assert pacer.index == 30000
    assert pacer.deadline() == pytest.approx(100.0 + 600.0, abs=1e-9)  # lateness never accumulates
    assert pacer.skipped == 0


def test_pacer_skips_ahead_after_a_long_stall_and_keeps_the_grid() -> None:
    pacer = DeadlinePacer(start_s=0.0, period_s=0.02, max_late_s=1.0)
    pacer.advance(0.0)
    pacer.advance(2.5)  # packet 1 (due at 0.02 s) left 2.48 s late; packet 2 is due at 0.04 s
    assert pacer.skipped == 123
    assert pacer.deadline() == pytest.approx(0.02 * 125)  # back on the grid, not in the past
    assert 2.5 - 0.02 < pacer.deadline() <= 2.5 + 1e-9


def test_fifo_cuts_packets_and_reports_underruns() -> None:
    fifo = SampleFifo(PACKET_SAMPLES)
    assert not fifo.ready()
    assert fifo.pop() is None and fifo.underruns == 1
    fifo.push(np.arange(1500, dtype=np.int16))
    assert fifo.ready()
    first = fifo.pop()
    assert first is not None
    np.testing.assert_array_equal(first, np.arange(960, dtype=np.int16))
    assert fifo.pop() is None and len(fifo) == 540


def test_fifo_drops_leading_silence_above_high_water_but_never_speech() -> None:
    fifo = SampleFifo(100, high_water_packets=2, max_packets=50)
    fifo.push(np.zeros(300, np.int16))
    fifo.push(np.full(200, 7, np.int16))
    out = fifo.pop()
    assert out is not None
    assert fifo.dropped_silence_packets == 3  # 500 buffered > 200: silent packets go first
    np.testing.assert_array_equal(out, np.full(100, 7, np.int16))
    fifo.push(np.full(500, 9, np.int16))  # speech above high water stays
    assert fifo.pop() is not None and len(fifo) == 500 and fifo.dropped_silence_packets == 3


def test_fifo_hard_limit_drops_the_oldest_audio() -> None:
    fifo = SampleFifo(10, high_water_packets=2, max_packets=5)
    fifo.push(np.arange(1, 71, dtype=np.int16))
    assert len(fifo) == 50 and fifo.dropped_audio_samples == 20
    out = fifo.pop()
    assert out is not None and int(out[0]) == 21


def test_pacing_stats_drift() -> None:
    stats = PacingStats(packets=3001, first_sent_s=10.0, last_sent_s=10.0 + 60.0 + 0.004, last_index=3000)
    assert stats.drift_s == pytest.approx(0.004)
    skipped = PacingStats(packets=2901, first_sent_s=10.0, last_sent_s=70.001, last_index=3000, skipped=100)
    assert skipped.drift_s == pytest.approx(0.001)
    assert PacingStats().drift_s == 0.0


def _prefetch(pc: object) -> list[int]:
    return [t.receiver._RTCRtpReceiver__jitter_buffer._prefetch  # type: ignore[attr-defined]
            for t in pc.getTransceivers() if t.kind == "audio"]  # type: ignore[attr-defined]


async def test_low_latency_receive_shrinks_aiortc_audio_prefetch_on_both_sides() -> None:
    """aiortc holds 4 audio packets (80 ms) before decoding; both the offering peer (the simulator's
    caller) and the answering one (the server) get RECEIVE_PREFETCH_PACKETS instead."""
    offerer, answerer = peer_connection(), peer_connection()
    try:
        offerer.addTrack(PacedAudioTrack())
        assert _prefetch(offerer) == [4]  # aiortc's own: if this changes, revisit RECEIVE_PREFETCH_PACKETS
        assert low_latency_receive(offerer) == 1
        assert _prefetch(offerer) == [RECEIVE_PREFETCH_PACKETS] and RECEIVE_PREFETCH_PACKETS < 4
        await offerer.setLocalDescription(await offerer.createOffer())
        answerer.addTrack(PacedAudioTrack())
        await answerer.setRemoteDescription(offerer.localDescription)
        assert low_latency_receive(answerer) == 1
        assert _prefetch(answerer) == [RECEIVE_PREFETCH_PACKETS]
        assert low_latency_receive(answerer) == 0  # idempotent
    finally:
        await offerer.close()
        await answerer.close()
