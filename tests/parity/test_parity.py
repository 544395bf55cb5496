"""Every tensor of every official reference fixture, recomputed by model/ (``python -m model.parity``).

Fixtures (tests/fixtures/README.md): the shared tiny LFM2-Audio checkpoint and LFM2.5 detokenizer,
two realistic-shape checkpoints made by tools/official/make_reference.py (head_dim >= 8 in every
attention, GQA with several KV heads, bf16 weights, two layer patterns, untied depth embeddings,
an LFM2.5 checkpoint with a windowed detokenizer and no Mimi), the real-width slice (the real
depthformer and one conv + one attention layer of the real backbone, seeded weights) and the
real-size Mimi (seeded weights, beyond its transformer context).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from model.parity import run_parity

FIXTURES = [
    "lfm2-audio-tiny",
    "lfm25-detokenizer-tiny",
    "lfm2-audio-gqa-bf16",
    "lfm25-audio-attnfirst",
    "lfm2-audio-realwidth-slice",
    "mimi-realsize",
]


@pytest.mark.parametrize("name", FIXTURES)
def test_every_reference_tensor_matches(fixtures_dir: Path, name: str) -> None:
    torch.set_num_threads(1)
    checkpoint, reference = fixtures_dir / name / "checkpoint", fixtures_dir / name / "reference"
    lines: list[str] = []
    checks = run_parity(checkpoint, reference, emit=lines.append)
    with safe_open(str(reference / "reference.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert names <= {c.name for c in checks}
    failed = [c.line() for c in checks if not c.ok]
    assert failed == [], "\n".join(failed)
    assert lines[-1] == f"{len(checks)} passed, 0 failed"


def test_detokenizer_fixtures_check_the_stream_too(fixtures_dir: Path) -> None:
    checks = run_parity(fixtures_dir / "lfm25-detokenizer-tiny" / "checkpoint",
                        fixtures_dir / "lfm25-detokenizer-tiny" / "reference", emit=lambda _: None)
    streamed = [c for c in checks if c.name.endswith("[streamed]")]
    assert [c.name for c in streamed] == ["T1.waveform[streamed]", "T40.waveform[streamed]", "T5.waveform[streamed]"]
    assert all(c.ok for c in streamed)


def test_a_wrong_rotary_convention_is_caught(fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The depthformer with the backbone's rotate-half RoPE (the bug a head_dim of 2 hid) must fail."""
    import model.backbone as backbone
    import model.depthformer as depthformer

    monkeypatch.setattr(depthformer, "pair_rope_cos_sin",
                        lambda pos, hd, theta: backbone.rope_cos_sin(pos, hd, theta, torch.float32))
    monkeypatch.setattr(depthformer, "apply_pair_rope", backbone.apply_rope)
    name = "lfm2-audio-gqa-bf16"
    checks = {c.name: c for c in run_parity(fixtures_dir / name / "checkpoint", fixtures_dir / name / "reference",
                                            emit=lambda _: None)}
    assert not checks["depthformer.logits"].ok
    assert checks["prefill.last_hidden_state"].ok  # the backbone's own convention is right
