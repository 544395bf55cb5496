"""HTTP Digest authentication for SIP (RFC 3261 §22, RFC 2617, RFC 7616, RFC 8760).

Theory of operation
-------------------
Client: ``DigestChallenge.parse`` reads a ``WWW-Authenticate``/``Proxy-Authenticate`` value,
``answer_challenge`` computes the ``Authorization``/``Proxy-Authorization`` value (qop=auth
with nc and cnonce when the server offers qop, RFC 7616 §3.4; plain RFC 2069 response
otherwise). Algorithms: MD5, SHA-256 and their ``-sess`` variants (RFC 8760 §2).

Server: ``DigestServer`` issues stateless nonces — ``<issued ms hex>.<HMAC-SHA256 of it>`` —
so that no per-challenge state is kept; ``verify`` checks the nonce's MAC and age against the
``now`` passed in (an expired but genuine nonce gives ``STALE``, RFC 7616 §3.3 stale=true),
rejects a nonce count that does not increase (replay), and compares the response in constant
time (``hmac.compare_digest``).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from sip_bridge.errors import DigestError
from sip_bridge.uri import is_token, quote_string, read_quoted_string, split_outside

_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
SUPPORTED_ALGORITHMS = ("MD5", "MD5-sess", "SHA-256", "SHA-256-sess")


def _hash(algorithm: str, text: str) -> str:
    base = algorithm.upper().removesuffix("-SESS")
    if base not in _HASHES:
        raise DigestError(f"unsupported digest algorithm {algorithm!r}")
    return _HASHES[base](text.encode("utf-8")).hexdigest()


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """``Digest a=b, c="d"`` → ("Digest", {"a": "b", "c": "d"}); names lowercased."""
    scheme, _, rest = value.strip().partition(" ")
    if not is_token(scheme):
        raise DigestError(f"bad authentication scheme in {value[:60]!r}")
    params: dict[str, str] = {}
    try:
        pieces = split_outside(rest, ",")
    except ValueError as exc:
        raise DigestError(str(exc)) from None
    for piece in pieces:
        piece = piece.strip()
        if not piece:
            continue
        name, eq, raw = piece.partition("=")
        name, raw = name.strip().lower(), raw.strip()
        if not eq or not is_token(name):
            raise DigestError(f"bad auth parameter {piece[:40]!r}")
        if raw.startswith('"'):
            try:
                text, end = read_quoted_string(raw, 0)
            except ValueError as exc:
                raise DigestError(str(exc)) from None
            if raw[end:].strip():
                raise DigestError(f"junk after quoted value of {name}")
            params[name] = text
        else:
            params[name] = raw
    return scheme, params


@dataclass(frozen=True)
class DigestChallenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False

    @classmethod
    def parse(cls, value: str) -> DigestChallenge:
        scheme, params = parse_auth_params(value)
        if scheme.lower() != "digest":
            raise DigestError(f"unsupported authentication scheme {scheme!r}")
        if "realm" not in params or "nonce" not in params:
            raise DigestError("digest challenge without realm or nonce")
        qop = tuple(q.strip() for q in params.get("qop", "").split(",") if q.strip())
        return cls(
            realm=params["realm"],
            nonce=params["nonce"],
            algorithm=params.get("algorithm", "MD5"),
            qop=qop,
            opaque=params.get("opaque"),
            stale=params.get("stale", "").lower() == "true",
        )

    def to_header(self) -> str:
        parts = [f"realm={quote_string(self.realm)}", f"nonce={quote_string(self.nonce)}"]
        if self.qop:
            parts.append(f"qop={quote_string(','.join(self.qop))}")
        parts.append(f"algorithm={self.algorithm}")
        if self.opaque is not None:
            parts.append(f"opaque={quote_string(self.opaque)}")
        if self.stale:
            parts.append("stale=true")
        return "Digest " + ", ".join(parts)


@dataclass(frozen=True)
class DigestCredentials:
    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None

    @classmethod
    def parse(cls, value: str) -> DigestCredentials:
        scheme, p = parse_auth_params(value)
        if scheme.lower() != "digest":
            raise DigestError(f"unsupported authentication scheme {scheme!r}")
        missing = [k for k in ("username", "realm", "nonce", "uri", "response") if k not in p]
        if missing:
            raise DigestError(f"digest credentials lack {', '.join(missing)}")
        return cls(
            p["username"], p["realm"], p["nonce"], p["uri"], p["response"], p.get("algorithm", "MD5"),
            p.get("qop"), p.get("nc"), p.get("cnonce"), p.get("opaque"),
        )  # fmt: skip

    def to_header(self) -> str:
        parts = [
            f"username={quote_string(self.username)}",
            f"realm={quote_string(self.realm)}",
            f"nonce={quote_string(self.nonce)}",
            f"uri={quote_string(self.uri)}",
            f"response={quote_string(self.response)}",
            f"algorithm={self.algorithm}",
        ]
        if self.qop is not None:
            parts += [f"qop={self.qop}", f"nc={self.nc}", f"cnonce={quote_string(self.cnonce or '')}"]
        if self.opaque is not None:
            parts.append(f"opaque={quote_string(self.opaque)}")
        return "Digest " + ", ".join(parts)


def compute_response(
    *,
    algorithm: str,
    username: str,
    password: str,
    realm: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The request-digest of RFC 7616 §3.4.1 (RFC 2617 §3.2.2 for MD5)."""
    ha1 = _hash(algorithm, f"{username}:{realm}:{password}")
    if algorithm.upper().endswith("-SESS"):
        ha1 = _hash(algorithm, f"{ha1}:{nonce}:{cnonce or ''}")
    ha2 = _hash(algorithm, f"{method}:{uri}")
    if qop is None:
        return _hash(algorithm, f"{ha1}:{nonce}:{ha2}")
    if qop != "auth":
        raise DigestError(f"unsupported qop {qop!r}")
    return _hash(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def answer_challenge(
    challenge: DigestChallenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    cnonce: str,
    nonce_count: int = 1,
) -> DigestCredentials:
    """Credentials answering ``challenge`` for one request (RFC 7616 §3.4)."""
    if challenge.algorithm.upper() not in {a.upper() for a in SUPPORTED_ALGORITHMS}:
        raise DigestError(f"unsupported digest algorithm {challenge.algorithm!r}")
    if challenge.qop and "auth" not in challenge.qop:
        raise DigestError(f"challenge offers only qop {','.join(challenge.qop)}")
    qop = "auth" if challenge.qop else None
    nc = f"{nonce_count:08x}" if qop else None
    response = compute_response(
        algorithm=challenge.algorithm, username=username, password=password, realm=challenge.realm,
        method=method, uri=uri, nonce=challenge.nonce, qop=qop, nc=nc, cnonce=cnonce if qop else None,
    )  # fmt: skip
    return DigestCredentials(
        username, challenge.realm, challenge.nonce, uri, response, challenge.algorithm,
        qop, nc, cnonce if qop else None, challenge.opaque,
    )  # fmt: skip


class Verdict(enum.Enum):
    VALID = "valid"
    INVALID = "invalid"
    STALE = "stale"  # genuine nonce past its lifetime: challenge again with stale=true


class DigestServer:
    """Challenges and verifies digest credentials against a username → password table."""

    def __init__(
        self,
        realm: str,
        users: Mapping[str, str],
        secret: bytes,
        *,
        algorithms: tuple[str, ...] = ("SHA-256", "MD5"),
        nonce_lifetime_s: float = 300.0,
    ) -> None:
        if not secret:
            raise ValueError("DigestServer needs a non-empty secret")
        self.realm = realm
        self._users = dict(users)
        self._secret = secret
        self.algorithms = algorithms
        self.nonce_lifetime_s = nonce_lifetime_s
        self._last_nc: dict[str, int] = {}

    def _mac(self, stamp: str) -> str:
        return hmac.new(self._secret, stamp.encode("utf-8"), hashlib.sha256).hexdigest()[:32]

    def make_nonce(self, now: float) -> str:
        stamp = f"{max(0, int(now * 1000)):x}"
        return f"{stamp}.{self._mac(stamp)}"

    def challenges(self, now: float, *, stale: bool = False) -> list[str]:
        """WWW-Authenticate values, strongest algorithm first (RFC 8760 §2.4)."""
        nonce = self.make_nonce(now)
        return [
            DigestChallenge(self.realm, nonce, alg, ("auth",), None, stale).to_header()
            for alg in self.algorithms
        ]

    def verify(self, value: str, *, method: str, now: float) -> tuple[Verdict, str | None]:
        """Check an Authorization value; returns the verdict and the username it names."""
        try:
            creds = DigestCredentials.parse(value)
        except DigestError:
            return Verdict.INVALID, None
        stamp, _, mac = creds.nonce.partition(".")
        if (
            creds.realm != self.realm
            or creds.algorithm.upper() not in {a.upper() for a in self.algorithms}
            or not hmac.compare_digest(mac.encode(), self._mac(stamp).encode())
        ):
            return Verdict.INVALID, creds.username
        password = self._users.get(creds.username)
        nc = 0
        if creds.qop is not None:
            if creds.qop != "auth" or not creds.nc or not creds.cnonce:
                return Verdict.INVALID, creds.username
            try:
                nc = int(creds.nc, 16)
            except ValueError:
                return Verdict.INVALID, creds.username
        expected = compute_response(
            algorithm=creds.algorithm, username=creds.username, password=password or "", realm=self.realm,
            method=method, uri=creds.uri, nonce=creds.nonce, qop=creds.qop, nc=creds.nc, cnonce=creds.cnonce,
        )  # fmt: skip
        matches = hmac.compare_digest(expected.encode(), creds.response.lower().encode())
        if password is None or not matches:
            return Verdict.INVALID, creds.username
        issued_s = int(stamp, 16) / 1000.0
        if now - issued_s > self.nonce_lifetime_s or issued_s > now + 1.0:
            return Verdict.STALE, creds.username
        if creds.qop is not None:
            if nc <= self._last_nc.get(creds.nonce, 0):
                return Verdict.INVALID, creds.username  # replayed nonce count (RFC 7616 §3.4)
            self._last_nc[creds.nonce] = nc
            self._forget_old(now)
        return Verdict.VALID, creds.username

    def _forget_old(self, now: float) -> None:
        if len(self._last_nc) < 1024:
            return
        for nonce in list(self._last_nc):
            if now - int(nonce.partition(".")[0], 16) / 1000.0 > self.nonce_lifetime_s:
                del self._last_nc[nonce]
