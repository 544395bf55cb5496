"""One generation step for every call at once, over the static slots of a ``BackbonePool``.

``GenerationStep(model, pool)`` runs, for rows ``0 .. B-1`` of the pool (B = the highest slot in
use + 1, or the batch bucket it is captured for):

1. the backbone for one position per row: the short convolutions from each slot's conv state, and
   ONE masked attention over every row's K/V (``[B, Hkv, kv_len, hd]``, keys past a row's length
   masked), its new K and V written in place at the row's position (rows that do not advance write
   to the pool's last, never-valid position); rows that do not advance keep their conv state and
   position (``torch.where``), and their given hidden state passes through;
2. text logits and one sampled token per row;
3. one depthformer frame per row (8 codebooks, sampled);
4. the item each row asked for (``want_audio``), a forced token where one is given (greetings),
   the end-of-audio rule (codebook 0 decides; the whole frame becomes 2048), and each item's
   embedding, which is the next step's input.

Everything is tensor work with shapes fixed by (B, kv_len): no host synchronisation, no Python
branch on a tensor value, the same ops whatever B is. That is what lets the step be captured as a
CUDA graph per batch bucket (``model.step_capture``), and what ``bench --sections capture`` proves
on the CPU (no graph break under ``torch.compile(fullgraph=True)``, runs on the meta device, equal
op counts at every batch size). The host reads ONE packed tensor back per step (``packed``: the
token and the 8 codes of every row).

Sampling is vectorised: greedy rows take the argmax; sampled rows add Gumbel noise to the
temperature-scaled logits restricted to their top k (the Gumbel-max trick draws from the softmax).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.backbone import Lfm2Backbone, Lfm2DecoderLayer, rope_cos_sin
from model.lfm2_audio import END_OF_AUDIO, LFM2AudioModel, Sampling, sample_rows
from model.pool import BackbonePool

_GQA_NATIVE = "enable_gqa" in F.scaled_dot_product_attention.__doc__  # torch >= 2.5


@dataclass(frozen=True)
class StepSampling:
    """Sampling of a whole engine (every call uses the same settings): static per captured step."""

    text_temperature: float = 0.0
    text_top_k: int = 0
    audio_temperature: float = 0.0
    audio_top_k: int = 0

    @classmethod
    def of(cls, text: Sampling, audio: Sampling) -> StepSampling:
        def t(s: Sampling) -> float:
            return 0.0 if s.greedy or s.temperature is None else float(s.temperature)

        return cls(t(text), int(text.top_k or 0), t(audio), int(audio.top_k or 0))


def _conv_rows(layer: Lfm2DecoderLayer, x: torch.Tensor, past: torch.Tensor,
               advance: torch.Tensor) -> torch.Tensor:
    """x [B, T, D]: T positions per row from each slot's conv state ``past`` [B, D, L-1]."""
    conv = layer.conv
    n = x.shape[1]
    b_gate, c_gate, h = conv.in_proj(x).transpose(-1, -2).chunk(3, dim=-2)  # each [B, D, T]
    full = torch.cat((past, b_gate * h), dim=-1)
    out = F.conv1d(full, conv.conv.weight, conv.conv.bias, groups=full.shape[1])
    past.copy_(torch.where(advance[:, None, None], full[..., n:], past))
    return conv.out_proj((c_gate * out).transpose(-1, -2).contiguous())


def _attention_rows(layer: Lfm2DecoderLayer, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                    keys: torch.Tensor, values: torch.Tensor, write_at: torch.Tensor, valid: torch.Tensor,
                    rows: torch.Tensor) -> torch.Tensor:
    """x [B, T, D]; ``write_at`` [B, T] where each new K/V goes; ``valid`` [B, T, kv_len] (causal)."""
    attn = layer.self_attn
    bsz, n = x.shape[0], x.shape[1]
    q, k, v = attn.qkv(x, rope)  # q [B, H, T, hd], k/v [B, Hkv, T, hd]
    heads = torch.arange(keys.shape[1], device=keys.device)[None, :, None]
    at = (rows[:, None, None], heads, write_at[:, None, :])  # [B, Hkv, T]: the same ops at every batch size
    keys.index_put_(at, k)
    values.index_put_(at, v)
    kv_len = valid.shape[-1]
    kk, vv = keys[:, :, :kv_len], values[:, :, :kv_len]
    mask = valid[:, None, :, :]
    if q.shape[1] != kk.shape[1]:
        if _GQA_NATIVE:
            out = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, enable_gqa=True)
        else:  # pragma: no cover - torch < 2.5
            n_rep = q.shape[1] // kk.shape[1]
            out = F.scaled_dot_product_attention(q, kk.repeat_interleave(n_rep, 1), vv.repeat_interleave(n_rep, 1),
                                                 attn_mask=mask)
    else:
        out = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)
    return attn.out_proj(out.transpose(1, 2).reshape(bsz, n, -1))


def backbone_rows(backbone: Lfm2Backbone, pool: BackbonePool, embeds: torch.Tensor, advance: torch.Tensor,
                  kv_len: int) -> torch.Tensor:
    """One position for rows 0..B-1 of ``pool`` (B = embeds.shape[0]); rows with ``advance`` False keep
    their state. ``kv_len`` (static) must exceed every advancing row's position. Returns the
    final-normed hidden [B, hidden]."""
    return backbone_positions(backbone, pool, embeds[:, None, :], advance, kv_len)[:, 0]


def backbone_positions(backbone: Lfm2Backbone, pool: BackbonePool, embeds: torch.Tensor, advance: torch.Tensor,
                       kv_len: int) -> torch.Tensor:
    """T positions (embeds [B, T, hidden]) for rows 0..B-1 of ``pool``, causal within the T; rows with
    ``advance`` False keep their state (their K/V go to the write-off row, conv state and position
    stay). ``kv_len`` must reach every advancing row's position + T. Returns hidden [B, T, hidden]."""
    bsz, n = embeds.shape[0], embeds.shape[1]
    cfg = backbone.config
    positions = pool.positions[:bsz]
    steps = torch.arange(n, device=embeds.device)
    at = positions[:, None] + steps[None, :]  # [B, T]
    trash = pool.context - 1  # never a valid position: rows that do not advance write here
    write_at = torch.where(advance[:, None], at, torch.full_like(at, trash))
    valid = torch.arange(kv_len, device=embeds.device)[None, None, :] <= at[:, :, None]  # [B, T, kv_len]
    rows = torch.arange(bsz, device=embeds.device)
    cos, sin = rope_cos_sin(at, cfg.head_dim, cfg.rope_theta, embeds.dtype)
    rope = (cos[:, None], sin[:, None])  # [B, 1, T, hd]
    h = embeds
    for i, layer in enumerate(backbone.layers):
        assert isinstance(layer, Lfm2DecoderLayer)
        x = layer.operator_norm(h)
        if layer.is_attention:
            keys, values = pool.keys[i], pool.values[i]
            assert keys is not None and values is not None
            x = _attention_rows(layer, x, rope, keys[:bsz], values[:bsz], write_at, valid, rows)
        else:
            conv = pool.conv[i]
            assert conv is not None
            x = _conv_rows(layer, x, conv[:bsz], advance)
        x = x + h
        h = x + layer.feed_forward(layer.ffn_norm(x))
    positions.add_(advance.to(positions.dtype) * n)
    out: torch.Tensor = backbone.embedding_norm(h)
    return out


@dataclass
class StepOutput:
    hidden: torch.Tensor       # [B, hidden] the backbone output that decided each row's item
    next_embeds: torch.Tensor  # [B, hidden] embedding of each row's item: the next step's input
    packed: torch.Tensor       # [B, 1 + codebooks] int64: token, then the frame's codes (2048 x 8 = end of audio)


class GenerationStep:
    """The whole per-step computation for rows 0..B-1 (see the module docstring)."""

    def __init__(self, model: LFM2AudioModel, pool: BackbonePool, sampling: StepSampling = StepSampling()) -> None:
        self.model = model
        self.pool = pool
        self.sampling = sampling

    @torch.no_grad()
    def __call__(self, embeds: torch.Tensor, advance: torch.Tensor, hidden_in: torch.Tensor, want_audio: torch.Tensor,
                 forced: torch.Tensor, kv_len: int) -> StepOutput:
        model, s = self.model, self.sampling
        hidden = backbone_rows(model.lfm, self.pool, embeds, advance, kv_len)
        hidden = torch.where(advance[:, None], hidden, hidden_in)
        tokens = sample_rows(model.lfm.text_logits(hidden), s.text_temperature, s.text_top_k)
        tokens = torch.where(forced >= 0, forced, tokens)
        codes, _ = model.depth_frames(hidden, lambda logits: sample_rows(logits, s.audio_temperature, s.audio_top_k))
        codes = torch.where(codes[:, :1] == END_OF_AUDIO, torch.full_like(codes, END_OF_AUDIO), codes)
        audio_emb = model.embed_audio_frames(codes)
        text_emb = model.embed_text(tokens)
        next_embeds = torch.where(want_audio[:, None], audio_emb, text_emb)
        packed = torch.cat((tokens[:, None], codes), dim=1)
        return StepOutput(hidden, next_embeds, packed)
