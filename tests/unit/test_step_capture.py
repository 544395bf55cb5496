"""The batched generation step can be captured as one graph: proofs on the CPU, and padding semantics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.batched import GenerationStep, StepSampling
from model.checkpoint import load_model
from model.config import LFM2AudioConfig
from model.pool import BackbonePool
from model.step_capture import bucket, graph_breaks, op_counts, run_on_meta

SAMPLED = StepSampling(text_temperature=0.8, text_top_k=50, audio_temperature=1.0, audio_top_k=4)


@pytest.fixture(scope="module")
def full_size(fixtures_dir: Path) -> LFM2AudioConfig:
    return LFM2AudioConfig.from_file(fixtures_dir / "lfm2-audio-1.5b-config.json")


@pytest.mark.parametrize("sampling", [StepSampling(), SAMPLED])
def test_full_size_step_traces_as_one_graph(full_size: LFM2AudioConfig, sampling: StepSampling) -> None:
    assert graph_breaks(full_size, sampling=sampling) == (1, 0)


@pytest.mark.parametrize("sampling", [StepSampling(), SAMPLED])
def test_full_size_step_runs_on_meta_with_equal_ops_at_every_batch(full_size: LFM2AudioConfig,
                                                                   sampling: StepSampling) -> None:
    assert run_on_meta(full_size, rows=8, sampling=sampling) == [8, 1 + full_size.codebooks]
    counts = op_counts(full_size, (1, 8, 32), sampling=sampling)
    assert len(set(counts.values())) == 1, counts
    assert counts[1] > 1000  # the whole step: every layer, both heads


def test_bucket() -> None:
    assert [bucket(n, 64) for n in (1, 2, 3, 5, 64, 100)] == [1, 2, 4, 8, 64, 64]
    assert bucket(3, 4096, 256) == 256 and bucket(300, 4096, 256) == 512


def test_padded_rows_and_keys_give_the_same_results(tiny_checkpoint_dir: Path) -> None:
    """What a captured graph computes (rows padded to the batch bucket with free slots that do not advance,
    keys padded to the length bucket) equals the exact step, and leaves the padding slots untouched."""
    torch.set_num_threads(1)
    loaded = load_model(tiny_checkpoint_dir, device="cpu", dtype="float32")
    lfm = loaded.model.lfm
    gen = torch.Generator().manual_seed(2)
    results = []
    for rows, kv_len in ((3, None), (8, 64)):
        pool = BackbonePool(lfm.config, slots=8, context=128, device="cpu", dtype=torch.float32)
        states = [pool.open_state() for _ in range(3)]
        g = torch.Generator().manual_seed(2)
        for n, s in zip((4, 9, 6), states, strict=True):
            lfm(torch.randn(1, n, lfm.config.hidden_size, generator=g), s)
        embeds = torch.randn(rows, lfm.config.hidden_size, generator=gen.manual_seed(5))
        advance = torch.tensor([True, True, False] + [False] * (rows - 3))
        hidden_in = torch.zeros(rows, lfm.config.hidden_size)
        hidden_in[2] = 3.0
        want_audio = torch.tensor([False, True, True] + [False] * (rows - 3))
        forced = torch.full((rows,), -1)
        step = GenerationStep(loaded.model, pool)
        exact_len = max(s.position for s in states) + 1
        out = step(embeds, advance, hidden_in, want_audio, forced, kv_len or exact_len)
        results.append((out.packed[:3].clone(), out.next_embeds[:3].clone(), pool.positions.clone()))
    (p1, e1, pos1), (p2, e2, pos2) = results
    assert torch.equal(p1, p2)
    torch.testing.assert_close(e1, e2, atol=1e-6, rtol=1e-6)
    assert torch.equal(pos1, pos2) and pos2[3:].tolist() == [0] * 5
