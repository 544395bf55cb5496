"""Scripted call simulation: scenarios as callers, over any transport, measured at the caller's ear.

For each scenario the runner renders the caller's audio, places a call through a `CallerLeg`
(in-process, WebRTC or SIP), and every 20 ms (absolute deadlines) moves one packet each way
through the scenario's line model (codec, loss, jitter, echo, noise): what the caller says goes up
the line, what the agent sends comes down to the caller's ear, where agent speech is detected.
When the call ends, the agent's own view (its CallSummary: ends of turn, barge-ins, VAD, DTMF) is
merged with the ear's, expectations are checked, and the report, a stereo WAV (caller left, agent
at the ear right), transcripts and a timeline picture are written, atomically.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from agent.call_marks import EarMarkCheck, session_marks
from agent.caller_leg import LEG_PACKET_SAMPLES, LEG_RATE, CallerLeg, Int16Array
from agent.caller_script import PACKET_MS, CallerScript, EarBuffer
from agent.caller_voice import render_step
from agent.expectations import evaluate_expectations
from agent.line import LineModel
from agent.log import event
from agent.report import (
    BargeInRecord,
    CallerUtterance,
    CallRecord,
    FalseInterruption,
    RunRecord,
    Segment,
    TurnRecord,
    write_call_artifacts,
    write_run_report,
)
from agent.scenario import DtmfStep, SayStep, Scenario
from agent.session import CallSummary

log = logging.getLogger(__name__)

UTTERANCE_MARGIN_MS = 300
NOMINAL_LEVEL_DBFS = -26.0

SummaryLookup = Callable[[float, "str | None"], "CallSummary | None"]


class Progress(Protocol):
    """Told when each scenario's call starts and when it has finished (``agent.sim_console``)."""

    def started(self, index: int, name: str) -> None: ...

    def finished(self, index: int, call: CallRecord) -> None: ...


@dataclass
class CallResult:
    record: CallRecord
    passed: bool


async def render_audio(scenario: Scenario, cache_dir: Path | None) -> dict[int, Int16Array]:
    audio: dict[int, Int16Array] = {}
    for i, step in enumerate(scenario.steps):
        if isinstance(step, (SayStep, DtmfStep)):
            audio[i] = await asyncio.to_thread(render_step, step, scenario.caller, LEG_RATE, cache_dir)
    return audio


async def simulate_call(scenario: Scenario, leg: CallerLeg, audio: dict[int, Int16Array], call_id: str,
                        model: str, transport: str, summary_of: SummaryLookup,
                        marks: EarMarkCheck | None = None) -> CallRecord:
    """Run one scenario over `leg` in real time; returns the measured CallRecord."""
    line = LineModel(scenario.line, LEG_RATE, seed=scenario.line.seed,
                     speech_level_dbfs=NOMINAL_LEVEL_DBFS + scenario.caller.volume_db)
    script = CallerScript(scenario.steps, audio)
    record = CallRecord(call_id=call_id, scenario=scenario.name, model=model, transport=transport,
                        sample_rate=LEG_RATE, started_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    sent: list[Int16Array] = []
    heard_parts: list[Int16Array] = []
    silence = np.zeros(LEG_PACKET_SAMPLES, np.int16)
    ear = EarBuffer()
    try:
        await leg.connect()
    except Exception as exc:
        record.error = f"call failed: {exc}"
        return record
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    started_wall = time.time()  # the caller's timeline starts now, when the call is answered
    k = 0
    timeout_ms = int(scenario.timeout_s * 1000)
    while True:
        now_ms = k * PACKET_MS
        delay = t0 + now_ms / 1000 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        ear.push(leg.receive_audio())
        agent_packet = ear.take()
        heard = line.downlink(agent_packet, now_ms)
        tick = script.tick(now_ms, heard)
        caller_packet = tick.packet if tick.packet is not None and not tick.record_only else None
        leg.send_audio(line.uplink(caller_packet, heard, now_ms))
        for digit, duration in tick.dtmf:
            leg.send_dtmf(digit, duration)
        sent.append(tick.packet if tick.packet is not None else silence)
        heard_parts.append(heard)
        k += 1
        if tick.hang_up:
            record.hung_up = True
            await leg.hang_up()
            break
        if leg.remote_hung_up:
            break
        if now_ms >= timeout_ms:
            record.error = f"scenario timeout after {scenario.timeout_s} s"
            await leg.hang_up()
            break
    script.ear.close()
    record.duration_ms = k * PACKET_MS
    record.caller_audio = np.concatenate(sent) if sent else np.zeros(0, np.int16)
    record.heard_audio = np.concatenate(heard_parts) if heard_parts else np.zeros(0, np.int16)
    record.caller_utterances = list(script.utterances)
    record.agent_segments = list(script.ear.segments)
    record.dtmf_sent = script.dtmf_sent
    record.line_stats = {"uplink": vars(line.uplink_stats), "downlink": vars(line.downlink_stats),
                         "late_at_caller": ear.late, "drained_at_caller": ear.drained}
    await asyncio.sleep(0.05)
    summary = summary_of(started_wall, getattr(leg, "call_id", None))
    if summary is None:
        record.error = record.error or "no agent-side summary for this call"
    else:
        merge_summary(record, summary, (summary.started_at - started_wall) * 1000)
    if marks is not None:  # the mark as the caller heard it, after the line model
        tag = summary.mark.call_tag if summary is not None and summary.mark is not None else None
        record.watermark = await asyncio.to_thread(
            marks.measure, record, session_marks(summary.mark if summary is not None else None), tag)
    record.expectations = evaluate_expectations(scenario.expect, record.metrics())
    return record


def merge_summary(record: CallRecord, summary: CallSummary, offset_ms: float) -> None:
    """Put the agent's own view of the call on the caller's timeline (session time + offset)."""
    says = [u for u in record.caller_utterances if u.kind in ("say", "wav")]
    segments = record.agent_segments

    def segment_after(t: float) -> Segment | None:
        return next((s for s in segments if s.start_ms >= t), None)

    eots = [None if t.end_of_turn_ms is None else t.end_of_turn_ms + offset_ms for t in summary.turns]
    for i, turn in enumerate(summary.turns):
        eot = eots[i]
        caller_end = None
        if eot is not None:
            before = [u.end_ms for u in says if u.end_ms <= eot]
            caller_end = before[-1] if before else None
        start_after = 0.0 if eot is None else max(caller_end or 0.0, eot - 50)
        seg = segment_after(start_after)
        heard = seg is not None and turn.first_audio_sent_ms is not None
        end = None
        if heard and seg is not None:
            # held and resumed (a backchannel over the agent): the reply goes on in later segments,
            # up to the next reply's end of turn
            later = [e for e in eots[i + 1:] if e is not None]
            until = later[0] - 50 if later else float("inf")
            end = max((s.end_ms for s in segments if seg.start_ms <= s.start_ms < until), default=seg.end_ms)
        record.turns.append(TurnRecord(
            index=i, caller_end_ms=caller_end, end_of_turn_ms=eot,
            agent_start_ms=seg.start_ms if heard and seg else None,
            agent_end_ms=end,
            text_generated=turn.text_generated, text_heard=turn.text_heard, interrupted=turn.interrupted,
            epoch=turn.epoch))
    record.end_of_turn_ms = [t + offset_ms for t in summary.end_of_turns]
    record.vad_segments = [Segment(a + offset_ms, b + offset_ms, "vad") for a, b in summary.vad_segments]
    for b in summary.barge_ins:
        started = b.speech_started_ms + offset_ms
        caller = next((u for u in says if u.start_ms - UTTERANCE_MARGIN_MS <= started
                       <= u.end_ms + UTTERANCE_MARGIN_MS), None)
        if caller is None:
            record.false_interruptions.append(FalseInterruption(started, "barge-in without caller speech"))
            continue
        onset = caller.start_ms
        active = next((s for s in segments if s.start_ms <= onset < s.end_ms), None)
        stop = max(onset, active.end_ms) if active is not None else onset
        record.barge_ins.append(BargeInRecord(onset, b.detected_ms + offset_ms, stop, active is not None))
    record.dtmf_received = summary.dtmf
    record.false_starts = summary.false_starts
    record.cut_offs = cut_offs(record.caller_utterances, segments)
    if summary.error:
        record.error = record.error or f"agent error: {summary.error}"


def cut_offs(utterances: list[CallerUtterance], agent: list[Segment]) -> list[Segment]:
    """Agent audio at the ear while the caller's sentence was unfinished: in the pause after an
    unfinished say step, before the caller went on (one per such pause, the first overlap)."""
    says = [u for u in utterances if u.kind in ("say", "wav")]
    out = []
    for i, u in enumerate(says):
        if not u.unfinished:
            continue
        resume = says[i + 1].start_ms if i + 1 < len(says) else float("inf")
        hit = next((s for s in agent if s.start_ms < resume and s.end_ms > u.end_ms), None)
        if hit is not None:
            out.append(Segment(max(hit.start_ms, u.end_ms), min(hit.end_ms, resume), "cut-off"))
    return out


def summaries_from(manager_summaries: list[CallSummary]) -> SummaryLookup:
    """Match a simulated call to the agent's summary: by the call's id when the leg knows it (the
    agent's call id, or the transport's own, e.g. the SIP Call-ID), else by start time."""
    claimed: set[int] = set()

    def lookup(started_wall: float, leg_call_id: str | None) -> CallSummary | None:
        if leg_call_id:
            for s in manager_summaries:
                if id(s) not in claimed and leg_call_id in (s.call_id, s.external_id):
                    claimed.add(id(s))
                    return s
        best: CallSummary | None = None
        for s in manager_summaries:
            if id(s) in claimed or s.started_at < started_wall - 0.5:
                continue
            if best is None or abs(s.started_at - started_wall) < abs(best.started_at - started_wall):
                best = s
        if best is not None:
            claimed.add(id(best))
        return best

    return lookup


async def run_simulation(scenarios: list[Scenario], leg_factory: Callable[[], CallerLeg], *, model: str,
                         transport: str, concurrency: int, out_dir: Path, summary_of: SummaryLookup,
                         cache_dir: Path | None = None, stagger_ms: int = 150,
                         marks: EarMarkCheck | None = None, progress: Progress | None = None) -> RunRecord:
    run = RunRecord(run_id=time.strftime("run-%Y%m%d-%H%M%S"), started_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                    description={"model": model, "transport": transport, "concurrency": concurrency,
                                 "scenarios": [s.name for s in scenarios]})
    rendered = [await render_audio(s, cache_dir) for s in scenarios]
    gate = asyncio.Semaphore(max(1, concurrency))
    artifacts_lock = asyncio.Lock()  # one call's files at a time
    results: list[CallRecord | None] = [None] * len(scenarios)

    async def one(i: int, scenario: Scenario) -> None:
        await asyncio.sleep(i * stagger_ms / 1000 if i < concurrency else 0)
        async with gate:
            leg = leg_factory()
            call_id = f"{i + 1:03d}-{scenario.name}"
            event(log, "sim.call_started", scenario=scenario.name, leg=leg.description)
            if progress is not None:
                progress.started(i, scenario.name)
            record = await simulate_call(scenario, leg, rendered[i], call_id, model, transport, summary_of, marks)
            results[i] = record
            # the timeline is drawn once no call is live (below): matplotlib's import and drawing hold
            # the GIL for hundreds of ms, which stalled the other calls' audio past the playout's
            # max_late_ms (their packets were dropped: a gap at the ear, e.g. at a scripted cut-in)
            async with artifacts_lock:
                artifacts = await asyncio.to_thread(write_call_artifacts, out_dir, record, False)
                if marks is not None:
                    signed = await asyncio.to_thread(marks.write_record, artifacts.folder, record)
                    record.provenance = signed.name if signed is not None else None
            event(log, "sim.call_finished", scenario=scenario.name, passed=record.passed,
                  duration_ms=record.duration_ms, error=record.error,
                  failed=[e.name for e in record.expectations if not e.ok])
            if progress is not None:
                progress.finished(i, record)

    await asyncio.gather(*(one(i, s) for i, s in enumerate(scenarios)))
    run.calls = [r for r in results if r is not None]
    await asyncio.to_thread(write_timelines, out_dir, run.calls)
    write_run_report(out_dir, run)
    return run


def write_timelines(out_dir: Path, calls: list[CallRecord]) -> None:
    """Each call's timeline.png, drawn after the calls (see ``run_simulation``)."""
    from agent.timeline import write_timeline_png  # matplotlib is imported only when drawing

    for call in calls:
        write_timeline_png(Path(out_dir) / call.call_id / "timeline.png", call)
