"""Playout truth from the transports: SIP reports the packets it really sent, WebRTC the frames aiortc
pulled for encoding; a pause holds the queued audio (nothing dropped), a flush drops it."""

from __future__ import annotations

import asyncio

import numpy as np

from agent.transport import PacketsPlayed
from agent.webrtc import PacedAudioTrack, SampleFifo
from sip_bridge.transport import SipCallTransport
from tests.unit.test_sip_media import Clock, _media


async def test_sip_reports_only_packets_sent_on_the_wire_and_pause_keeps_them() -> None:
    clock = Clock()
    media, fake, _ = _media(clock)
    transport = SipCallTransport("c-1", media, lambda call, reason: None)
    loud = np.full(160, 8000, np.int16)
    for seq in range(6):
        transport.send_tracked(loud, seq)

    def tick(t: float) -> None:  # the send thread's tick, then the loop's report
        media._send_tick(t)
        media.after_send(t)

    tick(clock.t)
    tick(clock.t + 0.02)
    transport.pause_output()
    tick(clock.t + 0.04)  # paused: silence goes out, the queue is kept
    transport.resume_output()
    media._send_tick(clock.t + 0.06)
    assert transport._events.qsize() == 2, "a sent packet is reported by the loop, after the send tick"
    media.after_send(clock.t + 0.06)
    reports = []
    while not transport._events.empty():
        ev = await transport.receive()
        assert isinstance(ev, PacketsPlayed)
        reports.append(ev.sequence)
    assert reports == [0, 1, 2], "each sent packet is reported once, in order; none while paused"
    assert len(fake.sent) == 4 and media.pacer.queued == 3
    transport.pause_output()
    assert transport.flush() == 3 and not media.output_paused  # a barge-in drops it, unreported
    tick(clock.t + 0.08)
    assert transport._events.empty()


def test_fifo_labels_follow_their_packets_through_drops() -> None:
    fifo = SampleFifo(10, high_water_packets=2, max_packets=5)
    for label in range(3):
        fifo.push(np.full(10, label + 1, np.int16), label)
    fifo.push(np.zeros(10, np.int16))  # unlabelled silence
    samples, label = fifo.pop_labelled()
    assert samples is not None and int(samples[0]) == 1 and label == 0
    for label in range(3, 7):  # over the hard limit: the oldest packets and their labels go
        fifo.push(np.full(10, 9, np.int16), label)
    labels = []
    while True:
        samples, label = fifo.pop_labelled()
        if samples is None:
            break
        labels.append(label)
    # labels 1 and 2 went with the oldest packets over the limit, None with the silence dropped
    assert labels == [3, 4, 5, 6] and fifo.dropped_silence_packets == 1
    fifo.push(np.full(10, 1, np.int16), 7)
    fifo.clear()
    assert fifo.pop_labelled() == (None, None)


async def test_webrtc_reports_frames_pulled_for_encoding_and_pause_sends_silence() -> None:
    clock = Clock()
    track = PacedAudioTrack(clock=clock, grace_s=0)
    reported: list[int] = []
    track.on_sent = reported.append
    n = track.packet_samples
    for seq in range(3):
        track.push(np.full(n, 1000 + seq, np.int16), seq)
    first = await track.recv()
    track.paused = True
    clock.t += 0.02
    held = await track.recv()
    track.paused = False
    clock.t += 0.02
    second = await track.recv()
    assert reported == [0, 1]
    assert int(first.to_ndarray()[0, 0]) == 1000 and int(held.to_ndarray()[0, 0]) == 0
    assert int(second.to_ndarray()[0, 0]) == 1001 and len(track.fifo) == n
    await asyncio.sleep(0)


async def test_one_grid_the_frame_deadline_asks_the_session_for_its_packet() -> None:
    clock = Clock()
    track = PacedAudioTrack(clock=clock, grace_s=0.5)
    n = track.packet_samples
    made: list[int] = []

    def source() -> None:  # the session's tick: makes the packet for this deadline
        made.append(len(made))
        track.push(np.full(n, 500 + len(made), np.int16), len(made))

    track.source = source
    frames = []
    for _ in range(3):
        frames.append(await track.recv())
        clock.t += 0.02
    assert made == [0, 1, 2]
    assert [int(f.to_ndarray()[0, 0]) for f in frames] == [501, 502, 503]  # sent at the deadline it was made for
    assert len(track.fifo) == 0
