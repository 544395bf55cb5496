"""Scenario loader: schema, line-precise errors, shipped scenarios, expectation evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.expectations import evaluate_expectations
from agent.scenario import (
    Codec,
    DtmfStep,
    HangupStep,
    SayStep,
    ScenarioError,
    WaitStep,
    When,
    WhenKind,
    load_scenario,
    load_scenarios,
    parse_bound,
    parse_scenario,
)

SCENARIO_DIR = Path(__file__).resolve().parents[2] / "config" / "scenarios"

GOOD = """\
name: demo
description: a demo caller
timeout_s: 30
caller: {voice: en-gb, rate_wpm: 180, volume_db: -3}
line:
  codec: pcmu
  loss_pct: 2
  jitter_ms: 10
  echo: {delay_ms: 120, gain_db: -12}
  noise_snr_db: 15
  seed: 7
steps:
  - say: "Hello there"
  - say: "I need help"
    when: {after_silence_ms: 1000}
  - dtmf: "12#"
    when: {at_ms: 9000}
  - wait_ms: 500
  - hangup: {}
    when: {cut_in_ms: 1500}
expect:
  response_latency_ms.p95: "<= 2000"
  false_interruptions: "== 0"
  dtmf_received: "== '12#'"
  agent_turns: ">= 2"
"""


def _write(tmp_path: Path, text: str, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    return str(info.value)


def test_good_scenario_parses_every_field(tmp_path: Path) -> None:
    s = load_scenario(_write(tmp_path, GOOD))
    assert s.name == "demo" and s.timeout_s == 30.0
    assert s.caller.voice == "en-gb" and s.caller.rate_wpm == 180 and s.caller.volume_db == -3
    assert s.line.codec is Codec.PCMU and s.line.loss_pct == 2 and s.line.seed == 7
    assert s.line.echo is not None and s.line.echo.delay_ms == 120 and s.line.echo.gain_db == -12
    assert s.line.noise_snr_db == 15
    kinds = [type(step) for step in s.steps]
    assert kinds == [SayStep, SayStep, DtmfStep, WaitStep, HangupStep]
    first, second, dtmf, wait, hangup = s.steps
    assert isinstance(first, SayStep) and first.when == When() and first.source_line == 13
    assert isinstance(second, SayStep) and second.when == When(WhenKind.AFTER_SILENCE, 1000)
    assert isinstance(dtmf, DtmfStep) and dtmf.digits == "12#" and dtmf.tone_ms == 100 and dtmf.gap_ms == 80
    assert isinstance(wait, WaitStep) and wait.wait_ms == 500
    assert isinstance(hangup, HangupStep) and hangup.when.kind is WhenKind.CUT_IN and hangup.when.ms == 1500
    assert [e.name for e in s.expect] == [
        "response_latency_ms.p95", "false_interruptions", "dtmf_received", "agent_turns",
    ]
    assert s.expect[0].aggregate == "p95" and s.expect[0].bound.op == "<=" and s.expect[0].bound.value == 2000


def test_defaults_and_name_from_file(tmp_path: Path) -> None:
    s = load_scenario(_write(tmp_path, "steps:\n  - say: hi\n", name="plain.yaml"))
    assert s.name == "plain" and s.line.codec is Codec.NONE and s.line.echo is None
    assert s.caller.rate_wpm == 160 and s.timeout_s == 60.0 and s.expect == ()


def test_bad_indentation_names_file_and_line(tmp_path: Path) -> None:
    msg = _error(tmp_path, "name: x\nsteps:\n  - say: hi\n   when: {at_ms: 3}\n")
    assert msg.startswith(f"{tmp_path / 'x.yaml'}:4: ") and "YAML syntax error" in msg


def test_unknown_field_names_line_and_field(tmp_path: Path) -> None:
    msg = _error(tmp_path, "steps:\n  - say: hi\n  - say: there\n    volume: 3\n")
    assert msg == f"{tmp_path / 'x.yaml'}:4: steps[1].volume: unknown field"
    msg = _error(tmp_path, "steps:\n  - say: hi\nline:\n  codec: pcmu\n  los_pct: 3\n")
    assert msg.endswith(":5: line.los_pct: unknown field")


def test_wrong_type_names_line_and_field(tmp_path: Path) -> None:
    msg = _error(tmp_path, "steps:\n  - say: hi\n  - wait_ms: 5\n  - say: 42\n")
    assert msg == f"{tmp_path / 'x.yaml'}:4: steps[2].say: expected text, got 42"
    msg = _error(tmp_path, "line:\n  loss_pct: lots\nsteps:\n  - say: hi\n")
    assert msg.endswith(":2: line.loss_pct: expected a number, got 'lots'")
    msg = _error(tmp_path, "line:\n  codec: opus\nsteps:\n  - say: hi\n")
    assert msg.endswith(":2: line.codec: expected one of none, pcmu, pcma, got 'opus'")
    msg = _error(tmp_path, "steps:\n  - say: hi\n    when: {cut_in_ms: -5}\n")
    assert ":3: steps[0].when.cut_in_ms: expected an integer in" in msg


def test_missing_wav_names_file_and_line(tmp_path: Path) -> None:
    msg = _error(tmp_path, "steps:\n  - say: hi\n  - wav: clips/nope.wav\n")
    assert msg.startswith(f"{tmp_path / 'x.yaml'}:3: steps[1].wav: WAV file not found: ")
    assert msg.endswith(str(tmp_path / "clips" / "nope.wav"))


def test_existing_wav_resolves_relative_to_scenario(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.wav").write_bytes(b"RIFF")
    s = load_scenario(_write(tmp_path, "steps:\n  - wav: clips/a.wav\n"))
    step = s.steps[0]
    assert isinstance(step, SayStep) and step.wav == (tmp_path / "clips" / "a.wav").resolve()


@pytest.mark.parametrize(
    ("text", "line", "field", "fragment"),
    [
        ("steps: []\n", 1, "steps", "expected a non-empty list"),
        ("steps:\n  - say: hi\n    dtmf: '1'\n", 2, "steps[0]", "got say, dtmf"),
        ("steps:\n  - dtmf: '12x'\n", 2, "steps[0].dtmf", "expected digits"),
        ("steps:\n  - say: hi\n    when: {at_ms: 1, cut_in_ms: 2}\n", 3, "steps[0].when", "exactly one"),
        ("steps:\n  - say: hi\n    when: {soon: 1}\n", 3, "steps[0].when.soon", "unknown field"),
        ("steps:\n  - say: hi\nexpect:\n  latency.p95: '<= 3'\n", 4, "expect.latency.p95", "unknown metric"),
        ("steps:\n  - say: hi\nexpect:\n  response_latency_ms: '<= 3'\n", 4, "expect.response_latency_ms", "aggregate"),
        ("steps:\n  - say: hi\nexpect:\n  agent_turns: '>= many'\n", 4, "expect.agent_turns", "needs a number"),
        ("steps:\n  - say: hi\nline:\n  echo: {delay_ms: 100}\n", 4, "line.echo.gain_db", "missing"),
        ("steps:\n  - say: hi\nsteps:\n  - say: ho\n", 3, "steps", "duplicate key"),
        ("- say: hi\n", 1, "", "expected a mapping"),
    ],
)
def test_malformed_fields(tmp_path: Path, text: str, line: int, field: str, fragment: str) -> None:
    msg = _error(tmp_path, text)
    prefix = f"{tmp_path / 'x.yaml'}:{line}: " + (f"{field}: " if field else "")
    assert msg.startswith(prefix), msg
    assert fragment in msg


def test_parse_scenario_uses_source_name() -> None:
    with pytest.raises(ScenarioError, match=r"^<inline>:2: steps\[0\]\.say: expected text"):
        parse_scenario("steps:\n  - say: [1]\n", "<inline>", Path("."))


def test_every_shipped_scenario_loads() -> None:
    scenarios = load_scenarios([SCENARIO_DIR])
    assert len(scenarios) >= 10
    names = {s.name for s in scenarios}
    for required in ("greeting", "two_turns", "early_barge_in", "late_barge_in", "backchannel",
                     "mid_sentence_pause", "noisy_line", "echo_line", "dtmf_entry", "hangup_mid_reply"):
        assert required in names
    for s in scenarios:
        assert s.expect, f"{s.name} has no expectations"
        assert s.description
    by_name = {s.name: s for s in scenarios}
    cut_in = by_name["early_barge_in"].steps[1]
    assert isinstance(cut_in, SayStep) and cut_in.when == When(WhenKind.CUT_IN, 300)
    assert by_name["greeting"].steps[0].when == When(WhenKind.AFTER_AGENT_DONE, 600, 8000)  # type: ignore[union-attr]
    assert by_name["echo_line"].line.echo is not None and by_name["noisy_line"].line.noise_snr_db == 15


def test_parse_bound_forms() -> None:
    assert parse_bound("<= 1500").op == "<=" and parse_bound("<= 1500").value == 1500.0
    assert parse_bound("== '123#'").value == "123#"
    assert parse_bound(3).op == "==" and parse_bound(3).value == 3.0
    assert parse_bound("== true").value is True
    assert parse_bound("!= abc").value == "abc"
    with pytest.raises(ValueError):
        parse_bound("< 'x'")
    with pytest.raises(ValueError):
        parse_bound([1])


def test_evaluate_expectations(tmp_path: Path) -> None:
    s = load_scenario(_write(tmp_path, GOOD))
    metrics = {
        "response_latency_ms": [100.0, 200.0, 300.0, 2500.0],
        "false_interruptions": 0,
        "dtmf_received": "12#",
        "agent_turns": 1,
    }
    results = {r.name: r for r in evaluate_expectations(s.expect, metrics)}
    p95 = results["response_latency_ms.p95"]
    assert p95.actual == pytest.approx(2170.0) and not p95.ok and p95.bound == "<= 2000.0"
    assert results["false_interruptions"].ok and results["dtmf_received"].ok
    assert results["agent_turns"].actual == 1.0 and not results["agent_turns"].ok


def test_evaluate_aggregates_and_missing() -> None:
    text = """\
steps:
  - say: hi
expect:
  barge_in_stop_ms.max: "<= 600"
  barge_in_stop_ms.count: "== 0"
  response_latency_ms.mean: "< 250"
  response_latency_ms.min: "> 99"
  response_latency_ms.p50: "== 200"
  duration_ms: "<= 1000"
  dtmf_received: "== '1'"
"""
    s = parse_scenario(text, "<t>", Path("."))
    metrics = {"barge_in_stop_ms": [], "response_latency_ms": [100, 200, 300], "dtmf_received": 1}
    results = {r.name: r for r in evaluate_expectations(s.expect, metrics)}
    assert not results["barge_in_stop_ms.max"].ok and results["barge_in_stop_ms.max"].note == "no samples"
    assert results["barge_in_stop_ms.count"].ok
    assert results["response_latency_ms.mean"].ok and results["response_latency_ms.min"].ok
    assert results["response_latency_ms.p50"].ok
    assert not results["duration_ms"].ok and "not measured" in results["duration_ms"].note
    assert not results["dtmf_received"].ok and "cannot compare" in results["dtmf_received"].note
