"""Mimi weights files: strict loading with precise errors, atomic saving, encode()."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.mimi import Mimi, MimiConfig, MimiError, load_mimi, randomize_for_tiny, save_mimi, tiny_mimi_config


@pytest.fixture(scope="module")
def tiny() -> Mimi:
    torch.set_num_threads(1)
    return randomize_for_tiny(Mimi(tiny_mimi_config()), seed=9).eval()


@pytest.fixture()
def saved(tiny: Mimi, tmp_path: Path) -> Path:
    path = tmp_path / "mimi.safetensors"
    save_mimi(tiny, path)
    return path


def test_save_then_load_round_trips(tiny: Mimi, saved: Path) -> None:
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]  # no temp file left
    loaded = load_mimi(saved, tiny_mimi_config())
    assert not loaded.training
    codes = torch.randint(0, 2048, (1, 8, 3), generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.decode(codes), tiny.decode(codes))
    assert set(load_file(str(saved))) == set(tiny.state_dict())


def test_load_casts_dtype(saved: Path) -> None:
    loaded = load_mimi(saved, tiny_mimi_config(), dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    codes = torch.zeros(1, 8, 2, dtype=torch.long)
    assert loaded.decode(codes).dtype == torch.bfloat16
    assert loaded.new_decoder_state(1).tensors["decoder.model.0.previous"].dtype == torch.bfloat16


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MimiError, match="not found"):
        load_mimi(tmp_path / "absent.safetensors", tiny_mimi_config())


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(MimiError, match="cannot read"):
        load_mimi(path, tiny_mimi_config())


def test_bad_keys_and_shapes_are_named(saved: Path, tmp_path: Path) -> None:
    tensors = load_file(str(saved))
    del tensors["decoder.model.14.conv.conv.bias"]
    tensors["decoder.extra.weight"] = torch.zeros(2)
    tensors["upsample.convtr.convtr.convtr.weight"] = torch.zeros(32, 2, 4)
    bad = tmp_path / "edited.safetensors"
    save_file(tensors, str(bad))
    with pytest.raises(MimiError) as info:
        load_mimi(bad, tiny_mimi_config())
    message = str(info.value)
    assert "missing keys (1): decoder.model.14.conv.conv.bias" in message
    assert "unexpected keys (1): decoder.extra.weight" in message
    assert "upsample.convtr.convtr.convtr.weight [32, 2, 4] (expected [32, 1, 4])" in message


def test_tiny_weights_do_not_fit_the_real_config(saved: Path) -> None:
    with pytest.raises(MimiError, match=r"wrong shapes \(\d+\).*missing keys|missing keys.*wrong shapes"):
        load_mimi(saved)  # None config = the real Mimi


def test_encode_shapes_range_and_batch_independence(tiny: Mimi) -> None:
    gen = torch.Generator().manual_seed(2)
    wav = 0.1 * torch.randn(2, 1, 2 * tiny.frame_size + 100, generator=gen)
    codes = tiny.encode(wav)
    assert codes.dtype == torch.long and list(codes.shape) == [2, 8, 3]
    assert int(codes.min()) >= 0 and int(codes.max()) < tiny.cardinality
    assert torch.equal(tiny.encode(wav[1:]), codes[1:])
    with pytest.raises(MimiError, match="samples"):
        tiny.encode(torch.zeros(1, 2, 1920))


def test_encode_finds_the_nearest_semantic_code(tiny: Mimi) -> None:
    # With the semantic input projection made an exact left inverse, a latent equal to codebook
    # vector c must quantize to code c in the first codebook.
    rvq = tiny.quantizer.rvq_first
    codebook = rvq.codebooks()[0]
    with torch.no_grad():
        proj = torch.linalg.pinv(rvq.input_proj.weight[:, :, 0])  # [32, 4]
        latent = (proj @ codebook.embedding[[5, 77, 2047]].T)[None]  # [1, 32, 3]
        assert list(tiny.quantizer.encode(latent, 1)[0, 0]) == [5, 77, 2047]


def test_real_mimi_facts() -> None:
    with torch.device("meta"):
        real = Mimi(MimiConfig.default())
    assert real.sample_rate == 24000 and real.frame_rate == 12.5
    assert real.frame_size == 1920 and real.num_codebooks == 8 and real.total_codebooks == 32
