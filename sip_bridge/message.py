"""SIP requests and responses: parsing from bytes and serialising (RFC 3261 §7, §18.3, §20, §25).

Theory of operation
-------------------
``parse_message(data)`` reads one message from a UDP datagram:

1. Leading CRLFs are skipped (§7.5); the head ends at the first empty line (CRLF or bare LF
   accepted); the head must be UTF-8 without control characters other than tab.
2. The start line is either ``Method SP Request-URI SP SIP-Version`` (single spaces, §7.1;
   anything else — extra spaces, ``<uri>``, trailing space — is rejected, RFC 4475 §3.1.2.7-10)
   or ``SIP-Version SP Status-Code SP Reason-Phrase`` (empty reason allowed, §3.1.1.13).
3. Header lines beginning with SP/HT continue the previous one (folding, §7.3.1).
4. Mandatory fields are checked (§8.1.1): Via, From, To, Call-ID and CSeq; the single-valued
   ones must not repeat (RFC 4475 §3.3.8-9); CSeq must parse and, in a request, name the
   request's method (RFC 4475 §3.1.2.17); Max-Forwards is 0..255 when present.
5. Content-Length (§18.3, §20.14): a body shorter than announced is an error, extra octets are
   dropped (one message per datagram); without Content-Length the body is the rest of the
   datagram.

Any violation raises ``SipParseError`` carrying the method and the header fields read so far,
so that the user agent can answer 400 when it can (``can_answer``). Parsing never raises
anything else: a mutation fuzz test holds it to that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sip_bridge.errors import SipParseError
from sip_bridge.headers import SINGLE_HEADERS, Headers, Via, canonical_name, parse_cseq
from sip_bridge.uri import NameAddr, SipUri, is_token

Addr = tuple[str, int]

SIP_VERSION = "SIP/2.0"
_VERSION_RE = re.compile(r"SIP/\d{1,3}\.\d{1,3}")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_REQUIRED = ("Via", "From", "To", "Call-ID", "CSeq")
MAX_MESSAGE_BYTES = 65_535

REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    183: "Session Progress",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "Version Not Supported",
    603: "Decline",
}


class _MessageBase:
    headers: Headers
    body: bytes

    @property
    def call_id(self) -> str:
        return self.headers.get("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        return parse_cseq(self.headers.get("CSeq") or "")

    @property
    def from_(self) -> NameAddr:
        return NameAddr.parse(self.headers.get("From") or "")

    @property
    def to(self) -> NameAddr:
        return NameAddr.parse(self.headers.get("To") or "")

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(value) for value in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        return Via.parse(self.headers.get_all("Via")[0])

    @property
    def contacts(self) -> list[NameAddr]:
        return [NameAddr.parse(v) for v in self.headers.get_all("Contact") if v.strip() != "*"]

    @property
    def record_routes(self) -> list[NameAddr]:
        return [NameAddr.parse(value) for value in self.headers.get_all("Record-Route")]

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("Content-Type")
        return value.split(";")[0].strip().lower() if value else None

    def _serialise(self, start_line: str) -> bytes:
        lines = [start_line]
        lines.extend(f"{name}: {value}" for name, value in self.headers if name != "Content-Length")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body


@dataclass
class SipRequest(_MessageBase):
    method: str
    uri: SipUri
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION

    def to_bytes(self) -> bytes:
        return self._serialise(f"{self.method} {self.uri} {self.version}")

    @property
    def max_forwards(self) -> int | None:
        value = self.headers.get("Max-Forwards")
        return int(value) if value is not None else None


@dataclass
class SipResponse(_MessageBase):
    status_code: int
    reason: str = ""
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION

    def to_bytes(self) -> bytes:
        return self._serialise(f"{self.version} {self.status_code} {self.reason}")

    @property
    def is_provisional(self) -> bool:
        return self.status_code < 200


SipMessage = SipRequest | SipResponse


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    data = data.lstrip(b"\r\n")  # §7.5: ignore CRLFs before the start line
    if not data:
        raise SipParseError("empty message")
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return data[:crlf], data[crlf + 4 :]
    if lf >= 0:
        return data[:lf], data[lf + 2 :]
    raise SipParseError("message head is not terminated by an empty line")


def _unfold(head: str) -> tuple[str, list[tuple[str, str]]]:
    lines = head.replace("\r\n", "\n").split("\n")
    start_line, raw_fields = lines[0], lines[1:]
    fields: list[tuple[str, str]] = []
    for line in raw_fields:
        if line[:1] in (" ", "\t"):
            if not fields:
                raise SipParseError("continuation line before the first header field")
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {line.strip()}".strip())
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise SipParseError(f"header line without a colon: {line[:60]!r}")
        fields.append((name.rstrip(" \t"), value.strip(" \t")))
    return start_line, fields


def _parse_start_line(line: str) -> tuple[str, str, str]:
    parts = line.split(" ")
    if len(parts) == 2 and parts[0].startswith("SIP/"):
        parts.append("")  # a status line without even the SP before an empty reason
    if len(parts) < 3 or (len(parts) > 3 and not parts[0].startswith("SIP/")):
        raise SipParseError(f"malformed start line {line[:80]!r}")
    if parts[0].startswith("SIP/"):
        return parts[0], parts[1], " ".join(parts[2:])
    return parts[0], parts[1], parts[2]


def parse_message(data: bytes) -> SipMessage:
    """Parse one SIP message from a datagram (see the module docstring for the rules)."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipParseError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    head_bytes, body = _split_head(data)
    try:
        head = head_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipParseError(f"message head is not UTF-8 (offset {exc.start})") from None
    # Control characters are allowed only as quoted-pairs (§25.1, RFC 4475 §3.1.1.2).
    if _CONTROL_RE.search(re.sub(r"\\[^\r\n]", "", head).replace("\r\n", "").replace("\n", "")):
        raise SipParseError("control character in message head")
    start_line = head.split("\n", 1)[0].rstrip("\r")
    words = start_line.split()
    method = words[0] if words and not words[0].startswith("SIP/") else None
    raw_fields: list[tuple[str, str]] | None = None
    try:
        start_line, raw_fields = _unfold(head)
        first, second, third = _parse_start_line(start_line)
        return _build(first, second, third, raw_fields, body)
    except SipParseError as exc:
        raise SipParseError(str(exc), method=method, headers=raw_fields) from None


def _build(first: str, second: str, third: str, raw: list[tuple[str, str]], body: bytes) -> SipMessage:
    headers = Headers()
    for name, value in raw:
        headers.add(name, value)
    message: SipMessage
    if first.startswith("SIP/"):
        if not _VERSION_RE.fullmatch(first):
            raise SipParseError(f"bad SIP version {first!r}")
        if not (len(second) == 3 and second.isdigit() and second.isascii()) or not 100 <= int(second) <= 699:
            raise SipParseError(f"bad status code {second[:20]!r}")
        message = SipResponse(int(second), third, headers, b"", first)
    else:
        if not is_token(first):
            raise SipParseError(f"bad method {first[:40]!r}")
        if not _VERSION_RE.fullmatch(third):
            raise SipParseError(f"bad SIP version {third[:20]!r}")
        uri = SipUri.parse(second)
        if uri.headers:
            raise SipParseError("Request-URI must not contain headers (§19.1.1)")
        message = SipRequest(first, uri, headers, b"", third)
    for name in _REQUIRED:
        if name not in headers:
            raise SipParseError(f"missing mandatory {name} header")
    for name in SINGLE_HEADERS:
        if len(headers.get_lines(name)) > 1:
            raise SipParseError(f"{name} header appears more than once")
    for index, value in enumerate(headers.get_all("Via")):
        via = Via.parse(value)
        if index == 0 and via.branch is not None and not via.branch:
            raise SipParseError("empty Via branch")
    _, cseq_method = message.cseq
    if isinstance(message, SipRequest) and cseq_method != message.method:
        raise SipParseError(f"CSeq method {cseq_method} does not match request method {message.method}")
    message.from_, message.to  # noqa: B018 — validates both name-addrs
    for name in ("Contact", "Route", "Record-Route"):
        for value in headers.get_all(name):
            if not (name == "Contact" and value == "*"):
                NameAddr.parse(value)
    max_forwards = headers.get("Max-Forwards")
    if max_forwards is not None and (
        not max_forwards.isdigit() or not max_forwards.isascii() or int(max_forwards) > 255
    ):
        raise SipParseError(f"bad Max-Forwards {max_forwards[:20]!r}")
    message.body = _cut_body(headers.get("Content-Length"), body)
    return message


def _cut_body(length_text: str | None, body: bytes) -> bytes:
    if length_text is None:
        return body  # §18.3: over UDP, the body is the rest of the datagram
    if not length_text.isdigit() or not length_text.isascii() or len(length_text) > 9:
        raise SipParseError(f"bad Content-Length {length_text[:20]!r}")
    length = int(length_text)
    if length > len(body):
        raise SipParseError(f"Content-Length {length} exceeds the {len(body)} body bytes received")
    return body[:length]


def can_answer(error: SipParseError) -> bool:
    """True when a 400 can be built for the rejected message: a request with the headers of §8.2.6."""
    if error.method is None or error.method == "ACK" or not error.headers:
        return False
    return _salvage_via(error.headers) is not None


def _salvage_via(fields: list[tuple[str, str]]) -> Via | None:
    """The top Via, read leniently (parameters dropped if they are malformed)."""
    value = next((v for n, v in fields if canonical_name_or_none(n) == "Via"), None)
    if value is None:
        return None
    first = value.split(",")[0]
    for candidate in (first, first.split(";")[0]):
        try:
            return Via.parse(candidate)
        except SipParseError:
            continue
    return None


def canonical_name_or_none(name: str) -> str | None:
    try:
        return canonical_name(name)
    except SipParseError:
        return None


def bad_request_for(error: SipParseError, source: Addr) -> tuple[bytes, Addr] | None:
    """A 400 response to a request that failed to parse, and where to send it (§8.2.6, §18.2.2)."""
    if not can_answer(error) or error.headers is None:
        return None
    top = _salvage_via(error.headers)
    if top is None:
        return None
    copied = Headers()
    for name, value in error.headers:
        canonical = canonical_name_or_none(name)
        if canonical == "Via" or (canonical in ("From", "To", "Call-ID", "CSeq") and canonical not in copied):
            copied.add(canonical, value.replace("\r", " ").replace("\n", " "))
    reason = "Bad Request - " + str(error).replace("\r", " ").replace("\n", " ")[:100]
    response = SipResponse(400, reason, copied)
    return response.to_bytes(), top.stamped(source).response_address(source)


def build_response(
    request: SipRequest,
    status_code: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    body: bytes = b"",
    content_type: str | None = None,
    extra_headers: list[tuple[str, str]] | None = None,
) -> SipResponse:
    """A response that copies Via, From, To, Call-ID and CSeq from the request (§8.2.6.2)."""
    headers = Headers()
    for value in request.headers.get_lines("Via"):
        headers.add("Via", value)
    headers.add("From", request.headers.get("From") or "")
    to_value = request.headers.get("To") or ""
    if to_tag is not None and status_code != 100 and request.to.tag is None:
        to_value = str(request.to.with_tag(to_tag))
    headers.add("To", to_value)
    headers.add("Call-ID", request.call_id)
    headers.add("CSeq", request.headers.get("CSeq") or "")
    for name, value in extra_headers or []:
        headers.add(name, value)
    if body:
        headers.add("Content-Type", content_type or "application/sdp")
    phrase = reason if reason is not None else REASON_PHRASES.get(status_code, "Unknown")
    return SipResponse(status_code, phrase, headers, body)
