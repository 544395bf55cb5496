"""The engine process is killed (SIGKILL) during 4 live SIPp calls: every call ends with BYE within
1 s (counted reason), new calls get 503 while it restarts, and a call afterwards succeeds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from agent.calls import CallRefused
from agent.engine_process import ENGINE_LOST, EngineProcessClient
from agent.metrics import Metrics
from agent.runtime import Runtime
from agent.session import CallSummary
from sip_bridge.gateway import SipGateway
from tests.integration.sip.helpers import require_binary, run_process, running_gateway, speech_8k, write_ul
from tests.integration.test_sip_sipp import scenario, sipp_argv

pytestmark = pytest.mark.asyncio(loop_scope="module")

CALLS = 4
OUTCOME_S = 1.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(tiny_checkpoint_dir: Path) -> AsyncIterator[tuple[SipGateway, Runtime, Metrics]]:
    require_binary("sipp")
    async with running_gateway(tiny_checkpoint_dir) as running:
        yield running


async def test_engine_killed_during_4_calls_every_call_ends_then_a_new_call_succeeds(
        gateway: tuple[SipGateway, Runtime, Metrics], tmp_path: Path) -> None:
    gw, runtime, metrics = gateway
    engine = runtime.engine
    assert isinstance(engine, EngineProcessClient) and engine.state == "running"
    old_pid = engine.pid
    finished: list[tuple[float, CallSummary]] = []
    runtime.calls.on_call_finished.append(lambda s: finished.append((time.monotonic(), s)))

    audio = write_ul(tmp_path / "talk.ul", speech_8k("Hello, can you hear me?"), lead_silence_ms=200,
                     tail_silence_ms=2500)
    path = scenario(tmp_path, "uac_until_bye.xml", AUDIO=str(audio), WAIT_MS="60000")
    sipp = asyncio.get_running_loop().create_task(
        run_process(sipp_argv(gw.local_address, path, calls=CALLS, rate=CALLS, timeout_s=70), timeout_s=90,
                    cwd=tmp_path))
    # wait until every call is live and has heard the agent speak (so its media really flows)
    async with asyncio.timeout(45):
        while True:
            sessions = list(runtime.calls.active.values())
            if len(sessions) == CALLS and all(any(t.first_audio_sent_ms is not None for t in s.summary.turns)
                                              for s in sessions):
                break
            assert not sipp.done(), f"sipp ended early: {sipp.result()[1][-2000:]}"
            await asyncio.sleep(0.05)

    killed_at = time.monotonic()
    engine.kill_for_test()
    async with asyncio.timeout(OUTCOME_S):  # the supervisor sees the death at once
        while engine.state == "running":
            await asyncio.sleep(0.01)
    with pytest.raises(CallRefused) as refused:  # what an INVITE now gets: 503
        runtime.calls.check_admission()
    assert refused.value.reason == "engine_restarting"

    rc, out = await sipp
    assert rc == 0, f"sipp callers did not all get a BYE ({rc}):\n{out[-3000:]}"
    assert len(finished) == CALLS
    for ended_at, summary in finished:
        assert summary.ended_by == ENGINE_LOST, summary.ended_by
        assert ended_at - killed_at <= OUTCOME_S, f"call {summary.call_id} ended {ended_at - killed_at:.2f} s after the kill"
    assert runtime.calls.counters.ended_engine_lost == CALLS
    assert metrics.engine_lost_calls._value.get() == CALLS

    async with asyncio.timeout(60):  # restarts by itself
        while engine.state != "running":
            await asyncio.sleep(0.1)
    assert engine.pid != old_pid and engine.restarts == 1

    before = len(runtime.calls.summaries)
    hello = write_ul(tmp_path / "hello.ul", speech_8k("Hello there. How are you today?"), lead_silence_ms=300,
                     tail_silence_ms=4000)
    path = scenario(tmp_path, "uac_speech.xml", AUDIO=str(hello), LISTEN_MS="6500")
    rc, out = await run_process(sipp_argv(gw.local_address, path), timeout_s=60, cwd=tmp_path)
    assert rc == 0, f"sipp after the restart failed ({rc}):\n{out[-3000:]}"
    async with asyncio.timeout(15):
        while len(runtime.calls.summaries) <= before or runtime.calls.active:
            await asyncio.sleep(0.05)
    summary = runtime.calls.summaries[-1]
    assert summary.ended_by == "caller: bye" and summary.error is None
    assert summary.turns and summary.turns[0].first_audio_sent_ms is not None, summary
