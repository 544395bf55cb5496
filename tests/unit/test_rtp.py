"""RTP packets (RFC 3550 §5.1) and RFC 4733 event payloads through sip_bridge.rtp."""

from __future__ import annotations

import struct

import pytest

from sip_bridge.errors import RtpError
from sip_bridge.rtp import RtpPacket, RtpStreamWriter, TelephoneEvent, digit_event_code, is_rtcp


def test_packet_round_trip_keeps_every_field() -> None:
    packet = RtpPacket(payload_type=0, sequence_number=65535, timestamp=4_000_000_000, ssrc=0xDEADBEEF,
                       payload=bytes(range(160)), marker=True)
    data = packet.serialize()
    assert len(data) == 12 + 160
    assert data[0] == 0x80 and data[1] == 0x80  # version 2, marker + PT 0
    assert struct.unpack("!HII", data[2:12]) == (65535, 4_000_000_000, 0xDEADBEEF)
    assert RtpPacket.parse(data) == packet


def test_parse_skips_csrc_extension_and_padding() -> None:
    header = struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 2, 8, 7, 160, 42)  # P, X, CC=2
    csrc = struct.pack("!II", 1, 2)
    extension = struct.pack("!HH", 0xBEDE, 1) + b"\x00\x00\x00\x00"
    payload = b"\xd5" * 10
    padding = b"\x00\x00\x03"
    packet = RtpPacket.parse(header + csrc + extension + payload + padding)
    assert (packet.payload_type, packet.sequence_number, packet.timestamp, packet.ssrc) == (8, 7, 160, 42)
    assert packet.payload == payload


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\x00\x00", "shorter than the 12-byte header"),
        (b"\x40" + b"\x00" * 20, "version 1"),
        (struct.pack("!BBHII", 0x83, 0, 1, 2, 3) + b"\x00" * 4, "truncated CSRC"),
        (struct.pack("!BBHII", 0x90, 0, 1, 2, 3) + b"\x00\x01", "extension"),
        (struct.pack("!BBHII", 0xA0, 0, 1, 2, 3) + b"\x00\x00\x09", "padding"),
        (struct.pack("!BBHII", 0x80, 200, 1, 2, 3), "RTCP"),
    ],
)
def test_malformed_packets_raise_precise_errors(data: bytes, message: str) -> None:
    with pytest.raises(RtpError, match=message):
        RtpPacket.parse(data)


def test_rtcp_is_recognised() -> None:
    assert is_rtcp(struct.pack("!BBH", 0x80, 200, 6) + b"\x00" * 24)
    assert not is_rtcp(RtpPacket(0, 1, 2, 3, b"x").serialize())


def test_stream_writer_numbers_packets_and_wraps() -> None:
    writer = RtpStreamWriter(ssrc=5, first_sequence=65534, first_timestamp=2**32 - 160)
    first = RtpPacket.parse(writer.packet(0, b"a" * 160, marker=True))
    writer.advance(160)
    second = RtpPacket.parse(writer.packet(0, b"b" * 160))
    writer.advance(160)
    third = RtpPacket.parse(writer.packet(0, b"c" * 160))
    assert [p.sequence_number for p in (first, second, third)] == [65534, 65535, 0]
    assert [p.timestamp for p in (first, second, third)] == [2**32 - 160, 0, 160]
    assert first.marker and not second.marker
    assert writer.packets_sent == 3 and writer.octets_sent == 480


def test_telephone_event_round_trip_and_digits() -> None:
    event = TelephoneEvent(event=11, end=True, volume=10, duration=800)
    payload = event.serialize()
    assert payload == bytes([11, 0x80 | 10]) + struct.pack("!H", 800)
    assert TelephoneEvent.parse(payload) == event
    assert event.digit == "#"
    assert TelephoneEvent(16, False, 0, 0).digit is None  # flash, not a digit
    assert digit_event_code("*") == 10 and digit_event_code("d") == 15
    with pytest.raises(ValueError, match="not a DTMF digit"):
        digit_event_code("x")
    with pytest.raises(RtpError, match="needs 4"):
        TelephoneEvent.parse(b"\x01\x02")
