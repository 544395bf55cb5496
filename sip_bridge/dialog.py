"""SIP dialogs (RFC 3261 §12): identity, route set, remote target, CSeq spaces.

Theory of operation
-------------------
A dialog is created by a 2xx (or a tagged 1xx, "early") to an INVITE, on both sides:

* UAS (§12.1.1): route set = the request's Record-Route in order; remote target = the
  request's Contact; remote CSeq = the request's; local tag = the To tag we add.
* UAC (§12.1.2): route set = the response's Record-Route reversed; remote target = the
  response's Contact; local CSeq = the INVITE's; remote tag = the response's To tag.

States::

    EARLY --2xx--> CONFIRMED --BYE sent or received--> TERMINATED
    EARLY --non-2xx final--> TERMINATED

``create_request`` builds in-dialog requests per §12.2.1.1: local CSeq incremented (ACK
reuses the INVITE's number, §13.2.2.4), To/From with both tags, Request-URI and Route from
the route set (loose routing when the first route has ``lr``, otherwise strict routing with
the remote target appended). ``accept_request`` applies §12.2.2: a CSeq lower than the last
one seen is out of order (answer 500), and a re-INVITE's Contact refreshes the remote target.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from sip_bridge.errors import SipParseError
from sip_bridge.headers import Headers, Via
from sip_bridge.message import Addr, SipRequest, SipResponse
from sip_bridge.uri import NameAddr, SipUri

DEFAULT_MAX_FORWARDS = 70
# §19.1.1 Table 1: parameters allowed in a Request-URI.
_REQUEST_URI_PARAMS = frozenset({"user", "method", "ttl", "maddr", "lr", "transport"}) - {"method"}


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True)
class DialogId:
    call_id: str
    local_tag: str
    remote_tag: str


@dataclass
class Dialog:
    call_id: str
    local: NameAddr  # our From (UAC) / To (UAS) value, with our tag
    remote: NameAddr  # the peer's, with its tag
    remote_target: SipUri
    route_set: list[NameAddr] = field(default_factory=list)
    local_cseq: int = 0
    remote_cseq: int | None = None
    state: DialogState = DialogState.CONFIRMED

    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local.tag or "", self.remote.tag or "")

    @classmethod
    def as_uas(cls, request: SipRequest, local_tag: str, *, early: bool = False) -> Dialog:
        contacts = request.contacts
        if not contacts:
            raise SipParseError(f"{request.method} that creates a dialog needs a Contact (§12.1.1)")
        return cls(
            call_id=request.call_id,
            local=request.to.with_tag(local_tag),
            remote=request.from_,
            remote_target=contacts[0].uri,
            route_set=request.record_routes,
            local_cseq=0,
            remote_cseq=request.cseq[0],
            state=DialogState.EARLY if early else DialogState.CONFIRMED,
        )

    @classmethod
    def as_uac(cls, request: SipRequest, response: SipResponse) -> Dialog:
        contacts = response.contacts
        target = contacts[0].uri if contacts else request.uri
        return cls(
            call_id=request.call_id,
            local=request.from_,
            remote=response.to,
            remote_target=target,
            route_set=list(reversed(response.record_routes)),
            local_cseq=request.cseq[0],
            remote_cseq=None,
            state=DialogState.CONFIRMED if 200 <= response.status_code < 300 else DialogState.EARLY,
        )

    def matches(self, message: SipRequest | SipResponse, *, incoming_request: bool) -> bool:
        """Whether a message belongs to this dialog (§12.2.2 / §12.2.1.2 tag comparison)."""
        ours, theirs = (message.to.tag, message.from_.tag) if incoming_request else (
            message.from_.tag, message.to.tag,
        )  # fmt: skip
        return message.call_id == self.call_id and ours == self.local.tag and theirs == self.remote.tag

    def accept_request(self, request: SipRequest) -> bool:
        """§12.2.2 CSeq check and target refresh; False means answer 500 (out of order)."""
        number, method = request.cseq
        if method in ("ACK", "CANCEL"):
            return True
        if self.remote_cseq is not None and number < self.remote_cseq:
            return False
        self.remote_cseq = number
        if method in ("INVITE", "UPDATE"):
            contacts = request.contacts
            if contacts:
                self.remote_target = contacts[0].uri
        return True

    def refresh_from_response(self, response: SipResponse) -> None:
        """A 2xx to our re-INVITE refreshes the remote target (§12.2.1.2)."""
        contacts = response.contacts
        if contacts:
            self.remote_target = contacts[0].uri

    def next_hop(self) -> Addr:
        """Where in-dialog requests go (§8.1.2 / §12.2.1.1): first route, else the target."""
        if self.route_set:
            return self.route_set[0].uri.address
        return self.remote_target.address

    def create_request(
        self,
        method: str,
        *,
        via: Via,
        contact: NameAddr | None = None,
        cseq: int | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        extra_headers: list[tuple[str, str]] | None = None,
    ) -> SipRequest:
        """An in-dialog request (§12.2.1.1); ``via`` must carry a fresh branch."""
        if cseq is None:
            if method in ("ACK", "CANCEL"):
                raise ValueError(f"{method} must reuse the CSeq number of the request it refers to")
            self.local_cseq += 1
            cseq = self.local_cseq
        headers = Headers()
        headers.add("Via", str(via))
        headers.add("Max-Forwards", str(DEFAULT_MAX_FORWARDS))
        headers.add("From", str(self.local))
        headers.add("To", str(self.remote))
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{cseq} {method}")
        request_uri = self.remote_target
        routes = list(self.route_set)
        if routes and routes[0].uri.param("lr") is None:
            # Strict routing (§12.2.1.1): first route becomes the Request-URI.
            first = routes.pop(0).uri
            kept = tuple((k, v) for k, v in first.params if k in _REQUEST_URI_PARAMS)
            request_uri = replace(first, params=kept, headers=())
            routes.append(NameAddr(self.remote_target))
        for route in routes:
            headers.add("Route", str(route))
        if contact is not None and method in ("INVITE", "UPDATE", "SUBSCRIBE", "REFER"):
            headers.add("Contact", str(contact))
        for name, value in extra_headers or []:
            headers.add(name, value)
        if body:
            headers.add("Content-Type", content_type or "application/sdp")
        return SipRequest(method, request_uri, headers, body)
