"""`lfm-call simulate` end to end over the in-process transport, on the offline tiny demo model.

Real time, real engine thread, real Silero VAD, echo gate, playout and line models; the scenarios'
own expectations (latency, barge-in stop time, no false interruptions, DTMF) are the assertions,
plus the artifacts every run must leave.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SCENARIOS = ["greeting", "early_barge_in", "backchannel", "echo_line", "mid_sentence_pause", "dtmf_entry"]


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-demo"), seed=0, long_replies=True)


def test_simulate_ships_scenarios_that_pass_and_writes_artifacts(demo_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    paths = [str(REPO_ROOT / "config" / "scenarios" / f"{name}.yaml") for name in SCENARIOS]
    env = dict(os.environ, LFM_CALL_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "simulate", *paths, "--model", str(demo_checkpoint),
         "--concurrency", "2", "--out", str(out), "--log-level", "WARNING"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert f"model used: checkpoint folder {demo_checkpoint}" in proc.stderr
    report = json.loads((out / "report.json").read_text())
    calls = report["calls"]
    assert sorted(c["scenario"] for c in calls) == sorted(SCENARIOS)
    failures = {c["scenario"]: [e for e in c["expectations"] if not e["ok"]] or c["error"]
                for c in calls if not c["passed"]}
    assert not failures, f"{failures}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0
    by_name = {c["scenario"]: c for c in calls}
    assert by_name["dtmf_entry"]["dtmf_received"] == "123#"
    assert by_name["early_barge_in"]["metrics"]["barge_ins"] >= 1
    assert by_name["echo_line"]["metrics"]["false_interruptions"] == 0
    for c in calls:
        folder = out / c["call_id"]
        with wave.open(str(folder / "call.wav")) as w:
            assert w.getnchannels() == 2 and w.getnframes() > 16000
        assert (folder / "timeline.png").stat().st_size > 10_000
        assert (folder / "transcript.txt").read_text().startswith("# ")


def test_simulate_reports_a_bad_scenario_with_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsteps:\n  - say: 42\n")
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "simulate", str(bad)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert f"{bad}:3: steps[0].say" in proc.stderr


@pytest.mark.parametrize("keep", ["mimi", "detokenizer"])
def test_simulate_on_a_checkpoint_with_one_audio_decoder(demo_checkpoint: Path, tmp_path: Path, keep: str) -> None:
    """A checkpoint that ships only Mimi (LFM2-Audio) or only audio_detokenizer/ (LFM2.5) runs the call
    path with that decoder, and the report says which one."""
    import shutil

    from model.checkpoint import MIMI_CONFIG_FILE, MIMI_FILE
    from model.detokenizer import DETOKENIZER_DIR

    folder = tmp_path / f"only-{keep}"
    shutil.copytree(demo_checkpoint, folder)
    if keep == "mimi":
        shutil.rmtree(folder / DETOKENIZER_DIR)
    else:
        (folder / MIMI_FILE).unlink()
        (folder / MIMI_CONFIG_FILE).unlink()
    out = tmp_path / "run"
    paths = [str(REPO_ROOT / "config" / "scenarios" / f"{name}.yaml") for name in ("greeting", "early_barge_in")]
    env = dict(os.environ, LFM_CALL_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "simulate", *paths, "--model", str(folder),
         "--concurrency", "2", "--out", str(out), "--log-level", "WARNING"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert f"audio decoder: {keep}" in proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert all(c["model"].endswith(f"audio decoder: {keep}") for c in report["calls"])
    failures = {c["scenario"]: [e for e in c["expectations"] if not e["ok"]] or c["error"]
                for c in report["calls"] if not c["passed"]}
    assert not failures, f"{failures}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0


def test_a_checkpoint_without_any_audio_decoder_is_refused_with_what_is_missing(demo_checkpoint: Path,
                                                                                tmp_path: Path) -> None:
    import shutil

    from model.checkpoint import MIMI_FILE
    from model.detokenizer import DETOKENIZER_DIR

    folder = tmp_path / "no-decoder"
    shutil.copytree(demo_checkpoint, folder)
    shutil.rmtree(folder / DETOKENIZER_DIR)
    (folder / MIMI_FILE).unlink()
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "simulate", "--model", str(folder)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"neither the Mimi weights {MIMI_FILE} nor the detokenizer folder {DETOKENIZER_DIR}/" in proc.stderr
    assert "Traceback" not in proc.stderr
