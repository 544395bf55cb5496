"""Full-size fidelity without weights: the meta-device model has exactly the official keys and shapes."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from model.checkpoint import build_model
from model.config import LFM2AudioConfig


def test_full_size_keys_and_shapes_match_official(fixtures_dir: Path) -> None:
    config = LFM2AudioConfig.from_file(fixtures_dir / "lfm2-audio-1.5b-config.json")
    model = build_model(config, device="meta", dtype=torch.bfloat16)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    official = json.loads((fixtures_dir / "lfm2-audio-1.5b-keys.json").read_text())["tensors"]
    theirs = {k: v["shape"] for k, v in official.items()}
    # No differences are expected: every key (tied aliases and buffers included) has the official name.
    assert sorted(set(theirs) - set(ours)) == []
    assert sorted(set(ours) - set(theirs)) == []
    assert {k: s for k, s in ours.items() if theirs[k] != s} == {}
    # dtypes of a bf16 checkpoint: floating tensors bf16, integer buffers int64.
    sd = model.state_dict()
    for key, entry in official.items():
        assert str(sd[key].dtype).removeprefix("torch.") == entry["dtype"], key


def test_full_size_tied_aliases_share_storage(fixtures_dir: Path) -> None:
    config = LFM2AudioConfig.from_file(fixtures_dir / "lfm2-audio-1.5b-config.json")
    model = build_model(config, device="meta")
    official = json.loads((fixtures_dir / "lfm2-audio-1.5b-keys.json").read_text())["tensors"]
    params = dict(model.named_parameters(remove_duplicate=False))
    tied = {k: v["tied_to"] for k, v in official.items() if "tied_to" in v}
    assert len(tied) == config.codebooks
    for alias, primary in tied.items():
        assert params[alias] is params[primary]
    unique = sum(p.numel() for p in model.parameters())
    assert unique == json.loads((fixtures_dir / "lfm2-audio-1.5b-keys.json").read_text())["n_unique_parameters"]
