"""The sans-IO SIP user agent: datagrams and ``now`` in, datagrams and events out.

Theory of operation
-------------------
The adapter (asyncio, or a test) drives one ``UserAgent`` like this::

    ua.receive_datagram(data, addr, now)        # every UDP datagram received
    for data, addr in ua.datagrams_to_send():   # after every call into the UA
        transport.sendto(data, addr)
    while (event := ua.next_event()) is not None:
        ...                                     # IncomingCall → ua.answer(...) / ua.reject(...)
    deadline = ua.get_timer()                   # re-arm loop.call_at(deadline, ...)
    ua.handle_timer(now)                        # when it fires

Nothing here reads a clock or touches a socket. A received datagram is parsed (``message.py``);
a parse failure is counted in ``stats`` and answered 400 when the request carries enough to
answer, otherwise dropped. The top Via of a request is stamped with ``received``/``rport``
(§18.2.1, RFC 3581); a request that matches a server transaction is a retransmission and is
absorbed there; any other request goes to the UAS half (``uas.py``), responses to the UAC half
(``uac.py``). Timers come from three places — transactions (A-M), 2xx retransmission and ACK
wait (§13.3.1.4), and outbound no-answer / registration refresh — and ``get_timer`` is the
earliest of them.

Commands: ``answer``, ``ring``, ``reject`` (inbound), ``invite`` (outbound), ``hangup`` (any
call: reject, CANCEL or BYE as the state requires), ``register``/``unregister``, and
``draining`` (refuse new calls and OPTIONS with 503 while true).
"""

from __future__ import annotations

from sip_bridge.errors import SipParseError
from sip_bridge.events import EndReason, UaEvent
from sip_bridge.message import Addr, SipRequest, bad_request_for, parse_message
from sip_bridge.transaction import ClientTransaction
from sip_bridge.ua_core import CallState, UaConfig
from sip_bridge.uac import UacSide
from sip_bridge.uas import UasSide

__all__ = ["UaConfig", "UserAgent"]


class UserAgent(UasSide, UacSide):
    """One SIP user agent (UAS and UAC) over UDP; see the module docstring for the loop."""

    def __init__(self, config: UaConfig) -> None:
        super().__init__(config)

    # --- I/O --------------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        if not data.strip(b"\r\n"):
            self.stats["keepalives"] += 1  # CRLF keep-alive (RFC 5626 §3.5.1 style)
            return
        try:
            message = parse_message(data)
        except SipParseError as exc:
            self._reject_unparsable(exc, addr)
            return
        if isinstance(message, SipRequest):
            try:
                self._receive_request(message, addr, now)
            except SipParseError as exc:
                # A header we only read now (Contact, Route...) is malformed.
                late = SipParseError(str(exc), method=message.method, headers=list(message.headers))
                self._reject_unparsable(late, addr)
        else:
            try:
                self.handle_response(message, now)
            except SipParseError:
                self.stats["responses_dropped"] += 1

    def _reject_unparsable(self, error: SipParseError, addr: Addr) -> None:
        self.stats["parse_errors"] += 1
        reply = bad_request_for(error, addr)
        if reply is None:
            self.stats["dropped"] += 1
        else:
            self.stats["bad_requests_answered"] += 1
            self._outbox.append(reply)

    def _receive_request(self, request: SipRequest, addr: Addr, now: float) -> None:
        vias = request.headers.get_all("Via")
        vias[0] = str(request.top_via.stamped(addr))
        request.headers.set("Via", ", ".join(vias))
        txn = self.transactions.match_request(request)
        if txn is not None:
            txn.receive_request(request, now)
            self.stats["retransmissions_absorbed"] += 1
            return
        self.handle_request(request, addr, now)

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._outbox = self._outbox, []
        return out + self.transactions.datagrams_to_send()

    def next_event(self) -> UaEvent | None:
        return self._events.popleft() if self._events else None

    # --- time -------------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        deadlines = [self.transactions.get_timer(), self.uas_timer(), self.uac_timer()]
        return min((d for d in deadlines if d is not None), default=None)

    def handle_timer(self, now: float) -> None:
        for txn in self.transactions.handle_timer(now):
            if isinstance(txn, ClientTransaction):
                self.on_client_timeout(txn, now)
        self.uas_handle_timer(now)
        self.uac_handle_timer(now)

    # --- commands ---------------------------------------------------------------------------
    def hangup(self, call_id: str, now: float) -> None:
        """End a call whatever its state: reject (480), CANCEL, or BYE (§15)."""
        call = self.require_call(call_id)
        if call.state is CallState.INCOMING:
            self.reject(call_id, 480, now)
        elif call.state is CallState.ANSWERED:
            call.hangup_pending = True  # §15: BYE once the ACK arrives (or it times out)
        elif call.state is CallState.CONFIRMED:
            self.send_bye(call, now)
            self.end_call(call, EndReason.LOCAL_BYE)
        elif call.state in (CallState.CALLING, CallState.EARLY):
            self.cancel_outbound(call, now)

    def set_draining(self, draining: bool) -> None:
        """While draining, new INVITEs and OPTIONS get 503 (Kamailio dispatcher fails over)."""
        self.draining = draining
