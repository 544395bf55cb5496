"""What `lfm-call simulate` prints and what it puts on the caller's timeline: one line per scenario,
the summary table, the agent's turns merged with the ear's segments (held and resumed replies)."""

from __future__ import annotations

import io
from pathlib import Path

from agent.expectations import ExpectationResult
from agent.report import BargeInRecord, CallerUtterance, CallRecord, Segment, transcript_entries
from agent.session import CallSummary, TurnMetrics
from agent.sim_console import SimConsole, artifacts_lines, scenario_line, summary_table
from agent.simulator import merge_summary


def _call(name: str, passed: bool = True, latency: float = 1200.0, stop: float | None = 140.0) -> CallRecord:
    from agent.report import TurnRecord

    call = CallRecord(call_id=f"001-{name}", scenario=name, model="m", transport="inproc", duration_ms=12_300)
    call.turns = [TurnRecord(0, 1000.0, 2000.0, 1000.0 + latency, 4000.0)]
    if stop is not None:
        call.barge_ins = [BargeInRecord(3000.0, 3100.0, 3000.0 + stop)]
    call.expectations = [ExpectationResult("response_latency_ms.p95", "<= 2000.0", latency, passed)]
    return call


def test_scenario_line_says_pass_or_why_it_failed() -> None:
    assert scenario_line(3, 12, _call("late_barge_in")) == \
        "[ 3/12] PASS  late_barge_in         12.3 s  latency 1200 ms  stop 140 ms"
    failed = scenario_line(1, 12, _call("greeting", passed=False, latency=2600.0, stop=None))
    assert failed.startswith("[ 1/12] FAIL  greeting") and "response_latency_ms.p95 <= 2000.0 (got 2600.0)" in failed


def test_summary_table_has_a_row_per_scenario_and_totals() -> None:
    table = summary_table([_call("greeting", stop=None), _call("late_barge_in", passed=False, latency=2400.0)])
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["scenario", "result"]
    rows = {line.split()[0]: line.split() for line in lines[2:] if not line.startswith("-")}
    assert rows["greeting"][1:4] == ["PASS", "1200/1200", "-"]
    assert rows["late_barge_in"][1:4] == ["FAIL", "2400/2400", "140"]
    assert rows["all"][1:4] == ["1/2", "1800/2400", "140"]


def test_console_without_a_tty_prints_one_line_per_scenario() -> None:
    out = io.StringIO()
    console = SimConsole(2, out, tty=False)
    console.started(0, "greeting")
    console.started(1, "late_barge_in")
    console.finished(1, _call("late_barge_in"))
    console.finished(0, _call("greeting"))
    console.close()
    assert out.getvalue().count("\n") == 2 and "\r" not in out.getvalue()


def test_console_on_a_tty_redraws_a_progress_bar() -> None:
    out = io.StringIO()
    console = SimConsole(4, out, tty=True)
    console.started(0, "greeting")
    assert console.bar().startswith("[" + "." * 24 + "] 0/4 running: greeting")
    console.finished(0, _call("greeting"))
    assert console.bar().startswith("[" + "#" * 6 + "." * 18 + "] 1/4")
    console.close()
    text = out.getvalue()
    assert "\r\x1b[K[" in text and text.endswith("\r\x1b[K")
    assert [line for line in text.replace("\r\x1b[K", "\n").splitlines() if "PASS" in line] == \
        [scenario_line(1, 4, _call("greeting"))]


def test_artifacts_lines_point_at_failed_timelines_and_the_log() -> None:
    lines = artifacts_lines(Path("runs/latest"), [_call("greeting", passed=False)], Path("runs/latest/log.jsonl"), 2, 0)
    assert "runs/latest/report.json" in lines[0]
    assert any("runs/latest/001-greeting/timeline.png" in line for line in lines)
    assert "runs/latest/log.jsonl (2 warnings, 0 errors)" in lines[-1]


def test_a_held_and_resumed_reply_ends_where_its_resumed_audio_ends() -> None:
    """Backchannel over the agent: its audio is held, then resumed. The reply spans both segments
    at the ear (transcript.txt/json), and the next reply starts after the next end of turn."""
    record = CallRecord(call_id="c", scenario="backchannel", model="m", transport="inproc")
    record.caller_utterances = [CallerUtterance("say", 1000, 3000, "Tell me about your plans."),
                                CallerUtterance("say", 5200, 5600, "uh-huh"),
                                CallerUtterance("say", 9000, 10000, "Thanks.")]
    record.agent_segments = [Segment(4300, 5400), Segment(5900, 8000), Segment(11300, 12000)]
    summary = CallSummary(call_id="c", started_at=0.0, turns=[
        TurnMetrics(epoch=1, speech_ended_ms=3000, end_of_turn_ms=4200, first_audio_sent_ms=4250,
                    text_generated="We have three plans.", text_heard="We have three plans."),
        TurnMetrics(epoch=2, speech_ended_ms=10000, end_of_turn_ms=11200, first_audio_sent_ms=11250),
    ])
    merge_summary(record, summary, 0.0)
    assert [(t.agent_start_ms, t.agent_end_ms) for t in record.turns] == [(4300, 8000), (11300, 12000)]
    reply = next(e for e in transcript_entries(record) if e["who"] == "agent")
    assert (reply["start_ms"], reply["end_ms"]) == (4300, 8000)
