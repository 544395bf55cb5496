"""Pure media logic: jitter buffer, RFC 4733 DTMF in/out, paced sending, and CallMedia's flush."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from agent.g711 import ulaw_encode
from sip_bridge.dtmf import DtmfDigit, DtmfReceiver, digit_packets
from sip_bridge.jitter import JitterBuffer
from sip_bridge.media import CallMedia, MediaCallbacks, RtpSocket, _RtpProtocol
from sip_bridge.pacer import PacedSender
from sip_bridge.rtp import RtpPacket, TelephoneEvent
from sip_bridge.sdp import Codec, Direction, NegotiatedMedia

# --- jitter buffer -------------------------------------------------------------------------------


def _seqs(items: list[Any]) -> list[tuple[int, bool]]:
    return [(i.sequence_number, i.lost) for i in items]


def test_in_order_packets_leave_at_once() -> None:
    jb = JitterBuffer(max_wait_ms=60)
    out = []
    for k in range(5):
        jb.push(100 + k, 0, bytes([k]), now=k * 0.02)
        out += jb.pop(now=k * 0.02)
    assert _seqs(out) == [(100 + k, False) for k in range(5)]
    assert jb.held == 0


def test_reordered_packet_is_put_back_in_order() -> None:
    jb = JitterBuffer(max_wait_ms=60)
    jb.push(10, 0, b"a", 0.0)
    assert _seqs(jb.pop(0.0)) == [(10, False)]
    jb.push(12, 0, b"c", 0.04)
    assert jb.pop(0.04) == []  # 11 may still come
    jb.push(11, 0, b"b", 0.045)
    assert [i.payload for i in jb.pop(0.045)] == [b"b", b"c"]
    assert jb.stats["lost"] == 0


def test_gap_is_declared_lost_after_max_wait() -> None:
    jb = JitterBuffer(max_wait_ms=60)
    jb.push(10, 0, b"a", 0.0)
    jb.pop(0.0)
    jb.push(13, 0, b"d", 0.08)
    assert jb.pop(0.10) == []
    out = jb.pop(0.14)  # 13 has waited 60 ms: 11 and 12 are lost
    assert _seqs(out) == [(11, True), (12, True), (13, False)]
    assert jb.stats["lost"] == 2
    jb.push(12, 0, b"late", 0.15)
    assert jb.pop(0.15) == [] and jb.stats["late"] == 1


def test_duplicates_and_sequence_wrap() -> None:
    jb = JitterBuffer()
    jb.push(65535, 0, b"x", 0.0)
    jb.push(65535, 0, b"x", 0.001)
    jb.push(0, 0, b"y", 0.02)
    assert _seqs(jb.pop(0.02)) == [(65535, False), (0, False)]
    assert jb.stats["duplicates"] == 1


def test_big_jump_resynchronises() -> None:
    jb = JitterBuffer(max_jump=100)
    jb.push(1000, 0, b"a", 0.0)
    jb.pop(0.0)
    jb.push(30000, 0, b"b", 0.02)
    assert _seqs(jb.pop(0.02)) == [(30000, False)]
    assert jb.stats["resyncs"] == 1 and jb.stats["lost"] == 0


def test_marked_event_slots_are_not_loss() -> None:
    jb = JitterBuffer(max_wait_ms=0)
    jb.push(1, 0, b"a", 0.0)
    jb.mark(2, 0.02)
    jb.push(3, 0, b"c", 0.04)
    assert _seqs(jb.pop(0.04)) == [(1, False), (3, False)]
    assert jb.stats["lost"] == 0


def test_too_many_held_forces_loss_without_waiting() -> None:
    jb = JitterBuffer(max_wait_ms=1000, max_held=4)
    jb.push(0, 0, b"a", 0.0)
    jb.pop(0.0)
    for k in range(2, 6):  # 1 missing, 4 held
        jb.push(k, 0, b"z", 0.0)
    assert _seqs(jb.pop(0.0))[0] == (1, True)


# --- DTMF ------------------------------------------------------------------------------------------


def _ev(code: int, end: bool, duration: int) -> TelephoneEvent:
    return TelephoneEvent(code, end, 10, duration)


def test_dtmf_digit_reported_once_at_end_with_retransmitted_ends() -> None:
    rx = DtmfReceiver(8000)
    got: list[DtmfDigit] = []
    for k, duration in enumerate((160, 320, 480)):
        got += rx.handle(1000, _ev(5, False, duration), k * 0.02)
    for k in range(3):
        got += rx.handle(1000, _ev(5, True, 800), 0.1 + k * 0.02)
    assert got == [DtmfDigit("5", 100)]


def test_dtmf_without_marker_two_same_digits_are_two_events() -> None:
    """Markers are never looked at: the timestamp separates events (RFC 4733 §2.5.2)."""
    rx = DtmfReceiver(8000)
    got = rx.handle(1000, _ev(1, False, 160), 0.0) + rx.handle(1000, _ev(1, True, 640), 0.02)
    got += rx.handle(3000, _ev(1, False, 160), 0.3) + rx.handle(3000, _ev(1, True, 640), 0.32)
    assert [d.digit for d in got] == ["1", "1"]


def test_dtmf_lost_end_packets_reported_on_next_event_or_timeout() -> None:
    rx = DtmfReceiver(8000, end_timeout_s=0.5)
    assert rx.handle(1000, _ev(9, False, 400), 0.0) == []
    assert rx.handle(5000, _ev(11, False, 160), 0.2) == [DtmfDigit("9", 50)]
    assert rx.expire(0.6) == []
    assert rx.expire(0.71) == [DtmfDigit("#", 20)]
    assert rx.expire(2.0) == []


def test_digit_packets_follow_rfc4733() -> None:
    packets = digit_packets("7", 100, clock_rate=8000, packet_ms=20)
    events = [TelephoneEvent.parse(p.payload) for p in packets]
    assert [p.marker for p in packets] == [True, False, False, False, False, False, False]
    assert [e.duration for e in events] == [160, 320, 480, 640, 800, 800, 800]
    assert [e.end for e in events] == [False] * 4 + [True] * 3
    assert {e.event for e in events} == {7}
    rx = DtmfReceiver(8000)
    heard = [d for e in events for d in rx.handle(42, e, 0.0)]
    assert heard == [DtmfDigit("7", 100)]


# --- pacer -----------------------------------------------------------------------------------------


def test_pacer_deadlines_are_absolute() -> None:
    pacer: PacedSender[int] = PacedSender(100.0, packet_ms=20)
    assert pacer.next_deadline_s == pytest.approx(100.02)
    assert pacer.due(100.019) == 0
    assert pacer.due(100.0205) == 1
    assert pacer.next_deadline_s == pytest.approx(100.04)
    # a late wake-up (7 ms) does not shift the grid: the next deadline is still 100.06
    assert pacer.due(100.047) == 1
    assert pacer.next_deadline_s == pytest.approx(100.06)
    assert pacer.due(100.101) == 3  # 100.06, 100.08, 100.10 passed: three packets, back to back
    assert pacer.sent_ticks == 5


def test_pacer_skips_after_long_stall_and_counts() -> None:
    pacer: PacedSender[int] = PacedSender(0.0, packet_ms=20, max_burst=5, max_queue=100)
    for k in range(60):
        pacer.enqueue(k)
    assert pacer.due(1.0) == 1
    assert pacer.stats["skipped_ticks"] == 49 and pacer.skipped_last == 49
    assert pacer.next_deadline_s == pytest.approx(1.02)
    assert pacer.take() == 49  # 0..48 belonged to the skipped deadlines: dropped as stale
    assert pacer.stats["stale_dropped"] == 49


def test_pacer_queue_flush_and_overflow() -> None:
    pacer: PacedSender[int] = PacedSender(0.0, max_queue=3)
    for k in range(5):
        pacer.enqueue(k)
    assert pacer.stats["overflow_dropped"] == 2
    assert pacer.take() == 2
    assert pacer.flush() == 2 and pacer.queued == 0
    assert pacer.take() is None and pacer.stats["underruns"] == 1


# --- CallMedia (no sockets: a fake transport records what is sent) ---------------------------------


class FakeDatagramTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.closed = False

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _media(clock: Clock) -> tuple[CallMedia, FakeDatagramTransport, dict[str, list[Any]]]:
    fake = FakeDatagramTransport()
    sock = RtpSocket(fake, _RtpProtocol(), 31000)  # type: ignore[arg-type]
    seen: dict[str, list[Any]] = {"audio": [], "dtmf": [], "bad": [], "timeout": []}
    callbacks = MediaCallbacks(seen["audio"].append, lambda d, ms: seen["dtmf"].append(d),
                               lambda: seen["timeout"].append(True), seen["bad"].append)
    negotiated = NegotiatedMedia(Codec(0, "PCMU", 8000), Codec(101, "telephone-event", 8000, fmtp="0-16"),
                                 ("127.0.0.1", 40000), 40001, 20, Direction.SENDRECV)
    media = CallMedia(sock, negotiated, callbacks, rtp_timeout_s=5.0, clock=clock)
    media._started = True  # deliver audio without the send task: ticks are driven by hand
    return media, fake, seen


async def test_media_flush_drops_queued_audio_immediately() -> None:
    clock = Clock()
    media, fake, _ = _media(clock)
    loud = np.full(160, 8000, np.int16)
    for _ in range(10):
        media.send_pcm(loud)
    media._send_tick(clock.t)
    assert media.flush_output() == 9
    media._send_tick(clock.t + 0.02)
    first, second = (RtpPacket.parse(d) for d, _ in fake.sent)
    assert first.payload == ulaw_encode(loud)
    assert second.payload == ulaw_encode(np.zeros(160, np.int16))  # silence after the flush
    assert second.sequence_number == (first.sequence_number + 1) % 65536
    assert second.timestamp == (first.timestamp + 160) % 2**32


async def test_media_receive_reorders_decodes_and_counts_bad_packets() -> None:
    clock = Clock()
    media, _, seen = _media(clock)
    levels = [1000, 2000, 3000]
    packets = [RtpPacket(0, 500 + k, 160 * k, 77, ulaw_encode(np.full(160, lv, np.int16))).serialize()
               for k, lv in enumerate(levels)]
    media.receive_datagram(packets[0], ("127.0.0.1", 40000))
    media.receive_datagram(packets[2], ("127.0.0.1", 40000))
    media.receive_datagram(b"\x80\x00garbage", ("127.0.0.1", 40000))
    media.receive_datagram(RtpPacket(96, 9, 0, 77, b"x").serialize(), ("127.0.0.1", 40000))  # PT not negotiated
    media.receive_datagram(packets[1], ("127.0.0.1", 40000))
    medians = [float(np.median(a)) for a in seen["audio"]]
    assert len(medians) == 3
    assert all(abs(m - lv) < 0.05 * lv for m, lv in zip(medians, levels, strict=True))  # in order, decoded
    assert seen["bad"] == ["rtp", "rtp"]


async def test_media_dtmf_in_without_marker_and_symmetric_latch() -> None:
    clock = Clock()
    media, fake, seen = _media(clock)
    for k, (end, duration) in enumerate([(False, 160), (False, 320), (True, 480), (True, 480)]):
        payload = TelephoneEvent(3, end, 10, duration).serialize()
        media.receive_datagram(RtpPacket(101, 10 + k, 8000, 5, payload).serialize(), ("127.0.0.1", 45000))
    assert seen["dtmf"] == ["3"]
    media._send_tick(clock.t)
    assert fake.sent[-1][1] == ("127.0.0.1", 45000)  # we answer where the media comes from


async def test_media_rtp_timeout_fires_once_unless_on_hold() -> None:
    clock = Clock()
    media, _, seen = _media(clock)
    media._check_receive(clock.t + 4.9)
    assert seen["timeout"] == []
    media._check_receive(clock.t + 5.0)
    media._check_receive(clock.t + 9.0)
    assert seen["timeout"] == [True]
    held, _, seen_held = _media(clock)
    held.update(NegotiatedMedia(Codec(0, "PCMU", 8000), None, None, None, 20, Direction.INACTIVE))
    held._check_receive(clock.t + 60.0)
    assert seen_held["timeout"] == []
    await asyncio.sleep(0)


def test_pacer_drains_a_backlog_through_silence_but_keeps_speech() -> None:
    pacer: PacedSender[int] = PacedSender(0.0, max_queue=25, high_water=2)
    for k in range(6):  # a burst of speech: all kept, however deep
        pacer.enqueue(k)
    assert pacer.queued == 6
    pacer.enqueue(-1, droppable=True)  # silence arriving over the high-water mark: dropped
    assert pacer.queued == 6 and pacer.stats["silence_dropped"] == 1
    for _ in range(5):
        pacer.take()
    pacer.enqueue(-2, droppable=True)  # one waits: below the mark, silence is kept (no gap)
    assert pacer.queued == 2 and pacer.take() == 5 and pacer.take() == -2


async def test_media_jitter_buffer_waits_as_configured() -> None:
    """audio.jitter_buffer_ms reaches the RTP receive jitter buffer (via SipGateway -> CallMedia)."""
    fake = FakeDatagramTransport()
    sock = RtpSocket(fake, _RtpProtocol(), 31002)  # type: ignore[arg-type]
    callbacks = MediaCallbacks(lambda a: None, lambda d, ms: None, lambda: None, lambda k: None)
    negotiated = NegotiatedMedia(Codec(0, "PCMU", 8000), None, ("127.0.0.1", 40000), 40001, 20, Direction.SENDRECV)
    media = CallMedia(sock, negotiated, callbacks, clock=Clock(), jitter_buffer_ms=140)
    assert media.jitter.max_wait_s == 0.14
    assert CallMedia(RtpSocket(fake, _RtpProtocol(), 31004), negotiated, callbacks,  # type: ignore[arg-type]
                     clock=Clock()).jitter.max_wait_s == 0.06
