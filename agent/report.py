"""Records of simulated calls and the files written for them, every file written atomically.

The simulation runner fills a ``CallRecord`` per call (times in ms from call start, measured at the
caller: what the caller sent and what the caller heard) and a ``RunRecord`` per run, then calls::

    write_call_artifacts(out_dir, call)   # out_dir/<call_id>/{call.json, call.wav, transcript.txt,
                                          #   transcript.json, timeline.png}
    write_run_report(out_dir, run)        # out_dir/report.json: every call plus a run summary

``call.wav`` is stereo on one timeline: left what the caller sent, right what the caller heard.
Files are written to a temporary file in the same folder, flushed, fsynced and moved into place with
``os.replace``, so a crash leaves either the old file or the new one, never a partial file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.audio import Int16Array
from agent.expectations import ExpectationResult
from agent.wavio import wav_bytes

CALL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SUMMARY_LIST_METRICS = ("response_latency_ms", "end_of_turn_delay_ms", "barge_in_stop_ms")


class ReportError(ValueError):
    """A record cannot be written (bad call id, mismatched audio)."""


# ---------------------------------------------------------------- atomic files


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    return target


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """JSON with dataclasses, enums, paths and numpy values converted; NaN and infinity become null."""
    return atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n")


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class Segment:
    """A span on the call timeline, ms from call start."""

    start_ms: float
    end_ms: float
    label: str = ""


@dataclass(frozen=True)
class CallerUtterance:
    """One scenario step as the caller performed it (kind: say, wav, dtmf or hangup)."""

    kind: str
    start_ms: float
    end_ms: float
    text: str
    unfinished: bool = False  # the sentence goes on in the next say step


@dataclass(frozen=True)
class TurnRecord:
    """One agent reply; times at the caller's ear except ``end_of_turn_ms`` (the agent's decision)."""

    index: int
    caller_end_ms: float | None
    end_of_turn_ms: float | None
    agent_start_ms: float | None
    agent_end_ms: float | None
    text_generated: str = ""
    text_heard: str = ""
    interrupted: bool = False
    epoch: int | None = None  # the session's turn epoch (links the reply to its watermark)

    @property
    def response_latency_ms(self) -> float | None:
        if self.caller_end_ms is None or self.agent_start_ms is None:
            return None
        return self.agent_start_ms - self.caller_end_ms

    @property
    def end_of_turn_delay_ms(self) -> float | None:
        if self.caller_end_ms is None or self.end_of_turn_ms is None:
            return None
        return self.end_of_turn_ms - self.caller_end_ms


@dataclass(frozen=True)
class BargeInRecord:
    """Caller cut in at ``onset_ms``; the agent flagged it at ``detected_ms``; its audio stopped at
    the caller's ear at ``stop_ms`` (None: it never stopped)."""

    onset_ms: float
    detected_ms: float | None
    stop_ms: float | None
    agent_audible: bool = True  # False: the agent was silent at the onset (thinking): no stop time

    @property
    def stop_latency_ms(self) -> float | None:
        return None if self.stop_ms is None else self.stop_ms - self.onset_ms


@dataclass(frozen=True)
class FalseInterruption:
    """The agent stopped (or was flagged as interrupted) at ``at_ms`` without a real cut-in."""

    at_ms: float
    reason: str = ""


def _empty_audio() -> Int16Array:
    return np.zeros(0, dtype=np.int16)


@dataclass(eq=False)
class CallRecord:
    """Everything measured on one simulated call; the runner fills it in as the call goes."""

    call_id: str
    scenario: str
    model: str
    transport: str
    sample_rate: int = 16000
    started_at: str = ""  # wall-clock ISO 8601, as the runner saw it
    duration_ms: float = 0.0
    caller_audio: Int16Array = field(default_factory=_empty_audio)  # what the caller sent
    heard_audio: Int16Array = field(default_factory=_empty_audio)  # what the caller heard
    caller_utterances: list[CallerUtterance] = field(default_factory=list)
    agent_segments: list[Segment] = field(default_factory=list)  # agent audio at the caller's ear
    vad_segments: list[Segment] = field(default_factory=list)  # the agent's VAD on caller audio
    end_of_turn_ms: list[float] = field(default_factory=list)
    barge_ins: list[BargeInRecord] = field(default_factory=list)
    false_interruptions: list[FalseInterruption] = field(default_factory=list)
    false_starts: int = 0  # answers released speculatively, withdrawn because the caller went on
    cut_offs: list[Segment] = field(default_factory=list)  # agent audio at the ear in an unfinished pause
    turns: list[TurnRecord] = field(default_factory=list)
    dtmf_sent: str = ""
    dtmf_received: str = ""
    dtmf_segments: list[Segment] = field(default_factory=list)
    hung_up: bool = False
    error: str | None = None
    expectations: list[ExpectationResult] = field(default_factory=list)
    line_stats: dict[str, Any] = field(default_factory=dict)
    watermark: dict[str, Any] = field(default_factory=dict)  # the mark at the caller's ear (agent.call_marks)
    provenance: str | None = None  # the signed record's file name, beside call.wav

    def metrics(self) -> dict[str, Any]:
        """The values scenario expectations are checked against (see ``agent.scenario``)."""
        latencies = [t.response_latency_ms for t in self.turns]
        eot = [t.end_of_turn_delay_ms for t in self.turns]
        stops = [b.stop_latency_ms for b in self.barge_ins if b.agent_audible]
        return {
            "response_latency_ms": [v for v in latencies if v is not None],
            "end_of_turn_delay_ms": [v for v in eot if v is not None],
            "barge_in_stop_ms": [v for v in stops if v is not None],
            "false_interruptions": len(self.false_interruptions),
            "false_starts": self.false_starts,
            "cut_offs": len(self.cut_offs),
            "double_answers": self.double_answers(),
            "turn_ends": sum(1 for u in self.caller_utterances if u.kind in ("say", "wav") and not u.unfinished),
            "barge_ins": len(self.barge_ins),
            "agent_turns": sum(1 for t in self.turns if t.agent_start_ms is not None),
            "dtmf_received": self.dtmf_received,
            "hung_up": self.hung_up,
            "duration_ms": self.duration_ms,
        }

    def double_answers(self) -> int:
        """Caller turns (a finished say step) answered by more than one agent reply before the caller
        spoke again."""
        says = [u for u in self.caller_utterances if u.kind in ("say", "wav")]
        starts = [t.agent_start_ms for t in self.turns if t.agent_start_ms is not None]
        twice = 0
        for i, u in enumerate(says):
            if u.unfinished:
                continue
            nxt = says[i + 1].start_ms if i + 1 < len(says) else float("inf")
            twice += int(sum(1 for s in starts if u.end_ms <= s < nxt) > 1)
        return twice

    @property
    def passed(self) -> bool:
        return self.error is None and all(e.ok for e in self.expectations)

    def to_json(self) -> dict[str, Any]:
        """The call without its audio, plus derived metrics and per-turn latencies."""
        skip = {"caller_audio", "heard_audio", "turns"}
        out = {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in skip}
        out["turns"] = [
            {**_jsonable(t), "response_latency_ms": t.response_latency_ms,
             "end_of_turn_delay_ms": t.end_of_turn_delay_ms}
            for t in self.turns
        ]
        for i, b in enumerate(self.barge_ins):
            out["barge_ins"][i]["stop_latency_ms"] = b.stop_latency_ms
        out["metrics"] = _jsonable(self.metrics())
        out["passed"] = self.passed
        return out


@dataclass(eq=False)
class RunRecord:
    run_id: str
    started_at: str = ""
    description: dict[str, Any] = field(default_factory=dict)  # model, transport, settings, host
    calls: list[CallRecord] = field(default_factory=list)


@dataclass(frozen=True)
class CallArtifacts:
    folder: Path
    call_json: Path
    wav: Path
    transcript_txt: Path
    transcript_json: Path
    timeline_png: Path | None


# ---------------------------------------------------------------- writing


def stereo_recording(call: CallRecord) -> Int16Array:
    """[N, 2] int16: caller sent (left) and caller heard (right), the shorter zero-padded."""
    left, right = call.caller_audio, call.heard_audio
    for name, x in (("caller_audio", left), ("heard_audio", right)):
        if not isinstance(x, np.ndarray) or x.dtype != np.int16 or x.ndim != 1:
            raise ReportError(f"call {call.call_id}: {name} must be 1-D int16")
    n = max(left.size, right.size)
    out = np.zeros((n, 2), dtype=np.int16)
    out[: left.size, 0] = left
    out[: right.size, 1] = right
    return out


def transcript_entries(call: CallRecord) -> list[dict[str, Any]]:
    """Caller lines and agent replies in time order."""
    entries: list[dict[str, Any]] = [
        {"who": "caller", "kind": u.kind, "start_ms": u.start_ms, "end_ms": u.end_ms, "text": u.text}
        for u in call.caller_utterances
    ]
    for t in call.turns:
        entries.append({
            "who": "agent", "kind": "reply", "start_ms": t.agent_start_ms, "end_ms": t.agent_end_ms,
            "text": t.text_heard, "text_generated": t.text_generated, "interrupted": t.interrupted,
            "response_latency_ms": t.response_latency_ms,
        })
    entries.sort(key=lambda e: (math.inf if e["start_ms"] is None else e["start_ms"]))
    return entries


def _fmt_s(ms: float | None) -> str:
    return "   --   " if ms is None else f"{ms / 1000.0:8.3f}"


def transcript_text(call: CallRecord) -> str:
    lines = [f"# {call.call_id}  scenario={call.scenario}  model={call.model}  transport={call.transport}"]
    for e in transcript_entries(call):
        text = e["text"]
        if e["who"] == "agent":
            if e["text_generated"] != e["text"]:
                text = f"{text}  [generated: {e['text_generated']}]"
            if e["interrupted"]:
                text += "  [interrupted]"
        lines.append(f"[{_fmt_s(e['start_ms'])} - {_fmt_s(e['end_ms'])}] {e['who']:<6} {e['kind']:<6} {text}")
    return "\n".join(lines) + "\n"


def write_call_artifacts(out_dir: str | Path, call: CallRecord, timeline: bool = True) -> CallArtifacts:
    """Write one call's files into ``out_dir/<call_id>/``; returns their paths."""
    if not CALL_ID_RE.match(call.call_id):
        raise ReportError(f"call id {call.call_id!r} is not a safe file name ([A-Za-z0-9._-], 1-128 chars)")
    folder = Path(out_dir) / call.call_id
    folder.mkdir(parents=True, exist_ok=True)
    wav = atomic_write_bytes(folder / "call.wav", wav_bytes(stereo_recording(call), call.sample_rate))
    transcript = {"call_id": call.call_id, "scenario": call.scenario, "entries": transcript_entries(call)}
    png: Path | None = None
    if timeline:
        from agent.timeline import write_timeline_png  # matplotlib is imported only when drawing

        png = write_timeline_png(folder / "timeline.png", call)
    return CallArtifacts(
        folder=folder,
        call_json=atomic_write_json(folder / "call.json", call.to_json()),
        wav=wav,
        transcript_txt=atomic_write_text(folder / "transcript.txt", transcript_text(call)),
        transcript_json=atomic_write_json(folder / "transcript.json", transcript),
        timeline_png=png,
    )


def _stats(samples: list[float]) -> dict[str, float | int | None]:
    if not samples:
        return {"count": 0, "p50": None, "p95": None, "max": None, "mean": None}
    return {
        "count": len(samples),
        "p50": float(np.percentile(samples, 50)),
        "p95": float(np.percentile(samples, 95)),
        "max": float(max(samples)),
        "mean": float(np.mean(samples)),
    }


def summarize_calls(calls: list[CallRecord]) -> dict[str, Any]:
    """Pooled p50/p95/max of every list metric, and counts, over ``calls``."""
    metrics = [c.metrics() for c in calls]
    summary: dict[str, Any] = {
        "calls": len(calls),
        "passed": sum(1 for c in calls if c.passed),
        "failed": sum(1 for c in calls if not c.passed),
        "errors": sum(1 for c in calls if c.error is not None),
    }
    for name in SUMMARY_LIST_METRICS:
        summary[name] = _stats([v for m in metrics for v in m[name]])
    for name in ("false_interruptions", "false_starts", "cut_offs", "double_answers", "turn_ends", "barge_ins",
                 "agent_turns"):
        summary[name] = sum(int(m[name]) for m in metrics)
    summary["cut_off_rate"] = round(summary["cut_offs"] / summary["turn_ends"], 4) if summary["turn_ends"] else None
    windows = sum(int(c.watermark.get("windows") or 0) for c in calls)
    detected = sum(int(c.watermark.get("detected") or 0) for c in calls)
    summary["watermark"] = {"windows": windows, "detected": detected,
                            "detection_rate": round(detected / windows, 4) if windows else None}
    return summary


def write_run_report(out_dir: str | Path, run: RunRecord) -> Path:
    """Write ``out_dir/report.json``: run description, summary, per-scenario summaries and calls."""
    by_scenario: dict[str, list[CallRecord]] = {}
    for call in run.calls:
        by_scenario.setdefault(call.scenario, []).append(call)
    report = {
        "run_id": run.run_id,
        "started_at": run.started_at,
        "description": run.description,
        "summary": summarize_calls(run.calls),
        "scenarios": {name: summarize_calls(calls) for name, calls in sorted(by_scenario.items())},
        "calls": [c.to_json() for c in run.calls],
    }
    return atomic_write_json(Path(out_dir) / "report.json", report)
