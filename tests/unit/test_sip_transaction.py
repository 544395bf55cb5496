"""Transaction state machines and timers (RFC 3261 §17, RFC 6026), time moved by hand."""

from __future__ import annotations

from sip_bridge.headers import Headers
from sip_bridge.message import SipRequest, SipResponse, build_response, parse_message
from sip_bridge.transaction import (
    ClientTransaction,
    ServerTransaction,
    TimerConfig,
    TransactionLayer,
    TransactionState,
    server_key,
)
from sip_bridge.uri import SipUri

PEER = ("192.0.2.9", 5060)
TIMERS = TimerConfig()


def request(method: str = "INVITE", branch: str = "z9hG4bKtx1") -> SipRequest:
    headers = Headers([
        ("Via", f"SIP/2.0/UDP 192.0.2.1:5060;branch={branch}"),
        ("From", "<sip:a@192.0.2.1>;tag=f1"),
        ("To", "<sip:b@192.0.2.9>"),
        ("Call-ID", "c1"),
        ("CSeq", f"1 {method}"),
        ("Contact", "<sip:a@192.0.2.1>"),
    ])  # fmt: skip
    return SipRequest(method, SipUri.parse("sip:b@192.0.2.9"), headers)


def sent_times(txn: ClientTransaction | ServerTransaction, until: float, step: float = 0.01) -> list[float]:
    """Drive the transaction to ``until`` and record when it transmitted."""
    times = [0.0] if txn.datagrams_to_send() else []
    now = 0.0
    while now < until:
        deadline = txn.get_timer()
        if deadline is None or deadline > until:
            break
        now = deadline
        txn.handle_timer(now)
        if txn.datagrams_to_send():
            times.append(round(now, 3))
    return times


def test_invite_client_timer_a_doubles_and_timer_b_times_out() -> None:
    txn = ClientTransaction(request(), PEER, 0.0, TIMERS)
    assert txn.state is TransactionState.CALLING
    times = sent_times(txn, 40.0)
    assert times == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # T1, 2T1, 4T1 ... (§17.1.1.2)
    assert txn.state is TransactionState.TERMINATED and txn.timed_out  # Timer B = 64*T1 = 32 s


def test_invite_client_provisional_stops_retransmission_and_error_is_acked() -> None:
    txn = ClientTransaction(request(), PEER, 0.0, TIMERS)
    txn.datagrams_to_send()
    ringing = build_response(txn.request, 180, to_tag="t9")
    assert txn.receive_response(ringing, 0.2) and txn.state is TransactionState.PROCEEDING
    assert txn.get_timer() is None
    busy = build_response(txn.request, 486, to_tag="t9")
    assert txn.receive_response(busy, 1.0) and txn.state is TransactionState.COMPLETED
    ((ack_bytes, addr),) = txn.datagrams_to_send()
    ack = parse_message(ack_bytes)
    assert isinstance(ack, SipRequest) and ack.method == "ACK" and addr == PEER
    assert ack.cseq == (1, "ACK") and ack.to.tag == "t9" and ack.top_via.branch == "z9hG4bKtx1"  # §17.1.1.3
    assert not txn.receive_response(busy, 2.0)  # retransmitted 486: absorbed, ACK re-sent
    assert len(txn.datagrams_to_send()) == 1
    txn.handle_timer(1.0 + 32.0)  # Timer D
    assert txn.state is TransactionState.TERMINATED and not txn.timed_out


def test_invite_client_2xx_goes_to_accepted_and_passes_retransmissions_up() -> None:
    txn = ClientTransaction(request(), PEER, 0.0, TIMERS)
    ok = build_response(txn.request, 200, to_tag="t9")
    assert txn.receive_response(ok, 0.1) and txn.state is TransactionState.ACCEPTED
    assert txn.receive_response(ok, 0.6)  # the TU re-sends its ACK (RFC 6026)
    txn.handle_timer(0.1 + 32.0)
    assert txn.state is TransactionState.TERMINATED


def test_non_invite_client_timer_e_caps_at_t2_and_f_times_out() -> None:
    txn = ClientTransaction(request("OPTIONS"), PEER, 0.0, TIMERS)
    assert txn.state is TransactionState.TRYING
    times = sent_times(txn, 40.0)
    assert times[:6] == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5]  # 0.5, 1, 2, 4, 4 ... (§17.1.2.2)
    assert txn.timed_out and txn.state is TransactionState.TERMINATED


def test_non_invite_client_completed_then_timer_k() -> None:
    txn = ClientTransaction(request("BYE"), PEER, 0.0, TIMERS)
    assert txn.receive_response(build_response(txn.request, 200, to_tag="x"), 0.3)
    assert txn.state is TransactionState.COMPLETED
    assert not txn.receive_response(build_response(txn.request, 200, to_tag="x"), 0.4)
    txn.handle_timer(0.3 + TIMERS.t4_s)
    assert txn.state is TransactionState.TERMINATED


def test_invite_server_error_response_retransmits_until_ack() -> None:
    txn = ServerTransaction(request(), PEER, 0.0, TIMERS)
    txn.send_response(build_response(txn.request, 100), 0.0)
    txn.receive_request(request(), 0.2)  # retransmitted INVITE → 100 again
    assert len(txn.datagrams_to_send()) == 2
    txn.send_response(build_response(txn.request, 486, to_tag="s1"), 1.0)
    times = sent_times(txn, 5.0)
    assert times == [0.0, 1.5, 2.5, 4.5]  # Timer G: T1, 2T1, 4T1 after the final response
    ack = request("ACK")
    txn.receive_request(ack, 5.0)
    assert txn.state is TransactionState.CONFIRMED
    txn.handle_timer(5.0 + TIMERS.t4_s)  # Timer I
    assert txn.state is TransactionState.TERMINATED and not txn.timed_out


def test_invite_server_timer_h_when_ack_never_comes() -> None:
    txn = ServerTransaction(request(), PEER, 0.0, TIMERS)
    txn.send_response(build_response(txn.request, 603, to_tag="s1"), 0.0)
    assert not txn.handle_timer(31.9)
    assert txn.handle_timer(32.0) and txn.state is TransactionState.TERMINATED


def test_invite_server_2xx_leaves_retransmission_to_tu_and_absorbs_invites() -> None:
    txn = ServerTransaction(request(), PEER, 0.0, TIMERS)
    txn.send_response(build_response(txn.request, 200, to_tag="s1"), 0.0)
    assert txn.state is TransactionState.ACCEPTED
    txn.datagrams_to_send()
    txn.receive_request(request(), 0.5)
    txn.handle_timer(10.0)
    assert txn.datagrams_to_send() == []
    txn.handle_timer(32.0)  # Timer L
    assert txn.state is TransactionState.TERMINATED


def test_non_invite_server_resends_final_and_timer_j() -> None:
    txn = ServerTransaction(request("OPTIONS"), PEER, 0.0, TIMERS)
    txn.receive_request(request("OPTIONS"), 0.1)
    assert txn.datagrams_to_send() == []  # Trying: absorbed silently
    txn.send_response(build_response(txn.request, 200, to_tag="s"), 0.2)
    txn.receive_request(request("OPTIONS"), 0.7)
    assert len(txn.datagrams_to_send()) == 2
    txn.handle_timer(0.2 + 32.0)
    assert txn.state is TransactionState.TERMINATED


def test_custom_timer_values() -> None:
    fast = TimerConfig(t1_s=0.1, t2_s=0.4, t4_s=1.0)
    txn = ClientTransaction(request("OPTIONS"), PEER, 0.0, fast)
    assert sent_times(txn, 2.0)[:6] == [0.0, 0.1, 0.3, 0.7, 1.1, 1.5]
    assert fast.timeout_s == 6.4


def test_layer_matching_rules() -> None:
    layer = TransactionLayer(TIMERS)
    invite = request()
    server = layer.start_server(invite, PEER, 0.0)
    assert layer.match_request(request()) is server
    assert layer.match_request(request("ACK")) is server  # §17.2.3: ACK matches the INVITE
    assert layer.match_request(request(branch="z9hG4bKother")) is None
    cancel = request("CANCEL")
    assert layer.match_request(cancel) is None  # CANCEL is its own transaction
    assert layer.invite_for_cancel(cancel) is server
    other_host = request()
    other_host.headers.set("Via", "SIP/2.0/UDP 192.0.2.77:5060;branch=z9hG4bKtx1")
    assert layer.match_request(other_host) is None  # sent-by differs
    client = layer.start_client(request("OPTIONS", branch="z9hG4bKc"), PEER, 0.0)
    assert layer.match_response(build_response(client.request, 200)) is client
    wrong_method = build_response(client.request, 200)
    wrong_method.headers.set("CSeq", "1 INVITE")
    assert layer.match_response(wrong_method) is None


def test_rfc2543_requests_match_without_magic_cookie() -> None:
    old = request(branch="1")
    old.headers.set("Via", "SIP/2.0/UDP 192.0.2.1:5060")
    key = server_key(old)
    assert key[0] == "rfc2543"
    layer = TransactionLayer(TIMERS)
    txn = layer.start_server(old, PEER, 0.0)
    again = request(branch="1")
    again.headers.set("Via", "SIP/2.0/UDP 192.0.2.1:5060")
    assert layer.match_request(again) is txn


def test_layer_timer_collects_and_prunes() -> None:
    layer = TransactionLayer(TIMERS)
    layer.start_client(request("OPTIONS"), PEER, 0.0)
    assert layer.get_timer() == 0.5
    assert len(layer.datagrams_to_send()) == 1
    timed_out = layer.handle_timer(40.0)
    assert len(timed_out) == 1 and timed_out[0].timed_out
    assert layer.datagrams_to_send()  # the retransmissions before Timer F fired
    assert layer.clients == {} and layer.get_timer() is None


def test_response_is_serialisable() -> None:
    response: SipResponse = build_response(request(), 180, to_tag="x")
    assert parse_message(response.to_bytes()).cseq == (1, "INVITE")
