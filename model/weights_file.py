"""Strict loading of a safetensors weights file into named tensors, with one error listing every problem."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from model.errors import CheckpointError


def _never(_key: str) -> bool:
    return False


def copy_weights(path: Path, targets: Mapping[str, torch.Tensor], *, what: str = "weights",
                 optional: Callable[[str], bool] = _never, ignored: Callable[[str], bool] = _never,
                 aliases: Callable[[str], bool] = _never) -> set[str]:
    """Copy every tensor of ``path`` into ``targets`` (cast to each target's dtype and device).

    Keys of ``targets`` that are ``optional`` may be absent; keys of the file that are ``ignored``
    are neither expected nor copied; ``aliases`` (tied names) are accepted but not copied, their
    primary name carries the values. Missing, unexpected and mis-shaped keys are reported together
    as one ``CheckpointError``. Returns the keys the file holds.
    """
    try:
        handle = safe_open(str(path), framework="pt")
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: {what} file not found") from exc
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read safetensors file ({exc})") from exc
    with handle as f:
        present = set(f.keys())
        missing = sorted(k for k in targets if k not in present and not optional(k))
        unexpected = sorted(k for k in present - set(targets) if not ignored(k))
        shapes = []
        for key in sorted(present & set(targets)):
            got, want = list(f.get_slice(key).get_shape()), list(targets[key].shape)
            if got != want:
                shapes.append(f"{key}: expected {want}, got {got}")
        problems = []
        if missing:
            problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if shapes:
            problems.append(f"mis-shaped keys ({len(shapes)}): {'; '.join(shapes)}")
        if problems:
            raise CheckpointError(f"{path}: {what} do not match the config: " + " | ".join(problems))
        with torch.no_grad():
            for key in sorted(present & set(targets)):
                if aliases(key):
                    continue
                try:
                    tensor = f.get_tensor(key)
                except Exception as exc:
                    raise CheckpointError(f"{path}: cannot read tensor {key!r} ({exc})") from exc
                target = targets[key]
                target.copy_(tensor.to(device=target.device, dtype=target.dtype))
    return present
