"""One exception hierarchy for sip_bridge.

A remote party's bad input is a ``ValueError`` subclass (``SipParseError``, ``SdpError``,
``DigestError``) carrying a precise message; the user agent turns it into a counted, answered
event (400/488) or a dropped datagram, never a crash.
"""

from __future__ import annotations


class SipBridgeError(Exception):
    """Base class of every error raised by sip_bridge."""


class SipParseError(SipBridgeError, ValueError):
    """A SIP message, header or URI is malformed (RFC 3261 §25 grammar, §7 framing).

    ``method`` is the request method when the start line was a readable request line, and
    ``headers`` holds the raw header fields read before the error, so that the user agent can
    still answer 400 Bad Request when Via, From, To, Call-ID and CSeq are present (§8.2.2).
    """

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.method = method
        self.headers = headers


class SdpError(SipBridgeError, ValueError):
    """A session description is malformed (RFC 4566 §5); ``line_number`` is 1-based."""

    def __init__(self, message: str, line_number: int | None = None) -> None:
        text = f"SDP line {line_number}: {message}" if line_number is not None else message
        super().__init__(text)
        self.line_number = line_number


class NoAcceptableCodec(SipBridgeError):
    """An SDP offer shares no codec with our preferences (RFC 3264 §6: answer 488)."""


class DigestError(SipBridgeError, ValueError):
    """A digest challenge or credentials header is malformed or unsupported (RFC 7616)."""


class SipStateError(SipBridgeError, RuntimeError):
    """A command was given to the user agent in a state where it makes no sense."""


class RtpError(SipBridgeError, ValueError):
    """An RTP packet or RFC 4733 event payload is malformed (RFC 3550 §5.1); it is dropped."""
