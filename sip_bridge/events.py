"""Events the user agent reports, named as facts (frozen dataclasses), and why calls end.

Every call that was reported by ``IncomingCall`` or started by ``UserAgent.invite`` ends with
exactly one ``CallEnded``; ``CallCancelled`` precedes it when the caller cancelled.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sip_bridge.message import Addr
from sip_bridge.sdp import NegotiatedMedia


class EndReason(enum.Enum):
    REMOTE_BYE = "remote_bye"
    LOCAL_BYE = "local_bye"
    CANCELLED = "cancelled"  # the caller cancelled before we answered
    LOCAL_CANCEL = "local_cancel"  # we cancelled our own INVITE
    REJECTED = "rejected"  # a final non-2xx answered the INVITE (status_code says which)
    ACK_TIMEOUT = "ack_timeout"  # our 2xx was never acknowledged (§13.3.1.4): BYE sent
    TIMEOUT = "timeout"  # no final response (Timer B / no-answer timeout)
    AUTH_FAILED = "auth_failed"


@dataclass(frozen=True)
class IncomingCall:
    call_id: str
    from_uri: str
    from_display: str | None
    to_uri: str
    remote_addr: Addr
    offer: bytes  # the INVITE's SDP; b"" for a delayed offer (answer then carries our offer)
    headers: tuple[tuple[str, str], ...]  # every header field, for X-/P- headers


@dataclass(frozen=True)
class CallRinging:
    call_id: str
    status_code: int
    early_sdp: bytes


@dataclass(frozen=True)
class CallEstablished:
    call_id: str
    outbound: bool
    local_sdp: bytes
    remote_sdp: bytes


@dataclass(frozen=True)
class CallCancelled:
    call_id: str


@dataclass(frozen=True)
class CallEnded:
    call_id: str
    reason: EndReason
    status_code: int | None = None


@dataclass(frozen=True)
class ReInvite:
    """The peer re-negotiated media (hold, unhold, codec change); we answered 200."""

    call_id: str
    offer: bytes
    answer: bytes
    media: NegotiatedMedia | None  # None for a re-INVITE without an offer


@dataclass(frozen=True)
class DtmfInfo:
    """A digit sent by SIP INFO (application/dtmf-relay or application/dtmf)."""

    call_id: str
    digit: str
    duration_ms: int


@dataclass(frozen=True)
class RegistrationSucceeded:
    aor: str
    expires_s: int


@dataclass(frozen=True)
class RegistrationFailed:
    aor: str
    status_code: int | None  # None: no response (timeout)
    reason: str


UaEvent = (
    IncomingCall
    | CallRinging
    | CallEstablished
    | CallCancelled
    | CallEnded
    | ReInvite
    | DtmfInfo
    | RegistrationSucceeded
    | RegistrationFailed
)
