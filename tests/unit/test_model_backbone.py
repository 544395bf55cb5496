"""Backbone state: chunked / stepwise processing equals one full forward, also after truncate()."""

from __future__ import annotations

import pytest
import torch

from model.backbone import Lfm2Backbone
from model.config import LfmConfig
from model.errors import GenerationError


def _backbone(seed: int = 0) -> Lfm2Backbone:
    cfg = LfmConfig.from_dict({
        "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "block_ff_dim": 48, "block_multiple_of": 8, "conv_L_cache": 3,
        "layer_types": ["conv", "full_attention", "conv", "full_attention"],
    })
    torch.manual_seed(seed)
    model = Lfm2Backbone(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.dim() > 1 else 0.2) + (1.0 if p.dim() == 1 else 0.0))
    return model


@torch.no_grad()
def test_steps_and_chunks_equal_full_forward() -> None:
    model = _backbone()
    x = torch.randn(2, 11, 16)
    full = model(x)
    state = model.new_state(batch_size=2, kv_capacity=4)  # forces K/V growth
    pieces = [model(x[:, :5], state)]
    pieces += [model(x[:, i : i + 1], state) for i in range(5, 8)]
    pieces.append(model(x[:, 8:], state))
    assert state.position == 11
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_truncate_then_continue_equals_full_forward_of_new_history() -> None:
    model = _backbone(1)
    x = torch.randn(1, 9, 16)
    other = torch.randn(1, 4, 16)
    state = model.new_state()
    model(x[:, :6], state)
    mark = state.save()
    assert mark == 6
    model(other, state)  # a continuation that will be rolled back (e.g. unplayed audio)
    state.truncate(mark)
    assert state.position == 6
    tail = torch.cat([model(x[:, i : i + 1], state) for i in range(6, 9)], dim=1)
    torch.testing.assert_close(tail, model(x)[:, 6:], rtol=1e-5, atol=1e-5)


def test_truncate_to_unsaved_position_is_refused() -> None:
    model = _backbone()
    state = model.new_state()
    with torch.no_grad():
        model(torch.randn(1, 5, 16), state)
    with pytest.raises(GenerationError, match="saved"):
        state.truncate(3)
    state.truncate(0)  # the empty conversation is always a mark
    assert state.position == 0
