"""turn-eval on a small synthetic corpus (tones as speech, energy VAD), and the simulator's
cut-off and double-answer measures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.report import CallerUtterance, CallRecord, Segment, TurnRecord
from agent.simulator import cut_offs
from agent.turn_end import SilenceDetector
from agent.turn_eval import TurnEvalError, evaluate, load_corpus, prepare, render_plot
from agent.vad import EnergyVad, VadSettings
from agent.wavio import write_wav

RATE = 16000


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 150 * t) * 32767).astype(np.int16)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.int16)


def make_corpus(d: Path) -> Path:
    """One file: a turn with a 0.7 s pause inside, 3 s gap, a turn with no pause, 3 s gap."""
    parts = [_silence(0.5), _tone(1.0), _silence(0.7), _tone(0.8), _silence(3.0), _tone(1.2), _silence(3.0)]
    write_wav(d / "a.wav", np.concatenate(parts), RATE)
    (d / "labels.csv").write_text("file,turn_end_s\na.wav,3.0\na.wav,7.2\n")
    return d


def test_sweep_trades_cut_offs_for_latency(tmp_path: Path) -> None:
    recs = load_corpus(make_corpus(tmp_path))
    prep = [prepare(r, EnergyVad(), VadSettings(start_ms=60, stop_ms=100)) for r in recs]
    assert sum(1 for p in prep[0].pauses if p.true_end_ms is None) == 1
    pts = evaluate(prep, lambda: SilenceDetector(1000), scales=(0.5, 1.0))
    fast, slow = pts
    assert fast.cut_off_rate == 0.5 and slow.cut_off_rate == 0.0  # the 0.7 s pause: cut at 500 ms only
    assert fast.median_latency_ms is not None and slow.median_latency_ms is not None
    assert 450 <= fast.median_latency_ms <= 600 and 950 <= slow.median_latency_ms <= 1100
    png = render_plot({"silence": pts}, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_corpus_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(TurnEvalError, match="no labels"):
        load_corpus(tmp_path)
    (tmp_path / "labels.csv").write_text("file,turn_end_s\nmissing.wav,1.0\n")
    with pytest.raises(TurnEvalError, match="does not exist"):
        load_corpus(tmp_path)
    (tmp_path / "labels.csv").write_text("file,turn_end_s\nmissing.wav,soon\n")
    with pytest.raises(TurnEvalError, match="not a number"):
        load_corpus(tmp_path)


def test_cut_offs_are_agent_audio_in_an_unfinished_pause() -> None:
    says = [CallerUtterance("say", 1000, 2000, "My number is", unfinished=True),
            CallerUtterance("say", 3000, 4000, "five five five.")]
    assert cut_offs(says, [Segment(4500, 6000)]) == []
    hit = cut_offs(says, [Segment(2600, 3300)])
    assert hit == [Segment(2600, 3000, "cut-off")]


def test_double_answers_count_caller_turns_answered_twice() -> None:
    call = CallRecord("c", "s", "m", "inproc")
    call.caller_utterances = [CallerUtterance("say", 1000, 2000, "Hi."), CallerUtterance("say", 8000, 9000, "Bye.")]
    call.turns = [TurnRecord(0, 2000, 2300, 2500, 3000), TurnRecord(1, 2000, 3500, 3600, 4000),
                  TurnRecord(2, 9000, 9300, 9500, 9900)]
    assert call.double_answers() == 1
    assert call.metrics()["turn_ends"] == 2
