"""Seeded weights: reproducible values, the drawing rules, and what a materialised model holds."""

from __future__ import annotations

import numpy as np
import torch

from model.seeded import (
    AudioRuleSettings,
    Draw,
    draw,
    lfm2_audio_rule,
    materialize,
    row_mask,
    shapes_of,
    uniform,
)


def test_values_depend_on_seed_and_name_only() -> None:
    a = uniform(3, "layers.0.w", 1000)
    assert np.array_equal(a, uniform(3, "layers.0.w", 1000))
    assert np.array_equal(a[:10], uniform(3, "layers.0.w", 10))  # a prefix does not depend on the count
    assert not np.array_equal(a, uniform(4, "layers.0.w", 1000))
    assert not np.array_equal(a, uniform(3, "layers.1.w", 1000))
    big = uniform(0, "x", 200_000)
    assert big.min() >= 0.0 and big.max() < 1.0
    assert abs(big.mean() - 0.5) < 0.005 and abs(big.std() - (1 / 12) ** 0.5) < 0.005


def test_draw_has_the_asked_mean_spread_and_rows() -> None:
    values = draw(1, "t", (400, 50), Draw(mean=1.0, std=0.15))
    assert abs(values.mean() - 1.0) < 0.01 and abs(values.std() - 0.15) < 0.01
    sparse = draw(1, "t", (100, 4), Draw(0.0, 1.0, keep_rows=10, always_rows=(99,)))
    kept = np.nonzero(np.abs(sparse).sum(1))[0]
    assert len(kept) in (10, 11) and 99 in kept
    assert np.array_equal(np.nonzero(row_mask(1, "t", 100, 10, (99,)))[0], kept)


def test_materialised_model_ties_aliases_and_is_exact_in_bf16(tiny_checkpoint_dir) -> None:  # type: ignore[no-untyped-def]
    from model.checkpoint import build_model
    from model.config import LFM2AudioConfig

    config = LFM2AudioConfig.from_file(tiny_checkpoint_dir / "config.json")
    model = build_model(config, "cpu", torch.float32)
    left = materialize(model, 9, lfm2_audio_rule(AudioRuleSettings(audio_rows=16)), torch.bfloat16,
                       [{"tensor": "lfm.embed_tokens.weight", "row": 7, "scale": 3.0}])
    assert left == ["audio_loss_weights"]
    for p in model.parameters():
        assert torch.equal(p, p.to(torch.bfloat16).float())
    emb = model.depth_embeddings[0]
    assert emb.to_logits.weight is emb.embedding.weight
    again = build_model(config, "cpu", torch.float32)
    materialize(again, 9, lfm2_audio_rule(AudioRuleSettings(audio_rows=16)), torch.bfloat16)
    diff = (model.lfm.embed_tokens.weight - again.lfm.embed_tokens.weight).abs().sum(1)
    assert torch.nonzero(diff).flatten().tolist() == [7]  # the scaled row, and only it
    assert "lfm.layers.0.conv.conv.weight" in shapes_of(model)
