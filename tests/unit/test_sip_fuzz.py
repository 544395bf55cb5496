"""Mutation fuzzing: 10,000 corrupted messages, only SipParseError may come out of the parser.

Seeds are the torture corpus; mutations flip, insert, delete and duplicate bytes and lines,
with a bias towards SIP's structural characters. A fixed seed keeps the run reproducible.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

from sip_bridge.errors import SipParseError
from sip_bridge.message import SipRequest, parse_message
from sip_bridge.ua import UaConfig, UserAgent

DATA = Path(__file__).parent / "data" / "sip"
SEEDS = [p.read_bytes() for p in sorted(DATA.glob("*/*.sip"))]
SPECIAL = [b":", b";", b",", b'"', b"<", b">", b"\r\n", b"\r\n ", b" ", b"\x00", b"%", b"@", b"=", b"\\", b"?",
           b"\xff", b"SIP/2.0", b"z9hG4bK", b"\r\n\r\n", b"9999999999", b"-1", b"[", b"]", b"/"]  # fmt: skip
FUZZ_COUNT = 10_000


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not buf:
            buf.extend(rng.choice(SPECIAL))
            continue
        op = rng.randrange(7)
        pos = rng.randrange(len(buf))
        if op == 0:
            buf[pos] = rng.randrange(256)
        elif op == 1:
            buf[pos:pos] = rng.choice(SPECIAL)
        elif op == 2:
            del buf[pos : pos + rng.randint(1, 20)]
        elif op == 3:
            end = min(len(buf), pos + rng.randint(1, 40))
            buf[pos:pos] = buf[pos:end]
        elif op == 4:
            del buf[pos:]
        elif op == 5:
            lines = bytes(buf).split(b"\r\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            buf = bytearray(b"\r\n".join(lines))
        else:
            lines = bytes(buf).split(b"\r\n")
            i = rng.randrange(len(lines))
            lines.insert(i, lines[i])
            buf = bytearray(b"\r\n".join(lines))
    return bytes(buf)


def _exercise(message: object) -> None:
    """Touch every lazily parsed accessor: each may only raise SipParseError."""
    for accessor in ("cseq", "from_", "to", "vias", "contacts", "record_routes", "call_id", "content_type"):
        with contextlib.suppress(SipParseError):
            getattr(message, accessor)


def test_parser_only_raises_sip_parse_error() -> None:
    rng = random.Random(4475)
    parsed = rejected = 0
    for _ in range(FUZZ_COUNT):
        data = mutate(rng.choice(SEEDS), rng)
        try:
            message = parse_message(data)
        except SipParseError as exc:
            assert str(exc)  # a precise message, never empty
            rejected += 1
            continue
        parsed += 1
        _exercise(message)
        again = parse_message(message.to_bytes())  # what we accept, we can write and read back
        assert again.call_id == message.call_id
        if isinstance(message, SipRequest):
            assert isinstance(again, SipRequest) and again.method == message.method
    # Both outcomes must be well represented, or the mutations are not exercising the parser.
    assert parsed > FUZZ_COUNT // 20 and rejected > FUZZ_COUNT // 20


def test_user_agent_survives_mutated_datagrams() -> None:
    rng = random.Random(3261)
    ua = UserAgent(UaConfig(local_host="192.0.2.1"))
    for index in range(2_000):
        now = index * 0.05
        ua.receive_datagram(mutate(rng.choice(SEEDS), rng), ("192.0.2.50", 5060), now)
        ua.datagrams_to_send()
        while ua.next_event() is not None:
            pass
        ua.handle_timer(now)
    assert ua.stats["parse_errors"] > 100
