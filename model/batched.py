"""Batched generation steps across conversations that sit at different positions.

The engine's worker steps every generating call together: one backbone position per call and,
for the calls whose next item is audio, one depthformer frame per call. Each call keeps its own
`BackboneState` (batch 1, its own length); the matrix work (projections, convolutions, SwiGLU,
norms, depthformer) runs once on the stacked batch, and only the attention over each call's own
K/V runs per call. The results equal stepping each call alone (tested), which is what makes
batching a pure capacity gain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.backbone import BackboneState, Lfm2Backbone, Lfm2DecoderLayer, attend, rope_cos_sin
from model.lfm2_audio import LFM2AudioModel, Sampling


def _conv_step(layer: Lfm2DecoderLayer, x: torch.Tensor, states: list[BackboneState]) -> torch.Tensor:
    conv = layer.conv
    idx = layer.layer_idx
    b_gate, c_gate, h = conv.in_proj(x).transpose(-1, -2).chunk(3, dim=-2)  # each [B, D, 1]
    bx = b_gate * h
    pasts = []
    for s in states:
        past = s.conv[idx]
        assert past is not None
        pasts.append(past)
    full = torch.cat((torch.cat(pasts, dim=0), bx), dim=-1)  # [B, D, width]
    conv_out = F.conv1d(full, conv.conv.weight, conv.conv.bias, groups=full.shape[1])
    width = pasts[0].shape[-1]
    tail = full[..., full.shape[-1] - width :]
    for b, s in enumerate(states):
        s.conv[idx] = tail[b : b + 1].clone()
    y = c_gate * conv_out
    return conv.out_proj(y.transpose(-1, -2).contiguous())


def _attention_step(layer: Lfm2DecoderLayer, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                    states: list[BackboneState]) -> torch.Tensor:
    attn = layer.self_attn
    idx = layer.layer_idx
    bsz = x.shape[0]
    q, k, v = attn.qkv(x, rope)  # rope [B, 1, 1, head_dim]: one position per conversation
    outs = []
    for b, s in enumerate(states):
        keys, values = s.keys[idx], s.values[idx]
        assert keys is not None and values is not None
        p = s.position
        keys[:, :, p : p + 1] = k[b : b + 1]
        values[:, :, p : p + 1] = v[b : b + 1]
        outs.append(attend(q[b : b + 1], keys[:, :, : p + 1], values[:, :, : p + 1], p))
    out = torch.cat(outs, dim=0)
    return attn.out_proj(out.transpose(1, 2).reshape(bsz, 1, -1))


def backbone_step(backbone: Lfm2Backbone, embeds: torch.Tensor, states: list[BackboneState]) -> torch.Tensor:
    """One position for each of B conversations: embeds [B, hidden] -> final-normed hidden [B, hidden].

    Advances every state by one position. Equivalent to `backbone(embeds[b, None, None], states[b])`
    for each b.
    """
    if embeds.dim() != 2 or embeds.shape[0] != len(states):
        raise ValueError(f"embeds must be [{len(states)}, hidden], got {list(embeds.shape)}")
    for s in states:
        if s.batch_size != 1:
            raise ValueError("backbone_step takes per-conversation states of batch 1")
        s.reserve(s.position + 1)
    cfg = backbone.config
    positions = torch.tensor([s.position for s in states], device=embeds.device)
    cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, embeds.dtype)
    rope = (cos[:, None, None, :], sin[:, None, None, :])
    h = embeds[:, None, :]
    for layer in backbone.layers:
        assert isinstance(layer, Lfm2DecoderLayer)
        x = layer.operator_norm(h)
        x = _attention_step(layer, x, rope, states) if layer.is_attention else _conv_step(layer, x, states)
        x = x + h
        h = x + layer.feed_forward(layer.ffn_norm(x))
    for s in states:
        s.position += 1
    out: torch.Tensor = backbone.embedding_norm(h)[:, 0]
    return out


def audio_frames(model: LFM2AudioModel, hidden: torch.Tensor, samplings: list[Sampling],
                 generators: list[torch.Generator | None] | None = None) -> torch.Tensor:
    """Depthformer for B conversations at once: hidden [B, hidden] -> codes [B, codebooks] (int64)."""
    return model.sample_audio_frames(hidden, samplings, generators)[0]
