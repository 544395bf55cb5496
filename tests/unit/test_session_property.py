"""Property: over random interleavings of caller speech, engine chunks and packet playout, every
interrupt keeps exactly the frames the transport reported played, and the engine's history agrees.

CI runs the default profile; ``HYPOTHESIS_PROFILE=thorough`` runs the 10,000 examples of the issue.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.session_core import SessionOptions
from agent.turn_taking import TurnTakingSettings
from tests.unit.session_harness import Harness

settings.register_profile("default", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=10_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

op = st.one_of(
    st.tuples(st.just("speech"), st.integers(1, 30)),
    st.tuples(st.just("silence"), st.integers(1, 40)),
    st.tuples(st.just("play"), st.integers(0, 12)),
    st.tuples(st.just("engine"), st.integers(0, 4)),
    st.tuples(st.just("dtmf"), st.sampled_from("5#")),
)


@given(ops=st.lists(op, min_size=1, max_size=40), reply_frames=st.integers(0, 24),
       early=st.sampled_from([0, 200]))
def test_history_keeps_exactly_what_the_transport_reported_played(ops: list[tuple[str, object]],
                                                                  reply_frames: int, early: int) -> None:
    opts = SessionOptions(echo_gate=False, turn=TurnTakingSettings(early_response_silence_ms=early,
                                                                   barge_in_min_speech_ms=120,
                                                                   false_interruption_timeout_ms=600))
    h = Harness(opts, reply_frames=reply_frames, auto_play=False, engine_steps_per_tick=0)
    for kind, arg in ops:
        if kind == "speech":
            h.speak(20 * int(arg))  # type: ignore[call-overload]
        elif kind == "silence":
            h.silence(20 * int(arg))  # type: ignore[call-overload]
        elif kind == "play":
            h.play(int(arg))  # type: ignore[call-overload]
        elif kind == "engine":
            for _ in range(int(arg)):  # type: ignore[call-overload]
                h.engine.step()
            h.deliver()
        else:
            h._epoch_before = h.core.playout.epoch
            h.do(h.core.dtmf(str(arg), h.now))
    h.deliver()
    reported_by_epoch = {}
    for epoch, asked, reported in h.interrupts:
        assert asked == reported, f"interrupt kept {asked} frames, the transport reported {reported} played"
        reported_by_epoch[epoch] = reported
    for turn in h.core.summary.turns:  # what the history keeps (the engine's ReplyEnded) is that too
        if turn.interrupted and turn.epoch in reported_by_epoch and turn.text_heard:
            assert turn.frames_heard == reported_by_epoch[turn.epoch]
            assert turn.text_heard == f"r{turn.epoch}:{turn.frames_heard}"
