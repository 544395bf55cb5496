"""The engine figures of the suite, from ``bench.engine_latency`` (tiny checkpoint, CPU).

Time to first audio chunk after end of turn (``turn`` vs ``chunked``), real-time factor of one
call, and batched throughput for 1-32 calls against the same replies generated one call at a
time (the baseline, same run).
"""

from __future__ import annotations

import time

from bench.common import TINY_CHECKPOINT, load_for_bench
from bench.engine_latency import (
    BATCH_SIZES,
    UTTERANCES_S,
    Plan,
    batching,
    end_of_turn_latency,
    single_call_rtf,
)
from bench.results import Metric, Section, parse_markdown_table


def _num(cell: object) -> float:
    try:
        return float(str(cell))
    except ValueError:
        return float("nan")


async def measure(quick: bool) -> list[Section]:
    import argparse

    started = time.perf_counter()
    args = argparse.Namespace(checkpoint=TINY_CHECKPOINT, full_size=None, mimi_config=None, device="cpu",
                              dtype="float32", threads=1)
    loaded, label = load_for_bench(args)
    plan = Plan(2, (1.0, 4.0), (1, 4, 8), 24) if quick else Plan(3, UTTERANCES_S, BATCH_SIZES, 54)
    command = "lfm-call bench" + (" --quick" if quick else "")
    table_a, medians = await end_of_turn_latency(loaded, plan)
    headers_a, rows_a = parse_markdown_table(table_a)
    first = Section("engine_first_audio", "Engine: time to first audio chunk after end of turn (respond -> first "
                    "chunk)", command + "   # section engine_first_audio", headers_a, rows_a,
                    notes=[f"{label}; same as `python -m bench.engine_latency --sections a`; chunked/turn rows are the "
                           "ratio to the turn-mode baseline"])
    shortest = min(plan.utterances_s)
    first.metrics = {"chunked_1s_ms": Metric(medians[("chunked", shortest)], "ms", "lower"),
                     "turn_1s_ms": Metric(medians[("turn", shortest)], "ms", "lower")}
    first.seconds = time.perf_counter() - started
    started = time.perf_counter()
    headers_b, rows_b = parse_markdown_table(await single_call_rtf(loaded, plan))
    rtf = Section("engine_rtf", f"Engine: real-time factor, one call (reply capped at {plan.reply_items} items)",
                  command + "   # section engine_rtf", headers_b, rows_b,
                  notes=["real-time factor = audio seconds generated / wall seconds (> 1: faster than real time)"])
    rtfs = [_num(r[headers_b.index("real-time factor")]) for r in rows_b]
    rtf.metrics = {"rtf": Metric(sorted(rtfs)[len(rtfs) // 2], "x", "higher")}
    rtf.seconds = time.perf_counter() - started
    started = time.perf_counter()
    headers_c, rows_c = parse_markdown_table(await batching(loaded, plan))
    batch = Section("engine_batching", "Engine: batched throughput vs one call at a time",
                    command + "   # section engine_batching", headers_c, rows_c,
                    notes=["baseline: the same N replies generated one call at a time (sequential wall s); the "
                           "ratio column is batched/sequential throughput"])
    col = headers_c.index("batched/sequential throughput")
    top = rows_c[-1]
    batch.metrics = {f"throughput_ratio_{top[0]}_calls": Metric(_num(top[col]), "x", "higher"),
                     f"audio_s_per_s_{top[0]}_calls": Metric(_num(top[headers_c.index('audio s per s')]), "x",
                                                            "higher")}
    batch.seconds = time.perf_counter() - started
    for s in (first, rtf, batch):
        s.notes.append("tiny checkpoint: engine overhead and scheduling, not model cost (see bench/gpu.py)")
    return [first, rtf, batch]
