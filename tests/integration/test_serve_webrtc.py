"""The agent server with a real (tiny) model and real aiortc peers on 127.0.0.1.

A call from the simulator's WebRTC leg end to end, DTMF, page events, capacity, drain, and the bad
inputs that get past HTTP: SDP aiortc refuses, an offer without audio, a peer whose ICE never
completes, a client process that vanishes mid-call. Each must end in a clear HTTP error or a clean
teardown (counted in metrics), with no call left active and no task left behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import torch

from agent.commands import load_for_settings
from agent.metrics import Metrics
from agent.runtime import Runtime, build_runtime
from agent.server import AgentServer
from agent.sim_webrtc import WebRtcCallerLeg, WebRtcCallError
from agent.webrtc import peer_connection
from config.loader import load_settings
from config.schema import Settings

REPO = Path(__file__).resolve().parents[2]


def make_settings(checkpoint: Path, **server: Any) -> Settings:
    settings = load_settings(environ={}, overrides=[
        {"model": {"ref": str(checkpoint), "offline_fallback": "error", "greeting": ""},
         "vad": {"backend": "energy"}, "http": {"host": "127.0.0.1", "auth": "off"},
         "server": {"max_calls": server.get("max_calls", 4)}}])
    return dataclasses.replace(settings, http=dataclasses.replace(settings.http, port=0))  # a free port


@pytest.fixture(scope="module")
def model(tiny_checkpoint_dir: Path) -> Any:
    torch.set_num_threads(1)
    return load_for_settings(make_settings(tiny_checkpoint_dir).model)


@dataclasses.dataclass
class Served:
    server: AgentServer
    runtime: Runtime
    metrics: Metrics

    @property
    def url(self) -> str:
        return self.server.http_url

    def bad(self, kind: str) -> float:
        return self.metrics.bad_input.labels(kind)._value.get()  # type: ignore[no-any-return]


@pytest.fixture
async def serve(model: Any, tiny_checkpoint_dir: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[Served] = []

    async def start(max_calls: int = 4, ice_timeout_s: float = 15.0, media_timeout_s: float = 10.0) -> Served:
        settings = make_settings(tiny_checkpoint_dir, max_calls=max_calls)
        runtime = build_runtime(settings, *model)
        metrics = Metrics()
        server = AgentServer(settings, runtime, metrics, ice_timeout_s=ice_timeout_s, media_timeout_s=media_timeout_s)
        await server.start()
        served = Served(server, runtime, metrics)
        started.append(served)
        return served

    yield start
    for s in started:
        await s.server.stop(drain_timeout_s=2.0)
        s.runtime.close()
        assert not s.runtime.calls.active
    await no_tasks_left()


async def no_tasks_left(timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"tasks left behind: {left}")
        await asyncio.sleep(0.05)


async def until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


def tone(k: int) -> np.ndarray:
    t = (np.arange(320) + k * 320) / 16000
    return (np.sin(2 * np.pi * 220 * t) * 9000).astype(np.int16)


async def talk(leg: WebRtcCallerLeg, packets: list[np.ndarray]) -> list[np.ndarray]:
    """Send packets on a 20 ms grid; return what the caller heard meanwhile."""
    heard: list[np.ndarray] = []
    t0 = time.monotonic()
    for k, p in enumerate(packets):
        leg.send_audio(p)
        heard += leg.receive_audio()
        await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - time.monotonic()))
    return heard


def post_offer(url: str, body: Any) -> Any:
    async def go() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, http.post(f"{url}/offer", json=body) as resp:
            return resp.status, await resp.json()
    return go()


async def test_call_end_to_end_with_dtmf_and_events(serve: Any) -> None:
    served = await serve()
    leg = WebRtcCallerLeg(served.url)
    await leg.connect()
    assert leg.call_id is not None and leg.call_id in served.runtime.calls.active
    silence = np.zeros(320, np.int16)
    heard_before = await talk(leg, [silence] * 50 + [tone(k) for k in range(75)])
    heard_after = await talk(leg, [silence] * 150)
    leg.send_dtmf("5", 100)
    session = served.runtime.calls.active[leg.call_id]
    await until(lambda: session.summary.dtmf == "5", 3.0, "the DTMF digit")
    summary = session.summary
    assert summary.end_of_turns, "the server did not detect the caller's end of turn"
    assert summary.turns[0].first_audio_sent_ms is not None, "the agent did not answer"
    loud = sum(1 for p in heard_after if np.sqrt(np.mean(p.astype(np.float64) ** 2)) > 100)
    assert loud >= 5, f"the caller heard no agent audio after the end of turn ({loud} loud packets)"
    assert len(heard_before) + len(heard_after) > 200  # ~5 s of 20 ms packets came back
    await until(lambda: any(e["type"] == "dtmf" for e in leg.events), 2.0, "the page events")
    kinds = [e["type"] for e in leg.events]
    for kind in ("call", "caller_speech", "end_of_turn", "agent_turn", "latency", "dtmf"):
        assert kind in kinds
    await leg.hang_up()
    await until(lambda: not served.runtime.calls.active, 3.0, "the call to end")
    final = served.runtime.calls.summaries[-1]
    assert final.ended_by == "caller: caller hung up" and final.error is None
    await until(lambda: not served.server.http.transports, 2.0, "the transport teardown")  # type: ignore[union-attr]
    text = served.metrics.render().decode()
    assert 'lfmcall_calls_total{result="completed",transport="webrtc"} 1.0' in text
    assert 'lfmcall_calls_active{transport="webrtc"} 0.0' in text


async def test_sdp_that_aiortc_refuses_is_a_400(serve: Any) -> None:
    served = await serve()
    sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    status, body = await post_offer(served.url, {"sdp": sdp, "type": "offer"})
    assert status == 400 and "offer" in body["error"]
    assert served.bad("webrtc_sdp") == 1
    assert not served.runtime.calls.active and not served.server.http.transports  # type: ignore[union-attr]


async def test_offer_without_audio_is_a_400(serve: Any) -> None:
    served = await serve()
    pc = peer_connection()
    pc.createDataChannel("events")
    await pc.setLocalDescription(await pc.createOffer())
    status, body = await post_offer(served.url, {"sdp": pc.localDescription.sdp, "type": "offer"})
    await pc.close()
    assert status == 400 and "no audio" in body["error"]
    assert served.bad("webrtc_sdp") == 1


async def test_recvonly_offer_is_a_400(serve: Any) -> None:
    served = await serve()
    pc = peer_connection()
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    status, body = await post_offer(served.url, {"sdp": pc.localDescription.sdp, "type": "offer"})
    await pc.close()
    assert status == 400 and "recvonly" in body["error"]


async def test_peer_that_never_completes_ice_is_torn_down(serve: Any) -> None:
    served = await serve(ice_timeout_s=1.5)
    pc = peer_connection()
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    # every candidate points at a port nobody answers on, and no end-of-candidates: ICE waits forever
    sdp = re.sub(r"a=candidate:.*\r\n", "", sdp).replace("a=end-of-candidates\r\n", "")
    sdp = sdp.replace("a=mid:0\r\n", "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n")
    status, body = await post_offer(served.url, {"sdp": sdp, "type": "offer"})
    assert status == 200 and body["call_id"] in served.server.http.transports  # type: ignore[union-attr]
    t0 = time.monotonic()
    await until(lambda: not served.server.http.transports, 6.0, "the ICE timeout to end the call")  # type: ignore[union-attr]
    assert time.monotonic() - t0 < 4.0
    assert served.bad("webrtc_ice_timeout") == 1
    assert served.runtime.calls.counters.started == 0  # no session ever ran for it
    health = await health_of(served.url)
    assert health["free_slots"] == 4  # the slot it held while connecting is free again


async def health_of(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as resp:
        return await resp.json()


VANISHING_CLIENT = """
import asyncio, sys
from agent.sim_webrtc import WebRtcCallerLeg
async def main():
    leg = WebRtcCallerLeg(sys.argv[1])
    await leg.connect()
    print("connected", flush=True)
    await asyncio.sleep(30)
asyncio.run(main())
"""


async def test_client_that_vanishes_mid_call_is_torn_down(serve: Any) -> None:
    served = await serve(media_timeout_s=2.0)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", VANISHING_CLIENT, served.url], stdout=subprocess.PIPE,
                            env=env, cwd=REPO)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        assert line.strip() == b"connected"
        await until(lambda: bool(served.runtime.calls.active), 3.0, "the call to be active")
        os.kill(proc.pid, signal.SIGKILL)  # no BYE, no DTLS close: the peer is simply gone
        t0 = time.monotonic()
        await until(lambda: not served.runtime.calls.active, 8.0, "the media timeout to end the call")
        assert time.monotonic() - t0 < 5.0
    finally:
        proc.kill()
        proc.wait(5)
    assert served.runtime.calls.summaries[-1].ended_by == "caller: media timeout"
    await until(lambda: not served.server.http.transports, 2.0, "the transport teardown")  # type: ignore[union-attr]


async def test_capacity_then_drain(serve: Any) -> None:
    served = await serve(max_calls=1)
    first = WebRtcCallerLeg(served.url)
    await first.connect()
    second = WebRtcCallerLeg(served.url)
    with pytest.raises(WebRtcCallError, match=r"503.*full"):
        await second.connect()
    stopping = asyncio.get_running_loop().create_task(served.server.stop(drain_timeout_s=10.0))
    async with aiohttp.ClientSession() as http:
        await until(lambda: served.runtime.calls.draining, 1.0, "draining")
        async with http.get(f"{served.url}/healthz") as resp:
            assert resp.status == 503 and (await resp.json())["draining"] is True
        async with http.post(f"{served.url}/offer", json={"sdp": "v=0", "type": "offer"}) as resp:
            assert resp.status == 503 and (await resp.json())["reason"] == "draining"
    assert not stopping.done()  # the active call may finish
    assert served.runtime.calls.active
    await first.hang_up()
    assert await asyncio.wait_for(stopping, 5.0) is True
    assert served.runtime.calls.summaries[-1].ended_by == "caller: caller hung up"


async def test_drain_timeout_ends_calls_and_tells_the_caller(serve: Any) -> None:
    served = await serve()
    leg = WebRtcCallerLeg(served.url)
    await leg.connect()
    assert await served.server.stop(drain_timeout_s=0.5) is False
    await until(lambda: leg.remote_hung_up, 3.0, "the caller to learn the call ended")
    assert served.runtime.calls.summaries[-1].ended_by == "drain timeout"
    await leg.hang_up()
