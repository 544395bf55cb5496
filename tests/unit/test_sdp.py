"""SDP parse/serialise (RFC 4566) and offer/answer (RFC 3264)."""

from __future__ import annotations

import pytest

from sip_bridge.errors import NoAcceptableCodec, SdpError
from sip_bridge.sdp import (
    Direction,
    MediaPreferences,
    NegotiatedMedia,
    SessionDescription,
    build_offer,
    negotiate_answer,
    negotiated_from_answer,
)


def offer(
    media: str = "m=audio 49170 RTP/AVP 0 8 9 101", extra: str = "", conn: str = "203.0.113.5"
) -> bytes:
    lines = [
        "v=0",
        "o=pbx 2890844526 2890844527 IN IP4 203.0.113.5",
        "s=call",
        f"c=IN IP4 {conn}",
        "t=0 0",
        media,
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-15",
        "a=ptime:30",
        "a=rtcp:49200",
    ]
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n").encode()


def answer(
    data: bytes, preferences: MediaPreferences | None = None
) -> tuple[SessionDescription, NegotiatedMedia]:
    return negotiate_answer(
        SessionDescription.parse(data), local_address="192.0.2.1", local_port=40000, session_id=7,
        preferences=preferences,
    )  # fmt: skip


def test_parse_offer_fields() -> None:
    sd = SessionDescription.parse(offer())
    assert sd.origin.session_id == 2890844526 and sd.origin.session_version == 2890844527
    assert sd.connection == "203.0.113.5"
    audio = sd.audio
    assert audio is not None
    assert audio.port == 49170 and audio.protocol == "RTP/AVP" and audio.formats == ("0", "8", "9", "101")
    assert [(c.payload_type, c.name, c.clock_rate) for c in audio.codecs] == [
        (0, "PCMU", 8000), (8, "PCMA", 8000), (9, "G722", 8000), (101, "telephone-event", 8000),
    ]  # fmt: skip
    assert audio.codecs[3].fmtp == "0-15"
    assert audio.ptime_ms == 30 and audio.rtcp_port == 49200 and audio.direction is Direction.SENDRECV


def test_serialise_round_trip() -> None:
    sd = SessionDescription.parse(offer(extra="a=sendonly"))
    again = SessionDescription.parse(sd.to_bytes())
    assert again == sd
    assert sd.to_bytes().startswith(b"v=0\r\no=pbx 2890844526 2890844527 IN IP4 203.0.113.5\r\n")


def test_g722_preferred_and_noted_as_16khz() -> None:
    sdp, media = answer(offer())
    assert media.codec.name == "G722" and media.codec.payload_type == 9
    assert media.codec.clock_rate == 8000 and media.codec.sample_rate == 16000
    audio = sdp.audio
    assert audio is not None and audio.formats == ("9", "101")
    assert ("rtpmap", "9 G722/8000") in audio.attributes
    assert ("fmtp", "101 0-15") in audio.attributes  # offerer's PT and fmtp echoed
    assert audio.ptime_ms == 30  # ptime echoed
    assert media.remote_address == ("203.0.113.5", 49170) and media.remote_rtcp_port == 49200
    assert sdp.origin.session_id == 7 and sdp.connection == "192.0.2.1" and audio.port == 40000


def test_pcmu_then_pcma_fallbacks_and_default_telephone_event_fmtp() -> None:
    data = offer("m=audio 5004 RTP/AVP 8 0 96").replace(b"101", b"96").replace(b"a=fmtp:96 0-15\r\n", b"")
    _sdp, media = answer(data)
    assert media.codec.name == "PCMU"  # our order, not the offerer's
    assert media.telephone_event is not None
    assert media.telephone_event.payload_type == 96 and media.telephone_event.fmtp == "0-16"
    _, only_pcma = answer(offer("m=audio 5004 RTP/AVP 8"))
    assert only_pcma.codec.name == "PCMA" and only_pcma.telephone_event is None


def test_default_ptime_when_not_offered() -> None:
    data = offer().replace(b"a=ptime:30\r\n", b"")
    sdp, media = answer(data)
    assert media.ptime_ms == 20 and sdp.audio is not None and sdp.audio.ptime_ms == 20


@pytest.mark.parametrize(
    ("offered", "answered"),
    [("sendrecv", "sendrecv"), ("sendonly", "recvonly"), ("recvonly", "sendonly"), ("inactive", "inactive")],
)
def test_direction_per_rfc3264_section_6_1(offered: str, answered: str) -> None:
    sdp, media = answer(offer(extra=f"a={offered}"))
    assert sdp.audio is not None and sdp.audio.direction is Direction(answered)
    assert media.direction is Direction(answered)


def test_old_style_hold_with_zero_address() -> None:
    sdp, media = answer(offer(conn="0.0.0.0"))
    assert media.remote_address is None and media.on_hold
    assert sdp.audio is not None and sdp.audio.direction is Direction.RECVONLY


def test_no_acceptable_codec() -> None:
    with pytest.raises(NoAcceptableCodec, match="GSM"):
        answer(offer("m=audio 5004 RTP/AVP 3"))
    with pytest.raises(NoAcceptableCodec):
        answer(offer("m=video 5006 RTP/AVP 31"))
    with pytest.raises(NoAcceptableCodec):
        answer(offer(), preferences=MediaPreferences(codecs=("opus",)))


def test_extra_streams_are_refused_with_port_zero() -> None:
    data = offer() + b"m=video 5006 RTP/AVP 31\r\nm=audio 5008 RTP/AVP 0\r\n"
    sdp, _ = answer(data)
    assert [(m.media, m.port) for m in sdp.media] == [("audio", 40000), ("video", 0), ("audio", 0)]


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"v=1\r\n", 1),
        (b"v=0\r\no=x\r\n", 2),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4\r\n", 4),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 h\r\nm=audio port RTP/AVP 0\r\n", 5),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 h\r\nm=audio 5 RTP/AVP 0 x\r\n", 5),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 h\r\nm=audio 5 RTP/AVP 0\r\na=rtpmap:0\r\n", 6),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 h\r\nm=audio 5 RTP/AVP 0\r\na=ptime:abc\r\n", 6),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nm=audio 5 RTP/AVP 0\r\n", 4),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\nbogus\r\n", 3),
    ],
)
def test_malformed_sdp_reports_line_number(data: bytes, line: int) -> None:
    with pytest.raises(SdpError) as info:
        SessionDescription.parse(data)
    assert info.value.line_number == line and f"line {line}" in str(info.value)


def test_offer_and_answer_for_uac_calls() -> None:
    ours = build_offer(local_address="192.0.2.1", local_port=40000, session_id=11)
    audio = ours.audio
    assert audio is not None and audio.formats == ("9", "0", "8", "101")
    # The peer answers our offer; we learn the negotiated media from its answer.
    their_answer, their_view = negotiate_answer(
        SessionDescription.parse(ours.to_bytes()), local_address="198.51.100.2", local_port=6000, session_id=3,
        preferences=MediaPreferences(codecs=("PCMA",)),
    )  # fmt: skip
    media = negotiated_from_answer(ours, their_answer)
    assert media.codec.name == "PCMA" and media.remote_address == ("198.51.100.2", 6000)
    assert media.telephone_event is not None and media.telephone_event.payload_type == 101
    assert their_view.remote_address == ("192.0.2.1", 40000)
