"""RFC 4475 torture corpus (our own messages written from the RFC's test descriptions).

``data/sip/valid`` must parse and survive a serialise/parse round trip; ``data/sip/invalid``
must raise ``SipParseError``; and the user agent must answer each one as RFC 4475 says a UA
should (400, 416, 420, 415, 406, 505, or silence).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sip_bridge.errors import SipParseError
from sip_bridge.message import SipRequest, SipResponse, parse_message
from sip_bridge.ua import UaConfig, UserAgent

DATA = Path(__file__).parent / "data" / "sip"
VALID = sorted((DATA / "valid").glob("*.sip"))
INVALID = sorted((DATA / "invalid").glob("*.sip"))
PEER = ("192.0.2.50", 5060)


def test_corpus_is_present() -> None:
    assert len(VALID) >= 20 and len(INVALID) >= 20


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_messages_parse_and_round_trip(path: Path) -> None:
    message = parse_message(path.read_bytes())
    again = parse_message(message.to_bytes())
    assert type(again) is type(message)
    assert [h for h in again.headers if h[0] != "Content-Length"] == [
        h for h in message.headers if h[0] != "Content-Length"
    ]
    assert again.body == message.body
    assert again.cseq == message.cseq and again.call_id == message.call_id


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_messages_raise_parse_error(path: Path) -> None:
    with pytest.raises(SipParseError):
        parse_message(path.read_bytes())


def test_specific_valid_details() -> None:
    wsinv = parse_message((DATA / "valid" / "wsinv.sip").read_bytes())
    assert isinstance(wsinv, SipRequest)
    assert wsinv.cseq == (9, "INVITE") and wsinv.max_forwards == 68
    assert wsinv.from_.display_name == 'J Rosenberg \\"' and wsinv.from_.tag == "98asjd8"
    assert wsinv.to.tag == "1918181833n"
    assert [v.branch for v in wsinv.vias] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert wsinv.contacts[0].param("q") == "0.33"
    assert wsinv.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    dblreq = parse_message((DATA / "valid" / "dblreq.sip").read_bytes())
    assert dblreq.body == b"" and isinstance(dblreq, SipRequest) and dblreq.method == "REGISTER"
    esc01 = parse_message((DATA / "valid" / "esc01.sip").read_bytes())
    assert isinstance(esc01, SipRequest) and esc01.uri.user == "sips%3Auser%40example.com"
    noreason = parse_message((DATA / "valid" / "noreason.sip").read_bytes())
    assert isinstance(noreason, SipResponse) and noreason.reason == ""
    unreason = parse_message((DATA / "valid" / "unreason.sip").read_bytes())
    assert isinstance(unreason, SipResponse) and "простое" in unreason.reason


# What the UA answers: a status code, or None for silence (dropped / no response).
UA_EXPECTED: dict[str, int | None] = {
    "valid/unkscm": 416,
    "valid/novelsc": 416,
    "valid/bext01": 420,
    "valid/invut": 415,
    "valid/sdp01": 406,
    "valid/badvers": 505,
    "valid/bcast": None,  # a response with two Via values is discarded (§8.1.3.3)
    "valid/zeromf": 200,  # Max-Forwards 0 is a proxy matter: a UA answers OPTIONS
    "valid/lwsdisp": 200,
    "valid/badbranch": 200,
    "valid/esc02": 501,
    "valid/intmeth": 501,
    "valid/escnull": 405,  # REGISTER to a UA
    "valid/inv2543": 100,  # accepted: 100 Trying, IncomingCall
    "valid/mpart01": 100,
    "valid/wsinv": 481,  # To tag names a dialog we do not have
    "invalid/badinv01": 400,
    "invalid/clerr": 400,
    "invalid/ncl": 400,
    "invalid/scalar02": 400,
    "invalid/quotbal": 400,
    "invalid/lwsstart": 400,
    "invalid/mismatch01": 400,
    "invalid/mismatch02": 400,
    "invalid/multi01": 400,
    "invalid/insuf": 400,
    "invalid/escruri": 400,
    "invalid/regbadct": 400,
    "invalid/bigcode": None,
    "invalid/scalarls": None,
}


@pytest.mark.parametrize(("name", "expected"), sorted(UA_EXPECTED.items()))
def test_user_agent_answers_as_rfc4475_says(name: str, expected: int | None) -> None:
    ua = UserAgent(UaConfig(local_host="192.0.2.1"))
    ua.receive_datagram((DATA / f"{name}.sip").read_bytes(), PEER, now=0.0)
    sent = ua.datagrams_to_send()
    if expected is None:
        assert sent == []
        return
    assert sent, f"{name}: no response"
    if expected == 400:
        # The 400 copies the peer's (possibly broken) headers, so it may not parse itself.
        assert sent[0][0].startswith(b"SIP/2.0 400 Bad Request - ")
        assert ua.stats["parse_errors"] == 1 and ua.stats["bad_requests_answered"] == 1
        return
    response = parse_message(sent[0][0])
    assert isinstance(response, SipResponse)
    assert response.status_code == expected, response.reason
    if expected == 420:
        assert response.headers.get("Unsupported") == "nothingSupportsThis, nothingSupportsThisEither"
    if expected == 415:
        assert response.headers.get("Accept") == "application/sdp"
    if expected == 405:
        assert "INVITE" in (response.headers.get("Allow") or "")


def test_every_corpus_message_is_handled_by_the_user_agent_without_exceptions() -> None:
    ua = UserAgent(UaConfig(local_host="192.0.2.1"))
    for index, path in enumerate(VALID + INVALID):
        ua.receive_datagram(path.read_bytes(), PEER, now=float(index))
        ua.datagrams_to_send()
        ua.handle_timer(float(index))
    assert ua.stats["parse_errors"] == len(INVALID)
