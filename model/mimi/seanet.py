"""SEANet encoder / decoder and the learnt resampling convolutions of Mimi.

Layer order and names follow moshi/modules/seanet.py and moshi/modules/resample.py so that the
published weights load unchanged: `model.<i>` indexes an nn.Sequential in which ELUs take slots too.
Encoder (ratios reversed, e.g. 4, 5, 6, 8): conv, then per ratio [residual blocks, ELU, strided conv
doubling the width], then ELU, conv to `dimension`. Decoder (ratios 8, 6, 5, 4): conv from
`dimension`, then per ratio [ELU, transposed conv halving the width, residual blocks], then ELU,
conv to `channels`. A residual block is x + conv1x1(ELU(conv_k(ELU(x)))) with a width reduced by
`compress` in between.
"""

from __future__ import annotations

from torch import Tensor, nn

from model.mimi.config import SeanetConfig
from model.mimi.conv import StreamingConv1d, StreamingConvTranspose1d, StreamTensors


def _run(layers: nn.Sequential, x: Tensor, state: StreamTensors | None) -> Tensor:
    for layer in layers:
        if isinstance(layer, (StreamingConv1d, StreamingConvTranspose1d, SeanetResnetBlock)):
            x = layer(x, state)
        else:
            x = layer(x)
    return x


class SeanetResnetBlock(nn.Module):
    def __init__(self, dim: int, kernel_size: int, dilation: int, compress: int, true_skip: bool) -> None:
        super().__init__()
        hidden = dim // compress
        self.block = nn.Sequential(
            nn.ELU(alpha=1.0),
            StreamingConv1d(dim, hidden, kernel_size, dilation=dilation),
            nn.ELU(alpha=1.0),
            StreamingConv1d(hidden, dim, 1),
        )
        self.shortcut: nn.Module = nn.Identity() if true_skip else StreamingConv1d(dim, dim, 1)

    def forward(self, x: Tensor, state: StreamTensors | None = None) -> Tensor:
        skip = self.shortcut(x, state) if isinstance(self.shortcut, StreamingConv1d) else x
        return skip + _run(self.block, x, state)


def _residual_blocks(cfg: SeanetConfig, dim: int) -> list[nn.Module]:
    return [
        SeanetResnetBlock(dim, cfg.residual_kernel_size, cfg.dilation_base**j, cfg.compress, cfg.true_skip)
        for j in range(cfg.n_residual_layers)
    ]


class SeanetEncoder(nn.Module):
    """Waveform [B, channels, N] -> latent [B, dimension, N / hop_length]."""

    def __init__(self, cfg: SeanetConfig) -> None:
        super().__init__()
        self.dimension = cfg.dimension
        mult = 1
        layers: list[nn.Module] = [StreamingConv1d(cfg.channels, cfg.n_filters, cfg.kernel_size)]
        for ratio in reversed(cfg.ratios):
            layers += _residual_blocks(cfg, mult * cfg.n_filters)
            layers += [
                nn.ELU(alpha=1.0),
                StreamingConv1d(mult * cfg.n_filters, 2 * mult * cfg.n_filters, 2 * ratio, stride=ratio),
            ]
            mult *= 2
        layers += [
            nn.ELU(alpha=1.0),
            StreamingConv1d(mult * cfg.n_filters, cfg.dimension, cfg.last_kernel_size),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor, state: StreamTensors | None = None) -> Tensor:
        return _run(self.model, x, state)


class SeanetDecoder(nn.Module):
    """Latent [B, dimension, T] -> waveform [B, channels, T * hop_length]."""

    def __init__(self, cfg: SeanetConfig) -> None:
        super().__init__()
        mult = 2 ** len(cfg.ratios)
        layers: list[nn.Module] = [StreamingConv1d(cfg.dimension, mult * cfg.n_filters, cfg.kernel_size)]
        for ratio in cfg.ratios:
            width = mult * cfg.n_filters
            layers += [
                nn.ELU(alpha=1.0),
                StreamingConvTranspose1d(width, width // 2, 2 * ratio, stride=ratio),
            ]
            layers += _residual_blocks(cfg, width // 2)
            mult //= 2
        layers += [nn.ELU(alpha=1.0), StreamingConv1d(cfg.n_filters, cfg.channels, cfg.last_kernel_size)]
        self.model = nn.Sequential(*layers)

    def forward(self, z: Tensor, state: StreamTensors | None = None) -> Tensor:
        return _run(self.model, z, state)


class ConvDownsample1d(nn.Module):
    """Learnt causal downsampling by `stride` (kernel 2 * stride, replicate padding, no bias)."""

    def __init__(self, stride: int, dimension: int) -> None:
        super().__init__()
        self.conv = StreamingConv1d(
            dimension, dimension, 2 * stride, stride=stride, bias=False, pad_mode="replicate"
        )

    def forward(self, x: Tensor, state: StreamTensors | None = None) -> Tensor:
        out: Tensor = self.conv(x, state)
        return out


class ConvTrUpsample1d(nn.Module):
    """Learnt causal upsampling by `stride`, channel-wise (groups = dimension, as moshi ships it)."""

    def __init__(self, stride: int, dimension: int) -> None:
        super().__init__()
        self.convtr = StreamingConvTranspose1d(
            dimension, dimension, 2 * stride, stride=stride, groups=dimension, bias=False
        )

    def forward(self, x: Tensor, state: StreamTensors | None = None) -> Tensor:
        out: Tensor = self.convtr(x, state)
        return out
