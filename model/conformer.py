"""FastConformer audio encoder (NeMo ``ConformerEncoder`` as vendored by liquid-audio).

dw_striding subsampling (one full 3x3 stride-2 conv, then depthwise 3x3 stride-2 + pointwise
1x1 pairs, ReLU after each, time padding masked between layers), relative-position
Transformer-XL attention with untied per-layer biases, macaron feed-forwards (x0.5), and a
convolution module with batch norm. State-dict names follow NeMo (``pre_encode.conv.N``,
``layers.N.self_attn.linear_q``, ``layers.N.conv.batch_norm`` ...).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import EncoderConfig

ATTENTION_MASK_VALUE = -10000.0


def conv_output_length(lengths: torch.Tensor, repeat: int) -> torch.Tensor:
    """Length after ``repeat`` stride-2, kernel-3, padding-1 convolutions: L -> (L - 1) // 2 + 1."""
    out = lengths.to(torch.long)
    for _ in range(repeat):
        out = torch.div(out - 1, 2, rounding_mode="floor") + 1
    return out


class ConvSubsampling(nn.Module):
    """dw_striding subsampling by ``factor`` (a power of two)."""

    def __init__(self, feat_in: int, feat_out: int, channels: int, factor: int) -> None:
        super().__init__()
        self.num_stages = int(math.log2(factor))
        layers: list[nn.Module] = [nn.Conv2d(1, channels, 3, stride=2, padding=1), nn.ReLU()]
        for _ in range(self.num_stages - 1):
            layers += [
                nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels),
                nn.Conv2d(channels, channels, 1),
                nn.ReLU(),
            ]
        self.conv = nn.Sequential(*layers)
        freq = feat_in
        for _ in range(self.num_stages):
            freq = (freq - 1) // 2 + 1
        self.out = nn.Linear(channels * freq, feat_out)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, feat_in] -> ([B, T', feat_out], lengths [B])."""
        h = x.unsqueeze(1)
        cur = lengths.to(torch.long)

        def mask_for(t: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
            m = torch.arange(t.shape[2], device=t.device)[None, :] < lens[:, None]
            return m[:, None, :, None].to(t.dtype)

        mask = mask_for(h, cur)
        for layer in self.conv:
            h = h * mask
            h = layer(h)
            if isinstance(layer, nn.Conv2d) and layer.stride != (1, 1):
                cur = torch.div(cur + 2 - 3, 2, rounding_mode="floor") + 1
                mask = mask_for(h, cur)
        h = h * mask
        b, c, t, f = h.shape
        return self.out(h.transpose(1, 2).reshape(b, t, c * f)), cur


def relative_positions_table(length: int, d_model: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Sinusoidal table for positions (length-1) .. -(length-1): [1, 2*length-1, d_model]."""
    positions = torch.arange(length - 1, -length, -1, dtype=torch.float32, device=device).unsqueeze(1)
    div_term = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / d_model)
    )
    pe = torch.zeros(positions.shape[0], d_model, device=device)
    pe[:, 0::2] = torch.sin(positions * div_term)
    pe[:, 1::2] = torch.cos(positions * div_term)
    return pe.unsqueeze(0).to(dtype)


class RelPositionMultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.h = n_heads
        self.d_k = d_model // n_heads
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(n_heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(n_heads, self.d_k))

    @staticmethod
    def rel_shift(x: torch.Tensor) -> torch.Tensor:
        b, h, qlen, pos_len = x.shape
        x = F.pad(x, (1, 0))
        x = x.view(b, h, pos_len + 1, qlen)
        return x[:, :, 1:].view(b, h, qlen, pos_len)

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b = x.shape[0]
        q = self.linear_q(x).view(b, -1, self.h, self.d_k)
        k = self.linear_k(x).view(b, -1, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(b, -1, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos_emb).view(pos_emb.shape[0], -1, self.h, self.d_k).transpose(1, 2)
        q_u = (q + self.pos_bias_u).transpose(1, 2)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        matrix_ac = torch.matmul(q_u, k.transpose(-2, -1))
        matrix_bd = self.rel_shift(torch.matmul(q_v, p.transpose(-2, -1)))
        matrix_bd = matrix_bd[:, :, :, : matrix_ac.shape[-1]]
        scores = (matrix_ac + matrix_bd) / math.sqrt(self.d_k)
        if mask is not None:
            m = mask.unsqueeze(1)
            attn = torch.softmax(scores.masked_fill(m, ATTENTION_MASK_VALUE), dim=-1).masked_fill(m, 0.0)
        else:
            attn = torch.softmax(scores, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, -1, self.h * self.d_k)
        return self.linear_out(out)


class ConformerFeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.silu(self.linear1(x)))


class ConformerConvolution(nn.Module):
    def __init__(self, d_model: int, kernel_size: int) -> None:
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(d_model, 2 * d_model, 1)
        self.depthwise_conv = nn.Conv1d(d_model, d_model, kernel_size, padding=(kernel_size - 1) // 2, groups=d_model)
        self.batch_norm = nn.BatchNorm1d(d_model)
        self.pointwise_conv2 = nn.Conv1d(d_model, d_model, 1)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
        h = F.glu(self.pointwise_conv1(x.transpose(1, 2)), dim=1)
        if pad_mask is not None:
            h = h.masked_fill(pad_mask.unsqueeze(1), 0.0)
        h = F.silu(self.batch_norm(self.depthwise_conv(h)))
        return self.pointwise_conv2(h).transpose(1, 2)


class ConformerLayer(nn.Module):
    def __init__(self, d_model: int, d_ff: int, n_heads: int, kernel_size: int) -> None:
        super().__init__()
        self.norm_feed_forward1 = nn.LayerNorm(d_model)
        self.feed_forward1 = ConformerFeedForward(d_model, d_ff)
        self.norm_conv = nn.LayerNorm(d_model)
        self.conv = ConformerConvolution(d_model, kernel_size)
        self.norm_self_att = nn.LayerNorm(d_model)
        self.self_attn = RelPositionMultiHeadAttention(d_model, n_heads)
        self.norm_feed_forward2 = nn.LayerNorm(d_model)
        self.feed_forward2 = ConformerFeedForward(d_model, d_ff)
        self.norm_out = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, att_mask: torch.Tensor | None,
                pad_mask: torch.Tensor | None) -> torch.Tensor:
        residual = x + 0.5 * self.feed_forward1(self.norm_feed_forward1(x))
        residual = residual + self.self_attn(self.norm_self_att(residual), pos_emb, att_mask)
        residual = residual + self.conv(self.norm_conv(residual), pad_mask)
        residual = residual + 0.5 * self.feed_forward2(self.norm_feed_forward2(residual))
        return self.norm_out(residual)


class ConformerEncoder(nn.Module):
    """mel [B, feat_in, T] + lengths [B] -> (encoded [B, d_model, T'], lengths [B])."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        channels = config.subsampling_conv_channels if config.subsampling_conv_channels > 0 else config.d_model
        self.pre_encode = ConvSubsampling(config.feat_in, config.d_model, channels, config.subsampling_factor)
        self.xscale = math.sqrt(config.d_model) if config.xscaling else None
        d_ff = config.d_model * config.ff_expansion_factor
        self.layers = nn.ModuleList(
            ConformerLayer(config.d_model, d_ff, config.n_heads, config.conv_kernel_size)
            for _ in range(config.n_layers)
        )
        self.out_proj = nn.Linear(config.d_model, config.feat_out) if 0 < config.feat_out != config.d_model else None

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return conv_output_length(lengths, self.pre_encode.num_stages)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, out_lengths = self.pre_encode(features.transpose(1, 2), lengths)
        if self.xscale is not None:
            x = x * self.xscale
        t = x.shape[1]
        pos_emb = relative_positions_table(t, self.config.d_model, x.device, x.dtype)
        valid = torch.arange(t, device=x.device)[None, :] < out_lengths[:, None]
        if bool(valid.all()):
            att_mask: torch.Tensor | None = None
            pad_mask: torch.Tensor | None = None
        else:
            att_mask = ~(valid[:, :, None] & valid[:, None, :])
            pad_mask = ~valid
        for layer in self.layers:
            x = layer(x, pos_emb, att_mask, pad_mask)
        if self.out_proj is not None:
            x = self.out_proj(x)
        return x.transpose(1, 2), out_lengths
