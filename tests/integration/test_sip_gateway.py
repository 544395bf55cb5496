"""The gateway in-process over real UDP: a SipCallerLeg call with reply and DTMF, security, draining."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from agent.metrics import Metrics
from agent.resample import resample_offline
from agent.runtime import Runtime
from sip_bridge.digest import DigestChallenge, answer_challenge
from sip_bridge.gateway import SipGateway
from sip_bridge.send_thread import SEND_THREAD
from sip_bridge.sim_leg import SipCallerLeg, SipCallFailed
from tests.integration.sip.helpers import RawSipClient, frame_rms, invite_text, running_gateway, speech_8k

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(tiny_checkpoint_dir: Path) -> AsyncIterator[tuple[SipGateway, Runtime, Metrics]]:
    async with running_gateway(tiny_checkpoint_dir, auth_username="alice", auth_password="s3cret",
                               rtp_timeout_s=2.0) as running:
        yield running


@pytest.mark.parametrize("codec", ["PCMU", "G722"])
async def test_caller_leg_call_gets_reply_and_dtmf(gateway: tuple[SipGateway, Runtime, Metrics], codec: str) -> None:
    gw, runtime, _ = gateway
    before = len(runtime.calls.summaries)
    host, port = gw.local_address
    leg = SipCallerLeg(f"sip:agent@{host}:{port}", codec=codec)
    await leg.connect()
    assert leg.media is not None and leg.media.negotiated.codec.name == codec
    speech = resample_offline(speech_8k("Hello, could you help me with my account?"), 8000, 16000)
    audio = np.concatenate([np.zeros(4800, np.int16), speech, np.zeros(16000 * 4, np.int16)])
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    heard: list[np.ndarray] = []
    for k in range(audio.size // 320):
        leg.send_audio(audio[k * 320:(k + 1) * 320])
        if k == 5:
            leg.send_dtmf("7", 120)
        await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - loop.time()))
        heard += leg.receive_audio()
    await leg.hang_up()
    async with asyncio.timeout(10):
        while len(runtime.calls.summaries) <= before:
            await asyncio.sleep(0.05)
    summary = runtime.calls.summaries[-1]
    assert summary.dtmf == "7"
    assert summary.ended_by == "caller: bye"
    rms = frame_rms(np.concatenate(heard), 320)
    speech_end_packets = (4800 + speech.size) // 320
    assert (rms[speech_end_packets:] > 300).sum() >= 10, "no agent speech heard after the caller's turn"


async def test_invite_from_untrusted_source_without_credentials_is_challenged(
        gateway: tuple[SipGateway, Runtime, Metrics]) -> None:
    gw, _, _ = gateway
    client = RawSipClient("127.0.0.2")  # trusted_sources is 127.0.0.1/32
    try:
        call_id = secrets.token_hex(6)
        client.send(invite_text(gw.local_address, client.address, call_id=call_id, branch="a1"), gw.local_address)
        codes = [c for c, _ in await client.responses(call_id, until=300)]
        assert codes[-1] == 401
        # wrong password → challenged again, never answered 200
        _, text = (await _challenge(client, gw, call_id="b" + call_id))
        challenge = DigestChallenge.parse(_header(text, "WWW-Authenticate"))
        uri = f"sip:agent@{gw.local_address[0]}:{gw.local_address[1]}"
        bad = answer_challenge(challenge, username="alice", password="wrong", method="INVITE", uri=uri, cnonce="c1")
        client.send(invite_text(gw.local_address, client.address, call_id="b" + call_id, branch="b2", cseq=2,
                                extra=f"Authorization: {bad.to_header()}\r\n"), gw.local_address)
        codes = [c for c, _ in await client.responses("b" + call_id, until=300)]
        assert codes[-1] in (401, 403)
        assert 200 not in codes
    finally:
        client.close()


async def test_untrusted_source_with_valid_digest_is_answered(gateway: tuple[SipGateway, Runtime, Metrics]) -> None:
    gw, _, _ = gateway
    client = RawSipClient("127.0.0.2")
    call_id = "c" + secrets.token_hex(6)
    try:
        _, text = await _challenge(client, gw, call_id=call_id)
        challenge = DigestChallenge.parse(_header(text, "WWW-Authenticate"))
        uri = f"sip:agent@{gw.local_address[0]}:{gw.local_address[1]}"
        good = answer_challenge(challenge, username="alice", password="s3cret", method="INVITE", uri=uri, cnonce="c2")
        client.send(invite_text(gw.local_address, client.address, call_id=call_id, branch="c2", cseq=2,
                                extra=f"Authorization: {good.to_header()}\r\n"), gw.local_address)
        codes = [c for c, _ in await client.responses(call_id, until=200)]
        assert codes[-1] == 200
    finally:
        client.close()
        await _wait_no_calls(gw)  # no ACK: the gateway gives up with BYE after 64*T1... or we clean up


async def test_no_shared_codec_is_488_and_draining_is_503(gateway: tuple[SipGateway, Runtime, Metrics]) -> None:
    gw, _, metrics = gateway
    client = RawSipClient()
    try:
        sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 18\r\n"
        client.send(invite_text(gw.local_address, client.address, call_id="g729", branch="d1", sdp=sdp),
                    gw.local_address)
        assert [c for c, _ in await client.responses("g729", until=300)][-1] == 488
        gw.set_draining(True)
        client.send(invite_text(gw.local_address, client.address, call_id="drain", branch="d2"), gw.local_address)
        assert [c for c, _ in await client.responses("drain", until=300)][-1] == 503
        client.send(invite_text(gw.local_address, client.address, call_id="opt", branch="d3", method="OPTIONS"),
                    gw.local_address)
        assert [c for c, _ in await client.responses("opt", until=200)][-1] == 503
        assert metrics.calls_refused.labels("sip", "draining")._value.get() >= 1
        with pytest.raises(SipCallFailed):
            await SipCallerLeg(f"sip:agent@{gw.local_address[0]}:{gw.local_address[1]}").connect()
    finally:
        gw.set_draining(False)
        client.close()
    client = RawSipClient()
    try:
        client.send(invite_text(gw.local_address, client.address, call_id="opt2", branch="d4", method="OPTIONS"),
                    gw.local_address)
        assert [c for c, _ in await client.responses("opt2", until=200)][-1] == 200
    finally:
        client.close()


async def test_rtp_timeout_ends_call_with_bye(gateway: tuple[SipGateway, Runtime, Metrics]) -> None:
    gw, runtime, _ = gateway
    before = len(runtime.calls.summaries)
    leg = SipCallerLeg(f"sip:agent@{gw.local_address[0]}:{gw.local_address[1]}")
    await leg.connect()
    assert leg.media is not None
    leg.media.sock.protocol.media = None  # keep receiving nothing...
    SEND_THREAD.remove(leg.media)  # ...and stop sending: the agent hears no RTP for rtp_timeout_s (2 s here)
    assert await leg.wait_ended(8.0)
    assert leg.remote_hung_up
    async with asyncio.timeout(5):
        while len(runtime.calls.summaries) <= before:
            await asyncio.sleep(0.05)
    assert runtime.calls.summaries[-1].ended_by == "caller: rtp timeout"
    await leg.hang_up()


async def _challenge(client: RawSipClient, gw: SipGateway, *, call_id: str) -> tuple[int, str]:
    client.send(invite_text(gw.local_address, client.address, call_id=call_id, branch=call_id[:6] + "x"),
                gw.local_address)
    responses = await client.responses(call_id, until=300)
    assert responses and responses[-1][0] == 401, responses
    return responses[-1]


def _header(text: str, name: str) -> str:
    for line in text.split("\r\n"):
        if line.lower().startswith(name.lower() + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in {text!r}")


async def _wait_no_calls(gw: SipGateway) -> None:
    for call_id in list(gw.ua.calls if gw.ua else []):
        gw._hangup_ua(call_id)


async def test_dial_places_outbound_call_and_agent_hang_up_sends_bye(
        gateway: tuple[SipGateway, Runtime, Metrics]) -> None:
    """Gateway B (same runtime, second socket) dials gateway A: both ends run a CallSession."""
    gw, runtime, metrics = gateway
    before = len(runtime.calls.summaries)
    dialer = SipGateway(runtime.calls, gw.settings, metrics)
    await dialer.start()
    try:
        call_id = await dialer.dial(f"sip:agent@{gw.local_address[0]}:{gw.local_address[1]}")
        async with asyncio.timeout(5):
            while not any(c.task is not None for c in dialer._calls.values()):
                await asyncio.sleep(0.02)
        call = dialer._calls[call_id]
        assert call.transport is not None and call.media is not None
        assert call.media.negotiated.codec.name == "G722"  # our first preference on both sides
        await asyncio.sleep(0.5)
        call.transport.hang_up("test done")  # the agent side hangs up: BYE to A
        summary = await asyncio.wait_for(dialer.wait_ended(call_id), 5)
        assert summary is not None and summary.ended_by == "caller: agent: test done"
        async with asyncio.timeout(5):
            while len(runtime.calls.summaries) < before + 2:
                await asyncio.sleep(0.02)
        assert any(s.ended_by == "caller: bye" for s in runtime.calls.summaries[before:])
    finally:
        await dialer.stop()
