"""The engine benchmarks run end to end on the tiny checkpoint (--quick) and print every table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from bench import chunk_fidelity, engine_latency
from bench.common import format_table, speech_clip


def table_rows(output: str, section: str) -> list[list[str]]:
    """Data rows of the Markdown table that follows the heading containing `section`."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## ") and section in line)
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("| ") and not line.startswith("|--"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]  # without the header


def number(cell: str) -> float:
    value = float(cell)
    assert value == value, f"not a number: {cell!r}"
    return value


def test_engine_latency_quick_prints_every_table(tiny_checkpoint_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    assert engine_latency.main(["--quick", "--checkpoint", str(tiny_checkpoint_dir)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^machine: CPU .+, \d+ cores, torch \d", out, re.M)

    latency = table_rows(out, "a. time to first audio")
    assert [(r[0], r[1]) for r in latency] == [("turn", "1"), ("chunked", "1"), ("chunked/turn", "1")]
    for row in latency[:2]:
        assert 0 < number(row[4]) < 60_000  # median ms
        assert number(row[5]) <= number(row[4]) <= number(row[6])
    assert number(latency[2][4]) == pytest.approx(number(latency[1][4]) / number(latency[0][4]), rel=0.01)

    (rtf,) = table_rows(out, "b. real-time factor")
    assert int(rtf[0]) > 0 and number(rtf[3]) > 0 and rtf[7] == ""

    batching = table_rows(out, "c. concurrent calls")
    assert [int(r[0]) for r in batching] == list(engine_latency.QUICK_BATCH_SIZES)
    for row in batching:
        assert 0 <= int(row[6]) <= int(row[0])  # calls faster than real time
        assert number(row[10]) > 0  # batched / sequential throughput
        assert row[11] == f"{row[0]}/{row[0]}"  # batching does not change greedy replies
        assert row[12] == "0"

    overhead = table_rows(out, "d. engine overhead")
    assert [int(r[0]) for r in overhead] == [1, 2]
    for row in overhead:
        assert number(row[3]) <= number(row[2]) + 1e-3  # model math is part of the step
        assert row[6] in ("yes", "no")


def test_engine_latency_full_size_path_builds_random_weights(tiny_checkpoint_dir: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """--full-size with a small config (the tiny one) exercises the random-weight build."""
    args = ["--quick", "--sections", "b", "--full-size", str(tiny_checkpoint_dir / "config.json"),
            "--mimi-config", str(tiny_checkpoint_dir / "mimi_config.json")]
    assert engine_latency.main(args) == 0
    out = capsys.readouterr().out
    assert "config.json built with random weights" in out
    (rtf,) = table_rows(out, "b. real-time factor")
    assert number(rtf[2]) > 0


def test_chunk_fidelity_quick_compares_modes(tiny_checkpoint_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    assert chunk_fidelity.main(["--quick", "--checkpoint", str(tiny_checkpoint_dir)]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out, "embedding fidelity")
    repeat, noise, chunked = rows
    assert repeat[0] == "turn (repeat)" and repeat[5] == "3/3"  # greedy replies are deterministic
    assert noise[0].startswith("turn, + noise")
    assert (chunked[0], chunked[1]) == ("8", "16")
    assert -1.0 <= number(chunked[3]) <= number(chunked[2]) <= 1.0
    per_clip = table_rows(out, "cosine similarity per utterance")
    assert [r[2] for r in per_clip] == ["espeak 1 s", "espeak 2.5 s", "input.wav"]


def test_format_table_aligns_and_marks_missing_values() -> None:
    text = format_table(["a", "value"], [["x", 1.23456], ["longer", float("nan")]])
    lines = text.splitlines()
    assert lines[0] == "| a      | value |"
    assert lines[1] == "|--------|-------|"
    assert lines[2] == "| x      | 1.235 |"
    assert lines[3] == "| longer | -     |"


def test_speech_clip_is_whole_frames_and_rejects_bad_length() -> None:
    clip = speech_clip(1.0, 2)
    assert clip.samples.dtype.name == "float32" and clip.samples.shape[0] % 1280 == 0
    assert len(clip.frames) == 13 and all(f.shape == (1280,) for f in clip.frames)
    assert float(abs(clip.samples).max()) > 0.01
    with pytest.raises(ValueError, match="seconds > 0"):
        speech_clip(0.0)


def test_lookahead_rule_without_lookahead_is_the_engine_chunked_path(tiny_checkpoint_dir: Path) -> None:
    """The benchmark's own window rule reproduces Conversation's chunked encoding exactly."""
    from model.checkpoint import load_model

    torch.set_num_threads(1)
    loaded = load_model(tiny_checkpoint_dir, device="cpu", dtype="float32")
    clip = speech_clip(1.9, 3)  # 24 frames: full chunks and a tail
    engine_path = chunk_fidelity.chunked_embeddings(loaded, clip, 8, 16)
    rule = chunk_fidelity.lookahead_embeddings(loaded, clip, 8, 16, 0)
    torch.testing.assert_close(rule, engine_path, atol=1e-6, rtol=1e-6)
    with_lookahead = chunk_fidelity.lookahead_embeddings(loaded, clip, 8, 16, 2)
    assert with_lookahead.shape == engine_path.shape and not torch.equal(with_lookahead, engine_path)
