"""The batched generation step as a CUDA graph per batch bucket, and the proofs that it can be one.

On CUDA, ``CapturedSteps`` records ``model.batched.GenerationStep`` once per (batch bucket,
key-length bucket): batch buckets 1, 2, 4, ... up to the pool's slots (rows past the active ones
are free slots that do not advance), key lengths 256, 512, ... up to the slot context (keys past
a row's length are masked anyway). A step then copies its small inputs into the graph's static
buffers and replays it: one launch instead of thousands of kernel launches from Python. The pool
(K/V, conv state, positions) and the engine's pending-input buffer live at fixed addresses, which
is what the graph reads and writes. Warm-up and capture run with no row advancing, which leaves
every slot as it was. Elsewhere (CPU) the step runs eagerly at exact sizes.

What makes capture possible is checked on the CPU, without a GPU (``bench --sections capture``):

* ``graph_breaks``: ``torch._dynamo.explain`` traces the step in one graph (0 breaks);
* ``run_on_meta``: the step runs on the meta device, where any host synchronisation (``.item()``,
  data-dependent shapes) would fail;
* ``op_counts``: the aten ops of one step are the same at every batch size.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from model.batched import GenerationStep, StepOutput, StepSampling
from model.config import LFM2AudioConfig
from model.pool import BackbonePool

log = logging.getLogger(__name__)

MIN_KV_BUCKET = 256


def bucket(n: int, limit: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum), capped at ``limit``."""
    b = minimum
    while b < n:
        b *= 2
    return min(b, limit)


@dataclass
class StepInputs:
    embeds: torch.Tensor
    advance: torch.Tensor
    hidden_in: torch.Tensor
    want_audio: torch.Tensor
    forced: torch.Tensor


def dummy_inputs(pool: BackbonePool, hidden: int, rows: int, device: torch.device | str,
                 dtype: torch.dtype) -> StepInputs:
    return StepInputs(
        embeds=torch.zeros(rows, hidden, device=device, dtype=dtype),
        advance=torch.zeros(rows, dtype=torch.bool, device=device),
        hidden_in=torch.zeros(rows, hidden, device=device, dtype=dtype),
        want_audio=torch.zeros(rows, dtype=torch.bool, device=device),
        forced=torch.full((rows,), -1, dtype=torch.long, device=device),
    )


class _Graph:
    def __init__(self, step: GenerationStep, embeds: torch.Tensor, rows: int, kv_len: int, pool: Any) -> None:
        device = embeds.device
        self.inputs = dummy_inputs(step.pool, embeds.shape[1], rows, device, embeds.dtype)
        self.embeds = embeds  # a view of the engine's pending buffer: fixed address
        self.kv_len = kv_len
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: nothing advances, so no slot changes
                self._call(step)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.output = self._call(step)

    def _call(self, step: GenerationStep) -> StepOutput:
        i = self.inputs
        return step(self.embeds, i.advance, i.hidden_in, i.want_audio, i.forced, self.kv_len)

    def replay(self, advance: torch.Tensor, hidden_in: torch.Tensor, want_audio: torch.Tensor,
               forced: torch.Tensor) -> StepOutput:
        i = self.inputs
        i.advance.copy_(advance, non_blocking=True)
        i.hidden_in.copy_(hidden_in, non_blocking=True)
        i.want_audio.copy_(want_audio, non_blocking=True)
        i.forced.copy_(forced, non_blocking=True)
        self.graph.replay()
        return self.output


class CapturedSteps:
    """The step, captured per (batch bucket, key-length bucket) on CUDA; eager at exact sizes elsewhere."""

    def __init__(self, step: GenerationStep, pending: torch.Tensor, enabled: bool) -> None:
        self.step = step
        self.pending = pending
        self.enabled = enabled and pending.device.type == "cuda"
        self.graphs: dict[tuple[int, int], _Graph] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.enabled else None
        self.failed = False

    def __call__(self, rows: int, advance: torch.Tensor, hidden_in: torch.Tensor, want_audio: torch.Tensor,
                 forced: torch.Tensor, kv_len: int) -> tuple[StepOutput, int]:
        """Run the step for (at least) ``rows`` rows; returns (output, rows actually computed)."""
        if not self.enabled or self.failed:
            return self.step(self.pending[:rows], advance, hidden_in, want_audio, forced, kv_len), rows
        pool = self.step.pool
        b = bucket(rows, pool.slots)
        k = bucket(kv_len, pool.context, MIN_KV_BUCKET)
        pad = b - rows
        if pad:
            advance = torch.cat((advance, advance.new_zeros(pad)))
            want_audio = torch.cat((want_audio, want_audio.new_zeros(pad)))
            forced = torch.cat((forced, forced.new_full((pad,), -1)))
            hidden_in = torch.cat((hidden_in, hidden_in.new_zeros(pad, hidden_in.shape[1])))
        graph = self.graphs.get((b, k))
        if graph is None:
            try:
                graph = self.graphs[(b, k)] = _Graph(self.step, self.pending[:b], b, k, self._pool)
                log.info("captured the generation step for batch %d, keys %d (%d graphs)", b, k, len(self.graphs))
            except Exception:  # capture is an optimisation: run eagerly from now on, and say so
                log.exception("CUDA graph capture failed; the engine steps eagerly")
                self.failed = True
                return self.step(self.pending[:rows], advance[:rows], hidden_in[:rows], want_audio[:rows],
                                 forced[:rows], kv_len), rows
        return graph.replay(advance, hidden_in, want_audio, forced), b


# -- the proofs, on the CPU ---------------------------------------------------------------------------------


def meta_step(config: LFM2AudioConfig, rows: int, kv_len: int, slots: int | None = None,
              sampling: StepSampling = StepSampling()) -> tuple[GenerationStep, StepInputs]:
    """The real architecture of ``config`` on the meta device (no memory, no data) with a pool of
    ``slots`` (default ``rows``) and inputs for ``rows`` rows."""
    from model.checkpoint import build_model

    model = build_model(config, "meta", torch.float32)
    pool = BackbonePool(config.lfm, slots or rows, max(kv_len + 1, 2), "meta", torch.float32)
    step = GenerationStep(model, pool, sampling)
    return step, dummy_inputs(pool, config.lfm.hidden_size, rows, "meta", torch.float32)


def _run(step: GenerationStep, inputs: StepInputs, kv_len: int) -> StepOutput:
    i = inputs
    return step(i.embeds, i.advance, i.hidden_in, i.want_audio, i.forced, kv_len)


def run_on_meta(config: LFM2AudioConfig, rows: int = 8, kv_len: int = 256,
                sampling: StepSampling = StepSampling()) -> list[int]:
    """Run one step on the meta device; returns the packed output's shape (a host sync would raise)."""
    step, inputs = meta_step(config, rows, kv_len, sampling=sampling)
    return list(_run(step, inputs, kv_len).packed.shape)


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def op_counts(config: LFM2AudioConfig, batches: tuple[int, ...] = (1, 8, 32), kv_len: int = 256,
              sampling: StepSampling = StepSampling()) -> dict[int, int]:
    """aten ops dispatched by one step at each batch size (on meta)."""
    out = {}
    for rows in batches:
        step, inputs = meta_step(config, rows, kv_len, slots=max(batches), sampling=sampling)
        with _OpCounter() as counter:
            _run(step, inputs, kv_len)
        out[rows] = sum(counter.ops.values())
    return out


def graph_breaks(config: LFM2AudioConfig, rows: int = 4, kv_len: int = 64,
                 sampling: StepSampling = StepSampling()) -> tuple[int, int]:
    """(graphs, graph breaks) when torch._dynamo traces one step (``torch.compile(fullgraph=True)``
    would fail on any break), on the meta device."""
    import torch._dynamo

    step, inputs = meta_step(config, rows, kv_len, sampling=sampling)

    def fn(embeds: torch.Tensor, advance: torch.Tensor, hidden_in: torch.Tensor, want_audio: torch.Tensor,
           forced: torch.Tensor) -> torch.Tensor:
        return step(embeds, advance, hidden_in, want_audio, forced, kv_len).packed

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(inputs.embeds, inputs.advance, inputs.hidden_in, inputs.want_audio,
                                            inputs.forced)
    return int(explanation.graph_count), int(explanation.graph_break_count)
