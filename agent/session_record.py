"""What one call keeps: its options (``SessionOptions``) and its record (``CallSummary``, one
``TurnMetrics`` per agent reply, one ``BargeInMetrics`` per barge-in). Plain data, no behaviour:
``agent.session_core`` fills it in, reports and the HTTP events read it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.audio import MODEL_OUTPUT_RATE
from agent.playout import PlayoutSettings
from agent.turn_end import TurnEndDetector, policy_from_settings
from agent.turn_taking import TurnTakingSettings
from agent.vad import VadSettings as TrackerSettings
from agent.watermark import CallWatermark, MarkOptions
from config.schema import Settings

# -- the call's record ------------------------------------------------------------------------------


@dataclass
class TurnMetrics:
    """One agent reply as the session saw it (ms from call start, wall clock)."""

    epoch: int
    speech_ended_ms: int | None
    end_of_turn_ms: int | None
    first_audio_sent_ms: int | None = None
    text_generated: str = ""
    text_heard: str = ""
    frames_heard: int = 0
    interrupted: bool = False

    @property
    def response_latency_ms(self) -> int | None:
        if self.speech_ended_ms is None or self.first_audio_sent_ms is None:
            return None
        return self.first_audio_sent_ms - self.speech_ended_ms


@dataclass
class BargeInMetrics:
    speech_started_ms: int
    detected_ms: int
    stopped_ms: int  # when the agent's audio stopped leaving (held at suspicion, or cleared)
    played_frames: int = 0


@dataclass
class CallSummary:
    call_id: str
    started_at: float
    external_id: str = ""  # the transport's own id of the call (e.g. the SIP Call-ID)
    duration_ms: int = 0
    turns: list[TurnMetrics] = field(default_factory=list)
    barge_ins: list[BargeInMetrics] = field(default_factory=list)
    ignored_interruptions: int = 0
    onset_holds: int = 0  # the agent held at a voice onset that never became speech (a brief pause)
    end_of_turns: list[int] = field(default_factory=list)
    vad_segments: list[tuple[int, int]] = field(default_factory=list)
    dtmf: str = ""
    ended_by: str = ""
    error: str | None = None
    engine_errors: int = 0
    engine_rejections: int = 0  # commands the engine could not take (queue full): counted, the call goes on
    withdrawn_answers: int = 0  # answers started early, withdrawn because the caller only paused
    false_starts: int = 0  # answers released speculatively, withdrawn because the caller went on
    dropped_frames: dict[str, int] = field(default_factory=dict)  # agent audio never sent, by where
    mark: CallWatermark | None = None  # what the agent's audio was watermarked with (agent.watermark)


@dataclass(frozen=True)
class SessionOptions:
    greeting: str = ""
    echo_gate: bool = True
    feed_cleaned_audio: bool = True  # the engine hears the echo gate's output, not the raw line
    speech_preroll_ms: int = 240
    dtmf_end_of_input_ms: int = 1500
    turn: TurnTakingSettings = field(default_factory=TurnTakingSettings)
    vad: TrackerSettings = field(default_factory=TrackerSettings)
    playout: PlayoutSettings = field(default_factory=PlayoutSettings)
    mark: MarkOptions = field(default_factory=MarkOptions)
    turn_end: Callable[[], TurnEndDetector] | None = None  # a fresh end-of-turn policy per call

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionOptions:
        t, v = settings.turn, settings.vad
        return cls(
            greeting=settings.model.greeting,
            echo_gate=t.echo_gate,
            speech_preroll_ms=t.speech_preroll_ms,
            dtmf_end_of_input_ms=t.dtmf_end_of_input_ms,
            turn=TurnTakingSettings(
                end_of_turn_silence_ms=t.end_of_turn_silence_ms,
                barge_in_min_speech_ms=t.barge_in_min_speech_ms,
                false_interruption_timeout_ms=t.false_interruption_timeout_ms,
                max_turn_ms=t.max_turn_ms,
                response_timeout_ms=t.response_timeout_ms,
                early_response_silence_ms=t.early_response_silence_ms,
                speculative_window_ms=settings.endpointing.speculative_window_ms,
                barge_in_word_ms=t.barge_in_word_ms,
                backchannel_max_ms=t.backchannel_max_ms,
                hold_at_voice_onset=t.hold_at_voice_onset,
                barge_in_gap_ms=t.barge_in_gap_ms,
            ),
            turn_end=functools.partial(policy_from_settings, settings),
            vad=TrackerSettings(start_threshold=v.start_threshold, stop_threshold=v.stop_threshold,
                                start_ms=v.start_ms, stop_ms=v.stop_ms),
            playout=PlayoutSettings(sample_rate=MODEL_OUTPUT_RATE, packet_ms=settings.audio.packet_ms,
                                    output_latency_ms=settings.audio.output_latency_ms),
            mark=MarkOptions.from_settings(settings),
        )
