"""Every tensor of the official reference, recomputed from the tiny checkpoint and input.wav."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from model.parity import run_parity


def test_every_reference_tensor_matches(tiny_checkpoint_dir: Path, tiny_reference_dir: Path) -> None:
    torch.set_num_threads(1)
    lines: list[str] = []
    checks = run_parity(tiny_checkpoint_dir, tiny_reference_dir, emit=lines.append)
    with safe_open(str(tiny_reference_dir / "reference.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert names <= {c.name for c in checks}
    failed = [c.line() for c in checks if not c.ok]
    assert failed == [], "\n".join(failed)
    assert lines[-1] == f"{len(checks)} passed, 0 failed"
