"""`lfm-call simulate`: run scenarios against this process's agent over a chosen transport."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.call_marks import EarMarkCheck
from agent.caller_leg import CallerLeg
from agent.commands import choose_for_settings
from agent.errors import CliError
from agent.inproc import InprocLeg
from agent.log import log_counts
from agent.provenance import ProvenanceError
from agent.report import CallRecord, summarize_calls
from agent.runtime import Runtime, build_runtime
from agent.scenario import Scenario, ScenarioError, load_scenarios
from agent.sim_console import SimConsole, artifacts_lines, summary_table
from agent.simulator import run_simulation, summaries_from
from config.schema import Settings

DEFAULT_SCENARIOS = Path(__file__).resolve().parent.parent / "config" / "scenarios"
# calls at once when none is asked for: both ends of every call run in the simulating process, and a
# WebRTC call (two aiortc peers: DTLS, SRTP, Opus in Python) costs that process the most
DEFAULT_CONCURRENCY = {"inproc": 4, "sip": 2, "webrtc": 1}


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _simulate(settings: Settings, runtime: Runtime, scenarios: list[Scenario], transport: str,
                    concurrency: int, out_dir: Path, marks: EarMarkCheck, log_file: Path | None) -> int:
    cleanup: list[Callable[[], Awaitable[object]]] = []
    leg_factory: Callable[[], CallerLeg]
    if transport == "inproc":
        def leg_factory() -> CallerLeg:
            return InprocLeg(runtime.calls)
    elif transport == "webrtc":
        from agent.sim_webrtc import start_test_server

        base_url, stop = await start_test_server(runtime)
        cleanup.append(stop)

        def leg_factory() -> CallerLeg:
            from agent.sim_webrtc import WebRtcCallerLeg

            leg: CallerLeg = WebRtcCallerLeg(base_url)
            return leg
    else:
        from sip_bridge.sim_leg import start_test_gateway

        uri, stop = await start_test_gateway(runtime)
        cleanup.append(stop)

        def leg_factory() -> CallerLeg:
            from sip_bridge.sim_leg import SipCallerLeg

            leg: CallerLeg = SipCallerLeg(uri)
            return leg
    console = SimConsole(len(scenarios))
    model = runtime.model_label
    try:
        run = await run_simulation(scenarios, leg_factory, model=model, transport=transport,
                                   concurrency=concurrency, out_dir=out_dir,
                                   summary_of=summaries_from(runtime.calls.summaries),
                                   marks=marks, progress=console)
    finally:
        console.close()
        for stop_server in cleanup:
            await stop_server()
        runtime.close()
    passed = sum(1 for c in run.calls if c.passed)
    failed = len(run.calls) - passed
    _say("")
    _say(summary_table(run.calls))
    _say("")
    _say(turn_summary_line(run.calls))
    counts = log_counts()
    for line in artifacts_lines(out_dir, run.calls, log_file, counts.warnings, counts.errors):
        _say(line)
    _say(f"simulate: {passed} passed, {failed} failed; model used: {model}")
    return 0 if failed == 0 and len(run.calls) == len(scenarios) else 1


def turn_summary_line(calls: list[CallRecord]) -> str:
    """Response latency p50 at the ear, cut-offs per caller turn end, false starts, double answers."""
    s = summarize_calls(calls)
    lat = s["response_latency_ms"]["p50"]
    rate = s["cut_off_rate"]
    return (f"simulate: response latency p50 {'-' if lat is None else f'{lat:.0f} ms'} at the ear; cut-offs "
            f"{s['cut_offs']}/{s['turn_ends']} caller turn ends ({'-' if rate is None else f'{100 * rate:.1f} %'}); "
            f"false starts {s['false_starts']}; turns answered twice {s['double_answers']}; "
            f"false interruptions {s['false_interruptions']}")


def for_simulation(settings: Settings) -> Settings:
    """Scenarios test the agent's behaviour, not admission: a slow shared CPU must not turn them into
    "overloaded" refusals (``serve`` keeps ``server.admission_step_margin``)."""
    return dataclasses.replace(settings, server=dataclasses.replace(settings.server, admission_step_margin=0.0))


def run_simulate(settings: Settings, paths: list[str], transport: str, concurrency: int, out: Path,
                 log_file: Path | None = None) -> int:
    try:
        scenarios = load_scenarios(paths or [str(DEFAULT_SCENARIOS)])
    except ScenarioError as exc:
        raise CliError(str(exc)) from None
    if not scenarios:
        raise CliError("no scenarios to run")
    try:  # the watermark check at the ear and the signing key for the calls' provenance records
        marks = EarMarkCheck.from_settings(settings)
    except ProvenanceError as exc:
        raise CliError(str(exc)) from None
    choice = choose_for_settings(settings.model)  # the engine process loads it
    settings = for_simulation(settings)
    _say(f"simulate: {len(scenarios)} scenario(s) over {transport}, {min(concurrency, len(scenarios))} at a time, "
         f"into {out}/")

    async def main() -> int:
        runtime = build_runtime(settings, choice=choice)
        return await _simulate(settings, runtime, scenarios, transport, concurrency, out, marks, log_file)

    return asyncio.run(main())
