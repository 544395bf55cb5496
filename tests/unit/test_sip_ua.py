"""The sans-IO user agent: inbound and outbound calls, registration, with time moved by hand."""

from __future__ import annotations

from sip_bridge.allowlist import AddressAllowlist
from sip_bridge.digest import DigestChallenge, DigestServer, Verdict, answer_challenge
from sip_bridge.events import (
    CallCancelled,
    CallEnded,
    CallEstablished,
    CallRinging,
    DtmfInfo,
    EndReason,
    IncomingCall,
    RegistrationFailed,
    RegistrationSucceeded,
    ReInvite,
    UaEvent,
)
from sip_bridge.headers import Headers
from sip_bridge.message import Addr, SipRequest, SipResponse, build_response, parse_message
from sip_bridge.sdp import Direction, SessionDescription, build_offer
from sip_bridge.ua import UaConfig, UserAgent
from sip_bridge.ua_core import Credentials
from sip_bridge.uri import SipUri

PEER: Addr = ("198.51.100.7", 5062)
LOCAL = "192.0.2.1"
OFFER = build_offer(local_address=PEER[0], local_port=30000, session_id=99).to_bytes()
ANSWER = build_offer(local_address=LOCAL, local_port=40000, session_id=5).to_bytes()


def make_ua(**kwargs: object) -> UserAgent:
    return UserAgent(UaConfig(local_host=LOCAL, **kwargs))  # type: ignore[arg-type]


def drain(ua: UserAgent) -> list[SipRequest | SipResponse]:
    return [parse_message(data) for data, _ in ua.datagrams_to_send()]


def events(ua: UserAgent) -> list[UaEvent]:
    out = []
    while (event := ua.next_event()) is not None:
        out.append(event)
    return out


def responses(messages: list[SipRequest | SipResponse]) -> list[int]:
    return [m.status_code for m in messages if isinstance(m, SipResponse)]


class Caller:
    """A scripted remote UA that builds requests towards ours."""

    def __init__(self, call_id: str = "call-1") -> None:
        self.call_id = call_id
        self.cseq = 1
        self.branch = 0
        self.to_tag: str | None = None

    def request(self, method: str, body: bytes = b"", *, cseq: int | None = None, branch: str | None = None,
                headers: list[tuple[str, str]] | None = None) -> SipRequest:  # fmt: skip
        self.branch += 1
        to = "<sip:agent@192.0.2.1>" + (f";tag={self.to_tag}" if self.to_tag else "")
        h = Headers([
            ("Via", f"SIP/2.0/UDP {PEER[0]}:{PEER[1]};branch={branch or f'z9hG4bK{self.call_id}-{self.branch}'};rport"),
            ("From", '"Caller" <sip:caller@example.com>;tag=ctag'),
            ("To", to),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq if cseq is not None else self.cseq} {method}"),
            ("Contact", f"<sip:caller@{PEER[0]}:{PEER[1]}>"),
            ("Max-Forwards", "70"),
        ])  # fmt: skip
        for name, value in headers or []:
            h.add(name, value)
        if body:
            h.add("Content-Type", "application/sdp")
        return SipRequest(method, SipUri.parse("sip:agent@192.0.2.1"), h, body)


def start_call(ua: UserAgent, caller: Caller, now: float = 0.0) -> IncomingCall:
    invite = caller.request("INVITE", OFFER, branch="z9hG4bKinv")
    ua.receive_datagram(invite.to_bytes(), PEER, now)
    assert responses(drain(ua)) == [100]
    (event,) = events(ua)
    assert isinstance(event, IncomingCall)
    return event


def answer_and_ack(ua: UserAgent, caller: Caller, call_id: str, now: float = 0.1) -> SipResponse:
    ua.answer(call_id, ANSWER, now)
    (ok,) = drain(ua)
    assert isinstance(ok, SipResponse) and ok.status_code == 200
    caller.to_tag = ok.to.tag
    ua.receive_datagram(caller.request("ACK", cseq=1).to_bytes(), PEER, now + 0.05)
    return ok


# --- UAS --------------------------------------------------------------------------------------


def test_inbound_call_ring_answer_ack_and_remote_bye() -> None:
    ua, caller = make_ua(), Caller()
    incoming = start_call(ua, caller)
    assert incoming.from_display == "Caller" and incoming.offer == OFFER and incoming.remote_addr == PEER
    assert ("Call-ID", "call-1") in incoming.headers
    ua.ring("call-1", 0.05)
    (ringing,) = drain(ua)
    assert isinstance(ringing, SipResponse) and ringing.status_code == 180 and ringing.to.tag
    ok = answer_and_ack(ua, caller, "call-1")
    assert ok.to.tag == ringing.to.tag and ok.body == ANSWER and ok.contacts[0].uri.host == LOCAL
    assert "BYE" in (ok.headers.get("Allow") or "")
    assert ok.headers.get_all("Via")[0].endswith(f"received={PEER[0]};rport={PEER[1]}")
    (established,) = events(ua)
    assert established == CallEstablished("call-1", False, ANSWER, OFFER)
    assert ua.get_timer() is None or ua.get_timer() > 1.0  # no more 200 retransmissions
    ua.handle_timer(5.0)
    assert drain(ua) == []
    caller.cseq = 2
    ua.receive_datagram(caller.request("BYE").to_bytes(), PEER, 10.0)
    assert responses(drain(ua)) == [200]
    assert events(ua) == [CallEnded("call-1", EndReason.REMOTE_BYE)]
    assert ua.calls == {}


def test_200_is_retransmitted_until_ack_then_bye_after_64_t1() -> None:
    ua, caller = make_ua(), Caller()
    start_call(ua, caller)
    ua.answer("call-1", ANSWER, 0.0)
    assert responses(drain(ua)) == [200]
    sent_at = []
    while (deadline := ua.get_timer()) is not None and deadline < 40.0:
        ua.handle_timer(deadline)
        for message in drain(ua):
            sent_at.append(
                (
                    round(deadline, 2),
                    message.status_code if isinstance(message, SipResponse) else message.method,
                )
            )
    # §13.3.1.4: T1, 2T1, 4T1 ... capped at T2, then BYE at 64*T1 = 32 s.
    assert sent_at[:6] == [(0.5, 200), (1.5, 200), (3.5, 200), (7.5, 200), (11.5, 200), (15.5, 200)]
    assert (32.0, "BYE") in sent_at
    assert CallEnded("call-1", EndReason.ACK_TIMEOUT) in events(ua)


def test_retransmitted_invite_is_absorbed() -> None:
    ua, caller = make_ua(), Caller()
    start_call(ua, caller)
    again = caller.request("INVITE", OFFER, branch="z9hG4bKinv")
    ua.receive_datagram(again.to_bytes(), PEER, 0.3)
    assert responses(drain(ua)) == [100]  # the last provisional again
    assert events(ua) == [] and ua.stats["retransmissions_absorbed"] == 1


def test_cancel_before_answer() -> None:
    ua, caller = make_ua(), Caller()
    start_call(ua, caller)
    ua.receive_datagram(caller.request("CANCEL", branch="z9hG4bKinv").to_bytes(), PEER, 1.0)
    sent = drain(ua)
    assert sorted((m.cseq[1], m.status_code) for m in sent if isinstance(m, SipResponse)) == [
        ("CANCEL", 200), ("INVITE", 487),
    ]  # fmt: skip
    assert events(ua) == [CallCancelled("call-1"), CallEnded("call-1", EndReason.CANCELLED, 487)]
    # The ACK for the 487 belongs to the INVITE transaction (§17.2.1) and ends it.
    ua.receive_datagram(caller.request("ACK", branch="z9hG4bKinv").to_bytes(), PEER, 1.1)
    assert drain(ua) == [] and ua.stats["retransmissions_absorbed"] == 1
    ua.receive_datagram(caller.request("CANCEL", branch="z9hG4bKzzz").to_bytes(), PEER, 1.2)
    assert responses(drain(ua)) == [481]


def test_reject_sends_final_response_retransmitted_until_ack() -> None:
    ua, caller = make_ua(), Caller()
    start_call(ua, caller)
    ua.reject("call-1", 486, 0.1)
    assert responses(drain(ua)) == [486]
    assert events(ua) == [CallEnded("call-1", EndReason.REJECTED, 486)]
    ua.handle_timer(0.6)
    assert responses(drain(ua)) == [486]  # Timer G


def test_local_hangup_sends_bye_in_dialog() -> None:
    ua, caller = make_ua(), Caller()
    start_call(ua, caller)
    answer_and_ack(ua, caller, "call-1")
    events(ua)
    ua.hangup("call-1", 3.0)
    (bye,) = drain(ua)
    assert isinstance(bye, SipRequest) and bye.method == "BYE"
    assert bye.uri == SipUri.parse(f"sip:caller@{PEER[0]}:{PEER[1]}")
    assert bye.to.tag == "ctag" and bye.from_.tag == caller.to_tag
    assert events(ua) == [CallEnded("call-1", EndReason.LOCAL_BYE)]


def test_hangup_before_ack_waits_for_ack() -> None:
    ua, caller = make_ua(), Caller()
    start_call(ua, caller)
    ua.answer("call-1", ANSWER, 0.0)
    (ok,) = drain(ua)
    assert isinstance(ok, SipResponse)
    ua.hangup("call-1", 0.1)
    assert drain(ua) == []
    caller.to_tag = ok.to.tag
    ua.receive_datagram(caller.request("ACK", cseq=1).to_bytes(), PEER, 0.2)
    sent = drain(ua)
    assert [m.method for m in sent if isinstance(m, SipRequest)] == ["BYE"]
    assert [type(e) for e in events(ua)] == [CallEstablished, CallEnded]


def test_reinvite_hold_and_unacceptable_codec() -> None:
    ua, caller = make_ua(), Caller()
    start_call(ua, caller)
    answer_and_ack(ua, caller, "call-1")
    events(ua)
    hold = OFFER.replace(b"a=sendrecv", b"a=sendonly")
    caller.cseq = 2
    ua.receive_datagram(caller.request("INVITE", hold).to_bytes(), PEER, 5.0)
    (ok,) = drain(ua)
    assert isinstance(ok, SipResponse) and ok.status_code == 200
    answer_sd = SessionDescription.parse(ok.body)
    assert answer_sd.audio is not None and answer_sd.audio.direction is Direction.RECVONLY
    assert answer_sd.audio.port == 40000 and answer_sd.origin.session_version == 1  # version bumped
    (reinvite,) = events(ua)
    assert isinstance(reinvite, ReInvite) and reinvite.media is not None and reinvite.media.on_hold
    ua.receive_datagram(caller.request("ACK", cseq=2).to_bytes(), PEER, 5.1)
    gsm_only = OFFER.replace(b"RTP/AVP 9 0 8 101", b"RTP/AVP 3")
    caller.cseq = 3
    ua.receive_datagram(caller.request("INVITE", gsm_only).to_bytes(), PEER, 6.0)
    assert responses(drain(ua)) == [488]
    assert "call-1" in ua.calls  # the call goes on


def test_out_of_order_cseq_gets_500() -> None:
    ua, caller = make_ua(), Caller()
    start_call(ua, caller)
    answer_and_ack(ua, caller, "call-1")
    caller.cseq = 5
    ua.receive_datagram(caller.request("INFO").to_bytes(), PEER, 1.0)
    caller.cseq = 4
    ua.receive_datagram(caller.request("OPTIONS").to_bytes(), PEER, 1.1)
    assert responses(drain(ua)) == [200, 500]


def test_dtmf_info() -> None:
    ua, caller = make_ua(), Caller()
    start_call(ua, caller)
    answer_and_ack(ua, caller, "call-1")
    events(ua)
    caller.cseq = 2
    info = caller.request("INFO")
    info.headers.add("Content-Type", "application/dtmf-relay")
    info.body = b"Signal=5\r\nDuration=160\r\n"
    ua.receive_datagram(info.to_bytes(), PEER, 2.0)
    assert responses(drain(ua)) == [200]
    assert events(ua) == [DtmfInfo("call-1", "5", 160)]


def test_options_draining_capacity_and_unknown_requests() -> None:
    ua, caller = make_ua(max_calls=1), Caller()
    ua.receive_datagram(Caller("o1").request("OPTIONS").to_bytes(), PEER, 0.0)
    (ok,) = drain(ua)
    assert (
        isinstance(ok, SipResponse) and ok.status_code == 200 and "INVITE" in (ok.headers.get("Allow") or "")
    )
    start_call(ua, caller)
    ua.receive_datagram(Caller("o2").request("OPTIONS").to_bytes(), PEER, 0.1)
    ua.receive_datagram(Caller("second").request("INVITE", OFFER).to_bytes(), PEER, 0.2)
    assert responses(drain(ua)) == [503, 503]  # full
    ua.set_draining(True)
    ua.config.max_calls = None
    ua.receive_datagram(Caller("third").request("INVITE", OFFER).to_bytes(), PEER, 0.3)
    assert responses(drain(ua)) == [503]
    ua.receive_datagram(Caller("x").request("BYE").to_bytes(), PEER, 0.4)
    ua.receive_datagram(Caller("y").request("SUBSCRIBE").to_bytes(), PEER, 0.5)
    ua.receive_datagram(Caller("z").request("FROBNICATE").to_bytes(), PEER, 0.6)
    stranger = Caller("w")
    stranger.to_tag = "nope"
    ua.receive_datagram(stranger.request("BYE").to_bytes(), PEER, 0.7)
    assert responses(drain(ua)) == [481, 405, 501, 481]


def test_bad_sdp_gets_488_and_parse_errors_are_counted() -> None:
    ua = make_ua()
    ua.receive_datagram(Caller().request("INVITE", b"v=0\r\nnot sdp\r\n").to_bytes(), PEER, 0.0)
    assert responses(drain(ua)) == [488]
    broken = Caller("b").request("OPTIONS").to_bytes().replace(b"CSeq: 1 OPTIONS", b"CSeq: x OPTIONS")
    ua.receive_datagram(broken, PEER, 0.1)
    (reply,) = ua.datagrams_to_send()
    assert reply[0].startswith(b"SIP/2.0 400 ") and reply[1] == PEER
    ua.receive_datagram(b"garbage\r\n\r\n", PEER, 0.2)
    assert ua.datagrams_to_send() == []
    ua.receive_datagram(b"\r\n\r\n", PEER, 0.3)  # keep-alive
    assert ua.stats["parse_errors"] == 2 and ua.stats["dropped"] == 1 and ua.stats["keepalives"] == 1


def test_allowlist_and_digest_for_other_sources() -> None:
    ua = make_ua(is_allowed=AddressAllowlist(["10.0.0.0/8"]))
    ua.receive_datagram(Caller().request("INVITE", OFFER).to_bytes(), PEER, 0.0)
    assert responses(drain(ua)) == [403]
    assert events(ua) == []
    allowed = make_ua(is_allowed=AddressAllowlist(["198.51.100.0/24"]))
    start_call(allowed, Caller())
    secured = make_ua(is_allowed=AddressAllowlist([]), auth_users={"trunk": "s3cret"}, auth_secret=b"x" * 16)
    caller = Caller()
    secured.receive_datagram(caller.request("INVITE", OFFER).to_bytes(), PEER, 0.0)
    (challenge_response,) = drain(secured)
    assert isinstance(challenge_response, SipResponse) and challenge_response.status_code == 401
    challenge = DigestChallenge.parse(challenge_response.headers.get_lines("WWW-Authenticate")[0])
    creds = answer_challenge(challenge, username="trunk", password="s3cret", method="INVITE",
                             uri="sip:agent@192.0.2.1", cnonce="abc")  # fmt: skip
    caller.cseq = 2
    retry = caller.request("INVITE", OFFER, headers=[("Authorization", creds.to_header())])
    secured.receive_datagram(retry.to_bytes(), PEER, 1.0)
    assert responses(drain(secured)) == [100]
    assert isinstance(events(secured)[0], IncomingCall)


def test_allowlist_helper() -> None:
    allow = AddressAllowlist(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"])
    assert allow(("10.1.2.3", 5060)) and allow(("192.0.2.7", 1)) and allow(("2001:db8::5", 5060))
    assert allow(("::ffff:10.0.0.1", 5060))  # IPv4-mapped
    assert not allow(("192.0.2.8", 5060)) and not allow(("not-an-ip", 5060))


# --- UAC --------------------------------------------------------------------------------------


class Callee:
    """Answers our INVITEs by hand."""

    @staticmethod
    def reply(request: SipRequest, code: int, body: bytes = b"", tag: str = "rtag",
              headers: list[tuple[str, str]] | None = None) -> bytes:  # fmt: skip
        extra = [("Contact", "<sip:callee@203.0.113.9:5070>"), *(headers or [])]
        return build_response(request, code, to_tag=tag, body=body, extra_headers=extra).to_bytes()


def test_outbound_call_ringing_answer_ack_and_hangup() -> None:
    ua = make_ua(outbound_proxy=("203.0.113.1", 5060))
    call_id = ua.invite("sip:bob@example.com", OFFER, 0.0)
    ((data, addr),) = ua.datagrams_to_send()
    invite = parse_message(data)
    assert isinstance(invite, SipRequest) and invite.method == "INVITE" and addr == ("203.0.113.1", 5060)
    assert invite.body == OFFER and invite.from_.tag and invite.to.tag is None and invite.call_id == call_id
    ua.receive_datagram(Callee.reply(invite, 100, tag=""), addr, 0.1)
    ua.receive_datagram(Callee.reply(invite, 180), addr, 0.2)
    assert events(ua) == [CallRinging(call_id, 180, b"")]
    ua.handle_timer(5.0)
    assert drain(ua) == []  # provisional stopped Timer A
    ok = Callee.reply(invite, 200, ANSWER)
    ua.receive_datagram(ok, addr, 1.0)
    ((ack_data, ack_addr),) = ua.datagrams_to_send()
    ack = parse_message(ack_data)
    assert isinstance(ack, SipRequest) and ack.method == "ACK" and ack.cseq == (1, "ACK")
    assert ack_addr == ("203.0.113.1", 5060)  # no route set: via the outbound proxy
    assert ack.uri.host == "203.0.113.9" and ack.to.tag == "rtag"
    assert ack.top_via.branch != invite.top_via.branch  # §13.2.2.4: a new transaction
    assert events(ua) == [CallEstablished(call_id, True, OFFER, ANSWER)]
    ua.receive_datagram(ok, addr, 1.5)  # our ACK was lost: the 2xx comes again
    assert [m.method for m in drain(ua) if isinstance(m, SipRequest)] == ["ACK"]
    ua.hangup(call_id, 2.0)
    (bye,) = drain(ua)
    assert isinstance(bye, SipRequest) and bye.method == "BYE" and bye.cseq == (2, "BYE")
    assert events(ua) == [CallEnded(call_id, EndReason.LOCAL_BYE)]


def test_outbound_proxy_auth_retry() -> None:
    ua = make_ua(credentials=Credentials("agent", "pw"))
    call_id = ua.invite("sip:bob@203.0.113.9", OFFER, 0.0)
    (invite,) = drain(ua)
    assert isinstance(invite, SipRequest)
    server = DigestServer("pbx", {"agent": "pw"}, b"k" * 16)
    ua.receive_datagram(Callee.reply(invite, 407, headers=[("Proxy-Authenticate", server.challenges(0.0)[1])]),
                        ("203.0.113.9", 5060), 0.1)  # fmt: skip
    sent = drain(ua)
    ack, retry = sent
    assert isinstance(ack, SipRequest) and ack.method == "ACK" and ack.cseq == (1, "ACK")
    assert isinstance(retry, SipRequest) and retry.cseq == (2, "INVITE") and retry.call_id == call_id
    assert retry.from_.tag == invite.from_.tag
    value = retry.headers.get("Proxy-Authorization")
    assert value is not None and server.verify(value, method="INVITE", now=0.2)[0] is Verdict.VALID
    ua.receive_datagram(Callee.reply(retry, 200, ANSWER), ("203.0.113.9", 5060), 0.3)
    assert [type(e) for e in events(ua)] == [CallEstablished]


def test_outbound_rejected_and_timeout() -> None:
    ua = make_ua()
    call_id = ua.invite("sip:bob@203.0.113.9", OFFER, 0.0)
    (invite,) = drain(ua)
    assert isinstance(invite, SipRequest)
    ua.receive_datagram(Callee.reply(invite, 486), ("203.0.113.9", 5060), 0.1)
    assert [m.method for m in drain(ua) if isinstance(m, SipRequest)] == ["ACK"]
    assert events(ua) == [CallEnded(call_id, EndReason.REJECTED, 486)]
    silent = ua.invite("sip:carol@203.0.113.9", OFFER, 0.0)
    while (deadline := ua.get_timer()) is not None and deadline <= 40.0:
        ua.handle_timer(deadline)
        ua.datagrams_to_send()
    assert events(ua) == [CallEnded(silent, EndReason.TIMEOUT, 408)]  # Timer B at 32 s


def test_outbound_cancel_waits_for_provisional() -> None:
    ua = make_ua()
    call_id = ua.invite("sip:bob@203.0.113.9", OFFER, 0.0)
    (invite,) = drain(ua)
    assert isinstance(invite, SipRequest)
    ua.hangup(call_id, 0.1)
    assert drain(ua) == []  # §9.1: no CANCEL before a provisional response
    ua.receive_datagram(Callee.reply(invite, 180), ("203.0.113.9", 5060), 0.2)
    (cancel,) = drain(ua)
    assert isinstance(cancel, SipRequest) and cancel.method == "CANCEL"
    assert cancel.top_via.branch == invite.top_via.branch and cancel.cseq == (1, "CANCEL")
    ua.receive_datagram(Callee.reply(cancel, 200), ("203.0.113.9", 5060), 0.3)
    ua.receive_datagram(Callee.reply(invite, 487), ("203.0.113.9", 5060), 0.4)
    assert events(ua) == [CallEnded(call_id, EndReason.LOCAL_CANCEL, 487)]


def test_register_with_auth_and_refresh() -> None:
    ua = make_ua(credentials=Credentials("agent", "pw"), domain="pbx.example.com")
    ua.register("sip:pbx.example.com", 0.0, expires_s=300)
    ((data, addr),) = ua.datagrams_to_send()
    first = parse_message(data)
    assert isinstance(first, SipRequest) and first.method == "REGISTER" and addr == ("pbx.example.com", 5060)
    assert first.headers.get("Expires") == "300" and first.to.uri == SipUri.parse("sip:agent@pbx.example.com")
    server = DigestServer("pbx", {"agent": "pw"}, b"k" * 16)
    ua.receive_datagram(Callee.reply(first, 401, headers=[("WWW-Authenticate", server.challenges(0.0)[0])]),
                        addr, 0.1)  # fmt: skip
    (second,) = drain(ua)
    assert (
        isinstance(second, SipRequest) and second.cseq == (2, "REGISTER") and second.call_id == first.call_id
    )
    value = second.headers.get("Authorization")
    assert value is not None and server.verify(value, method="REGISTER", now=0.2)[0] is Verdict.VALID
    ok = build_response(second, 200, to_tag="r")
    ok.headers.add("Contact", f"<sip:agent@{LOCAL}:5060>;expires=120")
    ua.receive_datagram(ok.to_bytes(), addr, 0.2)
    assert events(ua) == [RegistrationSucceeded("sip:agent@pbx.example.com", 120)]
    assert ua.get_timer() is not None
    ua.handle_timer(0.2 + 89.0)
    ua.datagrams_to_send()
    assert ua.get_timer() == 0.2 + 90.0  # refresh 30 s before expiry
    ua.handle_timer(0.2 + 90.0)
    (refresh,) = drain(ua)
    assert (
        isinstance(refresh, SipRequest)
        and refresh.cseq == (3, "REGISTER")
        and refresh.call_id == first.call_id
    )
    ua.receive_datagram(build_response(refresh, 403, to_tag="r").to_bytes(), addr, 91.0)
    assert events(ua) == [RegistrationFailed("sip:agent@pbx.example.com", 403, "Forbidden")]


# --- two user agents, paired in memory (h11's ConnectionPair idea) ----------------------------


def test_two_user_agents_call_each_other() -> None:
    alice = UserAgent(UaConfig(local_host="10.0.0.1", user="alice"))
    bob = UserAgent(UaConfig(local_host="10.0.0.2", user="bob"))
    agents = {("10.0.0.1", 5060): alice, ("10.0.0.2", 5060): bob}
    now = 0.0

    def pump() -> None:
        moved = True
        while moved:
            moved = False
            for source_addr, ua in agents.items():
                for data, dest in ua.datagrams_to_send():
                    agents[dest].receive_datagram(data, source_addr, now)
                    moved = True

    call_id = alice.invite("sip:bob@10.0.0.2", OFFER, now)
    pump()
    (incoming,) = events(bob)
    assert isinstance(incoming, IncomingCall) and incoming.call_id == call_id
    bob.ring(call_id, now)
    pump()
    now = 1.0
    bob.answer(call_id, ANSWER, now)
    pump()
    assert events(alice) == [CallRinging(call_id, 180, b""), CallEstablished(call_id, True, OFFER, ANSWER)]
    assert events(bob) == [CallEstablished(call_id, False, ANSWER, OFFER)]
    for t in (2.0, 10.0, 40.0):  # nothing left to retransmit once both sides are confirmed
        now = t
        alice.handle_timer(now)
        bob.handle_timer(now)
        pump()
    assert events(alice) == events(bob) == []
    alice.hangup(call_id, now)
    pump()
    assert events(alice) == [CallEnded(call_id, EndReason.LOCAL_BYE)]
    assert events(bob) == [CallEnded(call_id, EndReason.REMOTE_BYE)]
    assert alice.calls == bob.calls == {}
