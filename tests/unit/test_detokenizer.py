"""The LFM2.5 detokenizer: config spelling, loading, whole-sequence decode and batched streaming."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.detokenizer import (
    DETOKENIZER_DIR,
    FRAME_SAMPLES,
    LOOKAHEAD_SAMPLES,
    Detokenizer,
    DetokenizerConfig,
    DetokenizerStreams,
    load_detokenizer,
    tiny_detokenizer_config,
)
from model.errors import CheckpointError, ConfigError
from model.seeded import detokenizer_rule, materialize


def small(window: int, layer_types: list[str], seed: int = 3) -> Detokenizer:
    raw = dict(tiny_detokenizer_config(), hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=96, layer_types=layer_types, num_hidden_layers=len(layer_types), sliding_window=window)
    detok = Detokenizer(DetokenizerConfig.from_dict(raw)).eval()
    materialize(detok, seed, detokenizer_rule())
    return detok


def codes(frames: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 2048, (1, 8, frames), generator=torch.Generator().manual_seed(seed))


def streamed(streams: DetokenizerStreams, slot: int, c: torch.Tensor) -> torch.Tensor:
    pieces = [streams.step([slot], c[0, :, t][None])[0] for t in range(c.shape[-1])]
    return torch.cat([*pieces, streams.flush([slot])[0]])


def test_official_spelling_sliding_attention_is_windowed_attention() -> None:
    raw = dict(tiny_detokenizer_config(), layer_types=["conv", "sliding_attention", "full_attention"],
               num_hidden_layers=3, sliding_window=7)
    cfg = DetokenizerConfig.from_dict(raw)
    assert cfg.lfm.layer_types == ("conv", "full_attention", "full_attention")
    assert cfg.sliding_window == 7
    assert DetokenizerConfig.from_dict({k: v for k, v in raw.items() if k != "sliding_window"}).sliding_window == 30


@pytest.mark.parametrize("raw, message", [
    ({"layer_types": ["conv", "conv"], "num_hidden_layers": 2}, "no attention layer"),
    ({"sliding_window": 0}, "sliding_window"),
    ({"layer_types": ["conv", "mamba"], "num_hidden_layers": 2}, "unsupported layer types"),
])
def test_bad_configs_are_named(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DetokenizerConfig.from_dict(dict(tiny_detokenizer_config(), **raw))


@pytest.mark.parametrize("window, layers", [(30, ["conv", "sliding_attention"]), (4, ["sliding_attention", "conv"]),
                                            (1, ["full_attention"]), (9, ["conv", "full_attention", "conv"])])
def test_stream_equals_whole_sequence_delayed_by_the_lookahead(window: int, layers: list[str]) -> None:
    torch.manual_seed(0)
    detok = small(window, layers)
    c = codes(13, seed=window)
    whole = detok(c)[0]
    streams = DetokenizerStreams(detok, capacity=1)
    out = streamed(streams, streams.open(), c)
    assert out.shape[0] == LOOKAHEAD_SAMPLES + 13 * FRAME_SAMPLES
    assert float(out[:LOOKAHEAD_SAMPLES].abs().max()) == 0.0
    assert float((out[LOOKAHEAD_SAMPLES:] - whole).abs().max()) <= 1e-4 * float(whole.abs().max())


def test_window_really_limits_attention() -> None:
    """With a window of 2, codes older than the window (and the conv reach) cannot change the output."""
    detok = small(2, ["sliding_attention"])
    a, b = codes(6, 1), codes(6, 1)
    b[0, :, 0] = (b[0, :, 0] + 1000) % 2048
    wa, wb = detok(a)[0], detok(b)[0]
    assert not torch.allclose(wa[:FRAME_SAMPLES], wb[:FRAME_SAMPLES])
    assert torch.allclose(wa[3 * FRAME_SAMPLES:], wb[3 * FRAME_SAMPLES:], atol=1e-6)


def test_batched_slots_equal_streams_alone_and_reset_restarts() -> None:
    detok = small(6, ["conv", "sliding_attention"])
    lengths = [5, 9, 2]
    seqs = [codes(n, seed=10 + i) for i, n in enumerate(lengths)]
    alone = []
    for c in seqs:
        s = DetokenizerStreams(detok, capacity=1)
        alone.append(streamed(s, s.open(), c))
    streams = DetokenizerStreams(detok, capacity=2)  # grows when a third stream opens
    slots = [streams.open() for _ in seqs]
    assert streams.capacity >= 3
    pieces: list[list[torch.Tensor]] = [[] for _ in seqs]
    for t in range(max(lengths)):
        live = [i for i, n in enumerate(lengths) if t < n]
        out = streams.step([slots[i] for i in live], torch.stack([seqs[i][0, :, t] for i in live]))
        for row, i in enumerate(live):
            pieces[i].append(out[row])
            if t == lengths[i] - 1:
                pieces[i].append(streams.flush([slots[i]])[0])
    for i in range(len(seqs)):
        assert torch.allclose(torch.cat(pieces[i]), alone[i], atol=1e-5)
    streams.reset([slots[0]])  # a new sequence in the same slot decodes like a fresh stream
    again = streamed(streams, slots[0], seqs[0])
    assert torch.allclose(again, alone[0], atol=1e-5)
    streams.close(slots[1])
    assert streams.open() == slots[1]


def test_end_of_audio_codes_are_refused() -> None:
    detok = small(4, ["sliding_attention"])
    bad = codes(2, 0)
    bad[0, 3, 1] = 2048
    with pytest.raises(ValueError, match="end-of-audio"):
        detok(bad)
    streams = DetokenizerStreams(detok)
    with pytest.raises(ValueError, match="end-of-audio"):
        streams.step([streams.open()], bad[0, :, 1][None])


def test_flush_of_an_empty_stream_is_silence() -> None:
    detok = small(4, ["sliding_attention"])
    streams = DetokenizerStreams(detok)
    tail = streams.flush([streams.open()])
    assert tail.shape == (1, LOOKAHEAD_SAMPLES) and float(tail.abs().max()) == 0.0


def test_real_size_state_dict_matches_the_official_keys(fixtures_dir: Path) -> None:
    keys = json.loads((fixtures_dir / "lfm25-detokenizer-keys.json").read_text())
    cfg = DetokenizerConfig.from_dict(keys["config_reconstructed"])
    with torch.device("meta"):
        ours = {k: list(v.shape) for k, v in Detokenizer(cfg).state_dict().items()}
    entries = keys["entries"]
    official = {e["name"]: e["shape"] for e in entries} if isinstance(entries, list) else \
        {k: v["shape"] for k, v in entries.items()}
    assert set(official) - set(ours) == {"lfm.embed_tokens.weight"}  # stored, unused: never allocated here
    assert set(ours) <= set(official)
    assert all(ours[k] == official[k] for k in ours)


def test_loader_accepts_bf16_and_reports_every_bad_key(fixtures_dir: Path, tmp_path: Path) -> None:
    src = fixtures_dir / "lfm25-detokenizer-tiny" / "checkpoint" / DETOKENIZER_DIR
    detok = load_detokenizer(src, torch.device("cpu"), torch.float32)
    stored = load_file(str(src / "model.safetensors"))
    assert stored["lin.weight"].dtype == torch.bfloat16
    assert torch.equal(detok.lin.weight, stored["lin.weight"].float())
    assert detok.window.dtype == torch.float32
    broken = tmp_path / DETOKENIZER_DIR
    shutil.copytree(src, broken)
    del stored["lin.bias"]
    stored["extra.weight"] = torch.zeros(2)
    stored["emb.emb.weight"] = stored["emb.emb.weight"][:10]
    save_file(stored, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_detokenizer(broken, torch.device("cpu"), torch.float32)
    text = str(err.value)
    assert "missing keys (1): lin.bias" in text and "unexpected keys (1): extra.weight" in text
    assert "emb.emb.weight: expected [16384, 512], got [10, 512]" in text
