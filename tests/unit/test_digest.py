"""Digest authentication (RFC 2617, RFC 7616 §3.9.1 vectors, RFC 8760)."""

from __future__ import annotations

import pytest

from sip_bridge.digest import (
    DigestChallenge,
    DigestCredentials,
    DigestServer,
    Verdict,
    answer_challenge,
    compute_response,
)
from sip_bridge.errors import DigestError

RFC7616 = {
    "username": "Mufasa",
    "password": "Circle of Life",
    "realm": "http-auth@example.org",
    "method": "GET",
    "uri": "/dir/index.html",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "qop": "auth",
    "nc": "00000001",
    "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
}


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_vectors(algorithm: str, expected: str) -> None:
    assert compute_response(algorithm=algorithm, **RFC7616) == expected


def test_rfc7616_vector_through_challenge_and_header_round_trip() -> None:
    challenge = DigestChallenge.parse(
        'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    assert challenge.qop == ("auth", "auth-int") and challenge.algorithm == "SHA-256"
    creds = answer_challenge(
        challenge, username="Mufasa", password="Circle of Life", method="GET", uri="/dir/index.html",
        cnonce=RFC7616["cnonce"],
    )  # fmt: skip
    assert creds.response == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    parsed = DigestCredentials.parse(creds.to_header())
    assert parsed == creds and parsed.nc == "00000001" and parsed.opaque == challenge.opaque


def test_rfc2617_md5_vector() -> None:
    response = compute_response(
        algorithm="MD5", username="Mufasa", password="Circle Of Life", realm="testrealm@host.com", method="GET",
        uri="/dir/index.html", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", qop="auth", nc="00000001",
        cnonce="0a4f113b",
    )  # fmt: skip
    assert response == "6629fae49393a05397450978507c4ef1"


def test_challenge_without_qop_gives_rfc2069_response() -> None:
    challenge = DigestChallenge(realm="r", nonce="n")
    creds = answer_challenge(
        challenge, username="u", password="p", method="INVITE", uri="sip:x@y", cnonce="c"
    )
    assert creds.qop is None and creds.cnonce is None
    assert creds.response == compute_response(
        algorithm="MD5", username="u", password="p", realm="r", method="INVITE", uri="sip:x@y", nonce="n"
    )
    assert "qop" not in creds.to_header()


@pytest.mark.parametrize(
    "value",
    ['Basic realm="x"', "Digest nonce=abc", 'Digest realm="x", nonce="unterminated', "Digest realm"],
)
def test_malformed_challenges(value: str) -> None:
    with pytest.raises(DigestError):
        DigestChallenge.parse(value)


def test_unsupported_algorithm_and_qop_are_refused() -> None:
    with pytest.raises(DigestError, match="algorithm"):
        answer_challenge(DigestChallenge("r", "n", "SHA-512-256"), username="u", password="p", method="M",
                         uri="u", cnonce="c")  # fmt: skip
    with pytest.raises(DigestError, match="qop"):
        answer_challenge(DigestChallenge("r", "n", "MD5", ("auth-int",)), username="u", password="p", method="M",
                         uri="u", cnonce="c")  # fmt: skip


def _server() -> DigestServer:
    return DigestServer("lfm", {"alice": "wonderland"}, b"k" * 32, nonce_lifetime_s=60.0)


def _answer(header: str, password: str = "wonderland", nc: int = 1) -> str:
    challenge = DigestChallenge.parse(header)
    return answer_challenge(
        challenge, username="alice", password=password, method="INVITE", uri="sip:agent@h", cnonce="cn",
        nonce_count=nc,
    ).to_header()  # fmt: skip


def test_server_challenge_and_verify_both_algorithms() -> None:
    server = _server()
    headers = server.challenges(now=100.0)
    assert [DigestChallenge.parse(h).algorithm for h in headers] == ["SHA-256", "MD5"]  # RFC 8760 order
    assert server.verify(_answer(headers[0]), method="INVITE", now=110.0) == (Verdict.VALID, "alice")
    # The MD5 challenge shares the nonce: its count must move on (RFC 7616 §3.4 nc).
    assert server.verify(_answer(headers[1], nc=2), method="INVITE", now=110.0) == (Verdict.VALID, "alice")


def test_server_rejects_wrong_password_method_forged_nonce_and_replay() -> None:
    server = _server()
    header = server.challenges(now=0.0)[0]
    assert server.verify(_answer(header, password="nope"), method="INVITE", now=1.0)[0] is Verdict.INVALID
    assert server.verify(_answer(header), method="BYE", now=1.0)[0] is Verdict.INVALID
    forged = header.replace(DigestChallenge.parse(header).nonce, "1234.00000000000000000000000000000000")
    assert server.verify(_answer(forged), method="INVITE", now=1.0)[0] is Verdict.INVALID
    assert server.verify(_answer(header), method="INVITE", now=1.0)[0] is Verdict.VALID
    assert server.verify(_answer(header), method="INVITE", now=1.0)[0] is Verdict.INVALID  # same nc again
    assert server.verify(_answer(header, nc=2), method="INVITE", now=1.0)[0] is Verdict.VALID
    assert server.verify('Digest username="alice"', method="INVITE", now=1.0)[0] is Verdict.INVALID
    assert server.verify("NoOneKnowsThisScheme x=y", method="INVITE", now=1.0)[0] is Verdict.INVALID


def test_server_reports_stale_nonce_after_lifetime() -> None:
    server = _server()
    header = server.challenges(now=0.0)[1]
    assert server.verify(_answer(header), method="INVITE", now=61.0) == (Verdict.STALE, "alice")
    assert "stale=true" in server.challenges(now=61.0, stale=True)[0]
