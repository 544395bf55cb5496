"""Mimi streaming decode: equals one-shot decode, explicit per-stream state, code validation."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
import torch

from model.mimi import (
    DEFAULT_MIMI_CONFIG,
    Mimi,
    MimiConfig,
    MimiDecoderState,
    MimiError,
    randomize_for_tiny,
    tiny_mimi_config,
)
from model.mimi.conv import StreamingLeaf, init_stream_tensors
from model.mimi.transformer import ProjectedTransformer

REL_TOL = 1e-5


def _small_config() -> MimiConfig:
    """Unlike the tiny one: other ratios/rates, 2 residual layers (dilation 2), conv shortcuts, no layer
    scale, transformer projections (d_model != dimension), 2 layers, a context of 6 positions."""
    raw: dict[str, Any] = json.loads(json.dumps(DEFAULT_MIMI_CONFIG))
    raw.update(sample_rate=800, frame_rate=50.0)
    raw["seanet"].update(
        dimension=8, n_filters=2, ratios=[4, 2], n_residual_layers=2, true_skip=False, kernel_size=5
    )
    raw["quantizer"].update(dimension=4, n_q=4, bins=16, input_dimension=8, output_dimension=8)
    raw["transformer"].update(
        d_model=16,
        num_heads=2,
        num_layers=2,
        context=6,
        layer_scale=None,
        dim_feedforward=32,
        input_dimension=8,
        output_dimensions=[8],
    )
    return MimiConfig.from_dict(raw)


@pytest.fixture(scope="module")
def tiny() -> Mimi:
    torch.set_num_threads(1)
    return randomize_for_tiny(Mimi(tiny_mimi_config()), seed=3).eval()


@pytest.fixture(scope="module")
def small() -> Mimi:
    return randomize_for_tiny(Mimi(_small_config(), num_codebooks=4), seed=5).eval()


def _codes(mimi: Mimi, batch: int, frames: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, mimi.cardinality, (batch, mimi.num_codebooks, frames), generator=gen)


def _stream(
    mimi: Mimi, codes: torch.Tensor, state: MimiDecoderState | None = None, chunk: int = 1
) -> torch.Tensor:
    state = state if state is not None else mimi.new_decoder_state(codes.shape[0])
    outs = [mimi.decode_step(codes[..., t : t + chunk], state) for t in range(0, codes.shape[-1], chunk)]
    return torch.cat(outs, dim=-1)


def _assert_close(got: torch.Tensor, ref: torch.Tensor, rel: float = REL_TOL) -> None:
    assert got.shape == ref.shape
    scale = float(ref.abs().max())
    assert scale > 0
    assert float((got - ref).abs().max()) <= rel * scale


@pytest.mark.parametrize("frames", [1, 4, 9])
def test_tiny_streaming_equals_one_shot(tiny: Mimi, frames: int) -> None:
    codes = _codes(tiny, batch=2, frames=frames, seed=frames)
    full = tiny.decode(codes)
    assert list(full.shape) == [2, 1, frames * tiny.frame_size]
    _assert_close(_stream(tiny, codes), full)


def test_tiny_random_output_is_a_waveform_not_dc(tiny: Mimi) -> None:
    wav = tiny.decode(_codes(tiny, batch=1, frames=4, seed=0))[0, 0]
    centred = wav - wav.mean()
    # The fixture's moshi output: std 0.33, max 1.67; untouched default init gives std ~0.015.
    assert float(centred.std()) > 0.1
    assert float(centred.std()) > 0.1 * float(wav.abs().max())
    assert float(centred.std()) > abs(float(wav.mean()))


@pytest.mark.parametrize("frames", [1, 3])
def test_small_config_streaming_equals_one_shot(small: Mimi, frames: int) -> None:
    codes = _codes(small, batch=3, frames=frames, seed=10 + frames)
    full = small.decode(codes)
    assert list(full.shape) == [3, 1, frames * small.frame_size] and small.frame_size == 16
    _assert_close(_stream(small, codes), full)
    _assert_close(_stream(small, codes, chunk=frames), full)


def test_attention_window_one_position_per_step_equals_one_shot_beyond_context(small: Mimi) -> None:
    transformer = small.decoder_transformer
    x = torch.randn(2, 8, 20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = transformer(x)
        state = small.new_decoder_state(2).tensors
        steps = torch.cat([transformer(x[..., t : t + 1], state) for t in range(20)], dim=-1)
    _assert_close(steps, full)


def test_two_positions_per_step_follow_moshis_ring_cache() -> None:
    # moshi's RingKVCache holds `context` entries: with 2 positions per step, the step's first query
    # sees context - 1 keys, the second one context keys. With one layer this is exactly one-shot
    # attention with context 5 at even positions and context 6 at odd ones.
    cfg = _small_config().transformer
    six = ProjectedTransformer(replace(cfg, num_layers=1, context=6))
    five = ProjectedTransformer(replace(cfg, num_layers=1, context=5))
    for module in (six, five):
        for name, leaf in module.named_modules():
            if isinstance(leaf, StreamingLeaf):
                leaf.state_name = name
    with torch.no_grad():
        for p in six.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    five.load_state_dict(six.state_dict())
    x = torch.randn(2, 8, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        state = init_stream_tensors(six, 2, torch.device("cpu"), torch.float32)
        streamed = torch.cat([six(x[..., t : t + 2], state) for t in range(0, 20, 2)], dim=-1)
        full_six, full_five = six(x), five(x)
    _assert_close(streamed[..., 1::2], full_six[..., 1::2])
    _assert_close(streamed[..., 0::2], full_five[..., 0::2])
    assert not torch.allclose(full_six[..., 0::2], full_five[..., 0::2])


def test_long_stream_matches_one_shot_within_context(small: Mimi) -> None:
    # 12 frames = 24 positions > context 6: moshi's ring cache makes the first position of each
    # step see one key less than one-shot decoding (see transformer.py); outputs stay close.
    codes = _codes(small, batch=1, frames=12, seed=7)
    full, streamed = small.decode(codes), _stream(small, codes)
    head = 3 * small.frame_size  # positions < context: identical
    _assert_close(streamed[..., :head], full[..., :head])
    assert float((streamed - full).abs().max()) < 0.5 * float(full.abs().max())


@pytest.mark.parametrize(
    ("bad", "needle"),
    [(2048, "end-of-audio"), (-1, "outside"), (4096, "outside")],
)
def test_out_of_range_codes_rejected(tiny: Mimi, bad: int, needle: str) -> None:
    codes = _codes(tiny, batch=1, frames=3, seed=1)
    codes[0, 5, 2] = bad
    with pytest.raises(MimiError, match=needle) as info:
        tiny.decode(codes)
    assert "codebook 5, frame 2" in str(info.value)
    with pytest.raises(MimiError, match=needle):
        tiny.decode_step(codes[..., 2:3], tiny.new_decoder_state(1))


def test_malformed_codes_rejected(tiny: Mimi) -> None:
    with pytest.raises(MimiError, match="shape"):
        tiny.decode(torch.zeros(1, 7, 2, dtype=torch.long))
    with pytest.raises(MimiError, match="shape"):
        tiny.decode(torch.zeros(8, 2, dtype=torch.long))
    with pytest.raises(MimiError, match="shape"):
        tiny.decode(torch.zeros(1, 8, 0, dtype=torch.long))
    with pytest.raises(MimiError, match="integer"):
        tiny.decode(torch.zeros(1, 8, 2))
    with pytest.raises(MimiError, match="batch"):
        tiny.decode_step(torch.zeros(2, 8, 1, dtype=torch.long), tiny.new_decoder_state(1))
    with pytest.raises(MimiError, match="batch_size"):
        tiny.new_decoder_state(0)


def test_state_of_another_model_rejected(tiny: Mimi, small: Mimi) -> None:
    codes = _codes(tiny, 1, 1, 0)
    with pytest.raises(MimiError, match="another Mimi model"):
        tiny.decode_step(codes, small.new_decoder_state(1))
    raw = tiny_mimi_config().to_dict()
    raw["seanet"]["n_filters"] = 8  # same module names, other widths
    wider = Mimi(MimiConfig.from_dict(raw))
    with pytest.raises(MimiError, match=r"decoder state tensor decoder\.model\.2\.partial .*another model"):
        tiny.decode_step(codes, wider.new_decoder_state(1))
    with pytest.raises(MimiError, match="another model"):
        tiny.decode_step(codes, MimiDecoderState(tiny.new_decoder_state(2).tensors, 1))


def test_interleaved_states_are_independent(tiny: Mimi) -> None:
    a, b = _codes(tiny, 1, 5, seed=21), _codes(tiny, 1, 5, seed=22)
    alone_a, alone_b = _stream(tiny, a), _stream(tiny, b)
    state_a, state_b = tiny.new_decoder_state(1), tiny.new_decoder_state(1)
    out_a, out_b = [], []
    for t in range(5):
        out_a.append(tiny.decode_step(a[..., t : t + 1], state_a))
        out_b.append(tiny.decode_step(b[..., t : t + 1], state_b))
    assert torch.equal(torch.cat(out_a, -1), alone_a)
    assert torch.equal(torch.cat(out_b, -1), alone_b)


def test_stack_and_unstack_states_at_different_positions(tiny: Mimi) -> None:
    a, b = _codes(tiny, 1, 6, seed=31), _codes(tiny, 1, 3, seed=32)
    alone_a, alone_b = _stream(tiny, a), _stream(tiny, b)
    state_a = tiny.new_decoder_state(1)
    head_a = _stream(tiny, a[..., :3], state_a)  # a is 3 frames ahead of b
    batched = MimiDecoderState.stack([state_a, tiny.new_decoder_state(1)])
    assert batched.batch_size == 2
    both = _stream(tiny, torch.cat([a[..., 3:5], b[..., :2]], dim=0), batched)
    state_a, state_b = batched.unstack()
    tail_a = _stream(tiny, a[..., 5:], state_a)
    tail_b = _stream(tiny, b[..., 2:], state_b)
    _assert_close(torch.cat([head_a, both[:1], tail_a], -1), alone_a)
    _assert_close(torch.cat([both[1:], tail_b], -1), alone_b)


def test_reset_restarts_streams(tiny: Mimi) -> None:
    codes = _codes(tiny, 2, 3, seed=41)
    state = tiny.new_decoder_state(2)
    first = _stream(tiny, codes, state)
    state.reset()
    assert torch.equal(_stream(tiny, codes, state), first)
    _stream(tiny, codes, state)
    state.reset(rows=[1])
    again = _stream(tiny, codes, state)
    assert torch.equal(again[1], first[1])
    assert not torch.equal(again[0], first[0])


def test_clone_snapshots_a_stream(tiny: Mimi) -> None:
    codes = _codes(tiny, 1, 4, seed=51)
    state = tiny.new_decoder_state(1)
    _stream(tiny, codes[..., :2], state)
    snapshot = state.clone()
    rest = _stream(tiny, codes[..., 2:], state)
    assert torch.equal(_stream(tiny, codes[..., 2:], snapshot), rest)
