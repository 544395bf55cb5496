"""Fuzz over real UDP: >= 10,000 mutated SIP messages and RTP packets at a running gateway.

Fixed seed. Afterwards: no internal error in the UA or the media, the bad input is counted in the
metrics, and the gateway still answers a valid call and carries its audio.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from agent.metrics import Metrics
from agent.runtime import Runtime
from sip_bridge.gateway import SipGateway
from sip_bridge.rtp import RtpPacket, TelephoneEvent
from sip_bridge.sim_leg import SipCallerLeg
from tests.integration.sip.helpers import invite_text, running_gateway

pytestmark = pytest.mark.asyncio(loop_scope="module")

SEED = 20240611
SIP_CASES = 10000
RTP_CASES = 10000


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(tiny_checkpoint_dir: Path) -> AsyncIterator[tuple[SipGateway, Runtime, Metrics]]:
    async with running_gateway(tiny_checkpoint_dir, trusted_sources=("127.0.0.1/32",)) as running:
        running[1].calls.capacity.max_calls = 1000  # fuzzed INVITEs that happen to be valid may each hold a slot
        yield running


def seeds(target: tuple[str, int], source: tuple[str, int]) -> list[bytes]:
    host, port = source
    base = invite_text(target, source, call_id="fz-seed", branch="seed")
    bye = (f"BYE sip:agent@{target[0]}:{target[1]} SIP/2.0\r\nVia: SIP/2.0/UDP {host}:{port};branch=z9hG4bKb1\r\n"
           f"From: <sip:x@{host}>;tag=1\r\nTo: <sip:agent@{target[0]}>;tag=2\r\nCall-ID: fz-bye\r\nCSeq: 2 BYE\r\n"
           "Content-Length: 0\r\n\r\n").encode()
    response = (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {target[0]}:{target[1]};branch=z9hG4bKnope\r\n"
                f"From: <sip:agent@{target[0]}>;tag=1\r\nTo: <sip:x@{host}>;tag=2\r\nCall-ID: fz-resp\r\n"
                "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode()
    options = invite_text(target, source, call_id="fz-opt", branch="opt", method="OPTIONS")
    info = base.replace(b"INVITE sip", b"INFO sip").replace(b"1 INVITE", b"1 INFO")
    return [base, bye, response, options, info, b"\r\n\r\n"]


TOKENS = [b"\r\n", b":", b";", b",", b"<", b">", b"\"", b"\x00", b"\xff", b" ", b"=", b"%", b"@", b"SIP/2.0",
          b"Content-Length: 99999\r\n", b"Via: SIP/2.0/UDP [::1\r\n", b"CSeq: -1 INVITE\r\n", b"m=audio 0 RTP/AVP\r\n",
          b"a=rtpmap:101 x/y\r\n", b"Call-ID: \r\n", b"To: <sip:>\r\n", b"\r\n\r\n", b"9" * 30]


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        if not buf:
            buf += rng.choice(TOKENS)
            continue
        op = rng.randrange(7)
        pos = rng.randrange(len(buf))
        if op == 0:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            del buf[pos:pos + rng.randint(1, 40)]
        elif op == 2:
            buf[pos:pos] = rng.choice(TOKENS)
        elif op == 3:
            buf[pos] = rng.randrange(256)
        elif op == 4:
            del buf[pos:]  # truncation
        elif op == 5:  # duplicate a line
            lines = bytes(buf).split(b"\r\n")
            k = rng.randrange(len(lines))
            lines.insert(k, lines[k])
            buf = bytearray(b"\r\n".join(lines))
        else:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
    return bytes(buf)


def rtp_case(rng: random.Random, seq: int) -> bytes:
    choice = rng.randrange(5)
    if choice == 0:
        payload = TelephoneEvent(rng.randrange(256), rng.random() < 0.5, 10, rng.randrange(65536)).serialize()
        good = RtpPacket(101, seq, rng.randrange(2**32), 99, payload, rng.random() < 0.5).serialize()
    else:
        good = RtpPacket(rng.choice([0, 8, 9, 13, 101, 96, 127]), seq, seq * 160, 99,
                         bytes(rng.randrange(256) for _ in range(rng.randrange(200)))).serialize()
    if choice == 1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
    if choice == 2:
        return bytes([0x80 | rng.randrange(32)]) + struct.pack("!B", rng.randrange(256)) + good[2:]
    if choice == 3:
        return mutate(good, rng)
    return good


async def test_fuzz_sip_and_rtp_then_valid_call(gateway: tuple[SipGateway, Runtime, Metrics]) -> None:
    gw, _runtime, metrics = gateway
    rng = random.Random(SEED)
    target = gw.local_address
    started = time.monotonic()
    # An established call whose RTP port receives the RTP fuzz (from a stranger and from the peer's port).
    leg = SipCallerLeg(f"sip:agent@{target[0]}:{target[1]}")
    await leg.connect()
    gw_call = next(c for c in gw._calls.values() if c.media is not None)
    assert gw_call.media is not None
    rtp_target = ("127.0.0.1", gw_call.media.local_port)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    sent = 0
    try:
        corpus = seeds(target, sender.getsockname())
        for k in range(SIP_CASES):
            data = mutate(rng.choice(corpus), rng)
            sender.sendto(data[:65000], target)
            sent += 1
            if k % 50 == 0:
                await asyncio.sleep(0.002)  # let the gateway read: the socket buffer must not overflow
        for k in range(RTP_CASES):
            sender.sendto(rtp_case(rng, k & 0xFFFF), rtp_target)
            sent += 1
            if k % 50 == 0:
                await asyncio.sleep(0.002)
        await asyncio.sleep(0.5)
    finally:
        sender.close()
    assert sent >= 10_000
    assert gw.ua is not None
    print("\nfuzz stats", dict(gw.ua.stats), "rtp bad", gw.rtp_bad_packets, dict(gw_call.media.stats))
    assert gw.ua.stats["internal_errors"] == 0, gw.ua.stats
    assert gw.ua.stats["parse_errors"] > 500, gw.ua.stats
    assert metrics.bad_input.labels("sip")._value.get() > 500
    assert gw.rtp_bad_packets > 500
    assert gw_call.media.stats["send_errors"] == 0
    # The established call still carries audio after the storm, and a new call is answered.
    assert gw_call.media.stats["packets_received"] > 0
    await leg.hang_up()
    fresh = SipCallerLeg(f"sip:agent@{target[0]}:{target[1]}")
    await fresh.connect()
    assert fresh.media is not None and fresh.media.negotiated.codec.name == "PCMU"
    await fresh.hang_up()
    for call_id in list(gw.ua.calls):
        gw._hangup_ua(call_id)
    assert time.monotonic() - started < 40
