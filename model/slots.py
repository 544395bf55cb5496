"""Slots of a batched per-stream state: one slot per stream, reused when a stream ends."""

from __future__ import annotations


class SlotPool:
    """Free-slot bookkeeping; a subclass owns the tensors and implements ``_grow`` and ``reset``."""

    def __init__(self) -> None:
        self.capacity = 0
        self.free: list[int] = []

    def _grow(self, capacity: int) -> None:
        """Make room for ``capacity`` slots (the new ones become free); subclasses extend their state first."""
        self.free.extend(range(self.capacity, capacity))
        self.capacity = capacity

    def reset(self, slots: list[int]) -> None:
        raise NotImplementedError

    def open(self) -> int:
        """A free slot, reset for a new stream (the state grows by doubling when all are taken)."""
        if not self.free:
            self._grow(max(4, 2 * self.capacity))
        slot = min(self.free)
        self.free.remove(slot)
        self.reset([slot])
        return slot

    def close(self, slot: int) -> None:
        if slot not in self.free and 0 <= slot < self.capacity:
            self.free.append(slot)

    @property
    def open_slots(self) -> int:
        return self.capacity - len(self.free)
