"""The one capacity authority: every transport (SIP, WebRTC, dial, in-process) takes a slot here.

Theory of operation
-------------------
A call holds a slot from the moment it is *offered* (SIP INVITE, WebRTC offer, an outgoing dial)
until it is over, whatever path it takes:

* ``reserve(transport)`` at the offer: refused (`CallRefused`, counted) when draining or when every
  slot is reserved or committed. This is the only place a call is ever refused for capacity.
* ``Reservation.commit()`` at the answer (SIP 200 OK sent, WebRTC connected): never refuses. Once
  a call was answered it runs, draining or not, so a 200 OK is never followed by a refusal.
* ``Reservation.release()`` on every end (ended, cancelled, failed to negotiate, timed out,
  refused by the remote): idempotent, so every cleanup path may call it.

``/healthz``, SIP OPTIONS and every 503 read ``free_slots`` / ``accepting`` from here.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field


class CallRefused(Exception):
    """No call can be taken now; `reason` is 'full', 'draining', 'overloaded' or 'engine_restarting'."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(eq=False)
class Reservation:
    """One call's slot: reserved at the offer, committed at the answer, released at the end."""

    capacity: Capacity
    key: int
    transport: str
    state: str = "reserved"  # reserved | committed | released

    def commit(self) -> None:
        """The call was answered: it keeps its slot until released (never refused from here on)."""
        if self.state == "released":
            raise RuntimeError(f"reservation {self.key} ({self.transport}) committed after its release")
        if self.state == "reserved":
            self.state = "committed"
            self.capacity.counters["committed"] += 1

    def release(self) -> None:
        if self.state != "released":
            self.state = "released"
            self.capacity._release(self)


@dataclass
class Capacity:
    max_calls: int
    draining: bool = False
    counters: Counter[str] = field(default_factory=Counter)
    _held: dict[int, Reservation] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        if self.max_calls < 1:
            raise ValueError(f"max_calls must be at least 1, got {self.max_calls}")

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def committed(self) -> int:
        return sum(r.state == "committed" for r in self._held.values())

    @property
    def reserved(self) -> int:
        return sum(r.state == "reserved" for r in self._held.values())

    @property
    def free_slots(self) -> int:
        return max(0, self.max_calls - len(self._held))

    @property
    def accepting(self) -> bool:
        return not self.draining and self.free_slots > 0

    def by_transport(self) -> dict[str, int]:
        return dict(Counter(r.transport for r in self._held.values()))

    def check(self) -> None:
        """Raise CallRefused (counted) if a reservation would be refused now."""
        if self.draining:
            self.counters["refused_draining"] += 1
            raise CallRefused("draining")
        if len(self._held) >= self.max_calls:
            self.counters["refused_full"] += 1
            raise CallRefused("full")

    def reserve(self, transport: str) -> Reservation:
        self.check()
        r = Reservation(self, next(self._ids), transport)
        self._held[r.key] = r
        self.counters["reserved"] += 1
        return r

    def _release(self, r: Reservation) -> None:
        self._held.pop(r.key, None)
        self.counters["released"] += 1
