"""Causal 1-D convolutions with explicit streaming state.

Theory of operation. Every module that needs memory between streaming steps is a `StreamingLeaf`.
Its memory is not kept on the module: `init_state` returns named tensors that the caller stores in a
flat dict (`StreamTensors`) under the leaf's `state_name` (its dotted path in the codec, assigned
once by the owner). A forward pass receives that dict (or None for one-shot, non-streaming use) and
updates the tensors IN PLACE (`copy_`, `scatter_`, `add_`), so their storage never moves: a state
can be captured in a CUDA graph, and states of several streams can be stacked on the batch axis.
Every tensor is batch-first and all-zero at the start of a stream, so resetting is `zero_()`.

Padding follows moshi (moshi/modules/conv.py): a causal conv sees `(kernel - 1) * dilation + 1 -
stride` samples of history, zeros (or the first sample, in "replicate" mode) before the stream
starts; a transposed conv of kernel K and stride S trims the last K - S outputs in one-shot use and,
when streaming, carries them (minus the bias, which the next step adds again) into the next step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.mimi.config import MimiError

StreamTensors = dict[str, torch.Tensor]


class StreamingLeaf(nn.Module):
    """A module whose streaming memory lives in an external `StreamTensors` dict."""

    def __init__(self) -> None:
        super().__init__()
        self.state_name = ""

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> StreamTensors:
        raise NotImplementedError

    def _state(self, state: StreamTensors, key: str) -> torch.Tensor:
        name = f"{self.state_name}.{key}"
        try:
            return state[name]
        except KeyError:
            raise MimiError(f"streaming state has no tensor {name}: it belongs to another model") from None


def init_stream_tensors(
    root: nn.Module, batch_size: int, device: torch.device, dtype: torch.dtype
) -> StreamTensors:
    """Fresh (all-zero) streaming tensors for every `StreamingLeaf` under `root`."""
    out: StreamTensors = {}
    for module in root.modules():
        if isinstance(module, StreamingLeaf):
            if not module.state_name:
                raise MimiError(f"{type(module).__name__} has no state_name; name the leaves first")
            for key, tensor in module.init_state(batch_size, device, dtype).items():
                out[f"{module.state_name}.{key}"] = tensor
    return out


class _NormConv1d(nn.Module):
    """moshi's NormConv1d with norm "none": only there so that weights are named `conv.conv.*`."""

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        self.conv = conv


class _NormConvTranspose1d(nn.Module):
    """moshi's NormConvTranspose1d with norm "none" (weights named `convtr.convtr.*`)."""

    def __init__(self, convtr: nn.ConvTranspose1d) -> None:
        super().__init__()
        self.convtr = convtr


class StreamingConv1d(StreamingLeaf):
    """Causal Conv1d; input length must be a positive multiple of the stride."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        pad_mode: str = "constant",
    ) -> None:
        super().__init__()
        if pad_mode not in ("constant", "replicate"):
            raise MimiError(f"unsupported pad_mode {pad_mode!r}")
        self.conv = _NormConv1d(
            nn.Conv1d(
                in_channels, out_channels, kernel_size, stride, dilation=dilation, groups=groups, bias=bias
            )
        )
        self.in_channels = in_channels
        self.stride = stride
        self.pad_mode = pad_mode
        self.history = (kernel_size - 1) * dilation + 1 - stride

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> StreamTensors:
        if self.history <= 0:
            return {}
        out = {
            "previous": torch.zeros(batch_size, self.in_channels, self.history, device=device, dtype=dtype)
        }
        if self.pad_mode == "replicate":
            out["started"] = torch.zeros(batch_size, device=device, dtype=torch.bool)
        return out

    def forward(self, x: torch.Tensor, state: StreamTensors | None = None) -> torch.Tensor:
        length = x.shape[-1]
        if length == 0 or length % self.stride:
            raise MimiError(
                f"conv input length {length} is not a positive multiple of the stride {self.stride}"
            )
        if self.history > 0:
            if state is None:
                if self.pad_mode == "replicate":
                    pad = x[..., :1].expand(-1, -1, self.history)
                else:
                    pad = x.new_zeros(x.shape[0], x.shape[1], self.history)
                x = torch.cat([pad, x], dim=-1)
            else:
                previous = self._state(state, "previous")
                if self.pad_mode == "replicate":
                    started = self._state(state, "started")
                    previous.copy_(torch.where(started.view(-1, 1, 1), previous, x[..., :1]))
                    started.fill_(True)
                x = torch.cat([previous, x], dim=-1)
                previous.copy_(x[..., -self.history :])
        out: torch.Tensor = self.conv.conv(x)
        return out


class StreamingConvTranspose1d(StreamingLeaf):
    """Causal ConvTranspose1d: each input step yields exactly `stride` output samples."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size < stride:
            raise MimiError(f"transposed conv kernel {kernel_size} shorter than its stride {stride}")
        self.convtr = _NormConvTranspose1d(
            nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride, groups=groups, bias=bias)
        )
        self.out_channels = out_channels
        self.stride = stride
        self.overlap = kernel_size - stride

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> StreamTensors:
        if self.overlap == 0:
            return {}
        return {
            "partial": torch.zeros(batch_size, self.out_channels, self.overlap, device=device, dtype=dtype)
        }

    def _full(self, x: torch.Tensor) -> torch.Tensor:
        """Untrimmed output [B, C_out, (T - 1) * stride + kernel].

        For groups == 1 this is one matmul plus an overlap-add: on CPU, PyTorch's transposed conv
        falls back to a slow path for short inputs (about 20x slower for Mimi's first decoder layer).
        """
        convtr = self.convtr.convtr
        if convtr.groups != 1:
            out: torch.Tensor = convtr(x)
            return out
        batch, in_channels, steps = x.shape
        kernel, stride = convtr.kernel_size[0], self.stride
        per_step = torch.matmul(x.transpose(1, 2), convtr.weight.reshape(in_channels, -1))  # [B, T, C*K]
        per_step = per_step.view(batch, steps, self.out_channels, kernel)
        blocks = -(-kernel // stride)
        if blocks * stride != kernel:
            per_step = F.pad(per_step, (0, blocks * stride - kernel))
        per_step = per_step.view(batch, steps, self.out_channels, blocks, stride)
        y = per_step.new_zeros(batch, self.out_channels, steps + blocks - 1, stride)
        for j in range(blocks):
            y[:, :, j : j + steps] += per_step[:, :, :, j].permute(0, 2, 1, 3)
        y = y.view(batch, self.out_channels, -1)[..., : (steps - 1) * stride + kernel]
        if convtr.bias is not None:
            y = y + convtr.bias[:, None]
        return y

    def forward(self, x: torch.Tensor, state: StreamTensors | None = None) -> torch.Tensor:
        y = self._full(x)
        if self.overlap == 0:
            return y
        if state is None:
            return y[..., : y.shape[-1] - self.overlap]
        if x.shape[-1] * self.stride < self.overlap:
            raise MimiError("streaming transposed conv needs at least overlap / stride input steps")
        partial = self._state(state, "partial")
        y[..., : self.overlap] += partial
        tail = y[..., -self.overlap :]
        bias = self.convtr.convtr.bias
        if bias is not None:
            tail = tail - bias[:, None]
        partial.copy_(tail)
        return y[..., : -self.overlap]
