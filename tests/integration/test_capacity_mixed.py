"""One capacity authority under mixed load: SIPp callers and aiortc WebRTC callers at once against a
3-slot agent. Every call is either refused at its offer (503 to the INVITE or to POST /offer) or
runs to its end: a 200 OK is never followed by a refusal, no slot is over-committed, every path
releases its slot."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path

import numpy as np

from agent.capacity import Capacity, Reservation
from agent.metrics import Metrics
from agent.runtime import build_runtime
from agent.sim_webrtc import WebRtcCallerLeg, WebRtcCallError, start_test_server
from config.loader import load_settings
from sip_bridge.gateway import SipGateway
from tests.integration.sip.helpers import require_binary, run_process, speech_8k, write_ul
from tests.integration.test_sip_sipp import scenario, sipp_argv

SLOTS = 3
SIP_CALLS = 5
WEBRTC_CALLS = 3


async def webrtc_call(base_url: str, delay_s: float) -> str:
    await asyncio.sleep(delay_s)
    leg = WebRtcCallerLeg(base_url)
    try:
        await leg.connect()
    except WebRtcCallError as exc:
        await leg.hang_up()
        return "refused" if "503" in str(exc) else f"error: {exc}"
    for _ in range(100):  # 2 s of quiet caller audio, then hang up
        leg.send_audio(np.zeros(320, np.int16))
        await asyncio.sleep(0.02)
    await leg.hang_up()
    return "completed"


async def test_mixed_sip_and_webrtc_load_never_refuses_an_answered_call(tiny_checkpoint_dir: Path,
                                                                       tmp_path: Path) -> None:
    require_binary("sipp")
    settings = load_settings(environ={}, overrides=[{
        "model": {"ref": str(tiny_checkpoint_dir), "offline_fallback": "error", "greeting": ""},
        "vad": {"backend": "energy"}, "server": {"max_calls": SLOTS}}])
    settings = dataclasses.replace(settings, sip=dataclasses.replace(
        settings.sip, enabled=True, listen_host="127.0.0.1", listen_port=0, rtp_port_min=32000, rtp_port_max=32999))
    runtime = build_runtime(settings)
    capacity = runtime.calls.capacity
    peak = [0]
    original = Capacity.reserve

    def reserve(self: Capacity, transport: str) -> Reservation:
        r = original(self, transport)
        peak[0] = max(peak[0], self.held)
        return r

    Capacity.reserve = reserve  # type: ignore[method-assign]
    gateway = SipGateway(runtime.calls, settings.sip, Metrics())
    await gateway.start()
    base_url, stop_http = await start_test_server(runtime)
    try:
        audio = write_ul(tmp_path / "hi.ul", speech_8k("Hello."), lead_silence_ms=200, tail_silence_ms=1000)
        path = scenario(tmp_path, "uac_speech.xml", AUDIO=str(audio), LISTEN_MS="1500")
        sipp = run_process(sipp_argv(gateway.local_address, path, calls=SIP_CALLS, rate=20, timeout_s=40),
                           timeout_s=60, cwd=tmp_path)
        results = await asyncio.gather(sipp, *(webrtc_call(base_url, 0.05 * i) for i in range(WEBRTC_CALLS)))
        (_, sipp_out), webrtc = results[0], results[1:]
        for _ in range(100):
            if capacity.held == 0:
                break
            await asyncio.sleep(0.1)
    finally:
        Capacity.reserve = original  # type: ignore[method-assign]
        await stop_http()
        await gateway.stop()
        runtime.close()
    ok = re.search(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", sipp_out)
    failed = re.search(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", sipp_out)
    assert ok and failed, sipp_out[-2000:]
    sip_ok, sip_failed = int(ok.group(1)), int(failed.group(1))
    summaries = runtime.calls.summaries
    sip_runs = [s for s in summaries if s.call_id.startswith("sip")]
    web_runs = [s for s in summaries if s.call_id.startswith("web")]
    assert sip_ok + sip_failed == SIP_CALLS and all(r in ("completed", "refused") for r in webrtc), (sipp_out[-1500:],
                                                                                                   webrtc)
    # every 200 OK (SIPp success) and every answered offer ran a session to its end: no refusal after it
    assert len(sip_runs) == sip_ok and len(web_runs) == webrtc.count("completed")
    assert all(s.error is None for s in summaries), [s.error for s in summaries]
    assert capacity.counters["committed"] == len(summaries)
    refused = capacity.counters["refused_full"] + runtime.calls.counters.refused_full
    assert sip_failed + webrtc.count("refused") >= 1 and refused >= 1, "the load never reached capacity"
    assert peak[0] <= SLOTS and capacity.held == 0, (peak, capacity.held)
