"""Chaos over 10 live calls: 4 SIPp callers, 2 of the project's own SIP caller legs and 4 aiortc
WebRTC callers against one in-process agent server (HTTP + SIP, the tiny model in this process).

While every call is up, and one thing at a time:

* the engine fails a step of ONE call (``Engine.fault_hook``): that call counts an engine error and
  goes on, no other call sees one;
* one SIP call's RTP socket raises OSError on send for a second: counted (``send_errors``), its
  stream goes on afterwards;
* another SIP call's RTP port gets a burst of malformed datagrams: each counted as bad input
  (``bad_input{kind="rtp"}``), its media keeps flowing;
* two HTTP clients give up mid-offer (headers promising more body than is sent; a whole offer and
  the connection closed before the answer): the server keeps serving (a fourth WebRTC call is
  answered after them) and every reservation they took is released;
* SIGTERM (the handler ``lfm-call serve`` installs): new offers get 503, the callers that hang up
  in the drain window end as they chose, the rest are ended at the drain timeout with a BYE or an
  "ended" event.

Afterwards: every call has a summary without error and a counted end, every caller heard the
agent, capacity is all free, and no asyncio task and no socket was left behind (counted).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import logging
import os
import re
import signal
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import torch

from agent.caller_voice import render_say
from agent.commands import load_for_settings
from agent.engine_process import InThreadEngine
from agent.metrics import Metrics
from agent.runtime import build_runtime
from agent.server import AgentServer, install_stop_signals
from agent.session import CallSession
from agent.sim_webrtc import WebRtcCallerLeg
from agent.webrtc import peer_connection
from config.loader import load_settings
from config.schema import Settings
from sip_bridge.sim_leg import SipCallerLeg
from tests.integration.sip.helpers import frame_rms, require_binary, run_process, speech_8k, write_ul
from tests.integration.test_sip_sipp import scenario, sipp_argv

SIPP_CALLS, SIP_LEGS, WEBRTC_CALLS = 4, 2, 4
CALLS = SIPP_CALLS + SIP_LEGS + WEBRTC_CALLS
SLOTS = CALLS + 2  # room for the offers that are given up mid-way
DRAIN_S = 3.0
ICE_TIMEOUT_S = 4.0
RTP_MIN, RTP_MAX = 34000, 34999  # the gateway's RTP ports (no other test uses them)
HEARD_RMS = 100.0  # int16 RMS of a 20 ms packet that carries agent audio (the line is silent otherwise)
SILENCE = np.zeros(320, np.int16)


def make_settings(checkpoint: Path) -> Settings:
    settings = load_settings(environ={}, overrides=[{
        "model": {"ref": str(checkpoint), "offline_fallback": "error", "greeting": "Hello."},
        "vad": {"backend": "energy"}, "http": {"host": "127.0.0.1", "auth": "off"},
        "server": {"max_calls": SLOTS, "drain_timeout_s": DRAIN_S, "admission_step_margin": 0.0}}])
    return dataclasses.replace(
        settings, http=dataclasses.replace(settings.http, port=0),
        sip=dataclasses.replace(settings.sip, enabled=True, listen_host="127.0.0.1", listen_port=0,
                                rtp_port_min=RTP_MIN, rtp_port_max=RTP_MAX))


@pytest.fixture(scope="module")
def model(tiny_checkpoint_dir: Path) -> Any:
    torch.set_num_threads(1)
    return load_for_settings(make_settings(tiny_checkpoint_dir).model)


def open_sockets() -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                count += 1
        except OSError:  # the fd listing itself, closed meanwhile
            pass
    return count


async def until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclasses.dataclass
class Caller:
    """One of our caller legs (WebRTC or SIP), speaking what is queued (silence otherwise)."""

    name: str
    leg: WebRtcCallerLeg | SipCallerLeg
    queue: deque[np.ndarray] = dataclasses.field(default_factory=deque)
    heard: list[np.ndarray] = dataclasses.field(default_factory=list)
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def drive(self) -> None:
        t0, k = time.monotonic(), 0
        while not self.stop.is_set() and not self.leg.remote_hung_up:
            self.leg.send_audio(self.queue.popleft() if self.queue else SILENCE)
            self.heard += self.leg.receive_audio()
            k += 1
            delay = t0 + k * 0.02 - time.monotonic()
            if delay < -0.5:  # the loop stalled: keep the grid, do not burst
                t0, k = time.monotonic(), 0
            await asyncio.sleep(max(0.0, delay))
        self.heard += self.leg.receive_audio()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.drive(), name=f"caller {self.name}")

    def say(self, samples_16k: np.ndarray) -> None:
        n = samples_16k.size // 320
        self.queue.extend(samples_16k[k * 320:(k + 1) * 320] for k in range(n))

    @property
    def heard_agent(self) -> bool:
        pcm = np.concatenate(self.heard) if self.heard else np.zeros(0, np.int16)
        return bool((frame_rms(pcm, 320) > HEARD_RMS).sum() >= 5)

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task
        await self.leg.hang_up()


MALFORMED = [  # each fails RtpPacket.parse; none of them is RTCP
    b"", b"\x80", b"\x80" * 11, b"\xff" * 200, b"\x00" * 172,
    struct.pack("!BBHII", 0x8F, 0, 1, 160, 0x1234) + b"\x00" * 8,  # 15 CSRCs announced, 2 present
    struct.pack("!BBHII", 0xA0, 0, 1, 160, 0x1234) + b"\x00" * 10 + b"\xff",  # padding longer than the packet
    struct.pack("!BBHII", 0xA0, 0, 1, 160, 0x1234),  # padding bit, no padding byte
    struct.pack("!BBHII", 0x90, 0, 1, 160, 0x1234) + b"\xbe\xde\x00\x10",  # extension longer than the packet
    struct.pack("!BBHII", 0x90, 0, 1, 160, 0x1234) + b"\xbe",  # truncated extension header
]
FOREIGN = struct.pack("!BBHII", 0x80, 96, 1, 160, 0x99) + b"\x00" * 160  # valid RTP from a stranger


async def offer_sdp() -> str:
    """A real aiortc offer (audio and a data channel) from a peer that is closed at once."""
    pc = peer_connection()
    pc.addTransceiver("audio", direction="sendrecv")
    pc.createDataChannel("events")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = str(pc.localDescription.sdp)
    await pc.close()
    return sdp


async def give_up_mid_offer(url: str, body: bytes, *, send: int, length: int) -> None:
    """POST /offer announcing ``length`` body bytes, send ``send`` of them, close without reading."""
    host, port = re.match(r"http://([\d.]+):(\d+)", url).groups()  # type: ignore[union-attr]
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write((f"POST /offer HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {length}\r\n\r\n").encode() + body[:send])
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    await writer.wait_closed()


async def test_chaos_over_10_live_sip_and_webrtc_calls(model: Any, tiny_checkpoint_dir: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with asyncio.timeout(160):
        send_errors = await chaos(model, tiny_checkpoint_dir, tmp_path)
    logged = [r for r in caplog.records if r.getMessage() == "rtp.send_error"]
    assert 1 <= len(logged) <= 3 + send_errors // 500, f"{len(logged)} log lines for {send_errors} send errors"


async def chaos(model: Any, checkpoint: Path, tmp_path: Path) -> int:
    """The scenario; returns how many RTP send errors were injected."""
    require_binary("sipp")
    hello = write_ul(tmp_path / "hello.ul", speech_8k("Hello."), lead_silence_ms=1500, tail_silence_ms=60000)
    question = render_say("Hello there, can you hear me?", sample_rate=16000)
    sdp = await offer_sdp()
    await asyncio.sleep(0.2)
    tasks_before = len(asyncio.all_tasks())
    sockets_before = open_sockets()
    t_start = time.monotonic()

    settings = make_settings(checkpoint)
    runtime = build_runtime(settings, *model)
    engine = runtime.engine
    assert isinstance(engine, InThreadEngine)
    calls, capacity = runtime.calls, runtime.calls.capacity
    metrics = Metrics()
    server = AgentServer(settings, runtime, metrics, ice_timeout_s=ICE_TIMEOUT_S)
    await server.start()
    gw = server.gateway
    url = server.http_url
    callers: list[Caller] = []
    remove_signals: Callable[[], None] | None = None
    sipp: asyncio.Task[tuple[int, str]] | None = None
    try:
        # -- 10 live calls: SIPp, our SIP leg, aiortc ---------------------------------------------------
        path = scenario(tmp_path, "uac_until_bye.xml", AUDIO=str(hello), WAIT_MS="90000")
        sipp = asyncio.get_running_loop().create_task(run_process(
            sipp_argv(gw.local_address, path, calls=SIPP_CALLS, rate=10, timeout_s=100), timeout_s=110, cwd=tmp_path))
        host, port = gw.local_address
        callers = [Caller(f"sip-{i}", SipCallerLeg(f"sip:agent@{host}:{port}")) for i in range(SIP_LEGS)]
        callers += [Caller(f"web-{i}", WebRtcCallerLeg(url)) for i in range(WEBRTC_CALLS)]
        late = callers[-1]  # placed after the HTTP clients gave up: the server still answers offers
        await asyncio.gather(*(c.leg.connect() for c in callers if c is not late))
        for c in callers[:-1]:
            c.start()

        def live() -> list[CallSession]:
            return list(calls.active.values())

        def greeted(n: int) -> bool:
            sessions = live()
            return len(sessions) == n and all(
                s.summary.turns and s.summary.turns[0].first_audio_sent_ms is not None for s in sessions)

        await until(lambda: greeted(CALLS - 1) or sipp.done(), 45, f"{CALLS - 1} calls up and greeted")
        assert not sipp.done(), f"sipp ended early: {sipp.result()[1][-2000:]}"
        print(f"\n{CALLS - 1} calls up and greeted after {time.monotonic() - t_start:.1f} s")

        # -- HTTP clients that give up mid-offer --------------------------------------------------------
        body = json.dumps({"type": "offer", "sdp": sdp}).encode()
        reserved_before = capacity.counters["reserved"]
        await give_up_mid_offer(url, body, send=100, length=len(body))  # headers, then a tenth of the body
        await give_up_mid_offer(url, body, send=len(body), length=len(body))  # all of it; the answer unread
        await until(lambda: capacity.counters["reserved"] > reserved_before, 10, "the whole offer's reservation")
        await until(lambda: capacity.held == CALLS - 1, ICE_TIMEOUT_S + 10,
                    "the given-up offers' slots to be released")
        assert capacity.counters["reserved"] == reserved_before + 1  # the half-sent body was never admitted
        assert metrics.bad_input.labels("http_aborted")._value.get() == 1  # counted, not a stack trace
        async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as resp:
            assert resp.status == 200, await resp.text()
        assert server.http is not None
        server.http.ice_timeout_s = 15.0  # short only for the given-up offer: a loaded VM may need longer
        connect_at = time.monotonic()
        await late.leg.connect()
        print(f"late WebRTC call connected in {time.monotonic() - connect_at:.2f} s")
        late.start()
        await until(lambda: greeted(CALLS), 30, "the late WebRTC call up and greeted")

        sessions = {s.call_id: s for s in live()}
        web = [s for s in sessions.values() if s.call_id.startswith("web")]
        sip = [s for s in sessions.values() if s.call_id.startswith("sip")]
        assert len(web) == WEBRTC_CALLS and len(sip) == SIPP_CALLS + SIP_LEGS
        leg_sip_ids = {c.leg.call_id for c in callers if isinstance(c.leg, SipCallerLeg)}
        sipp_sessions = [s for s in sip if s.summary.external_id not in leg_sip_ids]
        assert len(sipp_sessions) == SIPP_CALLS

        # -- an engine error in ONE call ------------------------------------------------------------------
        target_caller = callers[SIP_LEGS]  # web-0
        target = sessions[str(target_caller.leg.call_id)]
        target_conv = engine._links[target.engine_call].handle.id  # type: ignore[union-attr]
        injected: list[list[int]] = []

        def fault(conv_ids: list[int]) -> None:  # on the engine's worker thread
            if conv_ids == [target_conv] and not injected:
                injected.append(conv_ids)
                raise RuntimeError("chaos: injected engine fault")

        engine.engine.fault_hook = fault
        target_caller.say(question)
        await until(lambda: target.summary.engine_errors >= 1, 20, "the injected engine error")
        engine.engine.fault_hook = None

        # -- RTP socket errors on one SIPp call -----------------------------------------------------------
        broken = gw._calls[sipp_sessions[0].summary.external_id].media
        sent_before = broken.writer.packets_sent
        working = broken.send_datagram

        def unreachable(data: bytes, addr: Any = None) -> None:
            raise OSError(errno.ENETUNREACH, "chaos: network is unreachable")

        broken.send_datagram = unreachable  # what the RTP send thread calls
        await asyncio.sleep(1.0)
        broken.send_datagram = working  # the socket works again
        send_errors = broken.stats["send_errors"]
        assert send_errors >= 10, broken.stats
        resumed_at = broken.writer.packets_sent
        await until(lambda: broken.writer.packets_sent >= resumed_at + 25, 5, "the broken call's stream to resume")
        assert broken.writer.packets_sent > sent_before

        # -- malformed RTP bursts on another ------------------------------------------------------------
        flooded = gw._calls[sipp_sessions[1].summary.external_id].media
        bad_before = metrics.bad_input.labels("rtp")._value.get()
        received_before = flooded.stats["packets_received"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(4):
                for datagram in [*MALFORMED, FOREIGN]:
                    sock.sendto(datagram, ("127.0.0.1", flooded.local_port))
        bursts = 4 * len(MALFORMED)
        await until(lambda: metrics.bad_input.labels("rtp")._value.get() - bad_before >= bursts
                    and flooded.stats["foreign_source"] >= 4, 5, "the malformed datagrams to be counted")
        await until(lambda: flooded.stats["packets_received"] >= received_before + 25, 5,
                    "the flooded call's media to go on")
        assert metrics.bad_input.labels("rtp")._value.get() - bad_before == bursts
        assert flooded.stats["bad_packets"] == bursts and flooded.stats["foreign_source"] == 4, flooded.stats
        assert len(live()) == CALLS, "a call ended during the chaos"

        # -- SIGTERM --------------------------------------------------------------------------------------
        stop = asyncio.Event()
        remove_signals = install_stop_signals(server, stop)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 5)
        async with aiohttp.ClientSession() as http, http.post(f"{url}/offer",
                                                              json={"type": "offer", "sdp": sdp}) as resp:
            assert resp.status == 503, await resp.text()
        quitting = [callers[0], callers[SIP_LEGS], callers[SIP_LEGS + 1]]  # sip-0, web-0, web-1 hang up
        stopping = asyncio.get_running_loop().create_task(server.stop())
        await asyncio.sleep(0.5)
        await asyncio.gather(*(c.close() for c in quitting))
        assert await stopping is False  # the others were still up at the drain timeout: ended
        waiting = [c for c in callers if c not in quitting]
        await until(lambda: all(c.leg.remote_hung_up for c in waiting), 10, "every waiting caller told the call ended")
        await asyncio.gather(*(c.close() for c in waiting))
        rc, out = await sipp
        assert rc == 0, f"a SIPp caller did not get its BYE ({rc}):\n{out[-3000:]}"
    finally:
        if remove_signals is not None:
            remove_signals()
        engine.engine.fault_hook = None
        for c in callers:
            c.stop.set()
        await asyncio.gather(*(c.close() for c in callers), return_exceptions=True)
        await server.stop(0.0)
        if sipp is not None and not sipp.done():
            sipp.cancel()
            await asyncio.gather(sipp, return_exceptions=True)
        runtime.close()
    elapsed = time.monotonic() - t_start

    # -- every call has a recorded clean outcome ------------------------------------------------------------
    summaries = {s.call_id: s for s in calls.summaries}
    assert len(summaries) == CALLS, sorted(summaries)
    assert all(s.error is None for s in summaries.values()), {k: s.error for k, s in summaries.items()}
    assert calls.counters.started == calls.counters.completed == CALLS and calls.counters.failed == 0, calls.counters
    quit_ids = {str(callers[0].leg.call_id), str(callers[SIP_LEGS].leg.call_id),
                str(callers[SIP_LEGS + 1].leg.call_id)}
    ended = {k: s.ended_by for k, s in summaries.items()}
    for call_id, summary in summaries.items():
        quit_by_caller = call_id in quit_ids or summary.external_id in quit_ids
        assert summary.ended_by.startswith("caller: ") if quit_by_caller else summary.ended_by == "drain timeout", ended
    assert sum(s.ended_by == "drain timeout" for s in summaries.values()) == CALLS - 3, ended
    # every call got agent audio; the engine error stayed in its call
    assert all(s.turns and s.turns[0].first_audio_sent_ms is not None for s in summaries.values())
    assert all(c.heard_agent for c in callers), [c.name for c in callers if not c.heard_agent]
    assert injected == [[target_conv]]
    errors = {k: s.engine_errors for k, s in summaries.items()}
    assert errors.pop(target.call_id) == 1 and not any(errors.values()), errors
    assert all(s.engine_rejections == 0 for s in summaries.values())
    # capacity all free, every reservation released
    assert capacity.held == 0 and capacity.free_slots == SLOTS
    assert capacity.counters["reserved"] == capacity.counters["released"] == CALLS + 1, capacity.counters
    assert capacity.counters["committed"] == CALLS, capacity.counters

    # -- nothing left behind -------------------------------------------------------------------------------
    leftover: list[asyncio.Task[Any]] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        leftover = [t for t in asyncio.all_tasks() if not t.done()]
        if len(leftover) <= tasks_before and open_sockets() <= sockets_before:
            break
        await asyncio.sleep(0.1)
    assert len(leftover) == tasks_before, [t.get_name() + " " + repr(t.get_coro()) for t in leftover]
    assert open_sockets() == sockets_before, (sockets_before, open_sockets())
    print(f"chaos over {CALLS} calls: {elapsed:.1f} s; send errors {send_errors}, bad RTP {bursts}, "
          f"ended {sorted(ended.values())}; tasks {tasks_before} -> {len(leftover)}, sockets {sockets_before} -> "
          f"{open_sockets()}")
    return int(send_errors)
