"""RFC 4733 DTMF: recognising telephone events in, generating them out. Pure, no clock.

Receiving (RFC 4733 §2.5.2): all packets of one event share its RTP timestamp; the marker bit
*should* be set on the first, but senders and middleboxes lose it, so an event is recognised by
a new timestamp (or a new event code), never by the marker. A digit is reported once, at the
first packet with the end bit; retransmitted end packets (§2.5.1.4: three) are ignored. If every
end packet is lost, the digit is still reported when the next event starts or ``end_timeout_s``
after its last packet (``expire``).

Sending (§2.5.1): one packet per ``packet_ms`` with a growing duration, the first with the
marker bit, then the final packet three times with the end bit, all with the start timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass

from sip_bridge.rtp import TelephoneEvent, digit_event_code

END_REPEATS = 3
DEFAULT_VOLUME_DBM0 = 10


@dataclass(frozen=True)
class DtmfDigit:
    digit: str
    duration_ms: int


@dataclass
class _Current:
    timestamp: int
    event: int
    duration: int
    last_seen_s: float
    reported: bool = False


class DtmfReceiver:
    def __init__(self, clock_rate: int = 8000, *, end_timeout_s: float = 0.5) -> None:
        self.clock_rate = clock_rate
        self.end_timeout_s = end_timeout_s
        self._current: _Current | None = None

    def handle(self, timestamp: int, event: TelephoneEvent, now: float) -> list[DtmfDigit]:
        """One telephone-event packet; returns the digits recognised by it (usually 0 or 1)."""
        out: list[DtmfDigit] = []
        current = self._current
        if current is None or current.timestamp != timestamp or current.event != event.event:
            if current is not None and not current.reported:
                out += self._report(current)  # its end packets were lost
            current = self._current = _Current(timestamp, event.event, event.duration, now)
        current.duration = max(current.duration, event.duration)
        current.last_seen_s = now
        if event.end and not current.reported:
            out += self._report(current)
        return out

    def expire(self, now: float) -> list[DtmfDigit]:
        """Report an event whose end packets never came (call every tick)."""
        current = self._current
        if current is not None and not current.reported and now - current.last_seen_s >= self.end_timeout_s:
            return self._report(current)
        return []

    def _report(self, current: _Current) -> list[DtmfDigit]:
        current.reported = True
        event = TelephoneEvent(current.event, True, 0, 0)
        if event.digit is None:
            return []
        return [DtmfDigit(event.digit, current.duration * 1000 // self.clock_rate)]


@dataclass(frozen=True)
class EventPacket:
    """One telephone-event packet to send; all of one digit share the start timestamp."""

    payload: bytes
    marker: bool


def digit_packets(digit: str, duration_ms: int, *, clock_rate: int = 8000, packet_ms: int = 20,
                  volume: int = DEFAULT_VOLUME_DBM0) -> list[EventPacket]:
    """The packets of one digit, one per ``packet_ms`` tick (end packet repeated three times)."""
    code = digit_event_code(digit)
    if duration_ms < packet_ms:
        raise ValueError(f"DTMF duration {duration_ms} ms is shorter than one packet ({packet_ms} ms)")
    step = clock_rate * packet_ms // 1000
    total = min(clock_rate * duration_ms // 1000, 0xFFFF)
    packets: list[EventPacket] = []
    duration = step
    while duration < total:
        packets.append(EventPacket(TelephoneEvent(code, False, volume, duration).serialize(), not packets))
        duration += step
    final = TelephoneEvent(code, True, volume, total).serialize()
    packets += [EventPacket(final, not packets and k == 0) for k in range(END_REPEATS)]
    return packets
