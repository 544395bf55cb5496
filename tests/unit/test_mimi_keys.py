"""Mimi module layout vs the published weights' key set, and config parsing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from model.mimi import DEFAULT_MIMI_CONFIG, Mimi, MimiConfig, MimiError, tiny_mimi_config


@pytest.fixture(scope="module")
def mimi_keys(fixtures_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((fixtures_dir / "mimi-keys.json").read_text())
    return data


def _meta_mimi(config: MimiConfig) -> Mimi:
    with torch.device("meta"):
        return Mimi(config)


def test_default_state_dict_matches_published_keys_and_shapes(mimi_keys: dict[str, Any]) -> None:
    state = _meta_mimi(MimiConfig.default()).state_dict()
    expected = {name: entry["shape"] for name, entry in mimi_keys["tensors"].items()}
    got = {name: list(tensor.shape) for name, tensor in state.items()}
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    assert {k: v for k, v in got.items() if expected[k] != v} == {}
    # Same order as moshi's module, so a saved file lists keys as the real one does.
    assert list(got) == list(expected)
    assert len(got) == mimi_keys["n_entries"] == 318
    assert sum(t.numel() for t in state.values()) == mimi_keys["n_parameters_and_buffers"]
    assert {str(t.dtype) for t in state.values()} == {"torch.float32"}
    assert {entry["dtype"] for entry in mimi_keys["tensors"].values()} == {"float32"}


def test_persistent_buffers_are_exactly_the_codebook_statistics(mimi_keys: dict[str, Any]) -> None:
    # moshi also registers a non-persistent `_embedding` cache per codebook; ours is a plain
    # attribute, so named_buffers() and the state dict agree and nothing else differs.
    mimi = _meta_mimi(MimiConfig.default())
    buffers = {name for name, _ in mimi.named_buffers()}
    expected = {name for name, entry in mimi_keys["tensors"].items() if entry.get("buffer")}
    assert buffers == expected
    assert len(buffers) == 32 * 3


def test_default_config_is_moshis(mimi_keys: dict[str, Any]) -> None:
    assert MimiConfig.default().to_dict() == mimi_keys["mimi_config"]
    assert MimiConfig.from_dict(mimi_keys["mimi_config"]) == MimiConfig.default()
    cfg = MimiConfig.default()
    assert (cfg.frame_size, cfg.encoder_frame_rate, cfg.resample_stride) == (1920, 25.0, 2)


def test_tiny_config_matches_fixture(tiny_checkpoint_dir: Path) -> None:
    raw = json.loads((tiny_checkpoint_dir / "mimi_config.json").read_text())
    assert tiny_mimi_config().to_dict() == raw
    assert MimiConfig.from_json(tiny_checkpoint_dir / "mimi_config.json") == tiny_mimi_config()


def test_to_dict_round_trips() -> None:
    cfg = tiny_mimi_config()
    assert MimiConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def _modified(path: tuple[str, ...], value: Any, delete: bool = False) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(json.dumps(DEFAULT_MIMI_CONFIG))
    node = raw
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return raw


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (("seanet", "bogus"), 1, "seanet.bogus"),
        (("bogus",), 1, "bogus"),
        (("seanet", "norm"), "weight_norm", "seanet.norm"),
        (("seanet", "pad_mode"), "reflect", "seanet.pad_mode"),
        (("seanet", "ratios"), [8, 0, 5], "seanet.ratios[1]"),
        (("seanet", "n_filters"), 6.5, "seanet.n_filters"),
        (("transformer", "gating"), "silu", "transformer.gating"),
        (("transformer", "causal"), False, "transformer.causal"),
        (("transformer", "num_heads"), 3, "transformer.num_heads"),
        (("quantizer", "bins"), "2048", "quantizer.bins"),
        (("quantizer", "n_q"), 1, "quantizer.n_q"),
        (("frame_rate",), 13.0, "frame_rate"),
        (("sample_rate",), True, "sample_rate"),
    ],
)
def test_invalid_config_names_the_key(path: tuple[str, ...], value: Any, needle: str) -> None:
    with pytest.raises(MimiError, match=None) as info:
        MimiConfig.from_dict(_modified(path, value))
    assert needle in str(info.value)


@pytest.mark.parametrize("path", [("seanet", "dimension"), ("transformer",), ("transformer", "context")])
def test_missing_config_key_is_named(path: tuple[str, ...]) -> None:
    with pytest.raises(MimiError) as info:
        MimiConfig.from_dict(_modified(path, None, delete=True))
    assert ".".join(path) in str(info.value)


def test_unreadable_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "mimi_config.json"
    bad.write_text("{not json")
    with pytest.raises(MimiError, match="cannot read mimi config"):
        MimiConfig.from_json(bad)
    with pytest.raises(MimiError, match="must be an object"):
        MimiConfig.from_dict([1, 2])


def test_num_codebooks_bounds() -> None:
    with pytest.raises(MimiError, match="num_codebooks"):
        Mimi(tiny_mimi_config(), num_codebooks=33)
    assert Mimi(tiny_mimi_config(), num_codebooks=1).num_codebooks == 1
