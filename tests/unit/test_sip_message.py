"""SIP message, header and URI parsing/serialising (RFC 3261 §7, §19, §20, §25)."""

from __future__ import annotations

import pytest

from sip_bridge.errors import SipParseError
from sip_bridge.headers import Headers, Via, canonical_name, parse_cseq
from sip_bridge.message import SipRequest, SipResponse, bad_request_for, build_response, parse_message
from sip_bridge.uri import NameAddr, SipUri

INVITE = (
    b"INVITE sip:agent@192.0.2.1 SIP/2.0\r\n"
    b"v: SIP/2.0/UDP 10.0.0.9:5070;branch=z9hG4bKabc;rport\r\n"
    b'f: "Alice, A." <sip:alice@example.com>;tag=a1\r\n'
    b"t: <sip:agent@192.0.2.1>\r\n"
    b"i: call-1@10.0.0.9\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"m: <sip:alice@10.0.0.9:5070>, <sip:alice@10.0.0.10>;q=0.5\r\n"
    b"Record-Route: <sip:p1.example.com;lr>,\r\n <sip:p2.example.com;lr>\r\n"
    b"Max-Forwards: 70\r\n"
    b"c: application/sdp\r\n"
    b"l: 5\r\n"
    b"\r\n"
    b"hello, and more bytes than announced"
)


def test_parse_request_with_compact_forms_folding_and_lists() -> None:
    msg = parse_message(INVITE)
    assert isinstance(msg, SipRequest)
    assert msg.method == "INVITE" and msg.uri == SipUri("sip", "agent", None, "192.0.2.1")
    assert msg.call_id == "call-1@10.0.0.9"
    assert msg.cseq == (1, "INVITE")
    assert msg.from_.display_name == "Alice, A." and msg.from_.tag == "a1"
    assert msg.to.tag is None
    assert [str(c.uri) for c in msg.contacts] == ["sip:alice@10.0.0.9:5070", "sip:alice@10.0.0.10"]
    assert msg.contacts[1].param("q") == "0.5"
    assert [r.uri.host for r in msg.record_routes] == ["p1.example.com", "p2.example.com"]
    assert msg.top_via.sent_by == ("10.0.0.9", 5070) and msg.top_via.branch == "z9hG4bKabc"
    assert msg.max_forwards == 70
    assert msg.body == b"hello"  # §18.3: octets past Content-Length are dropped
    assert msg.content_type == "application/sdp"


def test_serialise_round_trip_uses_long_names_and_recomputes_length() -> None:
    msg = parse_message(INVITE)
    data = msg.to_bytes()
    assert b"\r\nCall-ID: call-1@10.0.0.9\r\n" in data and b"Content-Length: 5\r\n\r\nhello" in data
    again = parse_message(data)
    assert isinstance(again, SipRequest)
    assert list(again.headers) == list(msg.headers) and again.body == msg.body


def test_header_names_are_case_insensitive() -> None:
    headers = Headers(
        [("call-id", "x"), ("VIA", "SIP/2.0/UDP h"), ("cseq", "1 BYE"), ("www-authenticate", "D")]
    )
    assert headers.get("Call-Id") == "x" and headers.get("i") == "x"
    assert [name for name, _ in headers] == ["Call-ID", "Via", "CSeq", "WWW-Authenticate"]
    assert canonical_name("k") == "Supported" and canonical_name("x-custom-thing") == "X-Custom-Thing"
    headers.set("via", "SIP/2.0/UDP other")
    assert headers.get_lines("Via") == ["SIP/2.0/UDP other"]


def test_commas_inside_quotes_and_angle_brackets_do_not_split() -> None:
    headers = Headers([("Contact", '"a, b" <sip:x@h;p=1,2>, <sip:y@h>')])
    assert headers.get_all("Contact") == ['"a, b" <sip:x@h;p=1,2>', "<sip:y@h>"]
    # Non-list header fields are never split.
    headers.add("WWW-Authenticate", 'Digest realm="r", nonce="n"')
    assert headers.get_all("WWW-Authenticate") == ['Digest realm="r", nonce="n"']


def test_missing_content_length_takes_rest_of_datagram() -> None:
    data = INVITE.replace(b"l: 5\r\n", b"")
    msg = parse_message(data)
    assert msg.body == b"hello, and more bytes than announced"


def test_short_body_is_rejected_with_precise_message() -> None:
    with pytest.raises(SipParseError, match="Content-Length 500 exceeds the 36 body bytes"):
        parse_message(INVITE.replace(b"l: 5", b"l: 500"))


def test_response_parsing_and_reason_phrases() -> None:
    data = INVITE.replace(b"INVITE sip:agent@192.0.2.1 SIP/2.0", b"SIP/2.0 180 Ringing  please wait")
    msg = parse_message(data)
    assert isinstance(msg, SipResponse)
    assert msg.status_code == 180 and msg.reason == "Ringing  please wait" and msg.is_provisional
    with pytest.raises(SipParseError, match="bad status code"):
        parse_message(data.replace(b"180", b"099"))


def test_leading_crlf_and_bare_lf_are_tolerated() -> None:
    lf = INVITE.replace(b"\r\n", b"\n")
    assert parse_message(b"\r\n\r\n" + INVITE).call_id == parse_message(lf).call_id == "call-1@10.0.0.9"


@pytest.mark.parametrize(
    ("text", "user", "host", "port", "params"),
    [
        ("sip:alice@example.com", "alice", "example.com", None, ()),
        (
            "sips:bob:secret@[2001:db8::1]:5061;transport=tls",
            "bob",
            "[2001:db8::1]",
            5061,
            (("transport", "tls"),),
        ),
        ("sip:user;par=u%40x@example.com:5080;lr", "user;par=u%40x", "example.com", 5080, (("lr", None),)),
        ("sip:192.0.2.4", None, "192.0.2.4", None, ()),
    ],
)
def test_sip_uri_forms(text: str, user: str | None, host: str, port: int | None, params: tuple) -> None:  # type: ignore[type-arg]
    uri = SipUri.parse(text)
    assert (uri.user, uri.host, uri.port, uri.params) == (user, host, port, params)
    assert SipUri.parse(str(uri)) == uri


def test_tel_and_unknown_scheme_uris() -> None:
    tel = SipUri.parse("tel:+1-201-555-0123;phone-context=example.com")
    assert (
        tel.scheme == "tel" and tel.user == "+1-201-555-0123" and tel.param("phone-context") == "example.com"
    )
    other = SipUri.parse("isbn:2983792873")
    assert other.opaque == "2983792873" and not other.is_sip and str(other) == "isbn:2983792873"


@pytest.mark.parametrize(
    "text",
    [
        "alice@example.com",
        "sip:",
        "sip:a@b:99999",
        "sip:a@b:x",
        "sip:a b@c",
        "sip:@host",
        "sip:a@[::1",
        "sip:a@b;;x",
    ],
)
def test_bad_uris_raise_parse_error(text: str) -> None:
    with pytest.raises(SipParseError):
        SipUri.parse(text)


def test_name_addr_forms() -> None:
    plain = NameAddr.parse("sip:bob@example.com;tag=99")  # addr-spec: the tag is a header param
    assert plain.tag == "99" and plain.uri.params == ()
    unquoted = NameAddr.parse("Bob  Smith <sip:bob@example.com;transport=udp>;tag=7")
    assert unquoted.display_name == "Bob Smith" and unquoted.uri.param("transport") == "udp"
    quoted = NameAddr.parse(r'"Say \"hi\"" <sip:b@h>')
    assert quoted.display_name == 'Say "hi"'
    assert NameAddr.parse(str(quoted)) == quoted
    assert str(quoted.with_tag("t1")) == r'"Say \"hi\"" <sip:b@h>;tag=t1'
    with pytest.raises(SipParseError, match="junk after"):
        NameAddr.parse("<sip:b@h> junk")


def test_via_parsing_with_lws_received_and_rport() -> None:
    via = Via.parse("SIP / 2.0 / udp  host.example.com : 5062 ; branch = z9hG4bKx ;rport")
    assert via.transport == "UDP" and via.sent_by == ("host.example.com", 5062) and via.param("rport") == ""
    stamped = via.stamped(("198.51.100.7", 40000))
    assert stamped.param("received") == "198.51.100.7" and stamped.param("rport") == "40000"
    assert stamped.response_address(("198.51.100.7", 40000)) == ("198.51.100.7", 40000)
    no_rport = Via.parse("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKy").stamped(("203.0.113.5", 1234))
    assert no_rport.response_address(("203.0.113.5", 1234)) == ("203.0.113.5", 5070)  # §18.2.2
    with pytest.raises(SipParseError):
        Via.parse("SIP/2.0 host")


def test_cseq_limits() -> None:
    assert parse_cseq("0009  INVITE") == (9, "INVITE")
    with pytest.raises(SipParseError, match="below 2\\*\\*31"):
        parse_cseq("2147483648 INVITE")


def test_build_response_copies_headers_and_adds_tag() -> None:
    request = parse_message(INVITE)
    assert isinstance(request, SipRequest)
    response = build_response(request, 486, to_tag="xyz", extra_headers=[("Retry-After", "3")])
    assert response.reason == "Busy Here" and response.to.tag == "xyz"
    assert response.headers.get_all("Via") == request.headers.get_all("Via")
    assert response.cseq == request.cseq and response.headers.get("Retry-After") == "3"
    trying = build_response(request, 100, to_tag="xyz")
    assert trying.to.tag is None  # §8.2.6.2: 100 Trying may omit the tag; we do


def test_bad_request_is_built_for_answerable_parse_errors() -> None:
    broken = INVITE.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE")
    with pytest.raises(SipParseError) as info:
        parse_message(broken)
    reply = bad_request_for(info.value, ("10.0.0.9", 5070))
    assert reply is not None
    data, addr = reply
    assert addr == ("10.0.0.9", 5070)  # rport → source address
    response = parse_message(data)
    assert isinstance(response, SipResponse) and response.status_code == 400
    assert "does not match" in response.reason
    # A response, or an ACK, is never answered.
    with pytest.raises(SipParseError) as info2:
        parse_message(
            INVITE.replace(b"INVITE sip:agent@192.0.2.1 SIP/2.0", b"SIP/2.0 200 OK").replace(
                b"s: 70", b"s: 700"
            )
        )
    assert bad_request_for(info2.value, ("10.0.0.9", 5070)) is None
