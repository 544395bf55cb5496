"""State and helpers shared by the UAS and UAC halves of the user agent.

``UaCore`` owns the configuration, the transaction layer, the calls table, the event queue
and the outbox of datagrams sent outside any transaction (ACK for 2xx, 2xx retransmissions,
stateless 400s). ``uas.py`` and ``uac.py`` add behaviour; ``ua.py`` assembles the public class.
"""

from __future__ import annotations

import enum
import secrets
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sip_bridge.dialog import Dialog
from sip_bridge.digest import DigestServer
from sip_bridge.events import CallEnded, EndReason, UaEvent
from sip_bridge.headers import Headers, Via
from sip_bridge.message import Addr, SipRequest, SipResponse, build_response
from sip_bridge.sdp import MediaPreferences
from sip_bridge.transaction import (
    MAGIC_COOKIE,
    ClientTransaction,
    ServerTransaction,
    TimerConfig,
    TransactionLayer,
)
from sip_bridge.uri import NameAddr, SipUri

ALLOWED_METHODS = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO")
# Methods we recognise but do not allow (405); anything else is unknown (501, §8.2.1).
KNOWN_METHODS = frozenset(
    {"REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH", "REFER", "MESSAGE", "UPDATE", *ALLOWED_METHODS}
)


@dataclass(frozen=True)
class Credentials:
    """Our digest identity towards a registrar or trunk (RFC 3261 §22.2)."""

    username: str
    password: str


@dataclass
class UaConfig:
    """How the user agent presents itself and what it accepts."""

    local_host: str  # address written in Via and Contact
    local_port: int = 5060
    user: str = "agent"  # user part of our Contact and default From
    display_name: str | None = None
    domain: str | None = None  # host part of our AOR; local_host when None
    user_agent: str = "lfm-call/0.1"
    timers: TimerConfig = field(default_factory=TimerConfig)
    max_calls: int | None = None
    is_allowed: Callable[[Addr], bool] | None = None  # None: every source may call
    is_full: Callable[[], bool] | None = None  # the application is at capacity: OPTIONS get 503
    auth_realm: str = "lfm-call"
    auth_users: Mapping[str, str] = field(default_factory=dict)  # digest for disallowed sources
    auth_secret: bytes = b""  # nonce MAC key; random when empty
    credentials: Credentials | None = None  # answering 401/407 to our requests
    outbound_proxy: Addr | None = None  # next hop for every out-of-dialog request
    media_preferences: MediaPreferences = field(default_factory=MediaPreferences)
    supported_options: frozenset[str] = frozenset()  # option tags we honour in Require (§8.2.2.3)
    invite_timeout_s: float = 60.0  # outbound: CANCEL when unanswered this long (Timer C spirit)
    registration_retry_s: float = 30.0


class CallState(enum.Enum):
    INCOMING = "incoming"  # inbound INVITE reported, not yet answered
    ANSWERED = "answered"  # our 2xx sent, waiting for the ACK
    CALLING = "calling"  # outbound INVITE sent
    EARLY = "early"  # outbound: provisional response received
    CANCELLING = "cancelling"  # outbound: CANCEL sent
    CONFIRMED = "confirmed"
    ENDED = "ended"


@dataclass
class PendingOk:
    """A 2xx to an INVITE that the UAS core re-sends until the ACK comes (§13.3.1.4)."""

    response: SipResponse
    cseq: int
    addr: Addr
    interval_s: float
    next_s: float
    give_up_s: float


@dataclass
class Call:
    call_id: str
    outbound: bool
    state: CallState
    invite: SipRequest
    remote_addr: Addr
    local_tag: str
    dialog: Dialog | None = None
    server_txn: ServerTransaction | None = None
    client_txn: ClientTransaction | None = None
    local_sdp: bytes = b""
    remote_sdp: bytes = b""
    pending_ok: PendingOk | None = None
    sdp_session_id: int = 0
    sdp_version: int = 0
    hangup_pending: bool = False
    auth_attempts: int = 0
    provisional_seen: bool = False
    invite_deadline_s: float | None = None
    ack_request: SipRequest | None = None  # outbound: our ACK for the 2xx, re-sent on retransmits


class UaCore:
    def __init__(self, config: UaConfig) -> None:
        self.config = config
        self.transactions = TransactionLayer(config.timers)
        self.calls: dict[str, Call] = {}
        self.stats: Counter[str] = Counter()
        self.draining = False
        self._events: deque[UaEvent] = deque()
        self._outbox: list[tuple[bytes, Addr]] = []
        self.digest_server: DigestServer | None = None
        if config.auth_users:
            secret = config.auth_secret or secrets.token_bytes(32)
            self.digest_server = DigestServer(config.auth_realm, config.auth_users, secret)

    # --- identities -----------------------------------------------------------------------
    @staticmethod
    def new_tag() -> str:
        return secrets.token_hex(8)

    @staticmethod
    def new_branch() -> str:
        return MAGIC_COOKIE + secrets.token_hex(10)

    def new_call_id(self) -> str:
        return f"{secrets.token_hex(12)}@{self.config.local_host}"

    def make_via(self) -> Via:
        params: tuple[tuple[str, str | None], ...] = (("branch", self.new_branch()), ("rport", None))
        return Via("UDP", self.config.local_host, self.config.local_port, params)

    @property
    def contact(self) -> NameAddr:
        uri = SipUri("sip", self.config.user, None, self.config.local_host, self.config.local_port)
        return NameAddr(uri)

    @property
    def aor(self) -> NameAddr:
        host = self.config.domain or self.config.local_host
        return NameAddr(SipUri("sip", self.config.user, None, host), self.config.display_name)

    # --- output ---------------------------------------------------------------------------
    def emit(self, event: UaEvent) -> None:
        self._events.append(event)

    def send_raw(self, message: SipRequest | SipResponse, addr: Addr) -> None:
        self._outbox.append((message.to_bytes(), addr))

    def common_headers(self, headers: Headers, *, allow: bool = False) -> None:
        headers.set("User-Agent", self.config.user_agent)
        if allow:
            headers.set("Allow", ", ".join(ALLOWED_METHODS))

    def respond(
        self,
        txn: ServerTransaction,
        status_code: int,
        now: float,
        *,
        reason: str | None = None,
        to_tag: str | None = None,
        body: bytes = b"",
        extra_headers: list[tuple[str, str]] | None = None,
    ) -> SipResponse:
        """Send a response through ``txn``; non-100 responses get a To tag (§8.2.6.2)."""
        tag = to_tag if to_tag is not None else (self.new_tag() if status_code > 100 else None)
        response = build_response(
            txn.request, status_code, reason, to_tag=tag, body=body, extra_headers=extra_headers
        )
        with_allow = status_code == 405 or (
            200 <= status_code < 300 and txn.request.method in ("INVITE", "OPTIONS")
        )
        self.common_headers(response.headers, allow=with_allow)
        txn.send_response(response, now)
        return response

    def start_request(self, request: SipRequest, addr: Addr, now: float) -> ClientTransaction:
        self.common_headers(request.headers, allow=request.method == "INVITE")
        return self.transactions.start_client(request, addr, now)

    def next_hop(self, uri: SipUri) -> Addr:
        return self.config.outbound_proxy or uri.address

    # --- calls ------------------------------------------------------------------------------
    def end_call(self, call: Call, reason: EndReason, status_code: int | None = None) -> None:
        if call.state is CallState.ENDED:
            return
        call.state = CallState.ENDED
        call.pending_ok = None
        self.calls.pop(call.call_id, None)
        self.emit(CallEnded(call.call_id, reason, status_code))

    def send_bye(self, call: Call, now: float) -> None:
        if call.dialog is None:
            return
        bye = call.dialog.create_request("BYE", via=self.make_via())
        self.start_request(bye, self.route(call), now)

    def route(self, call: Call) -> Addr:
        """Next hop for in-dialog requests: outbound proxy only when there is no route set."""
        assert call.dialog is not None
        if not call.dialog.route_set and self.config.outbound_proxy is not None and call.outbound:
            return self.config.outbound_proxy
        return call.dialog.next_hop()
