"""Depthformer: the small RQ-transformer that emits the codebooks of one audio frame.

liquid-audio's ``RawLMBackbone`` of ``StandardBlock(MHA(dim))``: pre-norm blocks with fused
``qkv_proj`` (32 query / 8 key-value heads, hard-coded; split q | k | v), per-head RMSNorm on q
and k (``bounded_attention.{q,k}_layernorm``), RoPE over positions 0..codebooks-1, SwiGLU, no
final norm. Each frame uses a fresh KV cache that grows over the codebook steps (``DepthCache``).
``SharedEmbedding`` is the per-codebook embedding / ``embedding_norm`` / ``to_logits`` triple.

Conventions that differ from the LFM2 backbone (and that a head_dim of 2 cannot show):

* RoPE rotates ADJACENT pairs (x[2i], x[2i+1]) as one complex number, computed in float32 and cast
  back (liquid-audio's ``apply_rotary_emb``); the backbone rotates the two halves (x[i], x[i+D/2]).
* Every RMSNorm here multiplies by its weight in float32 before casting back (liquid-audio's own
  ``RMSNorm``); transformers' LFM2 norm casts first, then multiplies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.backbone import RMSNorm, SwiGLU, attend
from model.config import DepthformerConfig


def pair_rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 cos/sin tables [N, head_dim // 2] of adjacent-pair RoPE (liquid-audio's freqs_cis)."""
    exponents = torch.arange(0, head_dim, 2, device=positions.device)[: head_dim // 2].float() / head_dim
    inv_freq = 1.0 / (theta ** exponents)
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_pair_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of x [B, H, N, D] in float32; cos/sin [N, D // 2]; result in x's dtype."""
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


class DepthCache:
    """K/V of every depthformer layer for the frames being decoded: [B, Hkv, steps, D]."""

    def __init__(self, n_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.position = 0


class DepthAttention(nn.Module):
    def __init__(self, config: DepthformerConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.theta = config.rope_theta
        qkv = (self.n_heads + 2 * self.n_kv) * self.head_dim
        self.qkv_proj = nn.Linear(config.dim, qkv, bias=False)
        self.out_proj = nn.Linear(config.dim, config.dim, bias=False)
        self.bounded_attention = nn.Module()
        self.bounded_attention.q_layernorm = RMSNorm(self.head_dim, config.norm_eps, scale_in_float32=True)
        self.bounded_attention.k_layernorm = RMSNorm(self.head_dim, config.norm_eps, scale_in_float32=True)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cache: DepthCache | None,
                layer_idx: int) -> torch.Tensor:
        b, n, _ = x.shape
        q_size, kv_size = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        q, k, v = self.qkv_proj(x).split([q_size, kv_size, kv_size], dim=-1)
        q = self.bounded_attention.q_layernorm(q.view(b, n, self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.bounded_attention.k_layernorm(k.view(b, n, self.n_kv, self.head_dim)).transpose(1, 2)
        v = v.view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
        cos, sin = rope
        q, k = apply_pair_rope(q, cos, sin), apply_pair_rope(k, cos, sin)
        past = 0
        if cache is not None:
            past = cache.position
            old_k, old_v = cache.keys[layer_idx], cache.values[layer_idx]
            if old_k is not None and old_v is not None:
                k, v = torch.cat((old_k, k), dim=2), torch.cat((old_v, v), dim=2)
            cache.keys[layer_idx], cache.values[layer_idx] = k, v
        out = attend(q, k, v, past)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class DepthBlock(nn.Module):
    def __init__(self, config: DepthformerConfig) -> None:
        super().__init__()
        self.operator = DepthAttention(config)
        self.feed_forward = SwiGLU(config.dim, config.ff_dim)
        self.operator_norm = RMSNorm(config.dim, config.norm_eps, scale_in_float32=True)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps, scale_in_float32=True)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cache: DepthCache | None,
                layer_idx: int) -> torch.Tensor:
        h = x + self.operator(self.operator_norm(x), rope, cache, layer_idx)
        return h + self.feed_forward(self.ffn_norm(h))


class Depthformer(nn.Module):
    """Official names: ``layers.N.operator.qkv_proj`` etc."""

    def __init__(self, config: DepthformerConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(DepthBlock(config) for _ in range(config.layers))

    def new_cache(self) -> DepthCache:
        return DepthCache(len(self.layers))

    def forward(self, x: torch.Tensor, cache: DepthCache | None = None) -> torch.Tensor:
        """x [B, N, dim] -> [B, N, dim]; with a cache, positions continue from ``cache.position``."""
        start = 0 if cache is None else cache.position
        n = x.shape[1]
        positions = torch.arange(start, start + n, device=x.device)
        rope = pair_rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, cache, i)
        if cache is not None:
            cache.position = start + n
        return x


class SharedEmbedding(nn.Module):
    """``embedding`` (input rows), ``embedding_norm`` and ``to_logits`` (tied to ``embedding`` if asked)."""

    def __init__(self, dim: int, vocab_size: int, tie: bool, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)
        self.embedding_norm = RMSNorm(dim, norm_eps, scale_in_float32=True)
        self.to_logits = nn.Linear(dim, vocab_size, bias=False)
        self.tie = tie
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share ``to_logits.weight`` with ``embedding.weight`` when tied (call again after ``to_empty``)."""
        if self.tie:
            self.to_logits.weight = self.embedding.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids)

    def get_logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.embedding_norm(x), self.to_logits.weight)
