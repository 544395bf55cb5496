"""Loading and saving Mimi weights (moshi's safetensors layout), and random tiny weights for tests."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from model.mimi.codec import Mimi
from model.mimi.config import MimiConfig, MimiError
from model.mimi.quantizer import EuclideanCodebook
from model.mimi.transformer import LayerScale

MIMI_WEIGHTS_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
MIMI_CONFIG_NAME = "mimi_config.json"
_MAX_LISTED = 12


def _listing(label: str, items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"{label} ({len(items)}): {shown}{more}"


def check_mimi_state_dict(tensors: dict[str, Tensor], config: MimiConfig, source: str) -> None:
    """Raise MimiError naming every missing, unexpected or mis-shaped key (strict load rules)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Mimi(config).state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(
        f"{k} {list(tensors[k].shape)} (expected {list(expected[k])})"
        for k in set(expected) & set(tensors)
        if tuple(tensors[k].shape) != expected[k]
    )
    problems = []
    if missing:
        problems.append(_listing("missing keys", missing))
    if unexpected:
        problems.append(_listing("unexpected keys", unexpected))
    if wrong:
        problems.append(_listing("wrong shapes", wrong))
    if problems:
        raise MimiError(f"Mimi weights {source} do not fit the Mimi config: " + "; ".join(problems))


def load_mimi(
    weights: Path,
    config: MimiConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Mimi:
    """Strictly load a Mimi weights file (None config = the real Mimi); returns an eval-mode Mimi."""
    path = Path(weights)
    if not path.is_file():
        raise MimiError(f"Mimi weights file not found: {path}")
    config = config if config is not None else MimiConfig.default()
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise MimiError(f"cannot read Mimi weights {path}: {exc}") from exc
    check_mimi_state_dict(tensors, config, str(path))
    tensors = {k: v.to(dtype) if v.dtype.is_floating_point else v for k, v in tensors.items()}
    with torch.device("meta"):
        mimi = Mimi(config)
    mimi.load_state_dict(tensors, strict=True, assign=True)
    mimi = mimi.to(device=device)
    mimi.requires_grad_(False)
    return mimi.eval()


def save_mimi(mimi: Mimi, path: Path) -> None:
    """Write `mimi`'s weights as safetensors with the published key names, atomically."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in mimi.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@torch.no_grad()
def randomize_for_tiny(mimi: Mimi, seed: int) -> Mimi:
    """Deterministic random weights that make a (tiny) Mimi produce a real waveform, not DC.

    As the parity fixture was made: linear/conv weights ~ U(+-1/sqrt(fan_in)) (PyTorch's default
    scale), biases ~ N(0, 0.01^2), LayerNorm weights 1, layer scales ~ U(0.2, 0.6), codebooks with
    cluster_usage ~ U(0.5, 2), embedding_sum = N(0, 1) * cluster_usage, _initialized = 1, and the
    SEANet decoder weights doubled. Returns `mimi` (modified in place).
    """
    gen = torch.Generator().manual_seed(seed)

    def fill(target: Tensor, values: Tensor) -> None:
        target.copy_(values.to(device=target.device, dtype=target.dtype))

    def uniform(shape: torch.Size, low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(shape, generator=gen)

    for module in mimi.modules():
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear)):
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
            bound = fan_in**-0.5
            fill(module.weight, uniform(module.weight.shape, -bound, bound))
            if module.bias is not None:
                fill(module.bias, 0.01 * torch.randn(module.bias.shape, generator=gen))
        elif isinstance(module, nn.LayerNorm):
            fill(module.weight, torch.ones(module.weight.shape))
            fill(module.bias, 0.01 * torch.randn(module.bias.shape, generator=gen))
        elif isinstance(module, LayerScale):
            fill(module.scale, uniform(module.scale.shape, 0.2, 0.6))
        elif isinstance(module, EuclideanCodebook):
            usage = uniform(module.cluster_usage.shape, 0.5, 2.0)
            fill(module.cluster_usage, usage)
            fill(
                module.embedding_sum, torch.randn(module.embedding_sum.shape, generator=gen) * usage[:, None]
            )
            module._initialized.fill_(1.0)
    for module in mimi.decoder.modules():
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            module.weight.mul_(2.0)
    return mimi
