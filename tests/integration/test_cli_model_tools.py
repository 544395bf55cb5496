"""`lfm-call tts`, `asr`, `make-tiny-checkpoint` and `smoke` through the real CLI on tiny checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

from tests.conftest import REPO_ROOT


def cli(*args: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_tts_then_asr_round_trip_on_the_fixture(tiny_checkpoint_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "hello.wav"
    tts = cli("tts", "Hello there.", "-o", str(out), "--model", str(tiny_checkpoint_dir))
    assert tts.returncode == 0, tts.stderr
    assert f"model: checkpoint folder {tiny_checkpoint_dir}" in tts.stderr
    with wave.open(str(out)) as w:
        assert w.getframerate() == 24000 and w.getnchannels() == 1
    asr = cli("asr", str(REPO_ROOT / "tests/fixtures/lfm2-audio-tiny/reference/input.wav"),
              "--model", str(tiny_checkpoint_dir))
    assert asr.returncode == 0, asr.stderr
    assert asr.stdout.strip() != ""  # random weights: some text, not a sentence


def test_asr_of_a_missing_or_bad_file_is_one_clear_error(tiny_checkpoint_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk")
    for path in (tmp_path / "missing.wav", bad):
        proc = cli("asr", str(path), "--model", str(tiny_checkpoint_dir))
        assert proc.returncode == 1
        assert proc.stderr.startswith("lfm-call: error:") and str(path) in proc.stderr
        assert "Traceback" not in proc.stderr


def test_make_tiny_checkpoint_and_smoke_run(tmp_path: Path) -> None:
    ckpt = tmp_path / "tiny"
    made = cli("make-tiny-checkpoint", str(ckpt), "--seed", "3")
    assert made.returncode == 0, made.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json", "mimi_config.json",
            "tokenizer-e351c8d8-checkpoint125.safetensors"} <= {p.name for p in ckpt.iterdir()}
    out = tmp_path / "smoke"
    smoke = cli("smoke", "--model", str(ckpt), "--out", str(out))
    assert smoke.returncode == 0, smoke.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["model"].startswith("checkpoint folder") and report["reply"]["frames"] > 0
    with wave.open(str(out / "call.wav")) as w:
        assert w.getnchannels() == 2 and w.getframerate() == 8000
