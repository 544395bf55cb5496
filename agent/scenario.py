"""Scripted callers: the scenario schema and its loader (line-aware YAML in `agent.scenario_yaml`; the
checks of ``expect:`` against a call's metrics in `agent.expectations`).

A scenario file is a caller: what it says, when, DTMF, hang-up, the line it calls over, and what the
call must achieve. Every error names the file, the line and the field::

    config/scenarios/x.yaml:12: steps[2].say: expected text, got 42

Schema (unknown fields are errors; defaults shown)::

    name: greeting                 # default: the file name without .yaml
    description: ""
    timeout_s: 60                  # the whole call is cut after this long
    caller:
      voice: en-us                 # espeak-ng voice
      rate_wpm: 160                # espeak-ng words per minute, 80-450
      volume_db: 0                 # relative to the nominal speech level (-26 dBFS active level)
    line:
      codec: none                  # none | pcmu | pcma  (G.711 round trip at 8 kHz; no G.722)
      loss_pct: 0                  # packet loss, 0-100
      loss_burst_packets: 1        # mean burst length; 1 = independent losses, > 1 = Gilbert-Elliott
      plc: repeat                  # lost packet -> repeat | silence (repeat = last packet, faded)
      jitter_ms: 0                 # std. dev. of the per-packet delay variation (half-normal)
      jitter_buffer_ms: null       # fixed playout delay; null = 2 x jitter_ms rounded up to 20 ms;
                                   # a packet later than this is lost
      echo: null                   # or {delay_ms: 120, gain_db: -12}: agent voice into caller uplink
      noise_snr_db: null           # or a number: noise at this SNR below the caller's speech level
      noise: pink                  # pink | white
      seed: 0                      # random seed of loss, jitter and noise
    steps:                         # run in order; each step is one of:
      - say: "What are your opening hours?"   # espeak-ng text ...
        unfinished: false          # true: the sentence goes on in the next say step (a pause); said
                                   # as one utterance with the next step's text and cut there, so it
                                   # keeps its mid-sentence intonation; agent audio in that pause
                                   # is a cut-off
      - wav: clips/question.wav    # ... or a WAV file, relative to the scenario file
      - dtmf: "123#"               # digits 0-9 * # A-D
        tone_ms: 100
        gap_ms: 80
      - hangup: {}                 # or `hangup: true`
      - wait_ms: 1000              # idle for this long after the previous step
    expect:                        # metric[.aggregate]: bound
      response_latency_ms.p95: "<= 2000"
      false_interruptions: "== 0"
      dtmf_received: "== '123#'"

``say``, ``wav``, ``dtmf`` and ``hangup`` steps take an optional ``when`` (exactly one key)::

    when: {after_agent_done: {silence_ms: 600, max_wait_ms: 15000}}   # the default: the agent's
          # reply that started after the previous step has ended, then silence_ms of silence; if no
          # reply has ended within max_wait_ms of the previous step's end, go ahead anyway
    when: {after_silence_ms: 300}  # 300 ms after the previous step ended, whatever the agent does
    when: {cut_in_ms: 1500}        # 1500 ms after the agent started its current reply (barge-in);
          # waits up to 15 s for a reply to start, then goes ahead
    when: {at_ms: 4000}            # 4000 ms after call start (immediately if already past)

A pause in mid-sentence is written as two ``say`` steps, the second with
``when: {after_silence_ms: 1000}``: the caller stays silent 1 s whatever the agent does.

Metrics (lists take an aggregate: p50, p95, max, min, mean or count; a list aggregate with no
samples fails, so a scenario that bounds barge-in stop time also requires a barge-in)::

    response_latency_ms   list  caller speech end -> agent audio at the caller's ear, per turn
    end_of_turn_delay_ms  list  caller speech end -> the agent's end-of-turn mark
    barge_in_stop_ms      list  caller cut-in onset -> agent audio stopped at the caller's ear
    false_interruptions   int   times the agent stopped talking without the caller cutting in
    false_starts          int   answers started speculatively and withdrawn (the caller went on)
    cut_offs              int   unfinished say steps during whose pause agent audio reached the ear
    barge_ins             int   barge-ins the agent honoured
    agent_turns           int   agent replies heard (greeting included)
    dtmf_received         str   digits the agent received
    hung_up               bool  the caller hung up
    duration_ms           float call length

Bounds are ``OP VALUE`` with OP in ``<= < >= > == !=``; VALUE is a number, a quoted string or
true/false. A bare number or string means ``==``.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from agent.scenario_yaml import Fields, LineLoader, LocatedError, YamlMap, YamlSeq, describe


class ScenarioError(ValueError):
    """A scenario file is malformed; the message starts with ``file:line: field:``."""


class Codec(enum.Enum):
    NONE = "none"
    PCMU = "pcmu"
    PCMA = "pcma"


class NoiseKind(enum.Enum):
    PINK = "pink"
    WHITE = "white"


class Concealment(enum.Enum):
    REPEAT = "repeat"
    SILENCE = "silence"


class WhenKind(enum.Enum):
    AFTER_AGENT_DONE = "after_agent_done"
    AFTER_SILENCE = "after_silence_ms"
    CUT_IN = "cut_in_ms"
    AT = "at_ms"


DEFAULT_SILENCE_MS = 600
DEFAULT_MAX_WAIT_MS = 15000
DTMF_DIGITS = frozenset("0123456789*#ABCD")


@dataclass(frozen=True)
class CallerConfig:
    voice: str = "en-us"
    rate_wpm: int = 160
    volume_db: float = 0.0


@dataclass(frozen=True)
class EchoConfig:
    delay_ms: float
    gain_db: float


@dataclass(frozen=True)
class LineConfig:
    codec: Codec = Codec.NONE
    loss_pct: float = 0.0
    loss_burst_packets: float = 1.0
    plc: Concealment = Concealment.REPEAT
    jitter_ms: float = 0.0
    jitter_buffer_ms: float | None = None
    echo: EchoConfig | None = None
    noise_snr_db: float | None = None
    noise: NoiseKind = NoiseKind.PINK
    seed: int = 0


@dataclass(frozen=True)
class When:
    """When a step starts. ``ms`` is silence_ms / after_silence_ms / cut_in_ms / at_ms by kind."""

    kind: WhenKind = WhenKind.AFTER_AGENT_DONE
    ms: int = DEFAULT_SILENCE_MS
    max_wait_ms: int = DEFAULT_MAX_WAIT_MS


@dataclass(frozen=True)
class SayStep:
    text: str | None
    wav: Path | None
    when: When
    source_line: int
    unfinished: bool = False  # the caller's sentence goes on in the next say step (a pause, not an end)
    continuation: str | None = None  # unfinished text steps: the next say step's text (rendered as one)


@dataclass(frozen=True)
class DtmfStep:
    digits: str
    tone_ms: int
    gap_ms: int
    when: When
    source_line: int


@dataclass(frozen=True)
class HangupStep:
    when: When
    source_line: int


@dataclass(frozen=True)
class WaitStep:
    wait_ms: int
    source_line: int


Step = SayStep | DtmfStep | HangupStep | WaitStep


@dataclass(frozen=True)
class Bound:
    op: str
    value: float | str | bool

    def __str__(self) -> str:
        return f"{self.op} {self.value!r}" if isinstance(self.value, str) else f"{self.op} {self.value}"


@dataclass(frozen=True)
class Expectation:
    name: str  # as written, e.g. "response_latency_ms.p95"
    metric: str
    aggregate: str | None
    bound: Bound
    source_line: int


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    caller: CallerConfig
    line: LineConfig
    steps: tuple[Step, ...]
    expect: tuple[Expectation, ...]
    timeout_s: float
    path: Path | None


LIST_METRICS = frozenset({"response_latency_ms", "end_of_turn_delay_ms", "barge_in_stop_ms"})
SCALAR_METRICS = frozenset(
    {"false_interruptions", "false_starts", "cut_offs", "double_answers", "turn_ends", "barge_ins", "agent_turns", "dtmf_received", "hung_up", "duration_ms"}
)
AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "p50": lambda xs: float(np.percentile(xs, 50)),
    "p95": lambda xs: float(np.percentile(xs, 95)),
    "max": lambda xs: float(max(xs)),
    "min": lambda xs: float(min(xs)),
    "mean": lambda xs: float(np.mean(xs)),
    "count": lambda xs: float(len(xs)),
}
COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq, "!=": operator.ne,
}


# ---------------------------------------------------------------- schema


def _parse_caller(data: Any, line: int) -> CallerConfig:
    f = Fields(data, "caller", line)
    cfg = CallerConfig(
        voice=f.text("voice", "en-us"),
        rate_wpm=int(f.number("rate_wpm", 160, 80, 450, integer=True) or 0),
        volume_db=float(f.number("volume_db", 0.0, -60.0, 20.0) or 0.0),
    )
    f.done()
    return cfg


def _parse_line(data: Any, line: int) -> LineConfig:
    f = Fields(data, "line", line)
    echo: EchoConfig | None = None
    if f.raw("echo") is not None:
        e = Fields(f.raw("echo"), "line.echo", f.line("echo"))
        echo = EchoConfig(delay_ms=e.required_number("delay_ms", 0, 2000), gain_db=e.required_number("gain_db", -80, 0))
        e.done()
    jitter_buffer = f.number("jitter_buffer_ms", None, 0, 1000, optional=True)
    snr = f.number("noise_snr_db", None, -20, 100, optional=True)
    cfg = LineConfig(
        codec=f.choice("codec", Codec, Codec.NONE),
        loss_pct=float(f.number("loss_pct", 0.0, 0, 100) or 0.0),
        loss_burst_packets=float(f.number("loss_burst_packets", 1.0, 1, 1000) or 1.0),
        plc=f.choice("plc", Concealment, Concealment.REPEAT),
        jitter_ms=float(f.number("jitter_ms", 0.0, 0, 500) or 0.0),
        jitter_buffer_ms=None if jitter_buffer is None else float(jitter_buffer),
        echo=echo,
        noise_snr_db=None if snr is None else float(snr),
        noise=f.choice("noise", NoiseKind, NoiseKind.PINK),
        seed=int(f.number("seed", 0, 0, 2**63 - 1, integer=True) or 0),
    )
    f.done()
    return cfg


def _parse_when(f: Fields) -> When:
    raw = f.raw("when")
    if raw is None:
        return When()
    w = Fields(raw, f.field("when"), f.line("when"))
    if len(raw) != 1:
        raise LocatedError(raw.line, w.path, f"expected exactly one of {', '.join(k.value for k in WhenKind)}")
    key = next(iter(raw))
    if key == WhenKind.AFTER_AGENT_DONE.value:
        inner = w.raw(key)
        if inner is None:
            return When()
        d = Fields(inner, w.field(key), w.line(key))
        when = When(
            WhenKind.AFTER_AGENT_DONE,
            int(d.number("silence_ms", DEFAULT_SILENCE_MS, 0, 600_000, integer=True) or 0),
            int(d.number("max_wait_ms", DEFAULT_MAX_WAIT_MS, 0, 3_600_000, integer=True) or 0),
        )
        d.done()
        return when
    kinds = {k.value: k for k in WhenKind}
    if key not in kinds:
        raise w.fail(key, f"unknown field (expected one of {', '.join(kinds)})")
    return When(kinds[key], int(w.number(key, None, 0, 3_600_000, integer=True) or 0))


_STEP_KINDS = ("say", "wav", "dtmf", "hangup", "wait_ms")


def _parse_step(data: Any, index: int, line: int, base_dir: Path) -> Step:
    f = Fields(data, f"steps[{index}]", line)
    kinds = [k for k in _STEP_KINDS if k in data]
    if len(kinds) != 1:
        got = ", ".join(kinds) if kinds else "none of them"
        raise LocatedError(data.line, f.path, f"expected exactly one of {', '.join(_STEP_KINDS)}, got {got}")
    kind = kinds[0]
    step: Step
    if kind == "say":
        text = f.text("say")
        if not text.strip():
            raise f.fail("say", "expected text, got an empty string")
        step = SayStep(text, None, _parse_when(f), data.line, _unfinished(f))
    elif kind == "wav":
        rel = f.text("wav")
        wav_path = (base_dir / rel).resolve()
        if not wav_path.is_file():
            raise f.fail("wav", f"WAV file not found: {wav_path}")
        step = SayStep(None, wav_path, _parse_when(f), data.line, _unfinished(f))
    elif kind == "dtmf":
        raw = f.raw("dtmf")
        digits = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else raw
        if not isinstance(digits, str) or not digits or any(c not in DTMF_DIGITS for c in digits.upper()):
            raise f.fail("dtmf", f"expected digits from 0-9 * # A-D, got {describe(raw)}")
        step = DtmfStep(
            digits.upper(),
            int(f.number("tone_ms", 100, 20, 2000, integer=True) or 0),
            int(f.number("gap_ms", 80, 20, 2000, integer=True) or 0),
            _parse_when(f),
            data.line,
        )
    elif kind == "hangup":
        value = f.raw("hangup")
        if not (value is True or value is None or (isinstance(value, dict) and not value)):
            raise f.fail("hangup", f"expected true or {{}}, got {describe(value)}")
        step = HangupStep(_parse_when(f), data.line)
    else:
        step = WaitStep(int(f.number("wait_ms", None, 0, 3_600_000, integer=True) or 0), data.line)
    f.done()
    return step


def _unfinished(f: Fields) -> bool:
    value = f.raw("unfinished", False)
    if not isinstance(value, bool):
        raise f.fail("unfinished", f"expected true or false, got {describe(value)}")
    return value


def _link_unfinished(steps: list[Step]) -> list[Step]:
    """An unfinished text step is spoken together with the next say step's text (and cut there)."""
    out = list(steps)
    for i, step in enumerate(out):
        if isinstance(step, SayStep) and step.unfinished and step.text is not None:
            nxt = next((s for s in out[i + 1:] if isinstance(s, SayStep)), None)
            if nxt is not None and nxt.text is not None:
                out[i] = dataclasses.replace(step, continuation=nxt.text)
    return out


def parse_bound(text: Any) -> Bound:
    """Parse ``"<= 1500"``, ``"== '123#'"``, ``">= 2"``; a bare number, bool or string means ``==``."""
    if isinstance(text, bool | int | float):
        return Bound("==", text if isinstance(text, bool) else float(text))
    if not isinstance(text, str):
        raise ValueError(f"expected a bound such as \"<= 1500\", got {describe(text)}")
    s = text.strip()
    for op in ("<=", ">=", "==", "!=", "<", ">"):
        if s.startswith(op):
            rest = s[len(op):].strip()
            break
    else:
        op, rest = "==", s
    if rest in ("true", "false"):
        return Bound(op, rest == "true")
    try:
        value = ast.literal_eval(rest)
    except (ValueError, SyntaxError):
        value = rest if op in ("==", "!=") and rest else None
    if op not in ("==", "!=") and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError(f"{op} needs a number, got {text!r}")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a bound such as \"<= 1500\" or \"== '123#'\", got {text!r}")
    return Bound(op, value if isinstance(value, str) else float(value))


def _parse_expect(data: Any, line: int) -> tuple[Expectation, ...]:
    f = Fields(data, "expect", line)
    out = []
    for name in data:
        metric, _, aggregate = name.partition(".")
        if metric in LIST_METRICS:
            if aggregate not in AGGREGATES:
                raise f.fail(name, f"list metric needs an aggregate ({', '.join(AGGREGATES)}), e.g. {metric}.p95")
        elif metric in SCALAR_METRICS:
            if aggregate:
                raise f.fail(name, f"{metric} is a single value and takes no aggregate")
        else:
            known = ", ".join(sorted(LIST_METRICS | SCALAR_METRICS))
            raise f.fail(name, f"unknown metric {metric!r} (known: {known})")
        try:
            bound = parse_bound(f.raw(name))
        except ValueError as exc:
            raise f.fail(name, str(exc)) from None
        out.append(Expectation(name, metric, aggregate or None, bound, f.line(name)))
    return tuple(out)


def parse_scenario(text: str, source: str, base_dir: Path, default_name: str = "scenario") -> Scenario:
    """Parse scenario YAML. ``source`` names the file in errors; WAV paths resolve against ``base_dir``."""
    try:
        try:
            data = yaml.load(text, Loader=LineLoader)  # a SafeLoader subclass
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            problem = " ".join(p for p in (exc.context, exc.problem) if p)
            raise LocatedError(line, "", f"YAML syntax error: {problem}") from None
        f = Fields(data, "", 1)
        steps_raw = f.raw("steps")
        if not isinstance(steps_raw, YamlSeq) or not steps_raw:
            raise LocatedError(f.line("steps"), "steps", f"expected a non-empty list, got {describe(steps_raw)}")
        name = f.text("name", default_name)
        scenario = Scenario(
            name=name,
            description=f.text("description", ""),
            caller=_parse_caller(f.raw("caller", _empty_map(data.line)), f.line("caller")),
            line=_parse_line(f.raw("line", _empty_map(data.line)), f.line("line")),
            steps=tuple(_link_unfinished([_parse_step(s, i, steps_raw.lines[i], base_dir)
                                          for i, s in enumerate(steps_raw)])),
            expect=_parse_expect(f.raw("expect", _empty_map(data.line)), f.line("expect")),
            timeout_s=float(f.number("timeout_s", 60.0, 1, 86400) or 0.0),
            path=None,
        )
        f.done()
        return scenario
    except LocatedError as exc:
        where = f"{exc.field}: " if exc.field else ""
        raise ScenarioError(f"{source}:{exc.line}: {where}{exc.message}") from None


def _empty_map(line: int) -> YamlMap:
    m = YamlMap()
    m.line, m.lines = line, {}
    return m


def load_scenario(path: str | Path) -> Scenario:
    """Load and validate one scenario file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{p}: cannot read scenario: {exc}") from None
    s = parse_scenario(text, str(p), p.parent, default_name=p.stem)
    return Scenario(s.name, s.description, s.caller, s.line, s.steps, s.expect, s.timeout_s, p)


def load_scenarios(paths: Sequence[str | Path]) -> list[Scenario]:
    """Load files and every ``*.yaml`` in folders, sorted by path; names must be unique."""
    files: list[Path] = []
    for entry in map(Path, paths):
        files.extend(sorted(entry.glob("*.yaml")) if entry.is_dir() else [entry])
    scenarios = [load_scenario(p) for p in files]
    seen: dict[str, Path | None] = {}
    for s in scenarios:
        if s.name in seen:
            raise ScenarioError(f"{s.path}: name {s.name!r} is also used by {seen[s.name]}")
        seen[s.name] = s.path
    return scenarios
