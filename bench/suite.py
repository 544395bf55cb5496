"""The benchmark suite: every CPU benchmark of the call path, side by side with its baseline.

    lfm-call bench [--quick] [--out DIR] [--sections a,b] [--baseline FILE] [--save-baseline FILE]
    python -m bench ...                      (the same)

Sections (each a Markdown table with its baseline as a ratio column):

* ``engine``       time to first audio chunk (turn vs chunked), real-time factor, batching 1-32 calls
* ``sim_latency``  response latency at the caller's ear (inproc and SIP; turn vs chunked, early
                   answer on vs off) and its breakdown
* ``barge_in``     barge-in stop time at the caller's ear over >= 50 generated cut-ins
* ``false_interruptions``  false interruptions per call-minute with echo and backchannels
* ``media_cpu``    media path CPU per SIP G.711 call, concurrent calls per core (loopback baseline)
* ``capture``      proof that the full-size generation step is one graph: graph breaks, host syncs
                   in a step, aten ops per step at batch 1/8/32 (CPU, meta device)

Writes ``DIR/bench.md`` (BENCHMARKS.md-ready) and ``DIR/bench.json``, prints the Markdown, and
compares the metrics with ``bench/baseline.json``: what got worse by more than 20 % is listed
(informational; the exit status stays 0). ``--quick`` finishes in a few minutes on 2 cores.
The GPU figures of the full-size model come from ``bench/gpu.py`` (one prepared script).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SECTIONS = ("engine", "sim_latency", "barge_in", "false_interruptions", "media_cpu", "capture")
DEFAULT_BASELINE = Path(__file__).resolve().parent / "baseline.json"
DEFAULT_OUT = Path("bench-results")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lfm-call bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats (a few minutes on 2 cores)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for bench.md, bench.json and reports")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE, help="baseline metrics to compare with")
    parser.add_argument("--save-baseline", type=Path, default=None, metavar="FILE",
                        help="also write this run's metrics as a baseline file")


def parse_sections(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise ValueError(f"unknown benchmark section(s) {unknown or text!r}; choose from {', '.join(SECTIONS)}")
    return names


def command_line(argv: Sequence[str]) -> str:
    return "lfm-call bench" + ("" if not argv else " " + " ".join(argv))


async def run_sections(names: list[str], quick: bool, out: Path) -> list[Any]:
    from bench.results import Section

    sections: list[Section] = []
    if "capture" in names:
        from bench import capture

        _say("bench: capture")
        sections.append(capture.measure())
    if "engine" in names:
        from bench import engine_section

        _say("bench: engine")
        sections += await engine_section.measure(quick)
    sim = [n for n in names if n not in ("engine", "capture")]
    if sim:
        from agent.commands import load_for_settings
        from bench.simrun import demo_checkpoint, settings_for

        checkpoint = demo_checkpoint()
        loaded, choice = load_for_settings(settings_for(checkpoint, _default_config(), 4).model)
        for name in sim:
            _say(f"bench: {name}")
            sections += await _sim_section(name, quick, out, checkpoint, loaded, choice)
    return sections


def _default_config() -> Any:
    from bench.simrun import SimConfig

    return SimConfig("default")


async def _sim_section(name: str, quick: bool, out: Path, checkpoint: Path, loaded: Any, choice: Any) -> list[Any]:
    if name == "sim_latency":
        from bench import sim_latency

        return list(await sim_latency.measure(quick, out, checkpoint, loaded, choice))
    if name == "barge_in":
        from bench import barge_in

        return [await barge_in.measure_barge_in(quick, out, checkpoint, loaded, choice)]
    if name == "false_interruptions":
        from bench import barge_in

        return [await barge_in.measure_false(quick, out, checkpoint, loaded, choice)]
    from bench import media_cpu

    return [await media_cpu.measure(quick, checkpoint, loaded, choice)]


def write_outputs(sections: list[Any], out: Path, argv: Sequence[str], quick: bool, baseline: Path,
                  load_before: str, seconds: float) -> tuple[str, dict[str, Any]]:
    """Compare with the baseline; write bench.md and bench.json; return (markdown, json document)."""
    from agent.report import atomic_write_text
    from bench.results import all_metrics, compare, load_baseline, load_line, machine_line, render_markdown

    machine = machine_line()
    for s in sections:
        s.machine = s.machine or machine
    base = load_baseline(baseline)
    regressions = compare(base, all_metrics(sections)) if base else []
    load_after = load_line()
    header = {"command": command_line(argv), "machine": machine, "load before": load_before, "load after": load_after,
              "total": f"{seconds:.0f} s"}
    text = render_markdown(sections, header, regressions, baseline if base else None)
    doc = {"command": command_line(argv), "quick": quick, "machine": machine, "load_before": load_before,
           "load_after": load_after, "seconds": round(seconds, 1), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "baseline": str(baseline) if base else None,
           "sections": {s.key: s.to_json() for s in sections},
           "regressions": [r.describe() for r in regressions]}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bench.md", text)
    atomic_write_text(out / "bench.json", json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return text, doc


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run the suite for parsed options (``add_arguments``); ``argv`` is only echoed in the output."""
    from bench.results import baseline_document, load_line

    names = parse_sections(args.sections)
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    load_before = load_line()
    sections = asyncio.run(run_sections(names, args.quick, args.out))
    text, doc = write_outputs(sections, args.out, argv, args.quick, args.baseline, load_before,
                              time.perf_counter() - started)
    print(text)
    if args.save_baseline is not None:
        from agent.report import atomic_write_json

        atomic_write_json(args.save_baseline, baseline_document(sections, command_line(argv), args.quick))
        args.save_baseline.chmod(0o644)  # a file to commit, not a private temporary one
        _say(f"bench: baseline written to {args.save_baseline}")
    _say(f"bench: wrote {args.out / 'bench.md'} and {args.out / 'bench.json'}"
         + (f"; {len(doc['regressions'])} metric(s) slower than the baseline" if doc["regressions"] else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        parse_sections(args.sections)
    except ValueError as exc:
        parser.error(str(exc))
    return run(args, argv)


def argv_of(args: argparse.Namespace) -> list[str]:
    """The suite's options of parsed ``args`` as command-line words (for the echoed command)."""
    words = ["--quick"] if getattr(args, "quick", False) else []
    for name in ("out", "sections", "baseline", "save_baseline"):
        value = getattr(args, name, None)
        default = {"out": DEFAULT_OUT, "sections": ",".join(SECTIONS), "baseline": DEFAULT_BASELINE}.get(name)
        if value is not None and value != default:
            words += [f"--{name.replace('_', '-')}", str(value)]
    return words


def namespace_with_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` completed with the suite's defaults for options its parser did not define."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    full = parser.parse_args([])
    for key, value in vars(args).items():
        setattr(full, key, value)
    return full


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
