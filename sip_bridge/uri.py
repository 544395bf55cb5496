"""SIP URIs and name-addr values (RFC 3261 §19.1, §20.10, §25.1; RFC 3966 minimally for tel:).

Theory of operation
-------------------
``SipUri.parse`` reads ``sip:``/``sips:`` URIs fully (user, password, host, port, parameters,
headers), ``tel:`` URIs as a number plus parameters, and any other syntactically valid scheme
as an opaque string (so that a UA can answer 416 Unsupported URI Scheme, RFC 3261 §8.2.2.1,
instead of 400). ``NameAddr.parse`` reads the two forms of From/To/Contact/Route values
(§20.10): ``"Display" <uri>;params`` and the bare addr-spec ``uri;params``, where the
parameters after an addr-spec belong to the header field, not to the URI. Everything is kept
as the escaped text that was received; serialising reproduces a canonical spelling.

Both classes are frozen: build modified copies with ``dataclasses.replace`` or ``with_tag``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

from sip_bridge.errors import SipParseError

Params = tuple[tuple[str, str | None], ...]

SIP_DEFAULT_PORT = 5060
SIPS_DEFAULT_PORT = 5061

TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_\-.]*[A-Za-z0-9_])?\.?")
# Characters never allowed inside a URI (RFC 3986 / RFC 3261 §25.1): whitespace, quotes, angle brackets.
_URI_FORBIDDEN_RE = re.compile(r"[\s\"<>\x00-\x1f\x7f]")


def is_token(text: str) -> bool:
    """True when ``text`` is a non-empty RFC 3261 §25.1 token."""
    return bool(text) and all(ch in TOKEN_CHARS for ch in text)


def read_quoted_string(text: str, start: int) -> tuple[str, int]:
    """Read a quoted-string beginning at ``text[start] == '"'`` (§25.1 quoted-pair escapes).

    Returns the unescaped content and the index just after the closing quote.
    """
    if start >= len(text) or text[start] != '"':
        raise SipParseError(f"expected a quoted string at offset {start} in {text!r}")
    out: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text):
                break
            out.append(text[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise SipParseError(f"unterminated quoted string in {text!r}")


def quote_string(value: str) -> str:
    """Serialise ``value`` as a quoted-string, escaping quote and backslash."""
    out = []
    for ch in value:
        if ch in "\r\n":
            out.append(" ")  # CR and LF cannot be quoted-pairs (§25.1)
        elif ch in '"\\' or ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def split_outside(text: str, separator: str) -> list[str]:
    """Split on ``separator`` except inside quoted strings and ``<...>`` (§7.3.1)."""
    parts: list[str] = []
    depth = 0
    in_quotes = False
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if in_quotes:
            if ch == "\\" and i + 1 < len(text):
                current.append(text[i : i + 2])
                i += 2
                continue
            if ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == "<":
            depth += 1
        elif ch == ">" and depth > 0:
            depth -= 1
        elif ch == separator and depth == 0:
            parts.append("".join(current))
            current = []
            i += 1
            continue
        current.append(ch)
        i += 1
    if in_quotes:
        raise SipParseError(f"unterminated quoted string in {text!r}")
    parts.append("".join(current))
    return parts


def parse_params(text: str, *, what: str) -> Params:
    """Parse ``name[=value];name[=value]...`` (generic-param, §25.1), LWS allowed around ``;``/``=``.

    ``text`` is what follows the first ``;``. Empty parameters (``;;``) are an error.
    """
    result: list[tuple[str, str | None]] = []
    for raw in split_outside(text, ";"):
        piece = raw.strip()
        if not piece:
            raise SipParseError(f"empty parameter in {what}: {text!r}")
        name, sep, value = piece.partition("=")
        name = name.strip()
        if not is_token(name):
            raise SipParseError(f"bad parameter name {name!r} in {what}")
        if not sep:
            result.append((name.lower(), None))
            continue
        value = value.strip()
        if value.startswith('"'):
            unquoted, end = read_quoted_string(value, 0)
            if value[end:].strip():
                raise SipParseError(f"junk after quoted parameter {name!r} in {what}")
            result.append((name.lower(), unquoted))
        elif not value or re.search(r"[\s,\"<>]", value):
            raise SipParseError(f"bad value for parameter {name!r} in {what}: {value!r}")
        else:
            result.append((name.lower(), value))
    return tuple(result)


def format_params(params: Params) -> str:
    out = []
    for name, value in params:
        if value is None:
            out.append(f";{name}")
        elif value == "" or not all(ch in TOKEN_CHARS or ch in "[]:/@?" for ch in value):
            out.append(f";{name}={quote_string(value)}")
        else:
            out.append(f";{name}={value}")
    return "".join(out)


def get_param(params: Params, name: str) -> str | None:
    """Value of a parameter (``""`` for a flag such as ``lr``), or None when absent."""
    for key, value in params:
        if key == name:
            return "" if value is None else value
    return None


def parse_host(text: str) -> str:
    """Validate a host (hostname, IPv4 address or bracketed IPv6 reference, §25.1)."""
    if text.startswith("["):
        if not text.endswith("]"):
            raise SipParseError(f"unterminated IPv6 reference {text!r}")
        try:
            ipaddress.IPv6Address(text[1:-1])
        except ValueError as exc:
            raise SipParseError(f"bad IPv6 reference {text!r}") from exc
        return text
    if not _HOSTNAME_RE.fullmatch(text):
        raise SipParseError(f"bad host {text!r}")
    return text.lower()


def parse_hostport(text: str) -> tuple[str, int | None]:
    """Split ``host[:port]``; the port must be 0..65535."""
    if text.startswith("["):
        end = text.find("]")
        host_text, rest = text[: end + 1], text[end + 1 :]
        if end < 0:
            raise SipParseError(f"unterminated IPv6 reference {text!r}")
    else:
        host_text, colon, port_text = text.partition(":")
        rest = colon + port_text
    host = parse_host(host_text)
    if not rest:
        return host, None
    if not rest.startswith(":") or not rest[1:].isdigit() or not rest[1:].isascii():
        raise SipParseError(f"bad port in {text!r}")
    port = int(rest[1:])
    if port > 65535:
        raise SipParseError(f"port {port} out of range in {text!r}")
    return host, port


@dataclass(frozen=True)
class SipUri:
    """A sip:, sips: or tel: URI; other schemes keep their text in ``opaque``."""

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()
    opaque: str | None = None

    @classmethod
    def parse(cls, text: str) -> SipUri:
        if _URI_FORBIDDEN_RE.search(text):
            raise SipParseError(f"URI contains whitespace, quotes or angle brackets: {text!r}")
        scheme, colon, rest = text.partition(":")
        if not colon or not _SCHEME_RE.fullmatch(scheme):
            raise SipParseError(f"URI has no valid scheme: {text!r}")
        scheme = scheme.lower()
        if not rest:
            raise SipParseError(f"empty URI after scheme: {text!r}")
        if scheme == "tel":
            number, _, param_text = rest.partition(";")
            if not number:
                raise SipParseError(f"tel URI without a number: {text!r}")
            params = parse_params(param_text, what="tel URI") if param_text else ()
            return cls(scheme=scheme, user=number, params=params)
        if scheme not in ("sip", "sips"):
            return cls(scheme=scheme, opaque=rest)
        # The user part may hold '?' and ';' but never an unescaped '@' (§25.1 user-unreserved).
        userinfo, at, hostpart = rest.partition("@")
        if not at:
            userinfo, hostpart = "", rest
        hostpart, question, header_text = hostpart.partition("?")
        headers: list[tuple[str, str]] = []
        if question:
            for item in header_text.split("&"):
                hname, eq, hvalue = item.partition("=")
                if not hname or not eq:
                    raise SipParseError(f"bad URI header {item!r} in {text!r}")
                headers.append((hname, hvalue))
        user: str | None = None
        password: str | None = None
        if at:
            if not userinfo:
                raise SipParseError(f"empty user part in {text!r}")
            user, has_pw, pw = userinfo.partition(":")
            password = pw if has_pw else None
            if not user:
                raise SipParseError(f"empty user part in {text!r}")
        hostport, semi, param_text = hostpart.partition(";")
        host, port = parse_hostport(hostport)
        params = parse_params(param_text, what="URI") if semi else ()
        return cls(scheme, user, password, host, port, params, tuple(headers))

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        if self.scheme == "tel":
            return f"tel:{self.user}{format_params(self.params)}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        out.append(format_params(self.params))
        if self.headers:
            out.append("?" + "&".join(f"{k}={v}" for k, v in self.headers))
        return "".join(out)

    def param(self, name: str) -> str | None:
        return get_param(self.params, name.lower())

    @property
    def is_sip(self) -> bool:
        return self.scheme in ("sip", "sips")

    @property
    def default_port(self) -> int:
        return SIPS_DEFAULT_PORT if self.scheme == "sips" else SIP_DEFAULT_PORT

    @property
    def address(self) -> tuple[str, int]:
        """Where to send a request for this URI (RFC 3263 without DNS: host and port as written)."""
        if not self.is_sip:
            raise SipParseError(f"cannot route to a {self.scheme}: URI")
        host = self.param("maddr") or self.host
        return host.strip("[]"), self.port if self.port is not None else self.default_port


@dataclass(frozen=True)
class NameAddr:
    """A From/To/Contact/Route value: optional display name, URI, header parameters (§20.10)."""

    uri: SipUri
    display_name: str | None = None
    params: Params = ()

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        text = text.strip()
        if not text:
            raise SipParseError("empty name-addr")
        display: str | None = None
        if text.startswith('"'):
            display, end = read_quoted_string(text, 0)
            rest = text[end:].lstrip()
            if not rest.startswith("<"):
                raise SipParseError(f"quoted display name not followed by <uri>: {text!r}")
        elif "<" in text:
            lt = text.index("<")
            words = text[:lt].split()
            if any(not is_token(word) for word in words):
                raise SipParseError(f"display name has non-token characters: {text[:lt]!r}")
            display = " ".join(words) or None
            rest = text[lt:]
        else:
            uri_text, semi, param_text = text.partition(";")
            uri_text = uri_text.rstrip()
            if re.search(r"[\s,?]", uri_text):
                raise SipParseError(f"addr-spec with space, comma or '?' must use <>: {text!r}")
            params = parse_params(param_text, what="header") if semi else ()
            return cls(SipUri.parse(uri_text), None, params)
        gt = rest.find(">")
        if gt < 0:
            raise SipParseError(f"unterminated <uri> in {text!r}")
        uri = SipUri.parse(rest[1:gt])
        tail = rest[gt + 1 :].strip()
        if tail and not tail.startswith(";"):
            raise SipParseError(f"junk after <uri>: {tail!r}")
        params = parse_params(tail[1:], what="header") if tail else ()
        return cls(uri, display, params)

    def __str__(self) -> str:
        display = quote_string(self.display_name) + " " if self.display_name else ""
        return f"{display}<{self.uri}>{format_params(self.params)}"

    def param(self, name: str) -> str | None:
        return get_param(self.params, name.lower())

    @property
    def tag(self) -> str | None:
        return self.param("tag")

    def with_tag(self, tag: str) -> NameAddr:
        kept = tuple((k, v) for k, v in self.params if k != "tag")
        return replace(self, params=(*kept, ("tag", tag)))
