"""Running simulated calls for the benchmarks: one agent runtime per configuration, many calls at once.

The calls go through the same pieces as ``lfm-call simulate``: ``agent.simulator.simulate_call``
over an ``InprocLeg`` or a ``SipCallerLeg`` against ``start_test_gateway(runtime)``. Unlike
``run_simulation`` no per-call WAV/PNG artifacts are written while other calls are still running
(drawing a timeline on the event loop would disturb the calls being measured); each configuration
leaves one ``report.json``. The agent's own ``CallSummary`` of each call is kept next to its
``CallRecord``, so that agent-side times (first packet sent, answers held and resumed) can be read.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.caller_leg import CallerLeg
from agent.report import CallRecord, RunRecord, write_run_report
from agent.scenario import Scenario, parse_scenario
from agent.session import CallSummary
from agent.simulator import render_audio, simulate_call, summaries_from
from bench.common import FIXTURES_DIR

DEMO_SEED = 0


@dataclass(frozen=True)
class SimConfig:
    """One agent configuration: a name for the tables and settings overrides on top of the defaults."""

    name: str
    transport: str = "inproc"  # inproc | sip | webrtc
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    concurrency: int = 4


@dataclass
class SimCall:
    record: CallRecord
    summary: CallSummary | None


def demo_checkpoint(cache_root: Path | None = None) -> Path:
    """The offline demo model (tiny, long replies), made once per cache folder."""
    from model.tiny import make_tiny_checkpoint

    root = cache_root or Path(tempfile.gettempdir()) / "lfm-call-bench"
    path = root / f"tiny-demo-v2-seed{DEMO_SEED}"
    if not (path / "model.safetensors").is_file():
        make_tiny_checkpoint(path, seed=DEMO_SEED, long_replies=True)
    return path


def settings_for(checkpoint: Path, config: SimConfig, max_calls: int) -> Any:
    from agent.sim_command import for_simulation
    from config.loader import load_settings

    base: dict[str, dict[str, Any]] = {
        "model": {"ref": str(checkpoint), "offline_fallback": "error", "greeting": ""},
        "vad": {"backend": "silero"},
        "server": {"max_calls": max_calls},
        "logging": {"level": "WARNING"},
    }
    for section, values in config.overrides.items():
        base.setdefault(section, {}).update(values)
    return for_simulation(load_settings(environ={}, overrides=[base]))


def scenario_from_yaml(text: str, name: str) -> Scenario:
    return parse_scenario(text, f"<bench {name}>", FIXTURES_DIR, default_name=name)


async def run_calls(scenarios: list[Scenario], config: SimConfig, checkpoint: Path, loaded: Any, choice: Any,
                    out_dir: Path | None, stagger_ms: int = 170) -> list[SimCall]:
    """Run ``scenarios`` against a fresh runtime built with ``config``; calls overlap up to concurrency."""
    from agent.inproc import InprocLeg
    from agent.runtime import build_runtime

    settings = settings_for(checkpoint, config, max(config.concurrency, 1) + 2)
    runtime = build_runtime(settings, loaded, choice)
    stop: Callable[[], Awaitable[object]] | None = None
    leg_factory: Callable[[], CallerLeg]
    try:
        if config.transport == "sip":
            from sip_bridge.sim_leg import SipCallerLeg, start_test_gateway

            uri, stop = await start_test_gateway(runtime)

            def leg_factory() -> CallerLeg:
                return SipCallerLeg(uri)  # the simulator re-cuts whatever sizes a leg delivers
        elif config.transport == "webrtc":
            from agent.sim_webrtc import WebRtcCallerLeg, start_test_server

            base_url, stop = await start_test_server(runtime)

            def leg_factory() -> CallerLeg:
                return WebRtcCallerLeg(base_url)
        elif config.transport == "inproc":
            def leg_factory() -> CallerLeg:
                return InprocLeg(runtime.calls)
        else:
            raise ValueError(f"unknown transport {config.transport!r} (inproc, sip or webrtc)")
        rendered = [await render_audio(s, None) for s in scenarios]
        lookup = summaries_from(runtime.calls.summaries)
        gate = asyncio.Semaphore(max(1, config.concurrency))
        results: list[SimCall | None] = [None] * len(scenarios)

        async def one(i: int, scenario: Scenario) -> None:
            await asyncio.sleep(i * stagger_ms / 1000 if i < config.concurrency else 0)
            async with gate:
                captured: list[CallSummary | None] = []

                def summary_of(started_wall: float, leg_call_id: str | None) -> CallSummary | None:
                    captured.append(lookup(started_wall, leg_call_id))
                    return captured[-1]

                record = await simulate_call(scenario, leg_factory(), rendered[i], f"{i + 1:03d}-{scenario.name}",
                                             runtime.choice.description, config.transport, summary_of)
                results[i] = SimCall(record, captured[-1] if captured else None)

        await asyncio.gather(*(one(i, s) for i, s in enumerate(scenarios)))
    finally:
        if stop is not None:
            await stop()
        runtime.close()
    calls = [r for r in results if r is not None]
    if out_dir is not None:
        run = RunRecord(run_id=f"bench-{config.name}", started_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                        description={"config": config.name, "transport": config.transport,
                                     "overrides": config.overrides, "concurrency": config.concurrency},
                        calls=[c.record for c in calls])
        write_run_report(out_dir, run)
    return calls


def offset_ms(call: SimCall) -> float | None:
    """Session time -> caller time offset (ms) of a call, from its merged end-of-turn marks."""
    s = call.summary
    if s is None or not s.end_of_turns or not call.record.end_of_turn_ms:
        return None
    return call.record.end_of_turn_ms[0] - s.end_of_turns[0]
