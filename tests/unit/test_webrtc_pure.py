"""Pure parts of the WebRTC adapters: frame conversion, data-channel messages, pacing, the send FIFO."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from agent.transport import DtmfReceived, HungUp
from agent.webrtc import (
    PACKET_SAMPLES,
    DeadlinePacer,
    PacedAudioTrack,
    PacingStats,
    SampleFifo,
    frame_to_mono,
    mono_frame,
    parse_data_message,
    peer_connection,
)
from agent.webrtc_receive import AudioJitterBuffer, TimestampGaps, low_latency_receive


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


def _buffers(pc: object) -> list[object]:
    return [t.receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
            for t in pc.getTransceivers() if t.kind == "audio"]  # type: ignore[attr-defined]


async def test_low_latency_receive_replaces_aiortc_audio_buffers_on_both_sides() -> None:
    """Both the offering peer (the simulator's caller) and the answering one (the server) get an
    AudioJitterBuffer in place of aiortc's, which waits for 4 packets; a second call changes nothing."""
    from aiortc.jitterbuffer import JitterBuffer

    offerer, answerer = peer_connection(), peer_connection()
    try:
        offerer.addTrack(PacedAudioTrack())
        before = _buffers(offerer)
        assert len(before) == 1 and isinstance(before[0], JitterBuffer) and before[0]._prefetch == 4  # type: ignore[attr-defined]
        installed = low_latency_receive(offerer)
        assert len(installed) == 1 and _buffers(offerer) == installed
        await offerer.setLocalDescription(await offerer.createOffer())
        answerer.addTrack(PacedAudioTrack())
        await answerer.setRemoteDescription(offerer.localDescription)
        installed = low_latency_receive(answerer)
        assert len(installed) == 1 and isinstance(installed[0], AudioJitterBuffer)
        assert _buffers(answerer) == installed
        assert low_latency_receive(answerer) == []  # idempotent
    finally:
        await offerer.close()
        await answerer.close()


class _Packet:
    """The fields of an aiortc RtpPacket the receive buffer reads (test double)."""

    def __init__(self, sequence_number: int, timestamp: int) -> None:
        self.sequence_number = sequence_number
        self.timestamp = timestamp
        self.payload_type = 111
        self._data = bytes([sequence_number % 256])


def _released(buffer: AudioJitterBuffer, *sequence: int) -> list[int | None]:
    out: list[int | None] = []
    for seq in sequence:
        pli, frame = buffer.add(_Packet(seq, seq * 960))
        assert pli is False
        out.append(None if frame is None else frame.timestamp // 960)
        if frame is not None:
            assert frame.data == bytes([seq % 256])
    return out


def test_audio_jitter_buffer_releases_each_packet_on_arrival() -> None:
    """aiortc's buffer holds a packet until the next arrives; this one hands out every packet at once."""
    buffer = AudioJitterBuffer()
    assert _released(buffer, 100, 101, 102) == [100, 101, 102]
    assert buffer.stats["received"] == 3 and buffer.stats["lost"] == 0


def test_audio_jitter_buffer_skips_a_lost_packet_instead_of_stalling() -> None:
    """A gap is counted lost and the packet after it leaves at once; the lost one arriving later is
    late and dropped, so the stream never backs up (aiortc's would wait 16 packets, then lag 15)."""
    buffer = AudioJitterBuffer()
    assert _released(buffer, 7, 9, 10, 8, 11) == [7, 9, 10, None, 11]
    assert buffer.stats["lost"] == 1 and buffer.stats["late"] == 1
    assert _released(buffer, 11) == [None] and buffer.stats["late"] == 2  # a repeat is behind the playout point too


def test_audio_jitter_buffer_wraps_and_resynchronises() -> None:
    buffer = AudioJitterBuffer()
    assert _released(buffer, 65534, 65535, 0, 1) == [65534, 65535, 0, 1]
    assert buffer.stats["lost"] == 0
    assert _released(buffer, 30000, 30001) == [30000, 30001]  # a restarted source, not 29999 losses
    assert buffer.stats["resyncs"] == 1 and buffer.stats["lost"] == 0


def test_timestamp_gaps_fill_lost_audio_up_to_the_limit() -> None:
    from fractions import Fraction

    gaps = TimestampGaps(max_conceal_s=Fraction(1, 5))
    packet = Fraction(20, 1000)
    assert gaps.missing_before(Fraction(0), packet) == 0  # the first frame
    assert gaps.missing_before(packet, packet) == 0  # in order
    assert gaps.missing_before(4 * packet, packet) == 2 * packet  # two packets lost
    assert gaps.missing_before(5 * packet, packet) == 0
    assert gaps.missing_before(6 * packet + Fraction(1, 2), packet) == 0  # 500 ms of DTX: too long to fill
    assert gaps.missing_before(Fraction(0), packet) == 0  # a jump back: start afresh
    assert gaps.missing_before(packet, packet) == 0
    assert gaps.concealed_s == 2 * packet and gaps.skipped == 2


class _ScriptedTrack:
    """A remote audio track that yields the given frames, then ends (test double)."""

    kind = "audio"

    def __init__(self, frames: list[av.AudioFrame]) -> None:
        self._frames = list(frames)

    async def recv(self) -> av.AudioFrame:
        from aiortc.mediastreams import MediaStreamError

        if not self._frames:
            raise MediaStreamError
        return self._frames.pop(0)


async def test_transport_fills_lost_packets_with_silence_from_frame_timestamps() -> None:
    """Packets 2 and 3 never arrive: the session still gets 5 packets' time, the gap as silence, so a
    caller's pause keeps its length on the call's timeline."""
    from agent.transport import AudioReceived
    from agent.webrtc import WebRtcTransport

    transport = WebRtcTransport(peer_connection())
    tone = np.full(PACKET_SAMPLES, 1000, np.int16)
    frames = [mono_frame(tone, 48000, k * PACKET_SAMPLES) for k in (0, 1, 4)]
    try:
        await transport._pump_audio(_ScriptedTrack(frames))  # type: ignore[arg-type]
        audio = []
        while not transport._events.empty():
            ev = transport._events.get_nowait()
            if isinstance(ev, AudioReceived):
                audio.append(ev.samples)
        heard = np.concatenate(audio)
        assert heard.size == 5 * PACKET_SAMPLES
        assert np.all(heard[2 * PACKET_SAMPLES:4 * PACKET_SAMPLES] == 0)
        assert np.all(heard[4 * PACKET_SAMPLES:] == 1000) and np.all(heard[:2 * PACKET_SAMPLES] == 1000)
        assert transport.receive_stats()["concealed_ms"] == 40
    finally:
        await transport.close()
