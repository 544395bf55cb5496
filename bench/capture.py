"""Proof, on the CPU, that the generation step can be captured as one graph (the ``capture`` section).

    lfm-call bench --sections capture

For the full-size architecture (tests/fixtures/lfm2-audio-1.5b-config.json, on the meta device:
no weights, no memory), greedy and with the default audio sampling: graphs and graph breaks when
torch._dynamo traces one step (``torch.compile(fullgraph=True)`` needs 0 breaks), host syncs in a
step (the step runs on the meta device, where any sync would fail: 0 when it runs), and the aten
ops of one step at batch 1, 8 and 32 (a captured graph replays the same ops whatever the batch).
"""

from __future__ import annotations

import sys
import time

from bench.common import FULL_SIZE_CONFIG
from bench.results import Metric, Section
from model.batched import StepSampling
from model.config import LFM2AudioConfig
from model.step_capture import graph_breaks, op_counts, run_on_meta

BATCHES = (1, 8, 32)
VARIANTS = {"greedy": StepSampling(), "sampled (audio T 1.0, top-k 4)": StepSampling(0.0, 0, 1.0, 4)}


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def measure() -> Section:
    started = time.perf_counter()
    config = LFM2AudioConfig.from_file(FULL_SIZE_CONFIG)
    rows: list[list[object]] = []
    metrics: dict[str, Metric] = {}
    for name, sampling in VARIANTS.items():
        graphs, breaks = graph_breaks(config, sampling=sampling)
        try:
            run_on_meta(config, sampling=sampling)
            syncs: object = 0
        except Exception as exc:  # a host sync (or anything data-dependent) cannot run on meta
            syncs = f"step failed on meta: {exc}"
        ops = op_counts(config, BATCHES, sampling=sampling)
        _say(f"capture ({name}): graph breaks: {breaks}")
        _say(f"capture ({name}): host syncs in step: {syncs}")
        _say(f"capture ({name}): ops per step: " + ", ".join(f"batch {b} = {n}" for b, n in ops.items()))
        rows.append([name, graphs, breaks, syncs, *ops.values(), "yes" if len(set(ops.values())) == 1 else "NO"])
        key = "greedy" if sampling == StepSampling() else "sampled"
        metrics[f"{key}_graph_breaks"] = Metric(float(breaks), "breaks", "lower")
        metrics[f"{key}_ops_per_step"] = Metric(float(ops[BATCHES[0]]), "ops", "lower")
    section = Section("capture", "Capture proof: the full-size generation step as one graph (CPU, meta device)",
                      "lfm-call bench --sections capture",
                      ["step", "graphs", "graph breaks", "host syncs in step",
                       *(f"ops, batch {b}" for b in BATCHES), "equal"], rows,
                      notes=["torch._dynamo.explain of model.batched.GenerationStep; ops = aten ops dispatched by "
                             "one step on the meta device (backbone, text logits, depthformer, sampling, next "
                             "inputs); on CUDA the engine replays it per batch bucket (model.step_capture)"],
                      metrics=metrics)
    section.seconds = time.perf_counter() - started
    return section
