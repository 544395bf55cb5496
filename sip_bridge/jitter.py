"""Receive-side jitter buffer: puts RTP packets back in sequence order, declares loss, no clock.

Theory of operation
-------------------
Packets are keyed by sequence number relative to the next one due (RFC 3550 §A.1 arithmetic
modulo 2^16). In the normal case a packet is the one due and leaves at once: the buffer adds
no delay. A packet ahead of a gap waits; the gap is declared lost (``JitterItem.lost``, the
caller conceals it) when the oldest waiting packet has waited ``max_wait_ms`` or when
``max_held`` packets wait. A packet behind the playout point is late and dropped; a repeat is
a duplicate and dropped. A jump of more than ``max_jump`` sequence numbers (a restarted or
replaced source) resynchronises. Non-media packets that share the sequence space (RFC 4733
events) are ``mark``-ed so that their slots are not mistaken for loss.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

SEQUENCE_MODULO = 1 << 16
HALF_SEQUENCE = 1 << 15


@dataclass(frozen=True)
class JitterItem:
    sequence_number: int
    payload_type: int
    payload: bytes
    lost: bool = False


@dataclass
class _Held:
    item: JitterItem | None  # None: a non-media slot (telephone-event)
    arrived_s: float


class JitterBuffer:
    def __init__(self, *, max_wait_ms: int = 60, max_held: int = 16, max_jump: int = 100,
                 max_conceal: int = 10) -> None:
        if max_wait_ms < 0 or max_held < 1 or max_jump < max_held:
            raise ValueError(f"bad jitter buffer limits: wait {max_wait_ms} ms, held {max_held}, jump {max_jump}")
        self.max_wait_s = max_wait_ms / 1000
        self.max_held = max_held
        self.max_jump = max_jump
        self.max_conceal = max_conceal  # longest gap filled with lost items; beyond it, skipped
        self._next: int | None = None
        self._held: dict[int, _Held] = {}  # offset from self._next -> packet
        self.stats: Counter[str] = Counter()

    def reset(self) -> None:
        """Forget the stream (new SSRC): buffered packets are dropped."""
        self.stats["reset_dropped"] += sum(1 for h in self._held.values() if h.item is not None)
        self._held.clear()
        self._next = None

    @property
    def held(self) -> int:
        return len(self._held)

    def push(self, sequence_number: int, payload_type: int, payload: bytes, now: float) -> None:
        self._place(sequence_number, JitterItem(sequence_number, payload_type, payload), now)

    def mark(self, sequence_number: int, now: float) -> None:
        """A non-media packet (telephone-event) used this sequence number."""
        self._place(sequence_number, None, now)

    def _place(self, sequence_number: int, item: JitterItem | None, now: float) -> None:
        if not 0 <= sequence_number < SEQUENCE_MODULO:
            raise ValueError(f"RTP sequence number {sequence_number} outside 0-65535")
        if self._next is None:
            self._next = sequence_number
        offset = (sequence_number - self._next) % SEQUENCE_MODULO
        if offset >= HALF_SEQUENCE:  # behind the playout point
            if SEQUENCE_MODULO - offset > self.max_jump:
                self._resync(sequence_number)
                offset = 0
            else:
                self.stats["late"] += 1
                return
        elif offset > self.max_jump:
            self._resync(sequence_number)
            offset = 0
        if offset in self._held:
            self.stats["duplicates"] += 1
            return
        self._held[offset] = _Held(item, now)
        self.stats["received"] += 1

    def _resync(self, sequence_number: int) -> None:
        self.stats["resyncs"] += 1
        self.stats["reset_dropped"] += sum(1 for h in self._held.values() if h.item is not None)
        self._held.clear()
        self._next = sequence_number

    def pop(self, now: float) -> list[JitterItem]:
        """Everything that can leave now, in order; gaps given up on come out as ``lost`` items."""
        out: list[JitterItem] = []
        while self._held and self._next is not None:
            if 0 in self._held:
                held = self._held.pop(0)
                if held.item is not None:
                    out.append(held.item)
                self._advance(1)
                continue
            oldest = min(h.arrived_s for h in self._held.values())
            if now - oldest < self.max_wait_s and len(self._held) < self.max_held:
                break
            gap = min(self._held)
            self.stats["lost"] += gap
            for k in range(min(gap, self.max_conceal)):
                out.append(JitterItem((self._next + k) % SEQUENCE_MODULO, -1, b"", lost=True))
            self._advance(gap)
        return out

    def _advance(self, count: int) -> None:
        assert self._next is not None
        self._next = (self._next + count) % SEQUENCE_MODULO
        self._held = {offset - count: held for offset, held in self._held.items()}
