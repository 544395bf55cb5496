"""CallSession: one call, from a transport's 20 ms packets to the engine and back.

Theory of operation
-------------------
Three tasks per call, in the call's own task group (one call's failure ends that call only):

* inbound: each caller packet is resampled to 16 kHz, passed through the echo gate (the agent's
  own voice coming back down the line is removed or marked), scored by the VAD and handed to
  TurnTaking. While the caller holds the floor, the raw 16 kHz audio (from ``speech_preroll_ms``
  before the detected onset) is cut into 80 ms frames and fed to the engine.
* outbound: a ticker on absolute 20 ms deadlines from call start pulls due packets from Playout
  (or silence), sends them through the transport and feeds them to the echo gate as reference.
* engine: agent chunks of the current turn epoch go to Playout; a finished reply marks its end.

TurnTaking's events drive everything else: EndOfTurn starts a reply in a new epoch;
InterruptionSuspected holds the agent's audio at once (fast barge-in at the caller's ear);
FalseInterruption resumes it where it stopped; BargeIn clears Playout (a new epoch, so late chunks
of the old reply are dropped) and tells the engine how many frames the caller heard, which is what
the conversation keeps.

Timelines: VAD and echo gate work on the audio's own sample-count timelines (caller audio received,
agent audio sent), so the echo path is a constant offset; TurnTaking works on wall-clock ms from
call start. VAD times are mapped to wall time by the age of the audio they refer to.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from agent.audio import MODEL_INPUT_RATE, MODEL_OUTPUT_RATE, PcmFrame, float32_to_int16
from agent.echo_gate import EchoGate
from agent.events import (
    AgentFinishedSpeaking,
    AgentStartedSpeaking,
    BargeIn,
    EndOfTurn,
    EndOfTurnPredicted,
    FalseInterruption,
    InterruptionSuspected,
    ResponseTimedOut,
    SpeechStarted,
    TurnConfirmed,
    TurnContinued,
    TurnEvent,
    VadEvent,
)
from agent.framer import Packetizer
from agent.log import event, set_call_id
from agent.playout import BargeInCoordinator, Interruption, Playout, PlayoutSettings
from agent.resample import StreamingResampler
from agent.transport import AudioReceived, CallTransport, DtmfReceived, HungUp, Int16Array
from agent.turn_end import TurnEndDetector, policy_from_settings
from agent.turn_taking import TurnState, TurnTaking, TurnTakingSettings
from agent.vad import VadSettings as TrackerSettings
from agent.vad import VadState, VadTracker, VoiceDetector
from agent.watermark import CallWatermark, MarkOptions
from config.schema import Settings

if TYPE_CHECKING:
    from model.engine import CallConversation, ReplyFinished

log = logging.getLogger(__name__)

PACKET_MS = 20
FRAME_SAMPLES_16K = 1280
PREROLL_KEEP_MS = 3000
MAX_AUDIO_LAG_MS = 1000
OFFSET_WINDOW_MS = 2000


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
    end_of_turns: list[int] = field(default_factory=list)
    vad_segments: list[tuple[int, int]] = field(default_factory=list)
    dtmf: str = ""
    ended_by: str = ""
    error: str | None = None
    engine_errors: int = 0
    withdrawn_answers: int = 0  # answers started early, withdrawn because the caller only paused
    false_starts: int = 0  # answers released speculatively, withdrawn because the caller went on
    mark: CallWatermark | None = None  # what the agent's audio was watermarked with (agent.watermark)


@dataclass(frozen=True)
class SessionOptions:
    greeting: str = ""
    echo_gate: bool = True
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
            ),
            turn_end=functools.partial(policy_from_settings, settings),
            vad=TrackerSettings(start_threshold=v.start_threshold, stop_threshold=v.stop_threshold,
                                start_ms=v.start_ms, stop_ms=v.stop_ms),
            playout=PlayoutSettings(sample_rate=MODEL_OUTPUT_RATE, packet_ms=settings.audio.packet_ms,
                                    output_latency_ms=settings.audio.output_latency_ms),
            mark=MarkOptions.from_settings(settings),
        )


class CallSession:
    """One call. Construct, then `await run()`; it returns the call's summary when the call ends."""

    def __init__(self, call_id: str, transport: CallTransport, conversation: CallConversation,
                 detector: VoiceDetector, options: SessionOptions | None = None,
                 clock: Callable[[], float] | None = None, external_id: str = "") -> None:
        self.call_id = call_id
        self.transport = transport
        self.conv = conversation
        self.options = options or SessionOptions()
        self._clock = clock or time.monotonic
        self._t0 = self._clock()
        rate = transport.sample_rate
        turn_end = self.options.turn_end
        self.turns = TurnTaking(self.options.turn, turn_end() if turn_end is not None else None)
        self.vad = VadTracker(detector, self.options.vad)
        self.gate = EchoGate() if self.options.echo_gate else None
        self.playout = Playout(self.options.playout)
        self.coordinator = BargeInCoordinator(self.playout)
        self._in_resampler = StreamingResampler(rate, MODEL_INPUT_RATE)
        # the echo gate's reference at 16 kHz: what was sent, when the transport runs at 16 kHz
        self._ref_resampler = None if rate == MODEL_INPUT_RATE else \
            StreamingResampler(MODEL_OUTPUT_RATE, MODEL_INPUT_RATE)
        self._packetizer = Packetizer(MODEL_OUTPUT_RATE, out_rate=rate, packet_ms=PACKET_MS)
        self._silence_24k = np.zeros(MODEL_OUTPUT_RATE * PACKET_MS // 1000, np.int16)
        self.summary = CallSummary(call_id, time.time(), external_id)
        self.mark = self.summary.mark = self.options.mark.for_call(call_id)
        self._in_samples = 0  # caller audio received, in 16 kHz samples
        self._out_samples = 0  # agent audio sent, in 16 kHz samples (reference timeline)
        self._out_24k = 0  # agent audio sent, in 24 kHz samples
        self._held_since: int | None = None
        self._audio_offset: int | None = None  # audio time minus wall time, least delayed packet
        self._offsets: deque[tuple[int, int]] = deque()  # (wall ms, offset) of recent packets
        self._tt_last = 0
        self._dtmf_digits = ""
        self._dtmf_last_ms = 0
        self._early: TurnMetrics | None = None  # answer started on EndOfTurnPredicted, held
        self._pause_frames: list[Int16Array] = []  # caller audio since then (fed if the turn goes on)
        self._recent: deque[tuple[int, Int16Array]] = deque()  # (16 kHz start sample, samples)
        self._feeding = False
        self._feed_buf = np.zeros(0, np.int16)
        self._turn_by_epoch: dict[int, TurnMetrics] = {}
        self._text_by_epoch: dict[int, str] = {}
        self._vad_start: int | None = None
        self._ended = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- time ----------------------------------------------------------------------------------------
    def now_ms(self) -> int:
        return int((self._clock() - self._t0) * 1000)

    # -- main ----------------------------------------------------------------------------------------
    async def run(self) -> CallSummary:
        set_call_id(self.call_id)
        event(log, "call.started", rate=self.transport.sample_rate)
        try:
            if self.options.greeting:
                epoch = self.coordinator.begin_response()
                self._turn_by_epoch[epoch] = TurnMetrics(epoch, None, None)
                self.summary.turns.append(self._turn_by_epoch[epoch])
                self.conv.greet(self.options.greeting, tag=epoch)
            async with asyncio.TaskGroup() as tg:
                self._tasks = [tg.create_task(self._inbound()), tg.create_task(self._outbound()),
                               tg.create_task(self._engine_events())]
                await self._ended.wait()
                for task in self._tasks:
                    task.cancel()
        except* Exception as group:
            self.summary.error = "; ".join(repr(e) for e in group.exceptions)
            event(log, "call.failed", logging.ERROR, error=self.summary.error)
            with contextlib.suppress(Exception):
                self.transport.hang_up("agent error")
        finally:
            self.conv.close()
            self.summary.duration_ms = self.now_ms()
            event(log, "call.ended", by=self.summary.ended_by or "error", duration_ms=self.summary.duration_ms,
                  turns=len(self.summary.turns), barge_ins=len(self.summary.barge_ins))
        return self.summary

    def end(self, reason: str) -> None:
        if not self._ended.is_set():
            self.summary.ended_by = reason
            self._ended.set()

    # -- inbound -----------------------------------------------------------------------------------------
    async def _inbound(self) -> None:
        while True:
            ev = await self.transport.receive()
            if isinstance(ev, AudioReceived):
                self._on_audio(ev.samples)
            elif isinstance(ev, DtmfReceived):
                self.summary.dtmf += ev.digit
                event(log, "call.dtmf", digit=ev.digit)
                self._on_dtmf(ev.digit, self.now_ms())
            elif isinstance(ev, HungUp):
                self.end(f"caller: {ev.reason}")
                return

    def _on_audio(self, samples: Int16Array) -> None:
        now = self.now_ms()
        pcm = np.asarray(self._in_resampler.process(samples), dtype=np.int16)
        if pcm.size == 0:
            return
        start = self._in_samples
        self._in_samples += pcm.size
        start_ms = start * 1000 // MODEL_INPUT_RATE
        end_ms = self._in_samples * 1000 // MODEL_INPUT_RATE
        self._recent.append((start, pcm))
        while self._recent and self._recent[0][0] < self._in_samples - PREROLL_KEEP_MS * MODEL_INPUT_RATE // 1000:
            self._recent.popleft()
        heard: Int16Array | np.ndarray = pcm
        if self.gate is not None:
            heard = self.gate.process(pcm, start_ms).cleaned
        # audio time minus wall time; the largest recent one is the least delayed packet. Recent only:
        # a transport that conceals losses or drops late packets moves the audio clock against the wall
        offset = end_ms - now
        self._offsets.append((now, offset))
        while self._offsets and self._offsets[0][0] < now - OFFSET_WINDOW_MS:
            self._offsets.popleft()
        self._audio_offset = max(o for _, o in self._offsets)
        tt = self._turn_time(now)
        for vad_event in self.vad.feed(heard, start_ms):
            self._track_vad(vad_event)
            at = max(0, min(tt, vad_event.at_ms - self._audio_offset))
            self._act(self.turns.handle(dataclasses.replace(vad_event, at_ms=at), tt), now)
        # the caller's own audio (not the echo gate's output, which zeroes quiet blocks and so the
        # contour's fade), with the VAD's state, which was decided on the gated audio
        self.turns.audio(pcm, self.vad.state is VadState.SPEAKING, tt)
        self._act(self.turns.tick(tt), now)
        if self._feeding:
            self._feed(pcm)
        elif self._early is not None:
            self._pause_frames.append(pcm)

    def _turn_time(self, now: int) -> int:
        """TurnTaking's clock: the caller audio processed so far (on the wall timeline), so that a
        stalled event loop cannot turn a backlog of unprocessed silence into "speech still going";
        it never lags the wall clock by more than MAX_AUDIO_LAG_MS (a transport that stops sending
        in silence, e.g. Opus DTX, must not stop time)."""
        audio_now = now if self._audio_offset is None else \
            self._in_samples * 1000 // MODEL_INPUT_RATE - self._audio_offset
        t = max(audio_now, now - MAX_AUDIO_LAG_MS, self._tt_last)
        self._tt_last = t
        return t

    def _track_vad(self, vad_event: VadEvent) -> None:
        name = type(vad_event).__name__
        at = vad_event.at_ms - (self._audio_offset or 0)
        if name == "VadSpeechStarted":
            self._vad_start = at
        elif name == "VadSpeechStopped" and self._vad_start is not None:
            self.summary.vad_segments.append((self._vad_start, at))
            self._vad_start = None

    def _start_feeding(self, from_ms: int) -> None:
        """Feed the engine from `speech_preroll_ms` before `from_ms` (turn time) on."""
        audio_ms = from_ms + (self._audio_offset or 0) - self.options.speech_preroll_ms
        first = audio_ms * MODEL_INPUT_RATE // 1000
        parts = []
        for start, pcm in self._recent:
            end = start + pcm.size
            if end <= first:
                continue
            parts.append(pcm[max(0, first - start):])
        self._feeding = True
        self._feed_buf = np.zeros(0, np.int16)
        if parts:
            self._feed(np.concatenate(parts))

    def _feed(self, pcm: Int16Array) -> None:
        buf = np.concatenate([self._feed_buf, pcm]) if self._feed_buf.size else pcm
        whole = buf.size // FRAME_SAMPLES_16K
        for i in range(whole):
            self.conv.feed(buf[i * FRAME_SAMPLES_16K : (i + 1) * FRAME_SAMPLES_16K])
        self._feed_buf = buf[whole * FRAME_SAMPLES_16K :].copy()

    # -- turn events ----------------------------------------------------------------------------------------
    def _act(self, events: list[TurnEvent], now: int) -> None:
        for ev in events:
            if isinstance(ev, SpeechStarted):
                if not self._feeding:
                    self._start_feeding(ev.at_ms)
                event(log, "turn.speech_started", at_ms=ev.at_ms)
            elif isinstance(ev, EndOfTurnPredicted):
                # start the answer now, hold its audio until the end of turn is confirmed
                self._feeding = False
                self._pause_frames = []
                self._early = self._start_answer(ev.speech_ended_ms, None)
                self.playout.hold()
                event(log, "turn.end_predicted", at_ms=ev.at_ms, epoch=self._early.epoch)
            elif isinstance(ev, TurnContinued):
                if ev.false_start:  # the answer may be playing: stop it at the caller's ear too
                    self.summary.false_starts += 1
                    self._flush_transport()
                self._withdraw_early_answer(now)
            elif isinstance(ev, TurnConfirmed):  # the speculative answer stays
                self._early = None
                self._pause_frames = []
            elif isinstance(ev, EndOfTurn):
                self._feeding = False
                if self._early is not None:
                    metrics = self._early
                    self.playout.resume()
                else:
                    metrics = self._start_answer(ev.speech_ended_ms, ev.at_ms)
                # kept (with the caller's audio from now on) while the end is speculative: withdrawable
                self._early = metrics if ev.speculative else None
                if not ev.speculative:
                    self._pause_frames = []
                metrics.end_of_turn_ms = ev.at_ms
                self.summary.end_of_turns.append(ev.at_ms)
                event(log, "turn.end", at_ms=ev.at_ms, speech_ended_ms=ev.speech_ended_ms, epoch=metrics.epoch,
                      reason=ev.reason.value, required_silence_ms=self.turns.detector.required_silence_ms(ev.at_ms))
            elif isinstance(ev, InterruptionSuspected):
                self.playout.hold()
                self._flush_transport()
                self._held_since = now
                event(log, "turn.interruption_suspected", at_ms=ev.at_ms)
            elif isinstance(ev, FalseInterruption):
                self.playout.resume()
                self._held_since = None
                self.summary.ignored_interruptions += 1
                event(log, "turn.false_interruption", voiced_ms=ev.voiced_ms)
            elif isinstance(ev, BargeIn):
                self._barge_in(ev, now)
            elif isinstance(ev, ResponseTimedOut):
                event(log, "turn.response_timeout", logging.WARNING, end_of_turn_ms=ev.end_of_turn_ms)
            elif isinstance(ev, (AgentStartedSpeaking, AgentFinishedSpeaking)):
                event(log, "turn.agent_" + ("started" if isinstance(ev, AgentStartedSpeaking) else "finished"),
                      at_ms=ev.at_ms)

    def _flush_transport(self) -> None:
        """Drop agent audio already queued inside the transport (SIP, WebRTC), where it can."""
        flush = getattr(self.transport, "flush", None)
        if callable(flush):
            flush()

    def _start_answer(self, speech_ended_ms: int, end_of_turn_ms: int | None) -> TurnMetrics:
        epoch = self.coordinator.begin_response()
        metrics = TurnMetrics(epoch, speech_ended_ms, end_of_turn_ms)
        self._turn_by_epoch[epoch] = metrics
        self.summary.turns.append(metrics)
        self.conv.respond(tag=epoch)
        return metrics

    # -- DTMF: keys stop the agent, the digits reach the model as text --------------------------------------
    def _on_dtmf(self, digit: str, now: int) -> None:
        if self._early is not None:  # keys during a pause: the caller's turn goes on
            self._withdraw_early_answer(now)
        elif self.turns.agent_audio_playing or self.turns.state is TurnState.AGENT_THINKING:
            # callers key ahead of a prompt: stop the agent now, keep what was heard
            interruption = self._stop_agent(now)
            self._flush_transport()
            turn = self._turn_by_epoch.get(interruption.cleared.epoch)
            if turn is not None:
                turn.interrupted = True
            future = self.conv.request_interrupt(interruption.cleared.played_frames)
            asyncio.get_running_loop().create_task(self._interrupt_result(future, turn))
        self._dtmf_digits += digit
        self._dtmf_last_ms = now
        if digit == "#":
            self._end_dtmf_input(now)

    def _end_dtmf_input(self, now: int) -> None:
        """The digits go into the caller's turn; the agent answers unless the caller is speaking."""
        digits, self._dtmf_digits = self._dtmf_digits, ""
        if not digits:
            return
        self.conv.add_text(f"DTMF: {digits}")
        event(log, "call.dtmf_input", digits=digits)
        if self.turns.state is not TurnState.CALLER_SPEAKING:  # else the turn ends by silence as usual
            self._feeding = False
            self._start_answer(self._dtmf_last_ms, now)
            self.summary.end_of_turns.append(now)

    def _withdraw_early_answer(self, now: int) -> None:
        """The caller only paused: drop the held answer, reopen the turn, feed the pause and go on."""
        early = self._early
        if early is None:
            return
        self._early = None
        self.conv.retract()
        self._stop_agent(now)  # new epoch: the held audio and late chunks are dropped
        self.summary.turns.remove(early)
        self.summary.withdrawn_answers += 1
        self._feeding = True
        self._feed_buf = np.zeros(0, np.int16)
        for pcm in self._pause_frames:
            self._feed(pcm)
        self._pause_frames = []
        event(log, "turn.continued", withdrawn_epoch=early.epoch)

    def _stop_agent(self, now: int) -> Interruption:
        """Clear Playout (new epoch); the watermark's count keeps only what the caller heard."""
        interruption = self.coordinator.barge_in(now)
        self.mark.truncate(interruption.cleared.epoch, interruption.cleared.played_frames)
        return interruption

    def _barge_in(self, ev: BargeIn, now: int) -> None:
        held_at = self._held_since if self.playout.held and self._held_since is not None else now
        self._held_since = None
        interruption = self._stop_agent(now)
        cleared = interruption.cleared
        self._flush_transport()
        metrics = BargeInMetrics(ev.speech_started_ms, now, held_at, cleared.played_frames)
        self.summary.barge_ins.append(metrics)
        turn = self._turn_by_epoch.get(cleared.epoch)
        if turn is not None:
            turn.interrupted = True
        # submitted now, so that it reaches the engine before the interrupting speech is fed
        future = self.conv.request_interrupt(cleared.played_frames)
        asyncio.get_running_loop().create_task(self._interrupt_result(future, turn))
        event(log, "turn.barge_in", speech_started_ms=ev.speech_started_ms, played_frames=cleared.played_frames)

    async def _interrupt_result(self, future: asyncio.Future[ReplyFinished | None], turn: TurnMetrics | None) -> None:
        result = await future
        if result is not None and turn is not None:
            turn.text_heard = result.text
            turn.frames_heard = result.frames

    # -- engine -----------------------------------------------------------------------------------------------
    async def _engine_events(self) -> None:
        from model.engine import AgentAudio, EngineError, ReplyFinished

        while True:
            ev = await self.conv.events.get()
            if isinstance(ev, AgentAudio):
                old = self._text_by_epoch.get(ev.tag, "")
                self._text_by_epoch[ev.tag] = ev.text
                live = self._turn_by_epoch.get(ev.tag)
                if live is not None and not live.text_heard:
                    live.text_generated = ev.text  # the transcript so far, while the reply plays
                delta = ev.text[len(old):] if ev.text.startswith(old) else ev.text
                pcm = float32_to_int16(ev.pcm)
                if ev.tag >= self.playout.epoch:  # older epochs are dropped by Playout, unheard
                    pcm = self.mark.embed(pcm, ev.tag, ev.frame_index)
                self.playout.push(pcm, ev.tag, ev.frame_index, delta)
            elif isinstance(ev, ReplyFinished):
                turn = self._turn_by_epoch.get(ev.tag)
                if turn is not None and not ev.interrupted:
                    turn.text_generated = turn.text_heard = ev.text
                    turn.frames_heard = ev.frames
                if not ev.interrupted:
                    self.playout.mark_end(ev.tag)
                    if ev.frames == 0:
                        now = self.now_ms()
                        self._act(self.turns.agent_response_empty(self._turn_time(now)), now)
            elif isinstance(ev, EngineError):
                self.summary.engine_errors += 1
                event(log, "engine.error", logging.ERROR, message=ev.message)
                self.playout.mark_end(self.coordinator.epoch)
                now = self.now_ms()
                self._act(self.turns.agent_response_empty(self._turn_time(now)), now)

    # -- outbound ---------------------------------------------------------------------------------------------
    async def _outbound(self) -> None:
        k = 0
        while True:
            k += 1
            deadline = self._t0 + k * PACKET_MS / 1000
            delay = deadline - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:  # the loop was stalled for a long time: skip ahead, keep the grid
                k += int(-delay * 1000 // PACKET_MS)
            now = self.now_ms()
            out = self.playout.pull(now)
            if out.packets:
                for p in out.packets:
                    self._send(p.samples, now, p.epoch)
            else:
                self._send(self._silence_24k, now, None)
            if self._dtmf_digits and now - self._dtmf_last_ms >= self.options.dtmf_end_of_input_ms:
                self._end_dtmf_input(now)
            tt = self._turn_time(now)
            for pe in out.events:
                self._act(self.turns.handle(pe, tt), now)
            self._act(self.turns.tick(tt), now)

    def _send(self, samples_24k: Int16Array, now: int, epoch: int | None) -> None:
        chunk = PcmFrame(samples_24k, MODEL_OUTPUT_RATE, self._out_24k)
        self._out_24k += samples_24k.size
        packets = self._packetizer.push(chunk)
        for packet in packets:
            self.transport.send(packet.samples)
        if self._ref_resampler is None:
            ref = np.concatenate([p.samples for p in packets]) if packets else np.zeros(0, np.int16)
        else:
            ref = np.asarray(self._ref_resampler.process(samples_24k), dtype=np.int16)
        if self.gate is not None and ref.size:
            self.gate.push_reference(ref, self._out_samples * 1000 // MODEL_INPUT_RATE)
        self._out_samples += ref.size
        if epoch is not None:
            turn = self._turn_by_epoch.get(epoch)
            if turn is not None and turn.first_audio_sent_ms is None:
                turn.first_audio_sent_ms = now
