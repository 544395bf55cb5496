"""The answering half of the user agent: inbound requests and the calls they create.

Theory of operation
-------------------
An inbound request that matches no server transaction gets a new one, then passes the checks
of RFC 3261 §8.2 in order: URI scheme (416), Require (420), then either the dialog it names
(§12.2.2: unknown → 481, CSeq out of order → 500) or, outside a dialog, the method (501
unknown, 405 with Allow for known but unsupported). A new INVITE is then checked for source
(``is_allowed``; otherwise digest credentials: 401, or 403 with no users configured), merged
requests (482), capacity (503 while draining or full), body type (415), Accept (406) and SDP
(488), answered with 100 Trying, and reported as ``IncomingCall``.

Inbound call states::

    INCOMING --answer()--> ANSWERED --ACK--> CONFIRMED --BYE either way--> ENDED
    INCOMING --reject()/hangup()--> ENDED (non-2xx via the transaction: G/H/I)
    INCOMING --CANCEL--> ENDED (200 to CANCEL, 487 to INVITE, CallCancelled)
    ANSWERED --64*T1 without ACK--> ENDED (BYE sent, §13.3.1.4)

The 2xx to an INVITE is re-sent by this core (not the transaction) every T1 doubling to T2
until the ACK arrives (§13.3.1.4); the same mechanism serves re-INVITEs, which are answered
automatically from the configured media preferences (RFC 3264 §8) and reported as ``ReInvite``.
"""

from __future__ import annotations

from sip_bridge.dialog import Dialog
from sip_bridge.digest import Verdict
from sip_bridge.errors import NoAcceptableCodec, SdpError, SipParseError, SipStateError
from sip_bridge.events import CallCancelled, CallEstablished, DtmfInfo, EndReason, IncomingCall, ReInvite
from sip_bridge.message import Addr, SipRequest, SipResponse
from sip_bridge.sdp import SessionDescription, negotiate_answer
from sip_bridge.transaction import ServerTransaction
from sip_bridge.ua_core import ALLOWED_METHODS, KNOWN_METHODS, Call, CallState, PendingOk, UaCore

SDP_TYPE = "application/sdp"


def extract_sdp(content_type: str | None, raw_type: str | None, body: bytes) -> bytes | None:
    """The SDP in a body: itself, or the application/sdp part of multipart/mixed (RFC 2046 §5.1)."""
    if not body:
        return b""
    if content_type == SDP_TYPE:
        return body
    if content_type == "multipart/mixed" and raw_type:
        boundary = next(
            (
                p.split("=", 1)[1].strip().strip('"')
                for p in raw_type.split(";")[1:]
                if p.strip().lower().startswith("boundary=")
            ),
            None,
        )
        if not boundary:
            return None
        for part in body.split(b"--" + boundary.encode())[1:]:
            head, sep, content = part.partition(b"\r\n\r\n")
            if sep and b"content-type: application/sdp" in head.lower():
                return content.rstrip(b"\r\n") + b"\r\n"
    return None


def _accepts_sdp(accept_values: list[str]) -> bool:
    kinds = {value.split(";")[0].strip().lower() for value in accept_values}
    return bool(kinds & {SDP_TYPE, "application/*", "*/*"})


class UasSide(UaCore):
    def handle_request(self, request: SipRequest, addr: Addr, now: float) -> None:
        """A request that matched no server transaction (ACKs for 2xx included)."""
        if request.method == "ACK":
            self._handle_ack(request, now)
            return
        txn = self.transactions.start_server(request, request.top_via.response_address(addr), now)
        if request.version != "SIP/2.0":
            self.respond(txn, 505, now)
            return
        if not request.uri.is_sip and request.uri.scheme != "tel":
            self.respond(txn, 416, now)
            return
        unsupported = [
            option
            for option in request.headers.get_all("Require")
            if option not in self.config.supported_options
        ]
        if unsupported and request.method != "CANCEL":
            self.respond(txn, 420, now, extra_headers=[("Unsupported", ", ".join(unsupported))])
            return
        if request.method == "CANCEL":
            self._handle_cancel(txn, now)
        elif request.to.tag is not None:
            self._handle_in_dialog(request, txn, now)
        elif request.method == "INVITE":
            self._handle_new_invite(request, txn, addr, now)
        elif request.method == "OPTIONS":  # a load balancer's health probe: 503 sends calls elsewhere
            full = self.config.is_full is not None and self.config.is_full()
            self.respond(txn, 503 if self._refusing() or full else 200, now)
        elif request.method in ("BYE", "INFO"):
            self.respond(txn, 481, now)
        elif request.method in KNOWN_METHODS:
            self.respond(txn, 405, now)
        else:
            self.respond(txn, 501, now)

    def _refusing(self) -> bool:
        full = self.config.max_calls is not None and len(self.calls) >= self.config.max_calls
        return self.draining or full

    # --- new calls --------------------------------------------------------------------------
    def _authorised(self, request: SipRequest, txn: ServerTransaction, addr: Addr, now: float) -> bool:
        if self.config.is_allowed is None or self.config.is_allowed(addr):
            return True
        if self.digest_server is None:
            self.respond(txn, 403, now)
            return False
        stale = False
        value = request.headers.get("Authorization")
        if value is not None:
            verdict, _ = self.digest_server.verify(value, method=request.method, now=now)
            if verdict is Verdict.VALID:
                return True
            stale = verdict is Verdict.STALE
        challenges = self.digest_server.challenges(now, stale=stale)
        self.respond(txn, 401, now, extra_headers=[("WWW-Authenticate", c) for c in challenges])
        return False

    def _handle_new_invite(self, request: SipRequest, txn: ServerTransaction, addr: Addr, now: float) -> None:
        if not self._authorised(request, txn, addr, now):
            return
        if request.call_id in self.calls:
            self.respond(txn, 482, now)  # merged request (§8.2.2.2)
            return
        if self._refusing():
            self.stats["invites_refused"] += 1
            self.respond(txn, 503, now, extra_headers=[("Retry-After", "5")])
            return
        offer = extract_sdp(request.content_type, request.headers.get("Content-Type"), request.body)
        if offer is None:
            self.respond(txn, 415, now, extra_headers=[("Accept", SDP_TYPE)])
            return
        accept = request.headers.get_all("Accept")
        if accept and not _accepts_sdp(accept):
            self.respond(txn, 406, now)
            return
        try:
            if offer:
                SessionDescription.parse(offer)
            Dialog.as_uas(request, "probe")
        except SdpError as exc:
            self.respond(txn, 488, now, extra_headers=[("Warning", f'399 {self.config.local_host} "{exc}"')])
            return
        except SipParseError as exc:
            self.respond(txn, 400, now, reason=f"Bad Request - {exc}"[:120])
            return
        self.respond(txn, 100, now)
        call = Call(request.call_id, False, CallState.INCOMING, request, addr, self.new_tag())
        call.server_txn = txn
        call.remote_sdp = offer
        self.calls[call.call_id] = call
        sender = request.from_
        self.emit(
            IncomingCall(
                call.call_id, str(sender.uri), sender.display_name, str(request.to.uri), addr, offer,
                tuple(request.headers),
            )
        )  # fmt: skip

    # --- commands ---------------------------------------------------------------------------
    def _inbound(self, call_id: str, *states: CallState) -> Call:
        call = self.calls.get(call_id)
        if call is None or call.outbound or call.state not in states:
            raise SipStateError(f"no inbound call {call_id!r} in state {', '.join(s.value for s in states)}")
        return call

    def ring(self, call_id: str, now: float, *, early_sdp: bytes = b"") -> None:
        """Send 180 Ringing (183 Session Progress when ``early_sdp`` is given)."""
        call = self._inbound(call_id, CallState.INCOMING)
        assert call.server_txn is not None
        self.respond(call.server_txn, 183 if early_sdp else 180, now, to_tag=call.local_tag, body=early_sdp)

    def answer(self, call_id: str, sdp: bytes, now: float) -> None:
        """Answer with 200 OK carrying ``sdp``; re-sent until the ACK arrives (§13.3.1.4)."""
        call = self._inbound(call_id, CallState.INCOMING)
        assert call.server_txn is not None
        call.dialog = Dialog.as_uas(call.invite, call.local_tag)
        call.local_sdp = sdp
        try:
            origin = SessionDescription.parse(sdp).origin
            call.sdp_session_id, call.sdp_version = origin.session_id, origin.session_version
        except SdpError:
            pass  # the gateway owns its SDP; we only track the version when we can read it
        response = self.respond(
            call.server_txn, 200, now, to_tag=call.local_tag, body=sdp,
            extra_headers=[*(("Record-Route", rr) for rr in call.invite.headers.get_lines("Record-Route")),
                           ("Contact", str(self.contact))],  # §12.1.1: Record-Route copied, in order
        )  # fmt: skip
        call.state = CallState.ANSWERED
        self._arm_ok(call, response, call.invite.cseq[0], now)

    def reject(self, call_id: str, status_code: int, now: float, *, reason: str | None = None) -> None:
        """Refuse an unanswered inbound call with a final non-2xx response."""
        if not 300 <= status_code <= 699:
            raise ValueError(f"reject needs a 3xx-6xx status code, got {status_code}")
        call = self._inbound(call_id, CallState.INCOMING)
        assert call.server_txn is not None
        self.respond(call.server_txn, status_code, now, reason=reason, to_tag=call.local_tag)
        self.end_call(call, EndReason.REJECTED, status_code)

    def _arm_ok(self, call: Call, response: SipResponse, cseq: int, now: float) -> None:
        assert call.server_txn is not None
        t1 = self.config.timers.t1_s
        call.pending_ok = PendingOk(
            response, cseq, call.server_txn.addr, t1, now + t1, now + self.config.timers.timeout_s
        )

    # --- in-dialog --------------------------------------------------------------------------
    def _dialog_call(self, request: SipRequest) -> Call | None:
        call = self.calls.get(request.call_id)
        if call is None or call.dialog is None or not call.dialog.matches(request, incoming_request=True):
            return None
        return call

    def _handle_ack(self, request: SipRequest, now: float) -> None:
        call = self._dialog_call(request)
        pending = call.pending_ok if call is not None else None
        if call is None or pending is None or request.cseq[0] != pending.cseq:
            self.stats["acks_unmatched"] += 1
            return
        call.pending_ok = None
        if call.state is CallState.ANSWERED:
            call.state = CallState.CONFIRMED
            if request.body and not call.remote_sdp:
                call.remote_sdp = request.body  # delayed offer: the answer rides on the ACK
            self.emit(CallEstablished(call.call_id, False, call.local_sdp, call.remote_sdp))
            if call.hangup_pending:
                self.send_bye(call, now)
                self.end_call(call, EndReason.LOCAL_BYE)

    def _handle_cancel(self, txn: ServerTransaction, now: float) -> None:
        invite_txn = self.transactions.invite_for_cancel(txn.request)
        if invite_txn is None:
            self.respond(txn, 481, now)
            return
        self.respond(txn, 200, now)  # §9.2: the CANCEL itself succeeds
        self._outbox.extend(txn.datagrams_to_send())  # on the wire before the INVITE's 487
        call = self.calls.get(invite_txn.request.call_id)
        if call is not None and call.state is CallState.INCOMING:
            self.respond(invite_txn, 487, now, to_tag=call.local_tag)
            self.emit(CallCancelled(call.call_id))
            self.end_call(call, EndReason.CANCELLED, 487)

    def _handle_in_dialog(self, request: SipRequest, txn: ServerTransaction, now: float) -> None:
        call = self._dialog_call(request)
        if call is None:
            self.respond(txn, 481, now)
            return
        assert call.dialog is not None
        if not call.dialog.accept_request(request):
            self.respond(txn, 500, now, reason="Server Internal Error - CSeq out of order")
            return
        tag = call.local_tag
        if request.method == "BYE":
            self.respond(txn, 200, now, to_tag=tag)
            self.end_call(call, EndReason.REMOTE_BYE)
        elif request.method == "INVITE":
            self._handle_reinvite(call, request, txn, now)
        elif request.method == "INFO":
            self.respond(txn, 200, now, to_tag=tag)
            self._dtmf_from_info(call, request)
        elif request.method == "OPTIONS":
            self.respond(txn, 200, now, to_tag=tag)
        elif request.method in ALLOWED_METHODS:
            self.respond(txn, 400, now, to_tag=tag)
        else:
            self.respond(txn, 405 if request.method in KNOWN_METHODS else 501, now, to_tag=tag)

    def _handle_reinvite(self, call: Call, request: SipRequest, txn: ServerTransaction, now: float) -> None:
        if call.pending_ok is not None or call.state is not CallState.CONFIRMED:
            self.respond(txn, 491, now, to_tag=call.local_tag)  # §14.2: one offer at a time
            return
        offer = extract_sdp(request.content_type, request.headers.get("Content-Type"), request.body)
        if offer is None:
            self.respond(txn, 415, now, to_tag=call.local_tag, extra_headers=[("Accept", SDP_TYPE)])
            return
        media = None
        answer = call.local_sdp
        try:
            if offer:
                ours = SessionDescription.parse(call.local_sdp)
                audio = ours.audio
                if audio is None or ours.connection_for(audio) is None:
                    raise NoAcceptableCodec("our previous SDP has no audio stream to keep")
                call.sdp_version += 1
                answer_sd, media = negotiate_answer(
                    SessionDescription.parse(offer),
                    local_address=ours.connection_for(audio) or self.config.local_host,
                    local_port=audio.port,
                    session_id=call.sdp_session_id,
                    session_version=call.sdp_version,
                    preferences=self.config.media_preferences,
                )
                answer = answer_sd.to_bytes()
        except (SdpError, NoAcceptableCodec) as exc:
            self.respond(txn, 488, now, to_tag=call.local_tag, extra_headers=[("Warning", f'399 - "{exc}"')])
            return
        call.server_txn = txn
        call.local_sdp = answer
        if offer:
            call.remote_sdp = offer
        response = self.respond(
            txn, 200, now, to_tag=call.local_tag, body=answer, extra_headers=[("Contact", str(self.contact))]
        )
        self._arm_ok(call, response, request.cseq[0], now)
        self.emit(ReInvite(call.call_id, offer, answer, media))

    def _dtmf_from_info(self, call: Call, request: SipRequest) -> None:
        text = request.body.decode("utf-8", "replace")
        digit, duration_ms = "", 250
        if request.content_type == "application/dtmf-relay":
            for line in text.splitlines():
                key, _, value = line.partition("=")
                if key.strip().lower() == "signal":
                    digit = value.strip()
                elif key.strip().lower() == "duration" and value.strip().isdigit():
                    duration_ms = int(value.strip())
        elif request.content_type == "application/dtmf":
            digit = text.strip()
        if len(digit) == 1 and digit.upper() in "0123456789*#ABCD":
            self.emit(DtmfInfo(call.call_id, digit.upper(), duration_ms))

    # --- timers -----------------------------------------------------------------------------
    def uas_timer(self) -> float | None:
        deadlines = [
            min(c.pending_ok.next_s, c.pending_ok.give_up_s) for c in self.calls.values() if c.pending_ok
        ]
        return min(deadlines, default=None)

    def uas_handle_timer(self, now: float) -> None:
        for call in list(self.calls.values()):
            pending = call.pending_ok
            if pending is None:
                continue
            if now >= pending.give_up_s:
                call.pending_ok = None
                if call.state is CallState.ANSWERED:
                    self.send_bye(call, now)  # §13.3.1.4: no ACK, end the session with BYE
                    self.end_call(call, EndReason.ACK_TIMEOUT)
                continue
            if pending.next_s <= now:
                self.send_raw(pending.response, pending.addr)
                pending.interval_s = min(2 * pending.interval_s, self.config.timers.t2_s)
                pending.next_s = now + pending.interval_s
