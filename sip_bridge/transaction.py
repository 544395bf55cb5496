"""SIP transactions over an unreliable transport (RFC 3261 §17, with RFC 6026's Accepted state).

Theory of operation
-------------------
A transaction is a request plus its responses. Each of the four kinds below is a small state
machine; time enters only as the ``now`` argument, and the next deadline is ``get_timer()``.
Datagrams a transaction wants on the wire collect in ``datagrams_to_send()``.

INVITE client (§17.1.1, RFC 6026 §7.2)::

    CALLING    --1xx-->        PROCEEDING        (stop A and B; the TU times the call)
    CALLING    --timer A-->    CALLING           resend, A doubles: T1, 2T1, 4T1 ...
    CALLING    --timer B-->    TERMINATED        timeout, 64*T1
    CALLING/PROCEEDING --2xx--> ACCEPTED          pass up; timer M = 64*T1
    CALLING/PROCEEDING --300-699--> COMPLETED     send ACK, pass up; timer D = 32 s
    ACCEPTED   --2xx-->        ACCEPTED          pass up (the TU re-sends its ACK)
    COMPLETED  --300-699-->    COMPLETED         re-send ACK, absorb
    ACCEPTED/COMPLETED --timer M/D--> TERMINATED

non-INVITE client (§17.1.2)::

    TRYING     --timer E-->    TRYING            resend, E doubles up to T2
    TRYING/PROCEEDING --1xx--> PROCEEDING        pass up (E now fires every T2)
    TRYING/PROCEEDING --final--> COMPLETED        pass up; timer K = T4
    TRYING/PROCEEDING --timer F--> TERMINATED     timeout, 64*T1
    COMPLETED  --timer K-->    TERMINATED

INVITE server (§17.2.1, RFC 6026 §7.1)::

    PROCEEDING --INVITE again--> PROCEEDING      re-send the last provisional response
    PROCEEDING --TU 1xx-->     PROCEEDING
    PROCEEDING --TU 2xx-->     ACCEPTED          the TU/dialog re-sends 2xx until ACK (§13.3.1.4)
    PROCEEDING --TU 300-699--> COMPLETED         timers G (T1 doubling to T2) and H (64*T1)
    COMPLETED  --INVITE again / timer G--> COMPLETED  re-send the final response
    COMPLETED  --ACK-->        CONFIRMED         timer I = T4
    COMPLETED  --timer H-->    TERMINATED        timeout: the ACK never came
    ACCEPTED   --INVITE again--> ACCEPTED        absorb; timer L = 64*T1 → TERMINATED
    CONFIRMED  --timer I-->    TERMINATED

non-INVITE server (§17.2.2)::

    TRYING     --request again--> TRYING         absorb
    TRYING/PROCEEDING --TU 1xx--> PROCEEDING
    TRYING/PROCEEDING --TU final--> COMPLETED     timer J = 64*T1
    PROCEEDING/COMPLETED --request again--> same   re-send the last response
    COMPLETED  --timer J-->    TERMINATED

Matching (§17.1.3, §17.2.3): a response matches the client transaction whose branch and
CSeq method equal its top Via branch and CSeq method. A request with an RFC 3261 branch
(magic cookie ``z9hG4bK``) matches on branch, sent-by and method, with ACK matching INVITE;
older requests (RFC 2543, no cookie) match on Call-ID, From tag, CSeq number, top Via and method.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sip_bridge.headers import Headers
from sip_bridge.message import Addr, SipRequest, SipResponse

MAGIC_COOKIE = "z9hG4bK"
TIMER_D_S = 32.0  # §17.1.1.2: at least 32 s over unreliable transports

TransactionKey = tuple[str, ...]


@dataclass(frozen=True)
class TimerConfig:
    """RFC 3261 §17.1.1.1 timer values (Table 4)."""

    t1_s: float = 0.5
    t2_s: float = 4.0
    t4_s: float = 5.0

    @property
    def timeout_s(self) -> float:
        return 64 * self.t1_s


class TransactionState(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


def server_key(request: SipRequest) -> TransactionKey:
    """The key a request matches a server transaction by (§17.2.3)."""
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch or ""
    if branch.startswith(MAGIC_COOKIE):
        host, port = via.sent_by
        return (branch, host, str(port), method)
    return ("rfc2543", request.call_id, request.from_.tag or "", str(request.cseq[0]), str(via), method)


def client_key(message: SipRequest | SipResponse) -> TransactionKey:
    """The key a response matches a client transaction by (§17.1.3)."""
    return (message.top_via.branch or "", message.cseq[1])


class Transaction:
    """State, deadlines and outbox shared by the four kinds."""

    def __init__(self, request: SipRequest, addr: Addr, timers: TimerConfig) -> None:
        self.request = request
        self.addr = addr
        self.timers = timers
        self.state = TransactionState.TRYING
        self.timed_out = False
        self._deadlines: dict[str, float] = {}
        self._intervals: dict[str, float] = {}
        self._outbox: list[tuple[bytes, Addr]] = []

    @property
    def terminated(self) -> bool:
        return self.state is TransactionState.TERMINATED

    def get_timer(self) -> float | None:
        return min(self._deadlines.values(), default=None)

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._outbox = self._outbox, []
        return out

    def handle_timer(self, now: float) -> bool:
        """Fire due timers; True when this call made the transaction time out (B, F or H)."""
        was_timed_out = self.timed_out
        while True:
            due = [(deadline, name) for name, deadline in self._deadlines.items() if deadline <= now]
            if not due:
                break
            _, name = min(due)
            del self._deadlines[name]
            self._on_timer(name, now)
        return self.timed_out and not was_timed_out

    def _start(self, name: str, now: float, interval: float) -> None:
        self._intervals[name] = interval
        self._deadlines[name] = now + interval

    def _stop(self, *names: str) -> None:
        for name in names:
            self._deadlines.pop(name, None)

    def _terminate(self, *, timed_out: bool = False) -> None:
        self.state = TransactionState.TERMINATED
        self.timed_out = self.timed_out or timed_out
        self._deadlines.clear()

    def _send(self, message: SipRequest | SipResponse) -> None:
        self._outbox.append((message.to_bytes(), self.addr))

    def _on_timer(self, name: str, now: float) -> None:
        raise NotImplementedError


class ClientTransaction(Transaction):
    """Both client kinds; ``request.method`` selects the INVITE rules."""

    def __init__(self, request: SipRequest, addr: Addr, now: float, timers: TimerConfig) -> None:
        super().__init__(request, addr, timers)
        self.is_invite = request.method == "INVITE"
        self.key = client_key(request)
        self.last_response: SipResponse | None = None
        self._send(request)
        if self.is_invite:
            self.state = TransactionState.CALLING
            self._start("A", now, timers.t1_s)
            self._start("B", now, timers.timeout_s)
        else:
            self._start("E", now, timers.t1_s)
            self._start("F", now, timers.timeout_s)

    def receive_response(self, response: SipResponse, now: float) -> bool:
        """Feed a matching response; True when the TU should see it."""
        code = response.status_code
        state = self.state
        if state in (TransactionState.CALLING, TransactionState.TRYING, TransactionState.PROCEEDING):
            self.last_response = response
            if code < 200:
                self.state = TransactionState.PROCEEDING
                if self.is_invite:
                    self._stop("A", "B")
                return True
            self._stop("A", "B", "E", "F")
            if self.is_invite and code < 300:
                self.state = TransactionState.ACCEPTED
                self._start("M", now, self.timers.timeout_s)
            elif self.is_invite:
                self.state = TransactionState.COMPLETED
                self._send(self.ack_for(response))
                self._start("D", now, max(TIMER_D_S, self.timers.timeout_s))
            else:
                self.state = TransactionState.COMPLETED
                self._start("K", now, self.timers.t4_s)
            return True
        if state is TransactionState.ACCEPTED and 200 <= code < 300:
            return True
        if state is TransactionState.COMPLETED and self.is_invite and code >= 300:
            self._send(self.ack_for(response))
        return False

    def ack_for(self, response: SipResponse) -> SipRequest:
        """ACK for a non-2xx final response (§17.1.1.3): same branch, To from the response."""
        original = self.request
        headers = Headers()
        headers.add("Via", original.headers.get_all("Via")[0])
        for route in original.headers.get_lines("Route"):
            headers.add("Route", route)
        headers.add("Max-Forwards", "70")
        headers.add("From", original.headers.get("From") or "")
        headers.add("To", response.headers.get("To") or "")
        headers.add("Call-ID", original.call_id)
        headers.add("CSeq", f"{original.cseq[0]} ACK")
        return SipRequest("ACK", original.uri, headers)

    def _on_timer(self, name: str, now: float) -> None:
        if name in ("A", "E"):
            interval = self._intervals[name]
            if self.state is TransactionState.PROCEEDING:
                interval = self.timers.t2_s
            elif name == "E":
                interval = min(2 * interval, self.timers.t2_s)
            else:
                interval = 2 * interval
            self._send(self.request)
            self._start(name, now, interval)
        elif name in ("B", "F"):
            self._terminate(timed_out=True)
        else:  # D, K, M
            self._terminate()


class ServerTransaction(Transaction):
    """Both server kinds; ``request.method`` selects the INVITE rules."""

    def __init__(self, request: SipRequest, addr: Addr, now: float, timers: TimerConfig) -> None:
        super().__init__(request, addr, timers)
        self.is_invite = request.method == "INVITE"
        self.key = server_key(request)
        self.last_response: SipResponse | None = None
        self.state = TransactionState.PROCEEDING if self.is_invite else TransactionState.TRYING

    def receive_request(self, request: SipRequest, now: float) -> bool:
        """Feed a retransmission or the ACK; True when the TU should see it (never, here)."""
        if request.method == "ACK":
            if self.state is TransactionState.COMPLETED:
                self.state = TransactionState.CONFIRMED
                self._stop("G", "H")
                self._start("I", now, self.timers.t4_s)
            return False
        if self.state in (TransactionState.PROCEEDING, TransactionState.COMPLETED) and self.last_response:
            self._send(self.last_response)
        return False

    def send_response(self, response: SipResponse, now: float) -> None:
        """The TU's response; ignored once a final response went out (§17.2.1)."""
        if self.state not in (TransactionState.TRYING, TransactionState.PROCEEDING):
            return
        self.last_response = response
        self._send(response)
        code = response.status_code
        if code < 200:
            self.state = TransactionState.PROCEEDING
        elif not self.is_invite:
            self.state = TransactionState.COMPLETED
            self._start("J", now, self.timers.timeout_s)
        elif code < 300:
            self.state = TransactionState.ACCEPTED
            self._start("L", now, self.timers.timeout_s)
        else:
            self.state = TransactionState.COMPLETED
            self._start("G", now, self.timers.t1_s)
            self._start("H", now, self.timers.timeout_s)

    def _on_timer(self, name: str, now: float) -> None:
        if name == "G":
            if self.last_response is not None:
                self._send(self.last_response)
            self._start("G", now, min(2 * self._intervals["G"], self.timers.t2_s))
        elif name == "H":
            self._terminate(timed_out=True)
        else:  # I, J, L
            self._terminate()


class TransactionLayer:
    """All live transactions of one user agent, keyed for matching."""

    def __init__(self, timers: TimerConfig) -> None:
        self.timers = timers
        self.clients: dict[TransactionKey, ClientTransaction] = {}
        self.servers: dict[TransactionKey, ServerTransaction] = {}

    def start_client(self, request: SipRequest, addr: Addr, now: float) -> ClientTransaction:
        txn = ClientTransaction(request, addr, now, self.timers)
        self.clients[txn.key] = txn
        return txn

    def start_server(self, request: SipRequest, addr: Addr, now: float) -> ServerTransaction:
        txn = ServerTransaction(request, addr, now, self.timers)
        self.servers[txn.key] = txn
        return txn

    def match_request(self, request: SipRequest) -> ServerTransaction | None:
        txn = self.servers.get(server_key(request))
        return None if txn is None or txn.terminated else txn

    def match_response(self, response: SipResponse) -> ClientTransaction | None:
        txn = self.clients.get(client_key(response))
        return None if txn is None or txn.terminated else txn

    def invite_for_cancel(self, cancel: SipRequest) -> ServerTransaction | None:
        """The INVITE server transaction a CANCEL targets (§9.2: same key, method INVITE)."""
        key = server_key(cancel)
        txn = self.servers.get((*key[:-1], "INVITE"))
        return None if txn is None or txn.terminated else txn

    def get_timer(self) -> float | None:
        deadlines = [t.get_timer() for t in (*self.clients.values(), *self.servers.values())]
        return min((d for d in deadlines if d is not None), default=None)

    def handle_timer(self, now: float) -> list[Transaction]:
        """Fire due timers; returns the transactions that timed out now."""
        timed_out: list[Transaction] = []
        for txn in (*self.clients.values(), *self.servers.values()):
            if txn.handle_timer(now):
                timed_out.append(txn)
        return timed_out

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out: list[tuple[bytes, Addr]] = []
        for table in (self.clients, self.servers):
            for key, txn in list(table.items()):
                out.extend(txn.datagrams_to_send())
                if txn.terminated:
                    del table[key]
        return out
