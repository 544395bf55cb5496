"""Header fields: names, multi-value splitting, Via and CSeq (RFC 3261 §7.3, §20; RFC 3581).

Theory of operation
-------------------
``Headers`` is an ordered list of ``(canonical name, raw value)`` pairs. Names are matched
case-insensitively and compact forms (``v`` → ``Via``, §7.3.3) are expanded on the way in, so
the rest of the code only ever sees long canonical names. A header field line may carry
several comma-separated values (§7.3.1); ``get_all`` splits those for the header fields whose
grammar is a list, never inside quoted strings or ``<...>``, and never for the digest header
fields whose commas separate parameters. Values are stored as received (folding already
replaced by one space by the message parser) and serialised one field per line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from sip_bridge.errors import SipParseError
from sip_bridge.uri import (
    Params,
    format_params,
    get_param,
    is_token,
    parse_hostport,
    parse_params,
    split_outside,
)

# RFC 3261 §7.3.3 and the IANA SIP header registry compact forms.
COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

_SPECIAL_CASE = {
    name.lower(): name
    for name in (
        "Call-ID",
        "CSeq",
        "WWW-Authenticate",
        "MIME-Version",
        "RSeq",
        "RAck",
        "SIP-ETag",
        "SIP-If-Match",
        "P-Asserted-Identity",
        "P-Preferred-Identity",
    )
}

# Header fields whose grammar is a comma-separated list (§7.3.1, §20).
LIST_HEADERS = frozenset(
    {
        "Via",
        "Contact",
        "Route",
        "Record-Route",
        "Allow",
        "Supported",
        "Require",
        "Proxy-Require",
        "Unsupported",
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Content-Encoding",
        "Content-Language",
        "Allow-Events",
        "In-Reply-To",
        "Alert-Info",
        "Call-Info",
        "Error-Info",
    }
)

# Header fields that may appear at most once (§20, RFC 4475 §3.3.8/§3.3.9).
SINGLE_HEADERS = frozenset(
    {"Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Length", "Content-Type", "Expires"}
)

MAX_CSEQ = 2**31 - 1  # §8.1.1.5: the sequence number MUST be less than 2**31.


def canonical_name(name: str) -> str:
    """Canonical spelling of a header field name (compact forms expanded, §7.3.3)."""
    if not is_token(name):
        raise SipParseError(f"bad header field name {name!r}")
    lower = name.lower()
    if lower in COMPACT_FORMS:
        return COMPACT_FORMS[lower]
    if lower in _SPECIAL_CASE:
        return _SPECIAL_CASE[lower]
    return "-".join(part.capitalize() for part in lower.split("-"))


class Headers:
    """Ordered, case-insensitive multi-map of header fields."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = []
        for name, value in items:
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        self._items.append((canonical_name(name), value))

    def prepend(self, name: str, value: str) -> None:
        self._items.insert(0, (canonical_name(name), value))

    def set(self, name: str, value: str) -> None:
        """Replace every field of this name by one, kept at the first one's position."""
        key = canonical_name(name)
        for index, (existing, _) in enumerate(self._items):
            if existing == key:
                self._items[index] = (key, value)
                self._items = [item for i, item in enumerate(self._items) if i <= index or item[0] != key]
                return
        self._items.append((key, value))

    def remove(self, name: str) -> None:
        key = canonical_name(name)
        self._items = [item for item in self._items if item[0] != key]

    def get(self, name: str) -> str | None:
        """The first field line's raw value, or None."""
        key = canonical_name(name)
        for existing, value in self._items:
            if existing == key:
                return value
        return None

    def get_lines(self, name: str) -> list[str]:
        key = canonical_name(name)
        return [value for existing, value in self._items if existing == key]

    def get_all(self, name: str) -> list[str]:
        """Every value, with list header fields split on commas (§7.3.1)."""
        key = canonical_name(name)
        values: list[str] = []
        for line in self.get_lines(key):
            if key in LIST_HEADERS:
                for part in split_outside(line, ","):
                    if not part.strip():
                        raise SipParseError(f"empty element in {key} header: {line!r}")
                    values.append(part.strip())
            else:
                values.append(line)
        return values

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def copy(self) -> Headers:
        clone = Headers()
        clone._items = list(self._items)
        return clone

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


_VIA_RE = re.compile(r"([^\s/]+)\s*/\s*([^\s/]+)\s*/\s*([^\s/;]+)\s+([^;]+?)\s*(?:;(.*))?", re.DOTALL)


@dataclass(frozen=True)
class Via:
    """One Via value: ``SIP/2.0/UDP host:port;branch=...;received=...;rport`` (§20.42)."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()

    @classmethod
    def parse(cls, text: str) -> Via:
        match = _VIA_RE.fullmatch(text.strip())
        if not match:
            raise SipParseError(f"malformed Via {text!r}")
        protocol, version, transport, sent_by, param_text = match.groups()
        if protocol.upper() != "SIP" or not is_token(version) or not is_token(transport):
            raise SipParseError(f"malformed Via sent-protocol in {text!r}")
        host, port = parse_hostport(re.sub(r"\s*:\s*", ":", sent_by))
        params = parse_params(param_text, what="Via") if param_text is not None else ()
        rport = get_param(params, "rport")
        if rport and not (rport.isdigit() and int(rport) <= 65535):
            raise SipParseError(f"bad rport in Via {text!r}")
        return cls(transport.upper(), host, port, params)

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {self.host}{port}{format_params(self.params)}"

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def sent_by(self) -> tuple[str, int]:
        return self.host, self.port if self.port is not None else 5060

    def with_param(self, name: str, value: str | None) -> Via:
        kept = tuple((k, v) for k, v in self.params if k != name)
        return replace(self, params=(*kept, (name, value)))

    def response_address(self, source: tuple[str, int]) -> tuple[str, int]:
        """Where responses go (§18.2.2 for unreliable transports, RFC 3581 §4 for rport)."""
        received = self.param("received")
        rport = self.param("rport")
        host = received or self.host.strip("[]")
        if rport:
            return host, int(rport)
        if rport == "":
            return source
        return host, self.sent_by[1]

    def stamped(self, source: tuple[str, int]) -> Via:
        """The Via as a server transport records it on receipt: received and rport (§18.2.1)."""
        via = self
        if self.host.strip("[]") != source[0]:
            via = via.with_param("received", source[0])
        if self.param("rport") == "":
            via = via.with_param("received", source[0]).with_param("rport", str(source[1]))
        return via


def parse_cseq(text: str) -> tuple[int, str]:
    """``CSeq: 4711 INVITE`` → (4711, "INVITE"); number below 2**31 (§8.1.1.5)."""
    parts = text.split()
    if len(parts) != 2 or not parts[0].isdigit() or not parts[0].isascii():
        raise SipParseError(f"malformed CSeq {text!r}")
    number = int(parts[0])
    if number > MAX_CSEQ:
        raise SipParseError(f"CSeq number {parts[0]} is not below 2**31")
    if not is_token(parts[1]):
        raise SipParseError(f"bad CSeq method {parts[1]!r}")
    return number, parts[1]
