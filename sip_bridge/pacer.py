"""Outgoing packet pacing on absolute deadlines, with a bounded queue that barge-in can flush.

Deadline k is ``start_s + k * packet_ms``: the sender never chains sleeps, so scheduling error
does not accumulate. ``due(now)`` says how many deadlines have passed since the last call; each
one sends exactly one packet (queued audio, else silence), so the RTP timestamp advances with
real time. After a stall longer than ``max_burst`` packets the missed deadlines are skipped
(counted), not sent in a burst, and as many queued packets are dropped as stale, so a stall
never adds lasting latency. Pure: the caller passes ``now`` and owns the loop.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Generic, TypeVar

T = TypeVar("T")


class PacedSender(Generic[T]):
    def __init__(self, start_s: float, *, packet_ms: int = 20, max_queue: int = 25, max_burst: int = 5,
                 high_water: int = 2) -> None:
        if packet_ms <= 0 or max_queue < 1 or max_burst < 1:
            raise ValueError(f"bad pacer settings: packet {packet_ms} ms, queue {max_queue}, burst {max_burst}")
        self.start_s = start_s
        self.packet_s = packet_ms / 1000
        self.max_queue = max_queue
        self.max_burst = max_burst
        self.high_water = high_water
        self.sent_ticks = 0  # deadlines handled so far
        self.skipped_last = 0  # deadlines the last ``due`` skipped (the stream clock must still advance)
        self._queue: deque[T] = deque()
        self.stats: Counter[str] = Counter()

    @property
    def next_deadline_s(self) -> float:
        return self.start_s + (self.sent_ticks + 1) * self.packet_s

    @property
    def queued(self) -> int:
        return len(self._queue)

    def enqueue(self, item: T, droppable: bool = False) -> None:
        """Queue one packet. A `droppable` one (silence) is dropped when `high_water` packets already
        wait: the producer and the pacer run at the same rate, so a backlog left by a burst would
        otherwise add latency for the rest of the call; silence is where it drains."""
        if droppable and len(self._queue) >= self.high_water:
            self.stats["silence_dropped"] += 1
            return
        if len(self._queue) >= self.max_queue:
            self._queue.popleft()
            self.stats["overflow_dropped"] += 1
        self._queue.append(item)

    def flush(self) -> int:
        """Drop every queued packet at once (barge-in); returns how many."""
        dropped = len(self._queue)
        self._queue.clear()
        self.stats["flushed"] += dropped
        return dropped

    def due(self, now: float) -> int:
        """How many packets to send now (deadlines passed since the last call)."""
        passed = int((now - self.start_s) / self.packet_s + 1e-9) - self.sent_ticks
        self.skipped_last = 0
        if passed <= 0:
            return 0
        if passed > self.max_burst:
            skipped = passed - 1
            self.stats["skipped_ticks"] += skipped
            self.skipped_last = skipped
            self.sent_ticks += skipped
            stale = min(skipped, len(self._queue))  # their time has passed: keep latency bounded
            for _ in range(stale):
                self._queue.popleft()
            self.stats["stale_dropped"] += stale
            passed = 1
        self.sent_ticks += passed
        return passed

    def take(self) -> T | None:
        """The next queued packet, or None (send silence / comfort noise)."""
        if self._queue:
            return self._queue.popleft()
        self.stats["underruns"] += 1
        return None
