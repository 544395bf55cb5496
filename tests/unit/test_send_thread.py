"""The RTP send thread: deadlines on one grid, sends off the event loop, reports back on it."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from agent.g711 import ulaw_encode
from sip_bridge.rtp import RtpPacket
from sip_bridge.send_thread import RtpSendThread, grid_start
from tests.unit.test_sip_media import Clock, _media


class ScriptedStream:
    """A test double for CallMedia as the thread sees it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float, *, fail: bool = False) -> None:
        self.loop = loop
        self.deadline = deadline
        self.fail = fail
        self.sent_at: list[float] = []
        self.after: list[float] = []
        self.after_thread: list[int] = []
        self.reported = asyncio.Event()

    @property
    def next_deadline_s(self) -> float:
        return self.deadline

    def send_due(self, now: float) -> bool:
        if self.fail:
            raise RuntimeError("scripted failure")
        self.sent_at.append(now)
        self.deadline += 0.02
        return True

    def after_send(self, now: float) -> None:
        self.after.append(now)
        self.after_thread.append(threading.get_ident())
        self.reported.set()


def test_grid_start_puts_every_stream_on_one_grid() -> None:
    assert grid_start(100.013, 0.02) == pytest.approx(100.0)
    assert grid_start(100.027, 0.02) == pytest.approx(100.02)
    starts = {round(grid_start(t, 0.02) * 1000) % 20 for t in (5.001, 7.333, 9.999)}
    assert starts == {0}


async def test_tick_serves_due_streams_and_reports_on_their_loop() -> None:
    loop = asyncio.get_running_loop()
    clock = Clock()
    sender = RtpSendThread(clock=clock)
    due = ScriptedStream(loop, clock.t - 0.001)
    later = ScriptedStream(loop, clock.t + 0.015)
    broken = ScriptedStream(loop, clock.t, fail=True)
    sender._tick([broken, due, later], clock.t - 0.001)
    assert due.sent_at == [clock.t] and later.sent_at == []
    assert sender.stats["stream_errors"] == 1, "a failing stream is counted; the others are still served"
    assert due.after == []  # reported on the loop, not inside the thread's tick
    await asyncio.wait_for(due.reported.wait(), 1.0)
    assert due.after == [clock.t] and later.after == []
    assert sender.late_s == [pytest.approx(0.001)]


async def test_thread_sends_off_the_loop_and_ends_with_the_last_stream() -> None:
    loop = asyncio.get_running_loop()
    sender = RtpSendThread()
    stream = ScriptedStream(loop, loop.time())
    sender.add(stream)
    assert sender.running
    await asyncio.wait_for(stream.reported.wait(), 5.0)
    sender.remove(stream)
    thread = sender._thread
    if thread is not None:
        await asyncio.to_thread(thread.join, 5.0)
    assert not sender.running
    assert stream.sent_at and stream.after_thread[0] == threading.get_ident(), "after_send runs on the loop"


async def test_media_encodes_when_queued_and_reports_only_after_the_tick() -> None:
    clock = Clock()
    media, fake, _ = _media(clock)
    reported: list[int] = []
    made: list[int] = []
    media.on_sent = reported.append
    media.source = lambda: made.append(1)
    loud = np.full(160, 4000, np.int16)
    media.send_pcm(loud, 7)
    payload, sequence, _ = media.pacer._queue[0]
    assert payload == ulaw_encode(loud) and sequence == 7  # encoded on the loop, before the thread sends
    media.pacer = type(media.pacer)(clock.t - 0.02, packet_ms=20)
    media.pacer.enqueue((payload, 7, clock.t))
    assert media.send_due(clock.t) is True
    assert RtpPacket.parse(fake.sent[-1][0]).payload == payload
    assert reported == [] and made == []
    media.after_send(clock.t)
    assert reported == [7] and made == [1], "the loop reports the packet, then asks for the next one"
    assert media.send_due(clock.t + 0.001) is False  # the next deadline has not come


async def test_media_closed_is_never_sent_again() -> None:
    clock = Clock()
    media, fake, _ = _media(clock)
    media.pacer = type(media.pacer)(clock.t - 0.02, packet_ms=20)
    await media.close()
    assert media.send_due(clock.t) is False and fake.sent == [] and fake.closed
