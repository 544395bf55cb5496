"""Playout: absolute-deadline pacing, epochs, what was heard, facts for TurnTaking, barge-in coordination."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from agent.events import AgentAudioFinished, AgentAudioStarted, FinishReason
from agent.playout import BargeInCoordinator, Playout, PlayoutPacket, PlayoutSettings

SETTINGS = PlayoutSettings(sample_rate=24000, output_latency_ms=60, max_late_ms=200, stall_timeout_ms=3000)


def chunk(value: int) -> npt.NDArray[np.int16]:
    """80 ms at 24 kHz whose four 20 ms packets hold value*10 + packet index (easy to trace)."""
    return np.repeat(np.array([value * 10 + k for k in range(4)], dtype=np.int16), 480)


def pull_every_20ms(playout: Playout, start_ms: int, end_ms: int) -> tuple[list[PlayoutPacket], list[object]]:
    packets: list[PlayoutPacket] = []
    events: list[object] = []
    for now in range(start_ms, end_ms + 1, 20):
        out = playout.pull(now)
        packets += out.packets
        events += out.events
    return packets, events


def test_packets_follow_absolute_deadlines_on_the_20ms_grid() -> None:
    playout = Playout(SETTINGS)
    for i in range(3):
        assert playout.push(chunk(i), epoch=0, step_index=i, text=f"w{i} ")
    assert playout.next_deadline_ms(1005) == 1020  # first grid slot at or after now
    assert playout.pull(1005).packets == []
    packets, events = pull_every_20ms(playout, 1020, 1300)
    assert [p.deadline_ms for p in packets] == [1020 + 20 * k for k in range(12)]
    assert [int(p.samples[0]) for p in packets] == [i * 10 + k for i in range(3) for k in range(4)]
    assert [p.sequence for p in packets] == list(range(12))
    assert all(p.samples.shape == (480,) for p in packets)
    assert events[0] == AgentAudioStarted(at_ms=1020, epoch=0)


def test_jittery_transport_never_drifts() -> None:
    playout = Playout(SETTINGS)
    for i in range(50):  # 4 s
        playout.push(chunk(i % 100), epoch=0, step_index=i)
    rng = np.random.default_rng(1)
    deadlines: list[int] = []
    now = 0
    while len(deadlines) < 200:
        now += int(rng.integers(5, 35))  # wakes up early or late, never on the grid
        deadlines += [p.deadline_ms for p in playout.pull(now).packets]
    first = deadlines[0]
    assert deadlines == [first + 20 * k for k in range(200)]
    assert now - deadlines[-1] < 35  # the last packet went out on time: no accumulated drift


def test_a_late_transport_catches_up_in_a_burst_and_drops_packets_beyond_max_late() -> None:
    playout = Playout(SETTINGS)
    for i in range(10):
        playout.push(chunk(i), epoch=0, step_index=i)
    assert len(playout.pull(0).packets) == 1
    burst = playout.pull(100)  # five slots due: 20..100, all within 200 ms
    assert [p.deadline_ms for p in burst.packets] == [20, 40, 60, 80, 100]
    late = playout.pull(500)  # slots 120..500: those more than 200 ms overdue are dropped
    assert [p.deadline_ms for p in late.packets] == list(range(300, 501, 20))
    assert playout.late_packets_dropped == 9
    assert [p.deadline_ms for p in playout.pull(520).packets] == [520]


def test_underrun_reanchors_on_the_grid_when_audio_comes_back() -> None:
    playout = Playout(SETTINGS)
    playout.push(chunk(0), epoch=0, step_index=0)
    packets, _ = pull_every_20ms(playout, 0, 200)
    assert [p.deadline_ms for p in packets] == [0, 20, 40, 60]
    playout.push(chunk(1), epoch=0, step_index=1)  # the engine was slow
    assert playout.next_deadline_ms(213) == 220
    packets, _ = pull_every_20ms(playout, 220, 300)
    assert [p.deadline_ms for p in packets] == [220, 240, 260, 280]


def test_old_epoch_chunks_are_dropped_and_a_newer_epoch_supersedes() -> None:
    playout = Playout(SETTINGS, epoch=3)
    assert not playout.push(chunk(1), epoch=2, step_index=0)
    assert playout.stale_frames_dropped == 1
    assert playout.push(chunk(2), epoch=3, step_index=0)
    out = playout.pull(0)
    assert out.events == [AgentAudioStarted(at_ms=0, epoch=3)]
    assert playout.push(chunk(3), epoch=4, step_index=0)  # a newer response replaces the queue
    out = playout.pull(20)
    assert [int(p.samples[0]) for p in out.packets] == [30]
    assert out.events[0] == AgentAudioFinished(at_ms=0, epoch=3, reason=FinishReason.INTERRUPTED, played_ms=20)
    assert out.events[1] == AgentAudioStarted(at_ms=20, epoch=4)


def test_finished_after_drain_waits_for_the_output_latency() -> None:
    playout = Playout(SETTINGS)
    playout.push(chunk(0), epoch=0, step_index=0)
    playout.mark_end(0)
    _, events = pull_every_20ms(playout, 0, 60)  # last packet handed out at 60
    assert events == [AgentAudioStarted(at_ms=0, epoch=0)]
    assert playout.next_deadline_ms(60) == 60 + 20 + 60
    assert playout.pull(139).events == []
    assert playout.pull(140).events == [AgentAudioFinished(at_ms=140, epoch=0, reason=FinishReason.COMPLETED,
                                                           played_ms=80)]
    assert playout.pull(160).events == []  # once only


def test_no_finish_without_mark_end_until_stall_timeout() -> None:
    playout = Playout(SETTINGS)
    playout.push(chunk(0), epoch=0, step_index=0)
    pull_every_20ms(playout, 0, 60)
    assert playout.pull(1000).events == []  # the engine may just be slow
    assert playout.pull(3139).events == []
    (finished,) = playout.pull(3140).events
    assert isinstance(finished, AgentAudioFinished) and finished.reason is FinishReason.STALLED
    playout.push(chunk(1), epoch=0, step_index=1)  # it came back after all
    assert playout.pull(3160).events == [AgentAudioStarted(at_ms=3160, epoch=0)]


def test_confirmed_playback_finishes_only_when_the_transport_says_so() -> None:
    playout = Playout(SETTINGS)
    playout.push(chunk(0), epoch=0, step_index=0)
    playout.mark_end(0)
    packets, _ = pull_every_20ms(playout, 0, 60)
    playout.mark_played(packets[1].sequence)
    assert playout.pull(500).events == []
    playout.mark_played(packets[3].sequence)
    assert isinstance(playout.pull(520).events[0], AgentAudioFinished)
    with pytest.raises(ValueError, match="not handed out"):
        playout.mark_played(99)


def test_clear_reports_whole_frames_handed_out_when_the_line_cannot_take_audio_back() -> None:
    playout = Playout(SETTINGS, epoch=1)
    for i in range(5):
        playout.push(chunk(i), epoch=1, step_index=i, text=f"w{i} ")
    pull_every_20ms(playout, 0, 180)  # 10 packets = 2.5 frames handed out
    cleared = playout.clear(185, new_epoch=2)
    assert (cleared.epoch, cleared.played_frames, cleared.played_ms) == (1, 2, 200)
    assert cleared.played_text == "w0 w1 "
    assert cleared.dropped_frames == 3
    out = playout.pull(200)
    assert out.packets == []  # audio stops at once
    assert out.events == [AgentAudioFinished(at_ms=185, epoch=1, reason=FinishReason.INTERRUPTED, played_ms=200)]
    assert not playout.push(chunk(9), epoch=1, step_index=5)  # late chunks of the old epoch
    assert playout.pull(220).packets == []


def test_clear_with_a_flushable_sink_counts_only_audio_that_reached_the_ear() -> None:
    playout = Playout(PlayoutSettings(output_latency_ms=60, unplayed_audio_is_flushed=True))
    for i in range(5):
        playout.push(chunk(i), epoch=0, step_index=i)
    pull_every_20ms(playout, 0, 180)  # handed out at 0..180; at the ear from 60..240
    cleared = playout.clear(185, new_epoch=1)
    assert cleared.played_ms == 140  # packets handed out at 0..120
    assert cleared.played_frames == 1


def test_clear_uses_transport_confirmations_when_available() -> None:
    playout = Playout(SETTINGS)
    for i in range(3):
        playout.push(chunk(i), epoch=0, step_index=i)
    packets, _ = pull_every_20ms(playout, 0, 200)
    playout.mark_played(packets[6].sequence)
    cleared = playout.clear(210, new_epoch=1)
    assert (cleared.played_frames, cleared.played_ms) == (1, 140)


def test_complaint_no_audio_after_barge_in() -> None:
    playout = Playout(SETTINGS)
    coordinator = BargeInCoordinator(playout)
    epoch = coordinator.begin_response()
    for i in range(25):  # two seconds of answer already queued
        playout.push(chunk(i % 100), epoch=epoch, step_index=i)
    pull_every_20ms(playout, 0, 400)
    interruption = coordinator.barge_in(410)
    assert interruption.cleared.epoch == epoch and interruption.new_epoch == epoch + 1
    assert playout.epoch == interruption.new_epoch
    # The engine is still producing the old answer for a moment: none of it reaches the caller.
    for i in range(25, 30):
        assert not playout.push(chunk(i), epoch=epoch, step_index=i)
    packets, events = pull_every_20ms(playout, 420, 2000)
    assert packets == []
    assert playout.queued_ms == 0
    assert [type(e) for e in events] == [AgentAudioFinished]
    # The next answer plays normally.
    next_epoch = coordinator.begin_response()
    assert next_epoch == interruption.new_epoch + 1
    playout.push(chunk(7), epoch=next_epoch, step_index=0)
    assert len(playout.pull(2020).packets) == 1


def test_complaint_history_keeps_only_words_the_caller_heard() -> None:
    playout = Playout(SETTINGS)
    coordinator = BargeInCoordinator(playout)
    epoch = coordinator.begin_response()
    words = ["Your ", "flight ", "leaves ", "at ", "nine ", "tomorrow ", "morning."]
    for i, word in enumerate(words):
        playout.push(chunk(i), epoch=epoch, step_index=i, text=word)
    pull_every_20ms(playout, 0, 230)  # 12 packets = 3 frames handed out
    cleared = coordinator.barge_in(235).cleared
    assert cleared.played_frames == 3
    assert cleared.played_text == "Your flight leaves "


def test_bad_input_is_rejected_precisely() -> None:
    playout = Playout(SETTINGS)
    with pytest.raises(ValueError, match="1920 samples"):
        playout.push(np.zeros(480, dtype=np.int16), epoch=0, step_index=0)
    with pytest.raises(ValueError, match="int16"):
        playout.push(np.zeros(1920, dtype=np.float32), epoch=0, step_index=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="newer epoch"):
        playout.clear(0, new_epoch=0)
    playout.push(chunk(0), epoch=0, step_index=0)
    playout.mark_end(0)
    with pytest.raises(ValueError, match="after mark_end"):
        playout.push(chunk(1), epoch=0, step_index=1)
    with pytest.raises(ValueError, match="multiple of packet_ms"):
        PlayoutSettings(frame_ms=70)


def test_hold_stops_handing_out_and_resume_continues_without_loss() -> None:
    playout = Playout(SETTINGS)
    for i in range(3):
        playout.push(chunk(i), epoch=0, step_index=i)
    first, _ = pull_every_20ms(playout, 0, 60)  # four packets: frame 0
    playout.hold()
    assert playout.held and playout.next_deadline_ms(80) is None
    held, events = pull_every_20ms(playout, 80, 400)
    assert held == [] and not any(isinstance(e, AgentAudioFinished) for e in events)
    playout.resume()
    rest, _ = pull_every_20ms(playout, 420, 600)
    values = [int(p.samples[0]) for p in first + rest]
    assert values == [i * 10 + k for i in range(3) for k in range(4)]  # nothing lost or repeated
    assert rest[0].deadline_ms == 420  # a fresh slot on the grid


def test_clear_while_held_reports_only_what_was_handed_out() -> None:
    playout = Playout(SETTINGS)
    coordinator = BargeInCoordinator(playout)
    epoch = coordinator.begin_response()
    for i in range(4):
        playout.push(chunk(i), epoch=epoch, step_index=i)
    pull_every_20ms(playout, 0, 140)  # 8 packets = 2 frames handed out
    playout.hold()
    pull_every_20ms(playout, 160, 300)
    interruption = coordinator.barge_in(320)
    assert interruption.cleared.played_frames == 2
    assert not playout.held


def test_a_report_that_never_comes_does_not_keep_the_agent_speaking() -> None:
    playout = Playout(SETTINGS)
    playout.push(chunk(0), epoch=0, step_index=0)
    playout.mark_end(0)
    packets, _ = pull_every_20ms(playout, 0, 60)
    playout.mark_played(packets[1].sequence)  # the last two packets are never reported (dropped on the way)
    assert playout.pull(1000).events == []
    late = playout.pull(60 + SETTINGS.output_latency_ms + SETTINGS.packet_ms + SETTINGS.report_grace_ms).events
    assert isinstance(late[0], AgentAudioFinished) and late[0].played_ms == 40


def test_dropped_audio_is_counted_for_the_metric() -> None:
    """Late packets and stale frames reach lfmcall_dropped_frames_total through the call's summary."""
    from agent.metrics import Metrics
    from agent.session import CallSummary

    playout = Playout(SETTINGS)
    for i in range(10):
        playout.push(chunk(i), epoch=1, step_index=i)
    playout.pull(0)
    playout.pull(500)  # slots 20..280 are more than 200 ms overdue
    playout.push(chunk(0), epoch=0, step_index=0)  # an older epoch's chunk: dropped on arrival
    assert playout.dropped_counts() == {"playout_late_packet": 14, "playout_stale_frame": 1}
    metrics = Metrics()
    metrics.observe_call(CallSummary(call_id="c", started_at=0.0, dropped_frames=playout.dropped_counts()), "sip")
    text = metrics.render().decode()
    assert 'lfmcall_dropped_frames_total{where="playout_late_packet"} 14.0' in text
    assert 'lfmcall_dropped_frames_total{where="playout_stale_frame"} 1.0' in text
