"""The scripted caller and the ear tracker, driven by explicit time (20 ms slots)."""

from __future__ import annotations

import numpy as np

from agent.caller_script import CallerScript, EarTracker
from agent.scenario import DtmfStep, HangupStep, SayStep, When, WhenKind

LOUD = (np.ones(320) * 3000).astype(np.int16)
QUIET = np.zeros(320, np.int16)


def say(kind: WhenKind, ms: int, max_wait_ms: int = 15000) -> SayStep:
    return SayStep(text="hello", wav=None, when=When(kind, ms, max_wait_ms), source_line=1)


def run(script: CallerScript, agent_loud: set[int], until_ms: int) -> list[tuple[int, object]]:
    """Tick every 20 ms; the agent is loud in the slots listed; returns (ms, TickResult) when sending."""
    out = []
    for now in range(0, until_ms, 20):
        result = script.tick(now, LOUD if now in agent_loud else QUIET)
        if result.packet is not None or result.dtmf or result.hang_up:
            out.append((now, result))
    return out


def test_after_agent_done_waits_for_the_reply_to_end_then_the_silence() -> None:
    audio = {0: np.ones(320 * 5, np.int16)}
    script = CallerScript([say(WhenKind.AFTER_AGENT_DONE, 600)], audio)
    agent = set(range(200, 1000, 20))  # agent talks 200-1000 ms
    sent = run(script, agent, 3000)
    first = sent[0][0]
    # ear segment ends at 1000 (last loud slot 980 + 20); silence 600 -> 1600
    assert first == 1600
    assert len(sent) == 5 and script.utterances[0].start_ms == 1600 and script.utterances[0].end_ms == 1700


def test_after_agent_done_gives_up_after_max_wait_when_nobody_talks() -> None:
    script = CallerScript([say(WhenKind.AFTER_AGENT_DONE, 600, max_wait_ms=1000)], {0: np.ones(320, np.int16)})
    sent = run(script, set(), 3000)
    assert sent[0][0] == 1000


def test_cut_in_starts_relative_to_the_agent_reply_start() -> None:
    script = CallerScript([say(WhenKind.CUT_IN, 300)], {0: np.ones(640, np.int16)})
    sent = run(script, set(range(500, 3000, 20)), 3000)
    assert sent[0][0] == 800


def test_after_silence_and_hangup_and_dtmf_timing() -> None:
    steps = [
        say(WhenKind.AFTER_SILENCE, 0),
        DtmfStep(digits="12#", tone_ms=100, gap_ms=80, when=When(WhenKind.AFTER_SILENCE, 200), source_line=2),
        HangupStep(when=When(WhenKind.AFTER_SILENCE, 100), source_line=3),
    ]
    audio = {0: np.ones(640, np.int16), 1: np.ones(320 * 27, np.int16)}
    sent = run(CallerScript(steps, audio), set(), 2500)
    digits = [(ms, d) for ms, r in sent for d, _ in r.dtmf]  # type: ignore[attr-defined]
    assert digits == [(240, "1"), (420, "2"), (600, "#")]  # 180 ms apart, from the step start
    dtmf_packets = [ms for ms, r in sent if r.record_only]  # type: ignore[attr-defined]
    assert dtmf_packets[0] == 240 and len(dtmf_packets) == 27  # tones recorded, not sent down the line
    hangups = [ms for ms, r in sent if r.hang_up]  # type: ignore[attr-defined]
    assert hangups == [240 + 27 * 20 + 100]


def test_ear_tracker_bridges_short_gaps_and_splits_long_ones() -> None:
    ear = EarTracker(hangover_ms=200)
    loud = set(range(0, 400, 20)) | set(range(500, 700, 20)) | set(range(1200, 1300, 20))
    for now in range(0, 2000, 20):
        ear.update(now, LOUD if now in loud else QUIET)
    ear.close()
    assert [(s.start_ms, s.end_ms) for s in ear.segments] == [(0, 700), (1200, 1300)]
