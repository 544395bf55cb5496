"""The scripted caller and the ear tracker, driven by explicit time (20 ms slots)."""

from __future__ import annotations

import numpy as np

from agent.caller_script import CallerScript, EarBuffer, EarTracker
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


def _packets(*levels: int) -> list[np.ndarray]:
    """One 20 ms packet per level (0: digital silence), each with a distinct first sample."""
    out = []
    for i, level in enumerate(levels):
        p = np.full(320, level, np.int16)
        if level:
            p[0] = level + i  # tell packets apart
        out.append(p)
    return out


def test_ear_buffer_plays_in_order_and_catches_up_in_quiet_packets_only() -> None:
    ear = EarBuffer(max_pending=6, target_pending=1)
    assert ear.take() is None  # nothing arrived yet
    # a burst after an empty tick: two quiet packets, then speech
    burst = _packets(0, 0, 3000, 3000, 3000)
    ear.push(burst)
    first = ear.take()
    assert first is not None and first[0] == burst[2][0]  # both quiet packets skipped to catch up
    assert ear.drained == 2
    # speech is never skipped: the backlog of speech plays out in order
    second, third = ear.take(), ear.take()
    assert second is not None and third is not None
    assert [second[0], third[0]] == [burst[3][0], burst[4][0]]
    assert ear.take() is None and ear.drained == 2 and ear.late == 0


def test_ear_buffer_keeps_its_target_and_drops_the_oldest_beyond_its_limit() -> None:
    ear = EarBuffer(max_pending=6, target_pending=1)
    ear.push(_packets(0, 0))  # one quiet packet waiting beyond the one played: the target, kept
    assert ear.take() is not None and ear.drained == 0 and ear.pending_packets == 1
    speech = _packets(*([2000] * 8))
    ear.push(speech)
    assert ear.late == 3 and ear.pending_packets == 6  # 1 + 8 queued, the 3 oldest were late
    heard = [ear.take() for _ in range(6)]
    assert [h[0] for h in heard if h is not None] == [p[0] for p in speech[2:]]
