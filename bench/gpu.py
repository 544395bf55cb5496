"""One prepared script for a lent GPU: the full-size model's engine and model figures in one table.

    python -m bench.gpu                   # H100/H200: full-size architecture, random bf16 weights
    python -m bench.gpu --smoke           # CPU, tiny sizes: proves the script runs and prints the table

Builds ``tests/fixtures/lfm2-audio-1.5b-config.json`` with random weights (no download; the real
Mimi architecture, random) and measures, per variant (eager; torch.compile of the feed-forward
blocks; the same with CUDA graphs through ``mode="reduce-overhead"``, CUDA only):

* prefill ms per second of caller audio (mel + encoder + adapter + backbone, 4 s clip);
* backbone step ms (one position, context 256), depthformer frame ms (8 codes), Mimi frame ms;
* time to first audio chunk after end of turn (chunked input, 2 s turn prefilled; target <= 100 ms);
* real-time factor of one call; concurrent real-time calls with batching (largest N whose slowest
  call still generates faster than real time; target >= 16).

A variant that fails prints its error in its column; a time budget (``--budget-s``, default 420 s)
skips what would not fit, so that the whole run stays under 8 minutes. Writes ``gpu.json`` (and
``gpu.md``) into ``--out`` when given.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    FULL_SIZE_CONFIG,
    TINY_CHECKPOINT,
    apply_compile,
    first_audio_latency,
    format_table,
    machine_description,
    median,
    random_full_size,
    replies,
    speech_clip,
)

FIGURES = (
    ("prefill_ms_per_audio_s", "prefill ms per second of audio", ""),
    ("backbone_step_ms", "backbone step ms (1 position, context 256)", ""),
    ("depthformer_frame_ms", "depthformer frame ms (8 codes)", ""),
    ("mimi_frame_ms", "Mimi frame ms (80 ms decode)", ""),
    ("first_audio_ms", "first audio chunk after end of turn ms", "<= 100"),
    ("rtf", "real-time factor, one call", "> 1"),
    ("realtime_calls", "concurrent real-time calls (batched)", ">= 16"),
    ("audio_s_per_s", "audio s per s at that batch", ""),
)
FULL_CALLS = (1, 8, 16, 24, 32, 48, 64)
SMOKE_CALLS = (1, 2)


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    backend: str | None  # None: eager (no torch.compile)
    mode: str | None = None


def variants(device: torch.device, smoke: bool) -> list[Variant]:
    if smoke:  # the compile path traced only (no code generation on a 2-core CPU)
        return [Variant("eager", None), Variant("torch.compile (eager backend, smoke)", "eager")]
    out = [Variant("eager", None), Variant("torch.compile", "inductor")]
    if device.type == "cuda":
        out.append(Variant("torch.compile + CUDA graphs", "inductor", "reduce-overhead"))
    return out


def build(smoke: bool, config: Path) -> Any:
    if smoke:
        loaded = random_full_size(TINY_CHECKPOINT / "config.json", torch.device("cpu"), torch.float32,
                                  TINY_CHECKPOINT / "mimi_config.json")
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        loaded = random_full_size(config, device, dtype, None)
    return loaded


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    @property
    def left_s(self) -> float:
        return self.deadline - time.perf_counter()


async def engine_figures(loaded: Any, calls: tuple[int, ...], reply_items: int, repeats: int, budget: Budget,
                         ) -> dict[str, float]:
    from bench.engine_latency import make_engine

    out: dict[str, float] = {}
    engine = make_engine(loaded, "chunked", reply_items)
    try:
        await first_audio_latency(engine, speech_clip(1.0, 7), paced=False)  # warm-up (and compile)
        out["first_audio_ms"] = median([await first_audio_latency(engine, speech_clip(2.0, r), paced=False)
                                        for r in range(repeats)]) * 1000
        (timing,), _ = await replies(engine, [speech_clip(2.0, 3)], together=True)
        out["rtf"] = timing.real_time_factor
        best, rate = 0, float("nan")
        for n in calls:
            if budget.left_s < 30:
                break
            timings, wall = await replies(engine, [speech_clip(1.0 + (i % 3), i) for i in range(n)], together=True)
            if any(t.error for t in timings) or min(t.real_time_factor for t in timings) < 1.0:
                break
            best, rate = n, sum(t.frames for t in timings) * 0.08 / wall
        out["realtime_calls"], out["audio_s_per_s"] = float(best), rate
    finally:
        engine.stop()
    return out


def model_figures(loaded: Any, repeats: int) -> dict[str, float]:
    from bench.model_step import run as model_step_run

    seconds = 4.0
    rows = dict(model_step_run(loaded.model, loaded.config, loaded.mimi, loaded.device, loaded.dtype, seconds, 256,
                               repeats))
    pick = {name.split(" ")[0]: ms for name, ms in rows.items()}
    return {"prefill_ms_per_audio_s": pick["prefill"] / seconds, "backbone_step_ms": pick["backbone"],
            "depthformer_frame_ms": pick["depthformer"], "mimi_frame_ms": pick.get("mimi", float("nan"))}


def run_variant(loaded: Any, variant: Variant, calls: tuple[int, ...], reply_items: int, repeats: int,
                budget: Budget) -> dict[str, float | str]:
    originals = [(layer, layer.feed_forward) for layers in (loaded.model.lfm.layers, loaded.model.depthformer.layers)
                 for layer in layers]
    try:
        if variant.backend is not None:
            apply_compile(loaded, backend=variant.backend, mode=variant.mode)
        figures: dict[str, float | str] = dict(model_figures(loaded, repeats))
        figures.update(asyncio.run(engine_figures(loaded, calls, reply_items, max(1, repeats // 10), budget)))
        return figures
    except Exception as exc:  # one variant's failure must not lose the others' figures
        return {"error": f"{type(exc).__name__}: {str(exc)[:80]}"}
    finally:
        for layer, block in originals:
            layer.add_module("feed_forward", block)
        if variant.backend is not None:
            torch._dynamo.reset()


def table(results: dict[str, dict[str, float | str]]) -> str:
    names = list(results)
    rows: list[list[object]] = []
    for key, label, target in FIGURES:
        row: list[object] = [label]
        for name in names:
            r = results[name]
            value = r.get(key, r.get("error", "skipped"))
            row.append(int(value) if key == "realtime_calls" and isinstance(value, float) else value)
        rows.append([*row, target or "-"])
    if len(names) > 1 and "eager" in results:
        for name in names[1:]:
            a, b = results["eager"].get("first_audio_ms"), results[name].get("first_audio_ms")
            if isinstance(a, float) and isinstance(b, float) and a:
                rows.append([f"first audio: {name} / eager", *["" for _ in names[:-1]], b / a, ""])
    return format_table(["figure", *names, "target"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (checks the script, not the GPU)")
    parser.add_argument("--config", type=Path, default=FULL_SIZE_CONFIG, help="full-size config.json")
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu.json and gpu.md")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting new work after this long")
    parser.add_argument("--variants", default=None, help="comma-separated subset of the variant names")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    budget = Budget(args.budget_s)
    torch.set_num_threads(1 if args.smoke else min(8, torch.get_num_threads()))
    loaded = build(args.smoke, args.config)
    calls = SMOKE_CALLS if args.smoke else FULL_CALLS
    reply_items, repeats = (12, 3) if args.smoke else (54, 20)
    chosen = variants(loaded.device, args.smoke)
    if args.variants:
        wanted = {v.strip() for v in args.variants.split(",")}
        chosen = [v for v in chosen if v.name in wanted]
    label = "tiny config (smoke)" if args.smoke else f"{args.config.name}, random weights"
    print(f"# bench.gpu: {label}; device {loaded.device}; dtype {str(loaded.dtype).removeprefix('torch.')}")
    print(f"machine: {machine_description(loaded.device)}", flush=True)
    results: dict[str, dict[str, float | str]] = {}
    for variant in chosen:
        if budget.left_s < 60:
            results[variant.name] = {"error": "skipped (time budget)"}
            continue
        t = time.perf_counter()
        results[variant.name] = run_variant(loaded, variant, calls, reply_items, repeats, budget)
        print(f"({variant.name}: {time.perf_counter() - t:.0f} s)", flush=True)
    text = table(results)
    print()
    print(text)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu.md").write_text(text + "\n", encoding="utf-8")
        (args.out / "gpu.json").write_text(json.dumps({"machine": machine_description(loaded.device), "label": label,
                                                       "results": results}, indent=2, default=str) + "\n",
                                           encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
