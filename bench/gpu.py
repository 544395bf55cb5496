"""One prepared script for a lent GPU: the full-size engine's figures, stage by stage, in one command.

    python -m bench.gpu [--out DIR] [--budget-s 300] [--decoder detokenizer|mimi] [--stages ...]
    python -m bench.gpu --smoke          # CPU, tiny sizes: proves the script runs (CI does this)

Nothing is read from outside the repository: the full-size architecture comes from
``tests/fixtures/lfm2-audio-1.5b-config.json`` with random weights (bf16 on CUDA; the figures do not
depend on the values), the audio decoder is the real-size LFM2.5 detokenizer (or Mimi) with seeded
random weights. Stages, in order; each prints its figures the moment it ends and rewrites
``gpu.json``/``gpu.md`` in ``--out``, each has its own timeout (a stage that runs over is stopped,
reported as such, and the next one starts), and the whole run stays inside ``--budget-s``:

1. ``build``: the model on the device.
2. ``step``: the engine's batched generation step (backbone + text head + depthformer + sampling +
   next inputs; ``model.batched.GenerationStep``) at batch 1/8/32/64/128 with keys at 512, as the
   engine replays it (a CUDA graph per bucket on CUDA, ``model.step_capture``), after a warm-up at
   every bucket; timed with CUDA events (wall clock on the CPU). Also the batched audio decode of one
   80 ms frame per row, and the sum: the cost of one 80 ms step for that many calls.
3. ``first_audio``: 16 calls prefilled with 2 s of speech respond together: time from respond() to
   each call's first 80 ms chunk (p50, p90, max).
4. ``capacity``: N calls generate 10 s of speech each, all at once (N = 16, 32, 64, 96, 128 while the
   budget allows); a call is real time when it holds >= 12.5 chunks/s (its k-th chunk arrives by
   first + k * 80 ms + the playout lead the engine is given, 200 ms). The figure is the largest N at
   which every call is real time.

Targets (issue 11): >= 64 concurrent real-time calls per H100/H200 and first audio <= 80 ms p50 at 16
calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    FRAME_SECONDS,
    FULL_SIZE_CONFIG,
    TINY_CHECKPOINT,
    ReplyTiming,
    format_table,
    machine_description,
    random_full_size,
    replies,
    speech_clip,
)
from bench.engine_latency import make_engine

STEP_BATCHES = (1, 8, 32, 64, 128)
SMOKE_STEP_BATCHES = (1, 4)
CAPACITY_CALLS = (16, 32, 64, 96, 128)
SMOKE_CAPACITY_CALLS = (2, 4)
FIRST_AUDIO_CALLS = 16
REALTIME_LEAD_S = 0.2  # playout lead a call may use before a late chunk is an underrun
STAGE_TIMEOUT_S = {"build": 120.0, "step": 90.0, "first_audio": 60.0, "capacity": 150.0}


class StageTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise StageTimeout in the main thread after `seconds` (SIGALRM; no limit where unavailable)."""
    if not hasattr(signal, "setitimer") or seconds <= 0:
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise StageTimeout(f"stage ran past {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Timer:
    """Elapsed ms of a block: CUDA events on CUDA (device time of the queued work), else wall clock."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def ms(self, fn: Callable[[], object], repeats: int) -> float:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(repeats):
                fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end)) / repeats
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t) * 1000.0 / repeats


# -- stages ----------------------------------------------------------------------------------------------


def build(smoke: bool, config: Path, decoder: str) -> Any:
    if smoke:
        loaded = random_full_size(TINY_CHECKPOINT / "config.json", torch.device("cpu"), torch.float32,
                                  TINY_CHECKPOINT / "mimi_config.json")
        return loaded
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    loaded = random_full_size(config, device, dtype, None)
    if decoder == "detokenizer":
        from bench.audio_decoder import real_size_decoders

        detok = real_size_decoders(device, dtype)["detokenizer"]
        loaded = dataclasses.replace(loaded, mimi=None, detokenizer=detok.detok, decoder=detok)
    return loaded


@torch.no_grad()
def step_stage(loaded: Any, batches: tuple[int, ...], kv_len: int, repeats: int) -> dict[str, Any]:
    from model.batched import GenerationStep, StepSampling
    from model.lfm2_audio import Sampling
    from model.pool import BackbonePool
    from model.step_capture import CapturedSteps

    model, device = loaded.model, loaded.device
    cfg = model.config.lfm
    slots = max(batches)
    pool = BackbonePool(cfg, slots, kv_len + repeats + 8, device, loaded.dtype)
    states = [pool.open_state() for _ in range(slots)]
    gen_step = GenerationStep(model, pool, StepSampling.of(Sampling(temperature=1.0, top_k=4),
                                                           Sampling(temperature=1.0, top_k=4)))
    pending = torch.randn(slots, cfg.hidden_size, device=device, dtype=loaded.dtype)
    captured = CapturedSteps(gen_step, pending, enabled=True)
    streams = loaded.decoder.streams(slots)
    decoder_slots = [streams.open() for _ in range(slots)]
    timer = Timer(device)
    rows: dict[str, Any] = {}
    for b in batches:
        for st in states:
            st.position = kv_len - 1  # every row attends over kv_len keys
        advance = torch.ones(b, dtype=torch.bool, device=device)
        want_audio = torch.ones(b, dtype=torch.bool, device=device)
        forced = torch.full((b,), -1, dtype=torch.long, device=device)
        hidden_in = torch.zeros(b, cfg.hidden_size, device=device, dtype=loaded.dtype)

        codes = torch.randint(0, 2048, (b, 8), device=device)

        def one_step(b: int = b, advance: torch.Tensor = advance, hidden_in: torch.Tensor = hidden_in,
                     want_audio: torch.Tensor = want_audio, forced: torch.Tensor = forced) -> None:
            captured(b, advance, hidden_in, want_audio, forced, kv_len + 1)

        def one_decode(b: int = b, codes: torch.Tensor = codes) -> None:
            streams.step(decoder_slots[:b], codes)

        for _ in range(3):  # warm-up at this bucket (captures the graph on CUDA)
            one_step()
            one_decode()
        for st in states:
            st.position = kv_len - 1
        step_ms = timer.ms(one_step, repeats)
        decode_ms = timer.ms(one_decode, repeats)
        rows[str(b)] = {"step_ms": step_ms, "decode_ms": decode_ms, "total_ms": step_ms + decode_ms,
                        "calls_per_80ms": b * 80.0 / (step_ms + decode_ms)}
    return {"kv_len": kv_len, "graphs": len(captured.graphs), "graph_failed": captured.failed, "batches": rows}


async def first_audio_stage(loaded: Any, calls: int, slots: int) -> dict[str, Any]:
    engine = make_engine(loaded, "chunked", 24, slots=slots)
    try:
        await replies(engine, [speech_clip(1.0, 7)], together=True)  # warm-up
        await replies(engine, [speech_clip(1.0, i) for i in range(calls)], together=True)  # warm-up at batch
        timings, _ = await replies(engine, [speech_clip(2.0, 100 + i) for i in range(calls)], together=True)
    finally:
        engine.stop()
    firsts = sorted(t.first_audio_s * 1000 for t in timings if t.frames)
    if not firsts:
        return {"calls": calls, "error": "no audio"}
    return {"calls": calls, "p50_ms": statistics.median(firsts), "p90_ms": firsts[int(0.9 * (len(firsts) - 1))],
            "max_ms": firsts[-1], "errors": sum(1 for t in timings if t.error)}


def holds_real_time(arrivals_s: list[float], lead_s: float = REALTIME_LEAD_S) -> bool:
    """Every chunk k arrives by first + k * 80 ms + lead: playback started at the first never runs dry
    (``ReplyTiming.buffer_needed_s`` within the lead; False without chunks)."""
    return ReplyTiming(arrivals_s=list(arrivals_s)).buffer_needed_s <= lead_s


async def capacity_stage(loaded: Any, counts: tuple[int, ...], seconds: float, slots: int,
                         deadline: float, report: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    frames = int(seconds / FRAME_SECONDS)
    engine = make_engine(loaded, "chunked", frames + frames // 2 + 8, slots=slots)  # 12 audio per 6 text items
    runs: dict[str, Any] = {}
    best = 0
    try:
        await replies(engine, [speech_clip(1.0, 7)], together=True)  # warm-up
        for n in counts:
            if time.perf_counter() + 10 + 2 * seconds > deadline:
                runs[str(n)] = "skipped (time budget)"
                break
            timings, wall = await replies(engine, [speech_clip(1.0 + (i % 3), i) for i in range(n)], together=True)
            real = sum(1 for t in timings if t.error is None and holds_real_time(t.arrivals_s))
            audio_s = sum(t.frames for t in timings) * FRAME_SECONDS
            runs[str(n)] = {"real_time_calls": real, "audio_s_per_s": audio_s / wall,
                            "median_frames": statistics.median(t.frames for t in timings),
                            "errors": sum(1 for t in timings if t.error)}
            report({"runs": runs, "realtime_calls": best})
            if real < n:
                break
            best = n
    finally:
        engine.stop()
    return {"runs": runs, "realtime_calls": best, "seconds_per_call": seconds}


# -- output -------------------------------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    lines = [f"# bench.gpu: {results['label']}", f"machine: {results['machine']}", ""]
    stages = results["stages"]
    step = stages.get("step", {})
    if "batches" in step:
        rows = [[b, r["step_ms"], r["decode_ms"], r["total_ms"], r["calls_per_80ms"]]
                for b, r in step["batches"].items()]
        lines += [f"## step (keys {step['kv_len']}; CUDA graphs: {step['graphs']}"
                  f"{', capture FAILED: eager' if step['graph_failed'] else ''})", "",
                  format_table(["batch", "step ms", "decode ms", "step + decode ms", "calls per 80 ms at that cost"],
                               rows), ""]
    fa = stages.get("first_audio", {})
    if "p50_ms" in fa:
        lines += [f"## first audio after end of turn, {fa['calls']} calls together", "",
                  format_table(["p50 ms", "p90 ms", "max ms", "errors", "target"],
                               [[fa["p50_ms"], fa["p90_ms"], fa["max_ms"], fa["errors"], "p50 <= 80"]]), ""]
    cap = stages.get("capacity", {})
    if "runs" in cap:
        rows = [[n, *(r.values() if isinstance(r, dict) else [r, "", "", ""])] for n, r in cap["runs"].items()]
        lines += [f"## concurrent real-time calls ({cap.get('seconds_per_call', '?')} s of speech each)", "",
                  format_table(["calls", "real-time calls", "audio s per s", "median frames", "errors"], rows), "",
                  f"concurrent real-time calls: {cap.get('realtime_calls', 0)} (target >= 64)", ""]
    for name, value in stages.items():
        if isinstance(value, dict) and "error" in value:
            lines.append(f"{name}: {value['error']}")
    lines.append(f"(elapsed {results['elapsed_s']:.0f} s)")
    return "\n".join(lines)


def write(out: Path | None, results: dict[str, Any]) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu.json", json.dumps(results, indent=2, default=str) + "\n"),
                       ("gpu.md", render(results) + "\n")):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (checks the script, not the GPU)")
    parser.add_argument("--config", type=Path, default=FULL_SIZE_CONFIG, help="full-size config.json")
    parser.add_argument("--decoder", choices=("detokenizer", "mimi"), default="detokenizer")
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu.json and gpu.md (rewritten per stage)")
    parser.add_argument("--budget-s", type=float, default=300.0, help="the whole run, build included")
    parser.add_argument("--stages", default="step,first_audio,capacity", help="which stages after build")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    deadline = started + args.budget_s
    torch.set_num_threads(1 if args.smoke else min(8, torch.get_num_threads()))
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    results: dict[str, Any] = {"label": "", "machine": "", "stages": {}, "elapsed_s": 0.0}

    def done(name: str, value: dict[str, Any]) -> None:
        results["stages"][name] = value
        results["elapsed_s"] = time.perf_counter() - started
        write(args.out, results)
        print(f"[{results['elapsed_s']:.0f} s] {name}: {json.dumps(value, default=str)}", flush=True)

    def run_stage(name: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        left = deadline - time.perf_counter()
        if left < 5:
            done(name, {"error": "skipped (time budget)"})
            return None
        try:
            with time_limit(min(STAGE_TIMEOUT_S[name] * (0.5 if args.smoke else 1.0), left)):
                value = work()
        except StageTimeout as exc:
            done(name, {"error": f"timed out: {exc}"})
            return None
        except Exception as exc:  # one stage's failure must not lose the others' figures
            done(name, {"error": f"{type(exc).__name__}: {str(exc)[:160]}"})
            return None
        done(name, value)
        return value

    holder: dict[str, Any] = {}

    def build_stage() -> dict[str, Any]:
        holder["loaded"] = build(args.smoke, args.config, args.decoder)
        loaded = holder["loaded"]
        results["label"] = ("tiny config (smoke)" if args.smoke else
                            f"{args.config.name}, random weights, decoder {args.decoder}") + \
            f"; device {loaded.device}; dtype {str(loaded.dtype).removeprefix('torch.')}"
        results["machine"] = machine_description(loaded.device)
        print(f"# bench.gpu: {results['label']}\nmachine: {results['machine']}", flush=True)
        return {"parameters_m": sum(p.numel() for p in loaded.model.parameters()) / 1e6}

    if run_stage("build", build_stage) is None:
        print(render(results))
        return 1
    loaded = holder["loaded"]
    step_batches = SMOKE_STEP_BATCHES if args.smoke else STEP_BATCHES
    counts = SMOKE_CAPACITY_CALLS if args.smoke else CAPACITY_CALLS
    slots = max(counts)
    if "step" in wanted:
        run_stage("step", lambda: step_stage(loaded, step_batches, 64 if args.smoke else 512, 3 if args.smoke else 20))
    if "first_audio" in wanted:
        calls = 2 if args.smoke else FIRST_AUDIO_CALLS
        run_stage("first_audio", lambda: asyncio.run(first_audio_stage(loaded, calls, slots)))
    if "capacity" in wanted:
        seconds = 1.0 if args.smoke else 10.0
        stage_deadline = min(deadline, time.perf_counter() + STAGE_TIMEOUT_S["capacity"])

        def partial(value: dict[str, Any]) -> None:
            results["stages"]["capacity"] = {**value, "seconds_per_call": seconds, "partial": True}
            write(args.out, results)

        run_stage("capacity", lambda: asyncio.run(capacity_stage(loaded, counts, seconds, slots, stage_deadline,
                                                                 partial)))
    results["elapsed_s"] = time.perf_counter() - started
    write(args.out, results)
    print()
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
