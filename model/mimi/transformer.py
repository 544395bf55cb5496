"""Mimi's causal transformer (moshi ProjectedTransformer with RoPE, LayerScale, local attention).

Each layer: x += ls1 * attn(LN1(x)); x += ls2 * W2 gelu(W1 LN2(x)); no biases in the linears. The
attention is causal with a window: a query at position p sees keys p - context + 1 .. p. Queries and
keys are rotated by interleaved RoPE at their absolute positions.

Streaming keeps the last `context` keys and values per stream in a ring buffer (slot = position %
context), with the position (+1; 0 = empty slot) of each slot and the stream's next position. This
matches moshi's RingKVCache exactly, including one quirk: when a step carries T > 1 positions, the
T new keys have already overwritten the oldest ones when the earlier queries of the step attend, so
those queries see fewer than `context` keys. One-shot and streaming outputs are therefore identical
as long as a stream is shorter than `context` positions (250 = 10 s for the real Mimi), or when
steps carry one position each; beyond that the difference is moshi's own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.mimi.config import MimiError, TransformerConfig
from model.mimi.conv import StreamingLeaf, StreamTensors


def apply_rope(q: Tensor, k: Tensor, positions: Tensor, max_period: float) -> tuple[Tensor, Tensor]:
    """Rotate q, k [B, H, T, D] by positions [B, T] (interleaved pairs, float32 maths)."""
    dim = q.shape[-1]
    half = torch.arange(dim // 2, device=q.device, dtype=torch.float32)
    freqs = torch.exp(half * (-math.log(max_period) * 2 / dim))
    angles = positions.to(torch.float32)[:, None, :, None] * freqs  # [B, 1, T, D/2]
    cos, sin = torch.cos(angles), torch.sin(angles)

    def rotate(x: Tensor) -> Tensor:
        pairs = x.reshape(*x.shape[:-1], dim // 2, 2).float()
        re, im = pairs[..., 0], pairs[..., 1]
        out = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1)
        return out.reshape(x.shape).to(x.dtype)

    return rotate(q), rotate(k)


class LayerScale(nn.Module):
    def __init__(self, channels: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), init))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x


class MultiheadAttention(StreamingLeaf):
    """Causal local self-attention; weights named `in_projs.0` / `out_projs.0` as in moshi."""

    def __init__(self, d_model: int, num_heads: int, context: int, max_period: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.context = context
        self.max_period = max_period
        # moshi registers out_projs first; kept so that state_dict() lists keys in the same order.
        self.out_projs = nn.ModuleList([nn.Linear(d_model, d_model, bias=False)])
        self.in_projs = nn.ModuleList([nn.Linear(d_model, 3 * d_model, bias=False)])

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> StreamTensors:
        shape = (batch_size, self.num_heads, self.context, self.head_dim)
        return {
            "keys": torch.zeros(shape, device=device, dtype=dtype),
            "values": torch.zeros(shape, device=device, dtype=dtype),
            "slot_positions": torch.zeros(batch_size, self.context, device=device, dtype=torch.long),
            "offset": torch.zeros(batch_size, device=device, dtype=torch.long),
        }

    def forward(self, x: Tensor, state: StreamTensors | None = None) -> Tensor:
        batch, steps, _ = x.shape
        qkv = self.in_projs[0](x).view(batch, steps, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, T, D]
        arange = torch.arange(steps, device=x.device)
        if state is None:
            positions = arange.expand(batch, steps)
            q, k = apply_rope(q, k, positions, self.max_period)
            delta = arange[:, None] - arange[None, :]
            mask = (delta >= 0) & (delta < self.context)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            if steps > self.context:
                raise MimiError(
                    f"streaming step of {steps} positions exceeds the attention context {self.context}"
                )
            offset = self._state(state, "offset")
            keys, values = self._state(state, "keys"), self._state(state, "values")
            slot_positions = self._state(state, "slot_positions")
            positions = offset[:, None] + arange  # [B, T]
            q, k = apply_rope(q, k, positions, self.max_period)
            slots = positions % self.context
            index = slots[:, None, :, None].expand(batch, self.num_heads, steps, self.head_dim)
            keys.scatter_(2, index, k)
            values.scatter_(2, index, v)
            slot_positions.scatter_(1, slots, positions + 1)
            key_positions = slot_positions[:, None, :] - 1  # [B, 1, C]; -1 = empty
            delta = positions[:, :, None] - key_positions  # [B, T, C]
            mask = (slot_positions[:, None, :] > 0) & (delta >= 0) & (delta < self.context)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[:, None])
            offset.add_(steps)
        out = out.transpose(1, 2).reshape(batch, steps, self.num_heads * self.head_dim)
        result: Tensor = self.out_projs[0](out)
        return result


class TransformerLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(cfg.d_model, cfg.num_heads, cfg.context, cfg.max_period)
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=1e-5)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=1e-5)
        self.linear1 = nn.Linear(cfg.d_model, cfg.dim_feedforward, bias=False)
        self.linear2 = nn.Linear(cfg.dim_feedforward, cfg.d_model, bias=False)
        self.layer_scale_1: nn.Module
        self.layer_scale_2: nn.Module
        if cfg.layer_scale is None:
            self.layer_scale_1, self.layer_scale_2 = nn.Identity(), nn.Identity()
        else:
            self.layer_scale_1 = LayerScale(cfg.d_model, cfg.layer_scale)
            self.layer_scale_2 = LayerScale(cfg.d_model, cfg.layer_scale)

    def forward(self, x: Tensor, state: StreamTensors | None = None) -> Tensor:
        x = x + self.layer_scale_1(self.self_attn(self.norm1(x), state))
        update = self.linear2(F.gelu(self.linear1(self.norm2(x))))
        out: Tensor = x + self.layer_scale_2(update)
        return out


class _Transformer(nn.Module):
    """Only there for the `transformer.layers.<i>` key path."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList([TransformerLayer(cfg) for _ in range(cfg.num_layers)])


class ProjectedTransformer(nn.Module):
    """[B, C, T] -> [B, C, T] (conv layout), with input/output projections when C != d_model."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        if len(cfg.output_dimensions) != 1:
            raise MimiError("mimi transformer: exactly one output dimension is supported")
        self.transformer = _Transformer(cfg)
        self.input_proj: nn.Linear | None = None
        if cfg.input_dimension != cfg.d_model:
            self.input_proj = nn.Linear(cfg.input_dimension, cfg.d_model, bias=False)
        out_dim = cfg.output_dimensions[0]
        self.output_projs = nn.ModuleList(
            [nn.Identity() if out_dim == cfg.d_model else nn.Linear(cfg.d_model, out_dim, bias=False)]
        )

    def forward(self, x: Tensor, state: StreamTensors | None = None) -> Tensor:
        x = x.transpose(1, 2)
        if self.input_proj is not None:
            x = self.input_proj(x)
        for layer in self.transformer.layers:
            x = layer(x, state)
        out: Tensor = self.output_projs[0](x)
        return out.transpose(1, 2)
