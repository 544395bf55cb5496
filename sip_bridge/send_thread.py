"""One thread sends every call's RTP on its 20 ms deadlines, away from the event loop's work.

Why a thread: the event loop also runs every call's receive path (jitter buffer, decoding,
resampling, VAD, the echo gate), the session logic and the engine's events. A send deadline that
falls inside that work left late: at 20 calls on 2 cores, |gap - 20 ms| p99 was 77 ms with the
sender as an asyncio task. Here one thread sleeps to the next deadline, takes the GIL (the process
runs with a 0.5 ms switch interval, ``agent.runtime``) and sends what the loop prepared a packet
ahead: every payload is already encoded, so the thread only writes the RTP header and calls
``sendto``. After each tick it posts one callback per event loop, which reports the packets that
left (the session's playout truth) and asks each call for its next packet (the session's tick:
one pacing grid, one packet of lead).

Every stream's deadlines lie on one process-wide 20 ms grid (multiples of the packet time on the
monotonic clock), so the thread wakes 50 times a second however many calls there are. The thread
starts with the first stream and ends with the last one. It asks for a higher scheduling priority
(nice - 10, as media threads do) and goes on without it where that is not permitted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol

from agent.log import event

log = logging.getLogger(__name__)

EARLY_S = 0.0003  # a deadline this close is served now (sleep granularity)


class SendStream(Protocol):
    """A stream the thread serves: ``CallMedia``."""

    loop: asyncio.AbstractEventLoop

    @property
    def next_deadline_s(self) -> float: ...

    def send_due(self, now: float) -> bool:
        """On the send thread: send what is due at `now`; True when something was handled."""
        ...

    def after_send(self, now: float) -> None:
        """On the stream's event loop, after a tick it handled."""
        ...


def grid_start(now: float, packet_s: float) -> float:
    """The grid point at or before `now` (the first deadline is the next one)."""
    return (now // packet_s) * packet_s


def _after_send_all(streams: Sequence[SendStream], now: float) -> None:
    for stream in streams:  # one call's failure never silences another
        try:
            stream.after_send(now)
        except Exception as exc:
            event(log, "rtp.after_send_error", logging.WARNING, error=repr(exc))


class RtpSendThread:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._streams: list[SendStream] = []
        self._thread: threading.Thread | None = None
        self.stats: Counter[str] = Counter()
        self.late_s: list[float] = []  # how late each wake was past its deadline, bounded

    @property
    def running(self) -> bool:
        return self._thread is not None

    def add(self, stream: SendStream) -> None:
        with self._cond:
            if stream not in self._streams:
                self._streams.append(stream)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rtp-send", daemon=True)
                self._thread.start()
            self._cond.notify()

    def remove(self, stream: SendStream) -> None:
        with self._cond:
            if stream in self._streams:
                self._streams.remove(stream)
            self._cond.notify()

    def _run(self) -> None:
        _raise_priority()
        while True:
            with self._cond:
                if not self._streams:
                    self._thread = None
                    return
                streams = list(self._streams)
                deadline = min(s.next_deadline_s for s in streams)
                delay = deadline - self._clock()
                if delay > EARLY_S:
                    self._cond.wait(delay)
                    continue  # a stream came or went, or the deadline is here: look again
            self._tick(streams, deadline)

    def _tick(self, streams: list[SendStream], deadline: float) -> None:
        now = self._clock()
        if len(self.late_s) < 100_000:
            self.late_s.append(now - deadline)
        posts: dict[asyncio.AbstractEventLoop, list[SendStream]] = {}
        for stream in streams:
            if stream.next_deadline_s > now + EARLY_S:
                continue
            try:
                handled = stream.send_due(max(now, stream.next_deadline_s))
            except Exception as exc:  # a bug in one stream must not stop the others
                self.stats["stream_errors"] += 1
                event(log, "rtp.send_thread_error", logging.WARNING, error=repr(exc))
                continue
            if handled:
                posts.setdefault(stream.loop, []).append(stream)
        for loop, batch in posts.items():
            try:
                loop.call_soon_threadsafe(_after_send_all, batch, now)
            except RuntimeError:  # that loop is closed: its streams are going away
                self.stats["closed_loop"] += 1


def _raise_priority() -> None:
    """nice - 10 for this thread (Linux: setpriority on a thread id), where permitted."""
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, max(-20, current - 10))
    except (OSError, AttributeError) as exc:
        event(log, "rtp.send_thread_priority", logging.DEBUG, raised=False, error=str(exc))


SEND_THREAD = RtpSendThread()
