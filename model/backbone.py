"""LFM2 backbone (transformers' ``Lfm2Model`` semantics) with an explicit per-conversation state.

Layers are either gated short convolutions (``in_proj`` -> B, C, x; ``B*x`` through a causal
depthwise conv of width ``conv_L_cache``; ``C *`` that; ``out_proj``) or GQA attention with
per-head RMSNorm on q and k and rotate-half RoPE. Each layer is pre-norm with a SwiGLU
feed-forward; the stack ends with ``embedding_norm`` (the final RMSNorm).

``BackboneState`` holds, for a batch of conversations advancing together, the last
``conv_L_cache - 1`` conv inputs of each conv layer and the K/V of each attention layer, plus the
number of positions consumed. ``Lfm2Backbone.forward(embeds, state)`` consumes N new positions
(N = 1 per generation step, N > 1 for prefill). ``state.save()`` marks the current position and
``state.truncate(position)`` rolls back to a marked one (K/V are cut, conv states restored).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import LfmConfig
from model.errors import GenerationError

INITIAL_KV_CAPACITY = 256


class RMSNorm(nn.Module):
    """weight * x / sqrt(mean(x^2) + eps), normalised in float32.

    transformers' LFM2 norm casts the normalised value back to x's dtype and then multiplies by the
    weight; liquid-audio's own norm (depthformer, audio embeddings) multiplies in float32 first
    (``scale_in_float32``). The two agree in float32 and differ in bfloat16.
    """

    def __init__(self, dim: int, eps: float, *, scale_in_float32: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.scale_in_float32 = scale_in_float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.scale_in_float32:
            return (h * self.weight).to(dtype)
        return self.weight * h.to(dtype)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, ff_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, ff_dim, bias=False)
        self.w3 = nn.Linear(dim, ff_dim, bias=False)
        self.w2 = nn.Linear(ff_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [..., head_dim] (positions [...]) for rotate-half RoPE (transformers' default rope)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim))
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, N, D]; cos/sin [N, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int) -> torch.Tensor:
    """Causal GQA attention of N queries at positions past..past+N-1 over k/v [B, Hkv, past+N, D]."""
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        k = k.repeat_interleave(n_rep, dim=1)
        v = v.repeat_interleave(n_rep, dim=1)
    n = q.shape[2]
    if n == 1:
        return F.scaled_dot_product_attention(q, k, v)
    if past == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    total = k.shape[2]
    mask = torch.arange(total, device=q.device)[None, :] <= (past + torch.arange(n, device=q.device))[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class BackboneState:
    """Per-conversation (batch of conversations) recurrent state of the backbone."""

    def __init__(self, config: LfmConfig, batch_size: int, device: torch.device, dtype: torch.dtype,
                 kv_capacity: int = INITIAL_KV_CAPACITY) -> None:
        self.batch_size = batch_size
        self.position = 0
        width = config.conv_L_cache - 1
        self.conv: list[torch.Tensor | None] = []
        self.keys: list[torch.Tensor | None] = []
        self.values: list[torch.Tensor | None] = []
        hd, kvh = config.head_dim, config.num_key_value_heads
        for kind in config.layer_types:
            if kind == "conv":
                self.conv.append(torch.zeros(batch_size, config.hidden_size, width, device=device, dtype=dtype))
                self.keys.append(None)
                self.values.append(None)
            else:
                self.conv.append(None)
                self.keys.append(torch.zeros(batch_size, kvh, kv_capacity, hd, device=device, dtype=dtype))
                self.values.append(torch.zeros(batch_size, kvh, kv_capacity, hd, device=device, dtype=dtype))
        self._saved: dict[int, list[torch.Tensor | None]] = {0: [None if c is None else c.clone() for c in self.conv]}

    def reset(self) -> None:
        """An empty conversation (K/V buffers kept, conv state zeroed, marks dropped)."""
        for c in self.conv:
            if c is not None:
                c.zero_()
        self.position = 0
        self._saved = {0: [None if c is None else c.clone() for c in self.conv]}

    @property
    def kv_capacity(self) -> int:
        for k in self.keys:
            if k is not None:
                return int(k.shape[2])
        return 0

    def reserve(self, total: int) -> None:
        """Make room for ``total`` positions in every K/V buffer (grows by doubling)."""
        cap = self.kv_capacity
        if cap == 0 or total <= cap:
            return
        new_cap = cap
        while new_cap < total:
            new_cap *= 2
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            if k is None or v is None:
                continue
            nk = k.new_zeros(k.shape[0], k.shape[1], new_cap, k.shape[3])
            nv = v.new_zeros(v.shape[0], v.shape[1], new_cap, v.shape[3])
            nk[:, :, : self.position] = k[:, :, : self.position]
            nv[:, :, : self.position] = v[:, :, : self.position]
            self.keys[i], self.values[i] = nk, nv

    def save(self) -> int:
        """Mark the current position as one to roll back to; returns it."""
        self._saved[self.position] = [None if c is None else c.clone() for c in self.conv]
        return self.position

    @property
    def saved_positions(self) -> list[int]:
        return sorted(self._saved)

    def truncate(self, position: int) -> None:
        """Roll back to ``position``, which must be the current one or a saved one."""
        if position == self.position:
            return
        if position > self.position or position not in self._saved:
            raise GenerationError(
                f"cannot truncate backbone state to position {position}: current {self.position}, "
                f"saved {self.saved_positions}"
            )
        for current, saved in zip(self.conv, self._saved[position], strict=True):
            if current is not None and saved is not None:
                current.copy_(saved)  # in place: a slot's state (model.pool) is a view of shared tensors
        self.position = position
        self._saved = {p: s for p, s in self._saved.items() if p <= position}

    def forget_saves_before(self, position: int) -> None:
        """Drop marks older than ``position`` (memory housekeeping)."""
        self._saved = {p: s for p, s in self._saved.items() if p >= position}


class Lfm2ShortConv(nn.Module):
    def __init__(self, config: LfmConfig) -> None:
        super().__init__()
        d, width = config.hidden_size, config.conv_L_cache
        self.L_cache = width
        self.conv = nn.Conv1d(d, d, kernel_size=width, groups=d, bias=config.conv_bias, padding=width - 1)
        self.in_proj = nn.Linear(d, 3 * d, bias=config.conv_bias)
        self.out_proj = nn.Linear(d, d, bias=config.conv_bias)

    def forward(self, x: torch.Tensor, state: BackboneState | None, layer_idx: int) -> torch.Tensor:
        n = x.shape[1]
        b_gate, c_gate, h = self.in_proj(x).transpose(-1, -2).chunk(3, dim=-2)
        bx = b_gate * h
        if state is None:
            conv_out = self.conv(bx)[..., :n]
        else:
            past = state.conv[layer_idx]
            assert past is not None
            full = torch.cat((past, bx), dim=-1)
            conv_out = F.conv1d(full, self.conv.weight, self.conv.bias, groups=full.shape[1])
            past.copy_(full[..., full.shape[-1] - past.shape[-1] :])  # in place: a slot's state is a view
        y = c_gate * conv_out
        return self.out_proj(y.transpose(-1, -2).contiguous())


class Lfm2Attention(nn.Module):
    def __init__(self, config: LfmConfig) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.theta = config.rope_theta
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.out_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)
        self.q_layernorm = RMSNorm(self.head_dim, config.norm_eps)
        self.k_layernorm = RMSNorm(self.head_dim, config.norm_eps)

    def qkv(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, N, D] -> q [B, H, N, hd], k and v [B, Hkv, N, hd]: per-head RMSNorm on q and k, then RoPE."""
        b, n, _ = x.shape
        q = self.q_layernorm(self.q_proj(x).view(b, n, -1, self.head_dim)).transpose(1, 2)
        k = self.k_layernorm(self.k_proj(x).view(b, n, -1, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, n, -1, self.head_dim).transpose(1, 2)
        cos, sin = rope
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], state: BackboneState | None,
                layer_idx: int) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x, rope)
        past = 0
        if state is not None:
            past = state.position
            keys, values = state.keys[layer_idx], state.values[layer_idx]
            assert keys is not None and values is not None
            keys[:, :, past : past + n] = k
            values[:, :, past : past + n] = v
            k, v = keys[:, :, : past + n], values[:, :, : past + n]
        out = attend(q, k, v, past)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class Lfm2DecoderLayer(nn.Module):
    def __init__(self, config: LfmConfig, layer_idx: int) -> None:
        super().__init__()
        self.is_attention = config.layer_types[layer_idx] == "full_attention"
        if self.is_attention:
            self.self_attn = Lfm2Attention(config)
        else:
            self.conv = Lfm2ShortConv(config)
        self.feed_forward = SwiGLU(config.hidden_size, config.ff_dim)
        self.operator_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.ffn_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.layer_idx = layer_idx

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], state: BackboneState | None) -> torch.Tensor:
        h = self.operator_norm(x)
        if self.is_attention:
            h = self.self_attn(h, rope, state, self.layer_idx)
        else:
            h = self.conv(h, state, self.layer_idx)
        h = h + x
        return h + self.feed_forward(self.ffn_norm(h))


class Lfm2Backbone(nn.Module):
    """Official names: ``embed_tokens``, ``layers.N.*``, ``embedding_norm`` (the final norm)."""

    def __init__(self, config: LfmConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Lfm2DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.embedding_norm = RMSNorm(config.hidden_size, config.norm_eps)

    def new_state(self, batch_size: int = 1, kv_capacity: int = INITIAL_KV_CAPACITY) -> BackboneState:
        w = self.embedding_norm.weight
        return BackboneState(self.config, batch_size, w.device, w.dtype, kv_capacity)

    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Tied LM head: final-normed hidden [..., D] -> logits [..., vocab]."""
        return F.linear(hidden, self.embed_tokens.weight)

    def forward(self, inputs_embeds: torch.Tensor, state: BackboneState | None = None) -> torch.Tensor:
        """inputs_embeds [B, N, D] -> final-normed hidden [B, N, D]; advances ``state`` by N."""
        if inputs_embeds.dim() != 3:
            raise ValueError(f"inputs_embeds must be [batch, positions, hidden], got {list(inputs_embeds.shape)}")
        n = inputs_embeds.shape[1]
        start = 0
        if state is not None:
            if state.batch_size != inputs_embeds.shape[0]:
                raise ValueError(f"state batch {state.batch_size} != input batch {inputs_embeds.shape[0]}")
            start = state.position
            state.reserve(start + n)
        positions = torch.arange(start, start + n, device=inputs_embeds.device)
        rope = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, inputs_embeds.dtype)
        h = inputs_embeds
        for layer in self.layers:
            h = layer(h, rope, state)
        if state is not None:
            state.position = start + n
        return self.embedding_norm(h)
