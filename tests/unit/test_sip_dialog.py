"""Dialogs (RFC 3261 §12): creation on both sides, routing, CSeq rules."""

from __future__ import annotations

import pytest

from sip_bridge.dialog import Dialog, DialogState
from sip_bridge.errors import SipParseError
from sip_bridge.headers import Headers, Via
from sip_bridge.message import SipRequest, build_response
from sip_bridge.uri import NameAddr, SipUri

VIA = Via("UDP", "192.0.2.1", 5060, (("branch", "z9hG4bKnew"),))


def invite(
    record_route: list[str] | None = None, contact: str | None = "<sip:caller@198.51.100.7:5062>"
) -> SipRequest:
    headers = Headers([
        ("Via", "SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bKin"),
        ("From", '"Caller" <sip:caller@example.com>;tag=ftag'),
        ("To", "<sip:agent@192.0.2.1>"),
        ("Call-ID", "dlg-1"),
        ("CSeq", "10 INVITE"),
    ])  # fmt: skip
    if contact:
        headers.add("Contact", contact)
    for value in record_route or []:
        headers.add("Record-Route", value)
    return SipRequest("INVITE", SipUri.parse("sip:agent@192.0.2.1"), headers)


def test_uas_dialog_from_invite() -> None:
    request = invite(["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"])
    dialog = Dialog.as_uas(request, "ltag")
    assert dialog.id.call_id == "dlg-1" and dialog.id.local_tag == "ltag" and dialog.id.remote_tag == "ftag"
    assert [r.uri.host for r in dialog.route_set] == ["p1.example.com", "p2.example.com"]  # §12.1.1 order
    assert dialog.remote_target == SipUri.parse("sip:caller@198.51.100.7:5062")
    assert dialog.remote_cseq == 10 and dialog.state is DialogState.CONFIRMED


def test_uas_dialog_needs_contact() -> None:
    with pytest.raises(SipParseError, match="Contact"):
        Dialog.as_uas(invite(contact=None), "t")


def test_bye_uses_loose_route_set_and_swaps_tags() -> None:
    dialog = Dialog.as_uas(invite(["<sip:p1.example.com;lr>"]), "ltag")
    bye = dialog.create_request("BYE", via=VIA)
    assert bye.uri == dialog.remote_target  # loose routing: R-URI is the remote target
    assert bye.headers.get_all("Route") == ["<sip:p1.example.com;lr>"]
    assert bye.from_.tag == "ltag" and bye.to.tag == "ftag" and bye.from_.uri.user == "agent"
    assert bye.cseq == (1, "BYE") and bye.call_id == "dlg-1"
    assert dialog.next_hop() == ("p1.example.com", 5060)
    assert dialog.create_request("INFO", via=VIA).cseq == (2, "INFO")


def test_strict_route_puts_first_route_in_request_uri() -> None:
    dialog = Dialog.as_uas(invite(["<sip:strict.example.com;maddr=10.0.0.1;foo=bar>"]), "ltag")
    bye = dialog.create_request("BYE", via=VIA)
    assert bye.uri.host == "strict.example.com" and bye.uri.param("foo") is None and bye.uri.param("maddr")
    assert bye.headers.get_all("Route") == [
        "<sip:caller@198.51.100.7:5062>"
    ]  # remote target last (§12.2.1.1)


def test_uac_dialog_reverses_record_route_and_acks_with_invite_cseq() -> None:
    request = invite()
    response = build_response(request, 200, to_tag="rtag")
    response.headers.add("Contact", "<sip:callee@203.0.113.9>")
    response.headers.add("Record-Route", "<sip:p2.example.com;lr>, <sip:p1.example.com;lr>")
    dialog = Dialog.as_uac(request, response)
    assert [r.uri.host for r in dialog.route_set] == ["p1.example.com", "p2.example.com"]  # §12.1.2 reversed
    assert dialog.remote_target.host == "203.0.113.9" and dialog.id.remote_tag == "rtag"
    ack = dialog.create_request("ACK", via=VIA, cseq=10)
    assert ack.cseq == (10, "ACK") and dialog.local_cseq == 10
    with pytest.raises(ValueError, match="must reuse"):
        dialog.create_request("ACK", via=VIA)


def test_cseq_order_and_target_refresh() -> None:
    dialog = Dialog.as_uas(invite(), "ltag")
    reinvite = invite(contact="<sip:caller@198.51.100.99>")
    reinvite.headers.set("CSeq", "11 INVITE")
    assert dialog.accept_request(reinvite) and dialog.remote_target.host == "198.51.100.99"
    old = invite()
    old.headers.set("CSeq", "5 BYE")
    assert not dialog.accept_request(old)  # §12.2.2: lower CSeq → 500
    assert dialog.remote_cseq == 11


def test_matches_by_tags() -> None:
    dialog = Dialog.as_uas(invite(), "ltag")
    bye = invite()
    bye.headers.set("To", str(NameAddr.parse("<sip:agent@192.0.2.1>").with_tag("ltag")))
    assert dialog.matches(bye, incoming_request=True)
    bye.headers.set("To", "<sip:agent@192.0.2.1>;tag=other")
    assert not dialog.matches(bye, incoming_request=True)
