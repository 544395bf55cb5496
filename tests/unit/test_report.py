"""Call and run reports: contents, stereo WAV, transcript, timeline PNG, atomic writes."""

from __future__ import annotations

import json
import os
import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from agent.expectations import ExpectationResult
from agent.report import (
    BargeInRecord,
    CallerUtterance,
    CallRecord,
    FalseInterruption,
    ReportError,
    RunRecord,
    Segment,
    TurnRecord,
    atomic_write_bytes,
    atomic_write_json,
    transcript_text,
    write_call_artifacts,
    write_run_report,
)
from agent.timeline import render_timeline_png

RATE = 16000


def _burst(total_ms: int, spans_ms: list[tuple[int, int]], freq: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros(total_ms * RATE // 1000, dtype=np.int16)
    for start, end in spans_ms:
        n = (end - start) * RATE // 1000
        t = np.arange(n) / RATE
        wave_ = 0.3 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * rng.random(n))
        out[start * RATE // 1000:end * RATE // 1000] = np.rint(wave_ * 32767).astype(np.int16)
    return out


def make_call(call_id: str = "call-001", latencies: tuple[float, float] = (700.0, 900.0)) -> CallRecord:
    caller_spans = [(3000, 5000), (6200 + int(latencies[0]) + 1000, 9000 + int(latencies[0]))]
    agent_spans = [(200, 2300), (5000 + int(latencies[0]), 7200 + int(latencies[0]))]
    call = CallRecord(call_id=call_id, scenario="early_barge_in", model="tiny-random", transport="inproc",
                      sample_rate=RATE, duration_ms=12000.0)
    call.caller_audio = _burst(12000, caller_spans, 220.0, 1)
    call.heard_audio = _burst(11500, agent_spans, 330.0, 2)
    call.caller_utterances = [
        CallerUtterance("say", 3000, 5000, "Can you tell me everything about your return policy?"),
        CallerUtterance("say", caller_spans[1][0], caller_spans[1][1], "Sorry, just the phone number."),
        CallerUtterance("dtmf", 10000, 10500, "12#"),
        CallerUtterance("hangup", 11800, 11800, ""),
    ]
    call.agent_segments = [Segment(float(a), float(b)) for a, b in agent_spans]
    call.vad_segments = [Segment(3040, 5200), Segment(caller_spans[1][0] + 40, caller_spans[1][1] + 200)]
    call.end_of_turn_ms = [5300.0]
    onset = float(caller_spans[1][0])
    call.barge_ins = [BargeInRecord(onset_ms=onset, detected_ms=onset + 200, stop_ms=onset + 350)]
    call.false_interruptions = [FalseInterruption(at_ms=1500.0, reason="echo")]
    call.turns = [
        TurnRecord(0, None, None, 200.0, 2300.0, "Hello, how can I help?", "Hello, how can I help?"),
        TurnRecord(1, 5000.0, 5300.0, 5000.0 + latencies[0], 6200.0 + latencies[0],
                   "Our return policy lets you return items within thirty days.",
                   "Our return policy lets", interrupted=True),
        TurnRecord(2, float(caller_spans[1][1]), None, caller_spans[1][1] + latencies[1], None, "", ""),
    ]
    call.dtmf_sent, call.dtmf_received = "12#", "12#"
    call.dtmf_segments = [Segment(10000, 10500)]
    call.hung_up = True
    call.expectations = [ExpectationResult("barge_in_stop_ms.max", "<= 600.0", 350.0, True)]
    return call


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def test_call_metrics_from_records() -> None:
    m = make_call().metrics()
    assert m["response_latency_ms"] == [700.0, 900.0]
    assert m["end_of_turn_delay_ms"] == [300.0]
    assert m["barge_in_stop_ms"] == [350.0]
    assert m["false_interruptions"] == 1 and m["barge_ins"] == 1 and m["agent_turns"] == 3
    assert m["dtmf_received"] == "12#" and m["hung_up"] is True


def test_write_call_artifacts(tmp_path: Path) -> None:
    call = make_call()
    art = write_call_artifacts(tmp_path, call)
    assert art.folder == tmp_path / "call-001"
    with wave.open(str(art.wav)) as w:
        assert w.getnchannels() == 2 and w.getframerate() == RATE and w.getsampwidth() == 2
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    assert frames.shape[0] == call.caller_audio.size  # the longer channel
    assert np.array_equal(frames[:, 0], call.caller_audio)
    assert np.array_equal(frames[: call.heard_audio.size, 1], call.heard_audio)
    assert not frames[call.heard_audio.size:, 1].any()

    data = json.loads(art.call_json.read_text())
    assert data["metrics"]["response_latency_ms"] == [700.0, 900.0]
    assert data["turns"][1]["response_latency_ms"] == 700.0 and data["turns"][1]["interrupted"] is True
    assert data["barge_ins"][0]["stop_latency_ms"] == 350.0
    assert data["passed"] is True and "caller_audio" not in data

    text = art.transcript_txt.read_text()
    assert "caller say" in text.replace("  ", " ") and "[interrupted]" in text
    assert "[generated: Our return policy lets you return items within thirty days.]" in text
    entries = json.loads(art.transcript_json.read_text())["entries"]
    starts = [e["start_ms"] for e in entries if e["start_ms"] is not None]
    assert starts == sorted(starts) and entries[0]["who"] == "agent"
    assert art.timeline_png is not None
    width, height = _png_size(art.timeline_png.read_bytes())
    assert (width, height) == (1400, 650)
    assert not [p for p in art.folder.iterdir() if p.name.endswith(".tmp")]


def test_run_report_summary(tmp_path: Path) -> None:
    calls = [make_call("a", (100.0, 200.0)), make_call("b", (300.0, 1000.0))]
    calls[1].error = "engine crashed"
    path = write_run_report(tmp_path, RunRecord("run-1", "2025-01-01T00:00:00Z", {"model": "tiny"}, calls))
    report = json.loads(path.read_text())
    s = report["summary"]
    assert s["calls"] == 2 and s["passed"] == 1 and s["failed"] == 1 and s["errors"] == 1
    lat = s["response_latency_ms"]
    assert lat["count"] == 4 and lat["max"] == 1000.0
    assert lat["p50"] == pytest.approx(250.0) and lat["p95"] == pytest.approx(895.0)
    assert s["false_interruptions"] == 2 and s["barge_ins"] == 2
    assert report["scenarios"]["early_barge_in"]["calls"] == 2
    assert [c["call_id"] for c in report["calls"]] == ["a", "b"]


def test_atomic_write_keeps_old_file_on_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.json"
    atomic_write_json(target, {"version": "old"})
    before = target.read_bytes()

    def crash(src: str, dst: str) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        write_run_report(tmp_path, RunRecord("run-2", calls=[make_call()]))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # temp file removed


def test_atomic_write_crash_mid_write_leaves_no_partial_file(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.bin"
    atomic_write_bytes(target, b"old contents")

    def crash(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["x.bin"]


def test_json_handles_numpy_and_non_finite(tmp_path: Path) -> None:
    path = atomic_write_json(tmp_path / "v.json", {"a": np.float32(1.5), "b": float("nan"), "c": np.int64(3),
                                                   "d": np.arange(3), "e": Path("x/y")})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": None, "c": 3, "d": [0, 1, 2], "e": "x/y"}


def test_bad_call_id_and_audio_rejected(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="safe file name"):
        write_call_artifacts(tmp_path, make_call("../escape"))
    call = make_call()
    call.heard_audio = np.zeros(10, dtype=np.float32)
    with pytest.raises(ReportError, match="heard_audio must be 1-D int16"):
        write_call_artifacts(tmp_path, call, timeline=False)


def test_timeline_of_empty_call() -> None:
    call = CallRecord(call_id="empty", scenario="greeting", model="m", transport="t")
    assert _png_size(render_timeline_png(call)) == (1400, 650)
    assert "# empty" in transcript_text(call)


def test_timeline_title_stays_inside_the_picture() -> None:
    """A long model description (the offline tiny model's) wraps instead of running off the image,
    and the title does not overlap the lanes."""
    from agent.timeline import timeline_figure

    call = make_call()
    call.model = ("OFFLINE TINY MODEL (random weights, words are noise) at /root/.cache/lfm-call/tiny-demo-v2-"
                  "seed0; LiquidAI/LFM2.5-Audio-1.5B is not on this machine (get it with: /work/x/.venv/bin/hf "
                  "download LiquidAI/LFM2.5-Audio-1.5B); audio decoder: detokenizer")
    fig = timeline_figure(call)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    title = fig.get_suptitle()
    assert "OFFLINE TINY MODEL" in title and "detokenizer" in title
    box = fig._suptitle.get_window_extent(renderer)  # type: ignore[union-attr]
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width, (box, fig.bbox)
    assert box.y0 >= 0 and box.y1 <= fig.bbox.height, (box, fig.bbox)
    lanes = fig.axes[0].get_tightbbox(renderer)
    assert lanes is not None and lanes.y1 <= box.y0 + 1, (lanes, box)
