"""RTP packets and RFC 4733 telephone events: the one module that wraps ``aiortp`` (pinned 0.8.0).

We take from aiortp only its wire formats — ``RtpPacket.parse``/``serialize`` (RFC 3550 §5.1,
CSRC list, header extension and padding checks) and ``DtmfEvent`` (RFC 4733 §2.3) — and present
them as frozen dataclasses with ``RtpError`` for malformed input. aiortp's ``RTPSession`` is not
used: it owns its socket and timers, and its jitter buffer hands out frames only when the next
timestamp arrives; our media path (``media.py``) needs pure, ``now``-driven jitter, pacing and
DTMF logic that tests can drive by hand, so those live in ``media.py``.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

from aiortp import DtmfEvent
from aiortp import RtpPacket as _AiortpPacket
from aiortp import is_rtcp as _is_rtcp

from sip_bridge.errors import RtpError

RTP_VERSION = 2
RTP_HEADER_BYTES = 12
SEQUENCE_MODULO = 1 << 16
TIMESTAMP_MODULO = 1 << 32
TELEPHONE_EVENT_BYTES = 4
DTMF_DIGITS = "0123456789*#ABCD"  # RFC 4733 §3.2 event codes 0-15


@dataclass(frozen=True)
class RtpPacket:
    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one datagram; raises ``RtpError`` (a ValueError) naming what is wrong."""
        if len(data) < RTP_HEADER_BYTES:
            raise RtpError(f"RTP packet is {len(data)} bytes, shorter than the 12-byte header")
        if data[0] >> 6 != RTP_VERSION:
            raise RtpError(f"RTP packet has version {data[0] >> 6}, expected 2")
        if is_rtcp(data):
            raise RtpError(f"datagram is RTCP (packet type {data[1]}), not RTP")
        try:
            packet = _AiortpPacket.parse(data)
        except (ValueError, struct.error, IndexError) as exc:
            raise RtpError(str(exc)) from None
        return cls(
            payload_type=packet.payload_type,
            sequence_number=packet.sequence_number,
            timestamp=packet.timestamp,
            ssrc=packet.ssrc,
            payload=bytes(packet.payload),
            marker=bool(packet.marker),
        )

    def serialize(self) -> bytes:
        if not 0 <= self.payload_type <= 127:
            raise RtpError(f"RTP payload type {self.payload_type} is outside 0-127")
        packet = _AiortpPacket(
            payload_type=self.payload_type,
            marker=int(self.marker),
            sequence_number=self.sequence_number % SEQUENCE_MODULO,
            timestamp=self.timestamp % TIMESTAMP_MODULO,
            ssrc=self.ssrc,
            payload=self.payload,
        )
        return packet.serialize()


def is_rtcp(data: bytes) -> bool:
    """RTCP shares the port when rtcp-mux is used; its packet types are 192-208 (RFC 5761 §4)."""
    return _is_rtcp(data)


@dataclass(frozen=True)
class TelephoneEvent:
    """One RFC 4733 §2.3 payload: event code, end bit, volume (-dBm0) and duration (clock ticks)."""

    event: int
    end: bool
    volume: int
    duration: int

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        if len(payload) < TELEPHONE_EVENT_BYTES:
            raise RtpError(f"telephone-event payload is {len(payload)} bytes, needs 4 (RFC 4733 §2.3)")
        parsed = DtmfEvent.parse(payload[:TELEPHONE_EVENT_BYTES])
        return cls(parsed.event, parsed.end, parsed.volume, parsed.duration)

    def serialize(self) -> bytes:
        if not 0 <= self.event <= 255 or not 0 <= self.duration <= 0xFFFF:
            raise RtpError(f"telephone event {self.event} / duration {self.duration} out of range")
        return DtmfEvent(self.event, self.end, self.volume, self.duration).serialize()

    @property
    def digit(self) -> str | None:
        """The DTMF digit, or None for other events (tones, flash)."""
        return DTMF_DIGITS[self.event] if self.event < len(DTMF_DIGITS) else None


def digit_event_code(digit: str) -> int:
    code = DTMF_DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if code < 0:
        raise ValueError(f"not a DTMF digit: {digit!r} (expected one of {DTMF_DIGITS})")
    return code


class RtpStreamWriter:
    """Sequence numbers and timestamps of one outgoing stream (RFC 3550 §5.1: random starts)."""

    def __init__(self, ssrc: int | None = None, *, first_sequence: int | None = None,
                 first_timestamp: int | None = None) -> None:
        self.ssrc = ssrc if ssrc is not None else secrets.randbits(32)
        self.sequence_number = first_sequence if first_sequence is not None else secrets.randbits(15)
        self.timestamp = first_timestamp if first_timestamp is not None else secrets.randbits(31)
        self.packets_sent = 0
        self.octets_sent = 0

    def packet(self, payload_type: int, payload: bytes, *, marker: bool = False,
               timestamp: int | None = None) -> bytes:
        """The next packet; ``timestamp`` overrides the stream clock (RFC 4733 events keep theirs)."""
        data = RtpPacket(payload_type, self.sequence_number, self.timestamp if timestamp is None else timestamp,
                         self.ssrc, payload, marker).serialize()
        self.sequence_number = (self.sequence_number + 1) % SEQUENCE_MODULO
        self.packets_sent += 1
        self.octets_sent += len(payload)
        return data

    def advance(self, clock_ticks: int) -> None:
        self.timestamp = (self.timestamp + clock_ticks) % TIMESTAMP_MODULO
