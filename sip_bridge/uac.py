"""The calling half of the user agent: outbound INVITEs, CANCEL, digest retries, REGISTER.

Theory of operation
-------------------
Outbound call states::

    CALLING --1xx--> EARLY --2xx--> CONFIRMED (ACK sent by this core, §13.2.2.4)
    CALLING/EARLY --401/407 with credentials--> CALLING (same Call-ID and tag, CSeq+1, §22.2)
    CALLING/EARLY --300-699--> ENDED (the transaction sends the ACK, §17.1.1.3)
    EARLY --hangup()/no-answer timeout--> CANCELLING --487--> ENDED
    CANCELLING --2xx (race)--> ENDED (ACK then BYE, §9.1)

A CANCEL waits for a provisional response (§9.1): ``hangup`` before any 1xx only marks the
call. A 2xx re-sent by the peer makes us re-send our ACK; a 2xx from another fork (other To
tag) is acknowledged and ended with BYE (§13.2.2.4).

Registration (§10.2): REGISTER with Expires, answered challenges, 423 → retry with
Min-Expires; after success a refresh is scheduled ``REFRESH_MARGIN_S`` before expiry (at
least half-way); after a failure, a retry after ``registration_retry_s``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sip_bridge.dialog import Dialog
from sip_bridge.digest import SUPPORTED_ALGORITHMS, DigestChallenge, answer_challenge
from sip_bridge.errors import DigestError, SipParseError, SipStateError
from sip_bridge.events import (
    CallEstablished,
    CallRinging,
    EndReason,
    RegistrationFailed,
    RegistrationSucceeded,
)
from sip_bridge.headers import Headers
from sip_bridge.message import SipRequest, SipResponse
from sip_bridge.transaction import ClientTransaction, Transaction
from sip_bridge.ua_core import Call, CallState, UaConfig, UaCore
from sip_bridge.uri import NameAddr, SipUri

REFRESH_MARGIN_S = 30.0
MAX_AUTH_ATTEMPTS = 2


@dataclass
class Registration:
    aor: NameAddr
    registrar: SipUri
    expires_s: int
    call_id: str
    local_tag: str
    cseq: int = 0
    request: SipRequest | None = None
    txn: ClientTransaction | None = None
    refresh_s: float | None = None
    auth_attempts: int = 0


class UacSide(UaCore):
    def __init__(self, config: UaConfig) -> None:
        super().__init__(config)
        self.registrations: dict[str, Registration] = {}

    # --- commands ---------------------------------------------------------------------------
    def invite(
        self,
        uri: str,
        sdp: bytes,
        now: float,
        *,
        extra_headers: list[tuple[str, str]] | None = None,
    ) -> str:
        """Start an outbound call to ``uri`` offering ``sdp``; returns the call id (Call-ID)."""
        target = SipUri.parse(uri)
        call_id = self.new_call_id()
        tag = self.new_tag()
        headers = Headers()
        headers.add("Via", str(self.make_via()))
        headers.add("Max-Forwards", "70")
        headers.add("From", str(self.aor.with_tag(tag)))
        headers.add("To", str(NameAddr(target)))
        headers.add("Call-ID", call_id)
        headers.add("CSeq", "1 INVITE")
        headers.add("Contact", str(self.contact))
        for name, value in extra_headers or []:
            headers.add(name, value)
        if sdp:
            headers.add("Content-Type", "application/sdp")
        request = SipRequest("INVITE", target, headers, sdp)
        addr = self.next_hop(target)
        call = Call(call_id, True, CallState.CALLING, request, addr, tag, local_sdp=sdp)
        call.client_txn = self.start_request(request, addr, now)
        call.invite_deadline_s = now + self.config.invite_timeout_s
        self.calls[call_id] = call
        return call_id

    def cancel_outbound(self, call: Call, now: float) -> None:
        if call.state is CallState.CALLING and not call.provisional_seen:
            call.hangup_pending = True  # §9.1: CANCEL only after a provisional response
            return
        if call.state not in (CallState.CALLING, CallState.EARLY):
            return
        original = call.invite
        headers = Headers()
        headers.add("Via", original.headers.get_all("Via")[0])  # same branch as the INVITE
        for route in original.headers.get_lines("Route"):
            headers.add("Route", route)
        headers.add("Max-Forwards", "70")
        for name in ("From", "To", "Call-ID"):
            headers.add(name, original.headers.get(name) or "")
        headers.add("CSeq", f"{original.cseq[0]} CANCEL")
        self.start_request(SipRequest("CANCEL", original.uri, headers), call.remote_addr, now)
        call.state = CallState.CANCELLING

    def register(self, registrar: str, now: float, *, expires_s: int = 3600) -> None:
        """Register our Contact at ``registrar`` (e.g. ``sip:pbx.example.com``) and keep it fresh."""
        uri = SipUri.parse(registrar)
        aor = self.aor
        reg = Registration(aor, uri, expires_s, self.new_call_id(), self.new_tag())
        self.registrations[str(aor.uri)] = reg
        self._send_register(reg, now, None)

    def unregister(self, now: float) -> None:
        """Remove our bindings (Expires: 0); each ends with RegistrationSucceeded(expires_s=0)."""
        for reg in self.registrations.values():
            reg.expires_s = 0
            reg.auth_attempts = 0
            self._send_register(reg, now, None)

    # --- responses --------------------------------------------------------------------------
    def handle_response(self, response: SipResponse, now: float) -> None:
        if len(response.headers.get_all("Via")) != 1:
            self.stats["responses_dropped"] += 1  # §8.1.3.3: more than one Via
            return
        txn = self.transactions.match_response(response)
        if txn is None:
            self._stray_response(response)
            return
        if not txn.receive_response(response, now):
            self.stats["retransmissions_absorbed"] += 1
            return
        method = txn.request.method
        if method == "INVITE":
            call = self.calls.get(txn.request.call_id)
            if call is not None and call.outbound:
                self._on_invite_response(call, txn, response, now)
        elif method == "REGISTER" and response.status_code >= 200:
            reg = next((r for r in self.registrations.values() if r.txn is txn), None)
            if reg is not None:
                self._on_register_response(reg, response, now)

    def _stray_response(self, response: SipResponse) -> None:
        call = self.calls.get(response.call_id)
        if call is not None and call.ack_request is not None and 200 <= response.status_code < 300:
            self.send_raw(call.ack_request, self.route(call))  # our ACK was lost: say it again
            return
        self.stats["responses_unmatched"] += 1

    def _on_invite_response(
        self, call: Call, txn: ClientTransaction, response: SipResponse, now: float
    ) -> None:
        code = response.status_code
        if code < 200:
            call.provisional_seen = True
            if call.state is CallState.CALLING:
                call.state = CallState.EARLY
            if call.hangup_pending:
                self.cancel_outbound(call, now)
            elif code > 100:
                self.emit(CallRinging(call.call_id, code, response.body))
            return
        if code < 300:
            self._on_invite_success(call, response, now)
            return
        if txn is not call.client_txn:
            return
        if (
            code in (401, 407)
            and call.state in (CallState.CALLING, CallState.EARLY)
            and not call.hangup_pending
        ):
            retry = self._authorize(call.invite, response, call.auth_attempts)
            if retry is not None:
                call.auth_attempts += 1
                call.invite = retry
                call.state = CallState.CALLING
                call.client_txn = self.start_request(retry, call.remote_addr, now)
                return
            self.end_call(call, EndReason.AUTH_FAILED, code)
            return
        cancelled = call.state is CallState.CANCELLING or call.hangup_pending
        self.end_call(call, EndReason.LOCAL_CANCEL if cancelled else EndReason.REJECTED, code)

    def _on_invite_success(self, call: Call, response: SipResponse, now: float) -> None:
        try:
            dialog = Dialog.as_uac(call.invite, response)
        except SipParseError:
            self.stats["responses_dropped"] += 1
            return
        if call.dialog is not None:
            if dialog.id == call.dialog.id and call.ack_request is not None:
                self.send_raw(call.ack_request, self.route(call))  # retransmitted 2xx
                return
            fork = Call(
                call.call_id, True, CallState.CONFIRMED, call.invite, call.remote_addr, call.local_tag
            )
            fork.dialog = dialog
            self._send_ack(fork, call.invite.cseq[0])
            self.send_bye(fork, now)  # a second fork answered: we keep the first (§13.2.2.4)
            return
        call.dialog = dialog
        call.remote_sdp = response.body
        call.invite_deadline_s = None
        self._send_ack(call, call.invite.cseq[0])
        if call.state is CallState.CANCELLING or call.hangup_pending:
            self.send_bye(call, now)
            self.end_call(call, EndReason.LOCAL_CANCEL, response.status_code)
            return
        call.state = CallState.CONFIRMED
        self.emit(CallEstablished(call.call_id, True, call.local_sdp, call.remote_sdp))

    def _send_ack(self, call: Call, cseq: int) -> None:
        assert call.dialog is not None
        ack = call.dialog.create_request("ACK", via=self.make_via(), cseq=cseq)
        self.common_headers(ack.headers)
        call.ack_request = ack
        self.send_raw(ack, self.route(call))

    def _authorize(self, request: SipRequest, response: SipResponse, attempts: int) -> SipRequest | None:
        """The request again with credentials answering the challenge (§22.2), or None."""
        creds = self.config.credentials
        if creds is None or attempts >= MAX_AUTH_ATTEMPTS:
            return None
        proxy = response.status_code == 407
        challenges: list[DigestChallenge] = []
        for value in response.headers.get_lines("Proxy-Authenticate" if proxy else "WWW-Authenticate"):
            try:
                challenge = DigestChallenge.parse(value)
            except DigestError:
                continue
            if challenge.algorithm.upper() in {a.upper() for a in SUPPORTED_ALGORITHMS}:
                challenges.append(challenge)
        if not challenges:
            return None
        challenges.sort(key=lambda c: 0 if c.algorithm.upper().startswith("SHA-256") else 1)  # RFC 8760 §2.4
        try:
            answer = answer_challenge(
                challenges[0], username=creds.username, password=creds.password,
                method=request.method, uri=str(request.uri), cnonce=secrets.token_hex(8),
            )  # fmt: skip
        except DigestError:
            return None
        headers = request.headers.copy()
        headers.set("Via", str(self.make_via()))
        number, method = request.cseq
        headers.set("CSeq", f"{number + 1} {method}")
        headers.set("Proxy-Authorization" if proxy else "Authorization", answer.to_header())
        return SipRequest(request.method, request.uri, headers, request.body)

    # --- registration -----------------------------------------------------------------------
    def _send_register(self, reg: Registration, now: float, request: SipRequest | None) -> None:
        if request is None:
            reg.cseq += 1
            headers = Headers()
            headers.add("Via", str(self.make_via()))
            headers.add("Max-Forwards", "70")
            headers.add("From", str(reg.aor.with_tag(reg.local_tag)))
            headers.add("To", str(reg.aor))
            headers.add("Call-ID", reg.call_id)
            headers.add("CSeq", f"{reg.cseq} REGISTER")
            headers.add("Contact", str(self.contact))
            headers.add("Expires", str(reg.expires_s))
            request = SipRequest("REGISTER", reg.registrar, headers)
        reg.cseq = request.cseq[0]
        reg.request = request
        reg.refresh_s = None
        reg.txn = self.start_request(request, self.next_hop(reg.registrar), now)

    def _on_register_response(self, reg: Registration, response: SipResponse, now: float) -> None:
        code, aor = response.status_code, str(reg.aor.uri)
        if 200 <= code < 300:
            reg.auth_attempts = 0
            if reg.expires_s == 0:
                self.registrations.pop(aor, None)
                self.emit(RegistrationSucceeded(aor, 0))
                return
            granted = self._granted_expiry(reg, response)
            reg.refresh_s = now + max(granted / 2, granted - REFRESH_MARGIN_S)
            self.emit(RegistrationSucceeded(aor, granted))
            return
        if code in (401, 407) and reg.request is not None:
            retry = self._authorize(reg.request, response, reg.auth_attempts)
            if retry is not None:
                reg.auth_attempts += 1
                self._send_register(reg, now, retry)
                return
        if code == 423 and (response.headers.get("Min-Expires") or "").isdigit():
            reg.expires_s = int(response.headers.get("Min-Expires") or "0")  # §10.2.8
            self._send_register(reg, now, None)
            return
        reg.auth_attempts = 0
        reg.refresh_s = now + self.config.registration_retry_s
        self.emit(RegistrationFailed(aor, code, response.reason))

    def _granted_expiry(self, reg: Registration, response: SipResponse) -> int:
        ours = self.contact.uri
        for contact in response.contacts:
            value = contact.param("expires")
            same = (contact.uri.host, contact.uri.port, contact.uri.user) == (ours.host, ours.port, ours.user)
            if value and value.isdigit() and same:
                return int(value)
        header = response.headers.get("Expires")
        return int(header) if header and header.isdigit() else reg.expires_s

    # --- timers -----------------------------------------------------------------------------
    def uac_timer(self) -> float | None:
        deadlines = [r.refresh_s for r in self.registrations.values() if r.refresh_s is not None]
        deadlines += [c.invite_deadline_s for c in self.calls.values() if c.invite_deadline_s is not None]
        return min(deadlines, default=None)

    def uac_handle_timer(self, now: float) -> None:
        for reg in list(self.registrations.values()):
            if reg.refresh_s is not None and reg.refresh_s <= now:
                reg.auth_attempts = 0
                self._send_register(reg, now, None)
        for call in list(self.calls.values()):
            if call.invite_deadline_s is not None and call.invite_deadline_s <= now:
                call.invite_deadline_s = None
                if call.provisional_seen:
                    self.cancel_outbound(call, now)
                self.end_call(call, EndReason.TIMEOUT, 408)

    def on_client_timeout(self, txn: Transaction, now: float) -> None:
        """Timer B/F fired: no response at all (§17.1.1.2 / §17.1.2.2)."""
        request = txn.request
        if request.method == "INVITE":
            call = self.calls.get(request.call_id)
            if call is not None and call.client_txn is txn:
                reason = EndReason.LOCAL_CANCEL if call.hangup_pending else EndReason.TIMEOUT
                self.end_call(call, reason, 408)
        elif request.method == "REGISTER":
            for reg in self.registrations.values():
                if reg.txn is txn:
                    reg.refresh_s = now + self.config.registration_retry_s
                    self.emit(RegistrationFailed(str(reg.aor.uri), None, "timeout"))

    def require_call(self, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None:
            raise SipStateError(f"no call {call_id!r}")
        return call
