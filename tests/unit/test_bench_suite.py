"""The benchmark suite: output structure, the regression guard, and tiny real pieces of each section."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
import torch

from bench import barge_in, gpu, media_cpu, sim_latency, suite
from bench.results import Metric, Section, compare, parse_markdown_table


def make_section(key: str, value: float, better: str = "lower") -> Section:
    section = Section(key, f"{key} title", f"lfm-call bench   # section {key}", ["config", "p50 ms", "p50 / baseline"],
                      [["reference", value, 1.0], ["baseline", value * 2, 2.0]], notes=["what it includes"])
    section.metrics = {"p50_ms": Metric(value, "ms", better)}
    return section


def test_regression_guard_flags_a_30_percent_slowdown_only() -> None:
    baseline = {"a.p50_ms": {"value": 100.0, "unit": "ms", "better": "lower"},
                "b.calls": {"value": 50.0, "unit": "calls", "better": "higher"},
                "c.p50_ms": {"value": 100.0, "unit": "ms", "better": "lower"}}
    current = {"a.p50_ms": Metric(130.0, "ms", "lower"),  # 30 % slower: flagged
               "b.calls": Metric(38.0, "calls", "higher"),  # 50/38 = 1.32x worse: flagged
               "c.p50_ms": Metric(110.0, "ms", "lower"),  # 10 %: within the guard
               "d.new": Metric(1.0, "ms", "lower")}  # no baseline: skipped
    flagged = compare(baseline, current)
    assert [r.name for r in flagged] == ["b.calls", "a.p50_ms"]
    assert flagged[1].slowdown == pytest.approx(1.3)
    assert "+30 % worse" in flagged[1].describe()
    assert compare(baseline, {"a.p50_ms": Metric(70.0, "ms", "lower")}) == []  # faster is fine
    zero = compare({"f.per_min": {"value": 0.0}}, {"f.per_min": Metric(0.5, "1/min", "lower")})
    assert len(zero) == 1 and math.isinf(zero[0].slowdown)
    with pytest.raises(ValueError, match="direction"):
        Metric(1.0, "ms", "sideways")


def test_outputs_have_tables_ratio_columns_json_keys_and_the_guard(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"metrics": {"sim.p50_ms": {"value": 100.0, "unit": "ms", "better": "lower"}}}))
    sections = [make_section("sim", 130.0), make_section("engine", 10.0)]
    text, doc = suite.write_outputs(sections, tmp_path / "out", ["--quick"], True, baseline, "load 1.0", 12.0)
    md = (tmp_path / "out" / "bench.md").read_text()
    assert md == text
    assert "### sim title" in md and "lfm-call bench --quick" in md and "machine: CPU " in md
    headers, rows = parse_markdown_table(md.split("### sim title", 1)[1])
    assert headers == ["config", "p50 ms", "p50 / baseline"] and [r[0] for r in rows] == ["reference", "baseline"]
    assert "sim.p50_ms: 130 ms (baseline 100" in md
    data = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert data == doc
    assert {"command", "quick", "machine", "load_before", "load_after", "sections", "regressions"} <= set(data)
    assert set(data["sections"]) == {"sim", "engine"}
    sim = data["sections"]["sim"]
    assert {"title", "command", "machine", "headers", "rows", "notes", "metrics"} <= set(sim)
    assert sim["metrics"]["p50_ms"] == {"value": 130.0, "unit": "ms", "better": "lower"}
    assert len(data["regressions"]) == 1 and data["regressions"][0].startswith("sim.p50_ms")


def test_cli_options_complete_with_defaults_and_bad_sections_are_refused() -> None:
    import argparse

    full = suite.namespace_with_defaults(argparse.Namespace(quick=True, func=None))
    assert full.quick and full.out == suite.DEFAULT_OUT and full.sections == ",".join(suite.SECTIONS)
    assert suite.argv_of(full) == ["--quick"]
    assert suite.parse_sections("engine, media_cpu") == ["engine", "media_cpu"]
    with pytest.raises(ValueError, match="unknown benchmark section"):
        suite.parse_sections("engine,warp")


def test_generated_scenarios_cut_in_within_range_and_listeners_never_cut_in() -> None:
    pairs = barge_in.barge_in_scenarios(50)
    cuts = [cut for _, cut in pairs]
    assert len(pairs) == 50 and all(300 <= c <= 3000 for c in cuts) and len(set(cuts)) > 40
    assert [s.steps[1].when.ms for s, _ in pairs] == cuts
    listeners = barge_in.listen_scenarios(6)
    assert all(s.line.echo is not None for s in listeners)
    assert sum(1 for s in listeners if len(s.steps) == 4) == 3  # backchannels on every second call
    assert len(sim_latency.scenarios(3)) == 3


def test_loopback_baseline_carries_sip_calls_and_measures_jitter() -> None:
    """Three real SIP G.711 calls against the loopback bridge (a caller process), 1 s window."""
    point = asyncio.run(media_cpu.measure_point(media_cpu.LoopbackBaselineCalls(),
                                                media_cpu.TransportRecorder(media_cpu.LoopbackBaselineCalls()),
                                                3, 1.0, 0.5, None))
    assert point.calls == point.connected == 3
    assert point.packets > 3 * 30  # about 50 packets per call-second
    assert 0 <= point.jitter_p99_ms <= point.jitter_max_ms
    assert point.cpu_s > 0 and point.core_s_per_call_minute > 0


def test_send_jitter_is_the_deviation_from_20_ms() -> None:
    p99, worst, packets = media_cpu.send_jitter_ms([[0.0, 0.020, 0.040, 0.065], [1.0, 1.020]])
    assert worst == pytest.approx(5.0) and packets == 6 and 0 < p99 <= 5.0


def test_latency_parts_are_timed(tiny_checkpoint_dir: Path) -> None:
    from model.checkpoint import load_model

    torch.set_num_threads(1)
    parts = sim_latency.component_timings(load_model(tiny_checkpoint_dir, device="cpu", dtype="float32"), repeats=3)
    assert set(parts) >= {"resample_24k_8k_ms", "packetize_ms", "g711_ms", "mimi_ms", "resample_delay_ms"}
    assert all(v > 0 for k, v in parts.items() if k != "resample_delay_ms")


def test_gpu_script_smoke_runs_every_stage_and_writes_after_each(capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Path) -> None:
    torch.set_num_threads(1)
    assert gpu.main(["--smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert [line.split("] ")[1].split(":")[0] for line in out.splitlines() if line.startswith("[")] == \
        ["build", "step", "first_audio", "capacity"]  # one line per stage, as it ends
    stages = json.loads((tmp_path / "gpu.json").read_text())["stages"]
    assert all("error" not in stages[name] for name in ("build", "step", "first_audio", "capacity"))
    assert [int(b) for b in stages["step"]["batches"]] == list(gpu.SMOKE_STEP_BATCHES)
    assert all(r["step_ms"] > 0 and r["decode_ms"] > 0 for r in stages["step"]["batches"].values())
    assert 0 < stages["first_audio"]["p50_ms"] <= stages["first_audio"]["max_ms"]
    assert stages["capacity"]["runs"]
    assert "## step" in (tmp_path / "gpu.md").read_text()


def test_gpu_stage_timeout_stops_the_stage_and_reports_it() -> None:
    with pytest.raises(gpu.StageTimeout), gpu.time_limit(0.05):
        while True:
            pass


def test_real_time_rule_allows_the_lead_and_no_more() -> None:
    on_time = [0.5 + 0.08 * k for k in range(20)]
    assert gpu.holds_real_time(on_time)
    late = on_time[:10] + [t + 0.25 for t in on_time[10:]]
    assert not gpu.holds_real_time(late)
    assert gpu.holds_real_time(on_time[:10] + [t + 0.15 for t in on_time[10:]])
    assert not gpu.holds_real_time([])
