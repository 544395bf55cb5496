"""The tiny fixture Mimi (moshi 0.2.13 outputs) reproduced by model.mimi."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.mimi import MIMI_CONFIG_NAME, MIMI_WEIGHTS_NAME, Mimi, MimiConfig, load_mimi


def _max_rel_diff(got: torch.Tensor, ref: torch.Tensor) -> float:
    assert got.shape == ref.shape
    return float((got - ref).abs().max() / ref.abs().max())


@pytest.fixture(scope="module")
def tiny_mimi(tiny_checkpoint_dir: Path) -> Mimi:
    torch.set_num_threads(1)
    config = MimiConfig.from_json(tiny_checkpoint_dir / MIMI_CONFIG_NAME)
    return load_mimi(tiny_checkpoint_dir / MIMI_WEIGHTS_NAME, config)


@pytest.fixture(scope="module")
def reference(tiny_reference_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(tiny_reference_dir / "reference.safetensors"))


def test_strict_load_uses_every_tensor(tiny_mimi: Mimi, tiny_checkpoint_dir: Path) -> None:
    stored = load_file(str(tiny_checkpoint_dir / MIMI_WEIGHTS_NAME))
    state = tiny_mimi.state_dict()
    assert set(state) == set(stored)
    for name, tensor in stored.items():
        assert torch.equal(state[name], tensor), name


def test_decode_full_matches_reference(tiny_mimi: Mimi, reference: dict[str, torch.Tensor]) -> None:
    codes = reference["mimi.codes"]
    assert list(codes.shape) == [8, 10]
    out = tiny_mimi.decode(codes[None])
    assert _max_rel_diff(out, reference["mimi.decode_full"]) <= 1e-4


def test_decode_streaming_matches_reference(tiny_mimi: Mimi, reference: dict[str, torch.Tensor]) -> None:
    codes = reference["mimi.codes"][None]
    state = tiny_mimi.new_decoder_state(1)
    chunks = [tiny_mimi.decode_step(codes[:, :, t : t + 1], state) for t in range(codes.shape[-1])]
    assert all(list(chunk.shape) == [1, 1, tiny_mimi.frame_size] for chunk in chunks)
    out = torch.cat(chunks, dim=-1)
    assert _max_rel_diff(out, reference["mimi.decode_streaming"]) <= 1e-4
