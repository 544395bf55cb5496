"""Bad checkpoints give one clear CheckpointError naming the file or keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.checkpoint import load_model, resolve_checkpoint
from model.config import LFM2AudioConfig
from model.errors import CheckpointError, ConfigError


@pytest.fixture()
def ckpt(tmp_path: Path, tiny_checkpoint_dir: Path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint_dir, dst)
    return dst


def test_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint(tmp_path / "nope")


def test_uncached_repo_offline_names_repo_and_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint("LiquidAI/LFM2-Audio-1.5B", local_files_only=True)
    assert "LiquidAI/LFM2-Audio-1.5B" in str(err.value)
    assert "huggingface-cli download LiquidAI/LFM2-Audio-1.5B" in str(err.value)


def test_missing_weights_file(ckpt: Path) -> None:
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_model(ckpt, device="cpu", load_codec=False)


def test_wrong_shapes_and_missing_keys_are_listed(ckpt: Path) -> None:
    sd = load_file(ckpt / "model.safetensors")
    sd["depth_linear.bias"] = torch.zeros(3)
    del sd["lfm.layers.0.ffn_norm.weight"]
    sd["bogus.weight"] = torch.zeros(1)
    save_file(sd, ckpt / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_model(ckpt, device="cpu", load_codec=False)
    msg = str(err.value)
    assert "depth_linear.bias: expected [512], got [3]" in msg
    assert "lfm.layers.0.ffn_norm.weight" in msg and "missing" in msg
    assert "bogus.weight" in msg and "unexpected" in msg


def test_truncated_safetensors(ckpt: Path) -> None:
    path = ckpt / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_model(ckpt, device="cpu", load_codec=False)


def test_config_with_wrong_type(ckpt: Path) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["encoder"]["n_layers"] = "two"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"encoder\.n_layers: expected int, got str"):
        load_model(ckpt, device="cpu", load_codec=False)


def test_unknown_config_key_warns(ckpt: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["depthformer"]["future_knob"] = 3
    (ckpt / "config.json").write_text(json.dumps(cfg))
    LFM2AudioConfig.from_file(ckpt / "config.json")
    assert "future_knob" in caplog.text


def test_aliases_and_buffers_are_optional_and_bf16_loads(ckpt: Path) -> None:
    full = load_model(ckpt, device="cpu", load_codec=False)
    sd = load_file(ckpt / "model.safetensors")
    dropped = {k for k in sd if k.startswith("depth_embeddings.") and ".to_logits." in k}
    dropped |= {"codebook_offsets", "audio_loss_weights"}
    slim = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items() if k not in dropped}
    save_file(slim, ckpt / "model.safetensors")
    loaded = load_model(ckpt, device="cpu", dtype="fp32", load_codec=False)
    emb = loaded.model.depth_embeddings[3]
    assert emb.to_logits.weight is emb.embedding.weight
    torch.testing.assert_close(loaded.model.codebook_offsets, full.model.codebook_offsets)
    torch.testing.assert_close(loaded.model.audio_loss_weights, full.model.audio_loss_weights)
    torch.testing.assert_close(emb.embedding.weight, full.model.depth_embeddings[3].embedding.weight.bfloat16().float())
