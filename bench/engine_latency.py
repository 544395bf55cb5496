"""Engine latency and capacity: end-of-turn latency, real-time factor, batching, per-step overhead.

    python -m bench.engine_latency [--checkpoint DIR | --full-size CONFIG.json] [--device cpu|cuda]
                                   [--dtype ...] [--quick] [--compile]

a. time to first audio after end of turn (respond() -> first AgentAudio), input modes `turn` and
   `chunked`, 1 s and 4 s utterances fed in real time (respond right after the last frame) and a
   10 s one fed at once and prefilled before respond; medians, and chunked/turn from the same run;
b. real-time factor of one call (audio seconds generated / wall seconds, respond to end of reply);
c. N concurrent calls all generating: per-call real-time factor, calls faster than real time, and
   the throughput against the same N replies generated one call at a time;
d. engine overhead per generation step: Engine.step_seconds minus the model math of those steps
   (timed in place, see ``bench.common.MathClock``).

Speech is espeak-ng (synthetic speech-like audio when espeak-ng is missing; the output says which).
Replies are greedy and capped by ``--reply-items`` so that the tiny random checkpoint's replies are
comparable between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from bench.common import (
    FRAME_SECONDS,
    MathClock,
    ReplyTiming,
    add_model_arguments,
    apply_compile,
    first_audio_latency,
    format_table,
    load_for_bench,
    machine_description,
    median,
    quantiles_ms,
    replies,
    same_codes,
    speech_clip,
    wait_idle,
)
from model.checkpoint import LoadedModel
from model.engine import Engine, EngineSettings

UTTERANCES_S = (1.0, 4.0, 10.0)
PACED_MAX_S = 4.0  # longer utterances are fed at once and prefilled before respond()
BATCH_SIZES = (1, 4, 8, 16, 32)
QUICK_BATCH_SIZES = (1, 2)


@dataclass(frozen=True)
class Plan:
    repeats: int
    utterances_s: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    reply_items: int


def make_engine(loaded: LoadedModel, mode: str, reply_items: int, chunk_frames: int = 8,
                left_context_frames: int = 16, slots: int = 64) -> Engine:
    engine = Engine(loaded, EngineSettings(input_mode=mode, max_reply_items=reply_items, chunk_frames=chunk_frames,
                                           left_context_frames=left_context_frames, slots=slots,
                                           max_context_tokens=4096))
    engine.start()
    return engine


async def end_of_turn_latency(loaded: LoadedModel, plan: Plan) -> tuple[str, dict[tuple[str, float], float]]:
    """Table a; also returns the medians by (mode, seconds)."""
    medians: dict[tuple[str, float], float] = {}
    rows: list[list[object]] = []
    for mode in ("turn", "chunked"):
        engine = make_engine(loaded, mode, plan.reply_items)
        try:
            await first_audio_latency(engine, speech_clip(1.0, 7), paced=False)  # warm-up
            for seconds in plan.utterances_s:
                paced = seconds <= PACED_MAX_S
                values = [await first_audio_latency(engine, speech_clip(seconds, r), paced)
                          for r in range(plan.repeats)]
                mid, low, high = quantiles_ms(values)
                medians[(mode, seconds)] = mid
                feed = "real time" if paced else "at once, prefilled"
                rows.append([mode, f"{seconds:g}", feed, len(values), mid, low, high])
        finally:
            engine.stop()
    for seconds in plan.utterances_s:
        ratio = medians[("chunked", seconds)] / medians[("turn", seconds)]
        rows.append(["chunked/turn", f"{seconds:g}", "", "", ratio, "", ""])
    table = format_table(["mode", "utterance s", "fed", "n", "median ms", "min ms", "max ms"], rows)
    return table, medians


async def single_call_rtf(loaded: LoadedModel, plan: Plan) -> str:
    """Table b."""
    engine = make_engine(loaded, "chunked", plan.reply_items)
    try:
        clip = speech_clip(4.0, 3)
        await replies(engine, [speech_clip(1.0, 7)], together=True)  # warm-up
        rows: list[list[object]] = []
        for _ in range(plan.repeats):
            engine.step_seconds.clear()
            (timing,), wall = await replies(engine, [clip], together=True)
            await wait_idle(engine)
            rows.append([timing.frames, timing.frames * FRAME_SECONDS, wall, timing.real_time_factor,
                         timing.first_audio_s * 1000, timing.buffer_needed_s * 1000,
                         median(engine.step_seconds) * 1000, timing.error or ""])
    finally:
        engine.stop()
    return format_table(["audio frames", "audio s", "wall s", "real-time factor", "first audio ms",
                         "playout lead needed ms", "median step ms", "error"], rows)


async def batching(loaded: LoadedModel, plan: Plan) -> str:
    """Table c."""
    engine = make_engine(loaded, "chunked", plan.reply_items)
    rows: list[list[object]] = []
    try:
        await replies(engine, [speech_clip(1.0, 7)], together=True)  # warm-up
        for n in plan.batch_sizes:
            clips = [speech_clip(1.0 + (i % 3), i) for i in range(n)]
            engine.step_seconds.clear()
            batched, batched_wall = await replies(engine, clips, together=True)
            await wait_idle(engine)
            batched_step_ms = median(engine.step_seconds) * 1000
            sequential, sequential_wall = await replies(engine, clips, together=False)
            audio_s = sum(t.frames for t in batched) * FRAME_SECONDS
            rtfs = [t.real_time_factor for t in batched]
            rows.append([n, audio_s, batched_wall, audio_s / batched_wall, median(rtfs), min(rtfs),
                         sum(1 for r in rtfs if r > 1.0), median([t.buffer_needed_s for t in batched]) * 1000,
                         batched_step_ms, sequential_wall, sequential_wall / batched_wall,
                         f"{same_codes(batched, sequential)}/{n}", _errors(batched + sequential)])
    finally:
        engine.stop()
    return format_table(["calls", "audio s", "batched wall s", "audio s per s", "median call RTF", "min call RTF",
                         "calls > real time", "median playout lead ms", "median step ms", "sequential wall s",
                         "batched/sequential throughput", "same replies", "errors"], rows)


def _errors(timings: list[ReplyTiming]) -> int:
    return sum(1 for t in timings if t.error is not None)


async def step_overhead(loaded: LoadedModel, plan: Plan) -> str:
    """Table d."""
    engine = make_engine(loaded, "chunked", plan.reply_items)
    rows: list[list[object]] = []
    try:
        await replies(engine, [speech_clip(1.0, 7)], together=True)  # warm-up
        for n in sorted({1, max(plan.batch_sizes[:3])}):
            clips = [speech_clip(1.0 + (i % 3), i) for i in range(n)]
            engine.step_seconds.clear()
            steps_before = engine.steps
            clock = MathClock(loaded.device)
            with clock.installed(engine):
                await replies(engine, clips, together=True)
                await wait_idle(engine)
            steps = engine.steps - steps_before
            step_s = float(np.sum(engine.step_seconds))
            per_step = (step_s - clock.seconds) / steps
            refeed_ms = (clock.by_name.get("forward", 0.0) + clock.by_name.get("_feed_rows", 0.0)) * 1000
            rows.append([n, steps, step_s / steps * 1000, clock.seconds / steps * 1000, per_step * 1000,
                         per_step / n * 1000, "yes" if per_step * 1000 <= 2.0 else "no", refeed_ms])
    finally:
        engine.stop()
    return format_table(["calls", "steps", "engine step ms", "model math ms", "overhead ms/step",
                         "overhead ms/step/call", "<= 2 ms",
                         "reply-close feeds ms (in math)"], rows)


async def run(loaded: LoadedModel, plan: Plan, sections: str) -> None:
    if "a" in sections:
        table, _ = await end_of_turn_latency(loaded, plan)
        print("\n## a. time to first audio after end of turn (respond() -> first AgentAudio)\n")
        print(table)
    if "b" in sections:
        print(f"\n## b. real-time factor, one call (reply capped at {plan.reply_items} items)\n")
        print(await single_call_rtf(loaded, plan))
    if "c" in sections:
        print(f"\n## c. concurrent calls, all generating (reply capped at {plan.reply_items} items)\n")
        print(await batching(loaded, plan))
    if "d" in sections:
        print("\n## d. engine overhead per generation step (excluding model math)\n")
        print(await step_overhead(loaded, plan))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_latency", description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="one repeat, short utterances, 1-2 calls (smoke run)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the feed-forward blocks")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reply-items", type=int, default=54,
                        help="cap on reply items (6 text + 12 audio per 18 items)")
    parser.add_argument("--sections", default="abcd", help="which tables to print (letters a-d)")
    parser.add_argument("--utterances", default=None, help="utterance lengths for table a, e.g. 1,4,10")
    parser.add_argument("--calls", default=None, help="call counts for table c, e.g. 1,4,8,16,32")
    args = parser.parse_args(argv)
    if args.quick:
        plan = Plan(1, (1.0,), QUICK_BATCH_SIZES, min(args.reply_items, 24))
    else:
        plan = Plan(args.repeats, UTTERANCES_S, BATCH_SIZES, args.reply_items)
    if args.utterances:
        plan = dataclasses.replace(plan, utterances_s=tuple(float(x) for x in args.utterances.split(",")))
    if args.calls:
        plan = dataclasses.replace(plan, batch_sizes=tuple(int(x) for x in args.calls.split(",")))
    started = time.perf_counter()
    loaded, label = load_for_bench(args)
    compiled = apply_compile(loaded) if args.compile else []
    source = speech_clip(1.0).source
    print(f"# engine latency: {label}")
    print(f"machine: {machine_description(loaded.device)}")
    print(f"speech: {source}" + ("" if source == "espeak-ng" else " (espeak-ng not available: speech-like signal)"))
    if compiled:
        print(f"torch.compile: {len(compiled)} feed-forward blocks")
    asyncio.run(run(loaded, plan, args.sections))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
