"""Barge-in stop time and false interruptions, over many generated scenarios (tiny demo model, inproc).

Barge-in: each scenario asks a question, then cuts in at a random 300-3000 ms into the agent's
(long) reply with a new question. The stop time is the simulator's ``barge_in_stop_ms``: caller
cut-in onset -> agent audio stopped at the caller's ear. Baseline, same calls: the agent's barge-in
decision (``detected_ms``, after ``turn.barge_in_min_speech_ms`` of voiced speech), which is when
the audio would stop without holding it at the first suspicion.

False interruptions: scenarios whose caller never cuts in, with line echo of the agent's voice
(several delays and gains) and backchannels ("uh-huh", "yeah", ...) over the agent's speech.
Counted: the report's ``false_interruptions`` plus every barge-in (none of these callers cut in),
per call-minute; and how often the agent's audio was held and then resumed (an audible pause).
Baseline: the same calls with the echo gate off (``turn.echo_gate: false``).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import SENTENCES
from bench.results import Metric, Section, ratio
from bench.simrun import SimCall, SimConfig, run_calls, scenario_from_yaml

CUT_IN_MIN_MS = 300
CUT_IN_MAX_MS = 3000
REPLY_MS = 4000
CUT_INS = ("Sorry, wait, what about the price?", "Hold on, can you repeat that?", "No, I meant the other one.",
           "Actually, just tell me the phone number.", "Excuse me, how long does that take?")
BACKCHANNELS = ("uh-huh", "yeah", "okay", "mm-hmm", "right")
ECHO_LINES = ((60, -6), (120, -12), (250, -20), (120, -6), (250, -12), (60, -20))  # (delay ms, gain dB)

BARGE_IN_SCENARIO = """\
name: {name}
timeout_s: 40
steps:
  - say: "{question}"
    when: {{after_silence_ms: 300}}
  - say: "{cut_in}"
    when: {{cut_in_ms: {cut_in_ms}}}
  - hangup: {{}}
    when: {{after_silence_ms: 1500}}
"""

LISTEN_SCENARIO = """\
name: {name}
timeout_s: 40
line:
  codec: {codec}
{echo}steps:
  - say: "{question}"
    when: {{after_silence_ms: 300}}
{backchannels}  - hangup: {{}}
    when: {hangup_when}
"""


def barge_in_scenarios(count: int, seed: int = 0) -> list[tuple[Any, int]]:
    """(scenario, cut-in ms) pairs, cut-ins uniform in [300, 3000] ms."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        cut = rng.randint(CUT_IN_MIN_MS, CUT_IN_MAX_MS)
        text = BARGE_IN_SCENARIO.format(name=f"barge-{i:03d}", question=SENTENCES[i % len(SENTENCES)],
                                        cut_in=CUT_INS[i % len(CUT_INS)], cut_in_ms=cut)
        out.append((scenario_from_yaml(text, f"barge-{i:03d}"), cut))
    return out


def listen_scenarios(count: int, seed: int = 1) -> list[Any]:
    """Callers that never cut in: half with line echo only, half with backchannels (and echo)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        delay, gain = ECHO_LINES[i % len(ECHO_LINES)]
        echo = f"  echo: {{delay_ms: {delay}, gain_db: {gain}}}\n"
        backchannels = ""
        hangup_when = "{after_agent_done: {silence_ms: 300, max_wait_ms: 9000}}"
        if i % 2 == 1:
            first = rng.randint(500, 1500)
            backchannels = (f'  - say: "{BACKCHANNELS[i % len(BACKCHANNELS)]}"\n    when: {{cut_in_ms: {first}}}\n'
                            f'  - say: "{BACKCHANNELS[(i + 2) % len(BACKCHANNELS)]}"\n'
                            f"    when: {{after_silence_ms: {rng.randint(700, 1200)}}}\n")
            hangup_when = "{after_silence_ms: 2500}"  # the rest of the reply (it started before these steps)
        text = LISTEN_SCENARIO.format(name=f"listen-{i:03d}", codec=("pcmu", "pcma", "none")[i % 3], echo=echo,
                                      question=SENTENCES[(i + 3) % len(SENTENCES)], backchannels=backchannels,
                                      hangup_when=hangup_when)
        out.append(scenario_from_yaml(text, f"listen-{i:03d}"))
    return out


def _pcts(values: list[float]) -> tuple[float, float, float]:
    if not values:
        return float("nan"), float("nan"), float("nan")
    return float(np.percentile(values, 50)), float(np.percentile(values, 95)), float(max(values))


def stop_times(calls: list[SimCall]) -> tuple[list[float], list[float], int]:
    """(stop ms, decision ms, cut-ins without a barge-in) over the calls."""
    stops, decisions, missed = [], [], 0
    for call in calls:
        if not call.record.barge_ins:
            missed += 1
        for b in call.record.barge_ins[:1]:
            if b.stop_latency_ms is not None:
                stops.append(b.stop_latency_ms)
            if b.detected_ms is not None:
                decisions.append(b.detected_ms - b.onset_ms)
    return stops, decisions, missed


async def measure_barge_in(quick: bool, out_dir: Path | None, checkpoint: Path, loaded: Any, choice: Any) -> Section:
    started = time.perf_counter()
    count = 12 if quick else 50
    concurrency = 3  # more at once overloads 2 shared cores (the agent's audio then has gaps)
    pairs = barge_in_scenarios(count)
    config = SimConfig("barge-in", "inproc", {"model": {"tiny_max_reply_ms": REPLY_MS}}, concurrency)
    folder = None if out_dir is None else out_dir / "barge_in"
    calls = await run_calls([s for s, _ in pairs], config, checkpoint, loaded, choice, folder)
    stops, decisions, missed = stop_times(calls)
    s50, s95, smax = _pcts(stops)
    d50, d95, dmax = _pcts(decisions)
    errors = sum(1 for c in calls if c.record.error)
    false = sum(len(c.record.false_interruptions) for c in calls)
    rows: list[list[object]] = [
        ["stop at the caller's ear (hold on suspicion)", len(stops), s50, s95, smax, ratio(s50, d50)],
        ["baseline: agent's barge-in decision (no hold)", len(decisions), d50, d95, dmax, 1.0],
    ]
    section = Section(
        key="barge_in", title="Barge-in stop time at the caller's ear",
        command="lfm-call bench" + (" --quick" if quick else "") + "   # section barge_in",
        headers=["measure", "barge-ins", "p50 ms", "p95 ms", "max ms", "p50 / baseline"], rows=rows,
        notes=[f"{count} generated calls ({concurrency} at a time, inproc, tiny demo model, replies of "
               f"{REPLY_MS} ms): a question, then a cut-in at a random {CUT_IN_MIN_MS}-{CUT_IN_MAX_MS} ms into "
               "the reply (seeded)",
               "stop = caller cut-in onset -> agent audio stopped at the caller's ear (report barge_in_stop_ms)",
               f"cut-ins that caused no barge-in: {missed}; false interruptions in these calls: {false}; "
               f"call errors: {errors}"],
    )
    section.metrics = {"stop_p50_ms": Metric(s50, "ms", "lower"), "stop_p95_ms": Metric(s95, "ms", "lower"),
                       "stop_max_ms": Metric(smax, "ms", "lower")}
    section.seconds = time.perf_counter() - started
    return section


def false_counts(calls: list[SimCall]) -> dict[str, float]:
    minutes = sum(c.record.duration_ms for c in calls) / 60000.0
    false = sum(len(c.record.false_interruptions) + len(c.record.barge_ins) for c in calls)
    # every hold the agent resumed from: a sound that was not a barge-in, or a voice onset that never became speech
    resumed = sum(c.summary.ignored_interruptions + c.summary.onset_holds for c in calls if c.summary is not None)
    heard = sum(c.record.metrics()["agent_turns"] for c in calls)
    return {"calls": len(calls), "minutes": minutes, "false": false,
            "per_minute": false / minutes if minutes else float("nan"),
            "resumed_per_minute": resumed / minutes if minutes else float("nan"), "resumed": resumed,
            "answers": heard, "errors": sum(1 for c in calls if c.record.error)}


async def measure_false(quick: bool, out_dir: Path | None, checkpoint: Path, loaded: Any, choice: Any) -> Section:
    started = time.perf_counter()
    count = 6 if quick else 18
    rows: list[list[object]] = []
    results = {}
    for name, gate in (("echo gate on (default)", True), ("baseline: echo gate off", False)):
        config = SimConfig(name, "inproc", {"model": {"tiny_max_reply_ms": REPLY_MS}, "turn": {"echo_gate": gate}},
                           3)
        folder = None if out_dir is None else out_dir / ("false_gate_on" if gate else "false_gate_off")
        r = false_counts(await run_calls(listen_scenarios(count), config, checkpoint, loaded, choice, folder))
        results[gate] = r
        rows.append([name, r["calls"], r["minutes"], r["false"], r["per_minute"], r["resumed"],
                     r["resumed_per_minute"], r["answers"], r["errors"]])
    for row in rows:
        row.insert(5, ratio(float(row[4]), results[False]["per_minute"]))  # type: ignore[arg-type]
    section = Section(
        key="false_interruptions", title="False interruptions per call-minute, echo and backchannels (target 0)",
        command="lfm-call bench" + (" --quick" if quick else "") + "   # section false_interruptions",
        headers=["configuration", "calls", "call-minutes", "false interruptions", "per call-minute",
                 "per minute / baseline", "held then resumed", "resumed per call-minute", "answers heard",
                 "call errors"],
        rows=rows,
        notes=[f"{count} generated calls per configuration, none of which cuts in: line echo of the agent's voice "
               f"(delay/gain {', '.join(f'{d} ms/{g} dB' for d, g in ECHO_LINES)}; G.711 u-law, A-law or clean), "
               "every second call also says two backchannels (uh-huh, yeah, okay, mm-hmm, right) over the reply",
               "false interruptions = the report's false_interruptions + barge-ins (no caller here cuts in)",
               "held then resumed = the agent suspected a barge-in (at a voice onset or at speech), paused its audio and went on (audible pause)"],
    )
    section.metrics = {"per_minute": Metric(results[True]["per_minute"], "1/min", "lower"),
                       "resumed_per_minute": Metric(results[True]["resumed_per_minute"], "1/min", "lower")}
    section.seconds = time.perf_counter() - started
    return section
