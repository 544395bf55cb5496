"""Seeded random weights that any program can regenerate exactly, from a name and a seed.

Parity fixtures at realistic sizes are too large to commit: a fixture then holds the official
implementation's outputs and the seed, and both the reference generator (which fills the OFFICIAL
model, in its own environment) and the tests (which fill ours) rebuild the same weights here.
Values come from splitmix64 over (seed, FNV-1a hash of the tensor name, element index), pure
uint64 arithmetic in numpy, so they do not depend on torch's or numpy's random streams, threads or
versions. Because the state-dict names of ``model/`` are the official ones, one name -> values
rule serves both models.

``lfm2_audio_rule`` and ``detokenizer_rule`` say how each tensor is drawn: uniform values with a
given mean and standard deviation (matrices ~ 1/sqrt(fan_in), norm weights ~ 1 +- 0.15, biases
small, batch-norm statistics non-trivial), optionally with most rows zero (``keep_rows``) so that a
committed file compresses, and optionally rounded to bfloat16 so a bf16 file holds them exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_CHUNK = 1 << 22


def _fnv1a64(text: str) -> int:
    h = 0xCBF29CE484222325
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def uniform(seed: int, name: str, count: int) -> np.ndarray:
    """``count`` float64 values in [0, 1) for tensor ``name`` under ``seed``."""
    key = np.uint64((_fnv1a64(name) ^ ((seed * 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF)
    out = np.empty(count, dtype=np.float64)
    with np.errstate(over="ignore"):
        for start in range(0, count, _CHUNK):
            idx = np.arange(start, min(count, start + _CHUNK), dtype=np.uint64)
            z = _splitmix64(key + (idx + np.uint64(1)) * _GOLDEN)
            out[start : start + len(idx)] = (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return out


@dataclass(frozen=True)
class Draw:
    """Uniform values with this mean and standard deviation; ``keep_rows`` rows of dim 0 non-zero
    (the others zero), always including ``always_rows``."""

    mean: float = 0.0
    std: float = 0.0
    keep_rows: int | None = None
    always_rows: tuple[int, ...] = ()
    same_as: str | None = None  # draw the values of this other tensor (tied aliases)
    row_groups: tuple[str, ...] = ()  # dim 0 is these tables' rows stacked: keep the rows each keeps


Rule = Callable[[str, tuple[int, ...]], Draw | None]


def row_mask(seed: int, name: str, rows: int, keep: int, always: tuple[int, ...] = ()) -> np.ndarray:
    """Which ``keep`` of ``rows`` rows (plus ``always``) a sparse table ``name`` keeps."""
    mask = np.zeros(rows, dtype=bool)
    order = np.argsort(uniform(seed, name + "#rows", rows), kind="stable")
    mask[order[:keep]] = True
    mask[[r for r in always if r < rows]] = True
    return mask


def draw(seed: int, name: str, shape: tuple[int, ...], spec: Draw) -> np.ndarray:
    count = int(np.prod(shape)) if shape else 1
    half_width = spec.std * math.sqrt(3.0)
    values = spec.mean + (uniform(seed, spec.same_as or name, count) * 2.0 - 1.0) * half_width
    values = values.reshape(shape) if shape else values.reshape(())
    if spec.keep_rows is not None and shape and spec.keep_rows < shape[0] // max(1, len(spec.row_groups)):
        if spec.row_groups:
            per = shape[0] // len(spec.row_groups)
            mask = np.concatenate([row_mask(seed, g, per, spec.keep_rows, spec.always_rows) for g in spec.row_groups])
        else:
            mask = row_mask(seed, spec.same_as or name, shape[0], spec.keep_rows, spec.always_rows)
        values[~mask] = 0.0
    return values


def seeded_tensors(shapes: Mapping[str, tuple[tuple[int, ...], torch.dtype]], seed: int, rule: Rule,
                   round_to: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every floating tensor that ``rule`` draws (others are left out), as float32 tensors whose values
    are exactly representable in ``round_to`` (e.g. bfloat16) when given."""
    out: dict[str, torch.Tensor] = {}
    for name, (shape, dtype) in shapes.items():
        if not dtype.is_floating_point:
            continue
        spec = rule(name, tuple(shape))
        if spec is None:
            continue
        t = torch.from_numpy(draw(seed, name, tuple(shape), spec).astype(np.float32))
        if round_to is not None:
            t = t.to(round_to).to(torch.float32)
        out[name] = t
    return out


def fill_module(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], names: Iterable[str] | None = None) -> list[str]:
    """Copy ``tensors`` into the parameters/buffers of ``module`` with the same names; returns the names
    of floating tensors of the module that were NOT filled."""
    targets = dict(module.state_dict(keep_vars=True))  # persistent tensors only, tied aliases included
    wanted = set(names) if names is not None else set(targets)
    with torch.no_grad():
        for name, value in tensors.items():
            if name in targets and name in wanted:
                targets[name].copy_(value.to(dtype=targets[name].dtype, device=targets[name].device))
    return sorted(n for n, t in targets.items() if t.is_floating_point() and n not in tensors and n in wanted)


def shapes_of(module: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor a checkpoint of ``module`` holds (its state dict, tied aliases
    included; non-persistent buffers such as RoPE tables are not weights and are left alone)."""
    return {n: (tuple(t.shape), t.dtype) for n, t in module.state_dict(keep_vars=True).items()}


def materialize(module: torch.nn.Module, seed: int, rule: Rule, weights_dtype: torch.dtype = torch.float32,
                row_scales: Iterable[Mapping[str, object]] = ()) -> list[str]:
    """Fill ``module`` with the seeded weights, scale the listed rows (``{"tensor", "row", "scale"}``),
    and round every parameter to ``weights_dtype`` (what a file in that dtype would hold). Returns
    the floating tensors the rule left as they were."""
    tensors = seeded_tensors(shapes_of(module), seed, rule, round_to=None if weights_dtype == torch.float32 else weights_dtype)
    left = fill_module(module, tensors)
    params = dict(module.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for edit in row_scales:
            params[str(edit["tensor"])][int(str(edit["row"]))] *= float(str(edit["scale"]))
        if weights_dtype != torch.float32:
            for p in module.parameters():
                p.copy_(p.to(weights_dtype).to(p.dtype))
    return left


def _fan_in(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[1:])) if len(shape) > 1 else 1


def _norm_like(name: str) -> bool:
    return any(part in name for part in ("norm", "layernorm")) or name.endswith(("batch_norm.weight",))


@dataclass(frozen=True)
class AudioRuleSettings:
    """Knobs of ``lfm2_audio_rule`` (the defaults suit a realistic-width model)."""

    final_norm_scale: float = 1.0     # lfm.embedding_norm.weight multiplier (text-logit margins)
    depth_norm_scale: float = 1.0     # depth_embeddings.*.embedding_norm.weight multiplier (code margins)
    audio_rows: int | None = None     # non-zero rows per codebook table (None: all)
    text_rows: int | None = None      # non-zero rows of lfm.embed_tokens (None: all)
    codebooks: int = 8
    audio_vocab: int = 2049
    depth_tied: bool = True           # depthformer.tie: to_logits aliases the embedding


def lfm2_audio_rule(settings: AudioRuleSettings = AudioRuleSettings()) -> Rule:
    """How each tensor of an LFM2-Audio state dict (official names) is drawn."""

    def rule(name: str, shape: tuple[int, ...]) -> Draw | None:
        if name.endswith("num_batches_tracked") or name in ("codebook_offsets", "audio_loss_weights"):
            return None
        if name.endswith("running_mean"):
            return Draw(0.0, 0.2)
        if name.endswith("running_var"):
            return Draw(1.25, 0.433)  # uniform on [0.5, 2.0]
        if name.endswith(("pos_bias_u", "pos_bias_v")):
            return Draw(0.0, 0.3)
        if name == "lfm.embedding_norm.weight":
            return Draw(settings.final_norm_scale, 0.15 * settings.final_norm_scale)
        if name.startswith("depth_embeddings.") and "embedding_norm" in name:
            return Draw(settings.depth_norm_scale, 0.15 * settings.depth_norm_scale)
        if name.endswith(".weight") and _norm_like(name) and len(shape) == 1:
            return Draw(1.0, 0.15)
        if name.endswith(".bias"):
            return Draw(0.0, 0.05)
        if name == "lfm.embed_tokens.weight":
            return Draw(0.0, 2.0 / math.sqrt(shape[1]), settings.text_rows, tuple(range(min(shape[0], 134))))
        if name == "audio_embedding.to_logits.weight":
            return Draw(0.0, 0.0)  # unused at inference: zero, so a committed file compresses
        eoa = (settings.audio_vocab - 1,)
        if name == "audio_embedding.embedding.weight":
            # codebook i's rows are kept where depth_embeddings.i keeps them: the codes that can occur
            groups = tuple(f"depth_embeddings.{i}.embedding.weight" for i in range(settings.codebooks))
            return Draw(0.0, 1.0 / math.sqrt(shape[1]), settings.audio_rows, eoa, row_groups=groups)
        if name.startswith("depth_embeddings.") and name.endswith(".embedding.weight"):
            return Draw(0.0, 1.0 / math.sqrt(shape[1]), settings.audio_rows, eoa)
        if name.startswith("depth_embeddings.") and name.endswith(".to_logits.weight"):
            source = name.replace(".to_logits.", ".embedding.")
            if settings.depth_tied:
                return Draw(0.0, 1.0 / math.sqrt(shape[1]), settings.audio_rows, eoa, same_as=source)
            return Draw(0.0, 1.0 / math.sqrt(shape[1]), settings.audio_rows, eoa, row_groups=(source,))
        if name.endswith(".conv.weight") and name.startswith("lfm."):
            return Draw(0.0, 1.0 / math.sqrt(3.0))  # short-conv kernels
        if len(shape) >= 2:
            return Draw(0.0, 1.0 / math.sqrt(_fan_in(shape)))
        return Draw(0.0, 0.05)

    return rule


def detokenizer_rule(embedding_rows: int | None = None, vocab_per_codebook: int = 2048) -> Rule:
    """How each tensor of an LFM2.5 audio detokenizer state dict (``emb.emb``, ``lfm.*``, ``lin``) is drawn."""

    def rule(name: str, shape: tuple[int, ...]) -> Draw | None:
        if name == "istft.window":
            return None  # a Hann window, not a parameter
        if name == "lfm.embed_tokens.weight":
            return Draw(0.0, 0.0)  # stored, never used
        if name == "emb.emb.weight":
            codebooks = max(1, shape[0] // vocab_per_codebook)
            groups = tuple(f"emb.emb.weight#cb{c}" for c in range(codebooks))
            return Draw(0.0, 1.0, embedding_rows, row_groups=groups)
        if name.endswith(".weight") and _norm_like(name) and len(shape) == 1:
            return Draw(1.0, 0.15)
        if name.endswith(".bias"):
            return Draw(0.0, 0.05)
        if name.endswith(".conv.weight"):
            return Draw(0.0, 1.0 / math.sqrt(3.0))
        if name == "lin.weight":
            return Draw(0.0, 0.5 / math.sqrt(shape[1]))  # log-magnitudes stay moderate
        if len(shape) >= 2:
            return Draw(0.0, 1.0 / math.sqrt(_fan_in(shape)))
        return Draw(0.0, 0.05)

    return rule


def mimi_rule() -> Rule:
    """How each tensor of a Mimi codec state dict (moshi names) is drawn."""

    def rule(name: str, shape: tuple[int, ...]) -> Draw | None:
        if name.endswith("_codebook._initialized"):
            return Draw(1.0, 0.0)
        if name.endswith("_codebook.cluster_usage"):
            return Draw(1.25, 0.433)  # uniform on [0.5, 2.0]
        if name.endswith("_codebook.embedding_sum"):
            return Draw(0.0, 1.0)
        if name.endswith(".scale"):  # layer scales
            return Draw(0.4, 0.1155)  # uniform on [0.2, 0.6]
        if len(shape) == 1 and "norm" in name and name.endswith(".weight"):
            return Draw(1.0, 0.15)
        if name.endswith(".bias"):
            return Draw(0.0, 0.01)
        if len(shape) >= 2:
            return Draw(0.0, 1.0 / math.sqrt(_fan_in(shape)))
        return Draw(0.0, 0.05)

    return rule
