"""The CallSession core: one call's decisions, sans IO (no clock, no sleeps, no sockets, no tasks).

Theory of operation
-------------------
`SessionCore` is fed what happened and returns what to do. Inputs, each with ``now_ms`` (ms from
call start, from whoever drives it):

* ``start``: the call is up (the greeting is asked for);
* ``caller_audio``: one caller packet at the transport's rate;
* ``dtmf``, ``hung_up``, ``transport_lost``: transport facts;
* ``played(sequence)``: the transport reports agent packets up to ``sequence`` really left
  (SIP: sent on the wire; WebRTC: pulled by the encoder) - the truth of what the caller heard;
* ``engine``: one ``agent.engine_api`` event;
* ``tick``: the outbound grid (every ``packet_ms``): due agent packets, timers.

Outputs are `Action` values, in order: `SendAudio` (one packet for the transport, with its
playout ``sequence`` to report back, None for silence), `ToEngine` (a command), `PauseOutput` /
`ResumeOutput` (hold the transport's queued audio, do not discard it: a suspected interruption may
be a cough), `FlushOutput` (a real barge-in: drop the transport's queue), `HangUp` and `Ended`.

Turn-taking decisions stay in ``agent.turn_taking.TurnTaking``; the core only wires its events.

Transition table (the unit tests in tests/unit/test_session_core.py cover each row)
-----------------------------------------------------------------------------------
=====================  ==========================  =============================================
state / condition      input                       actions / next
=====================  ==========================  =============================================
any                    start, greeting set         Greet(request=epoch); audio of it plays
listening              SpeechStarted               Feed from preroll on (echo-cleaned audio)
caller speaking        EndOfTurnPredicted          Respond early; playout held (answer waits)
early answer held      TurnContinued / DTMF        Retract; pause audio fed; new epoch
early answer held      EndOfTurn                   playout resumed: the held answer plays
caller speaking        EndOfTurn                   Respond(request=new epoch)
caller speaking        EndOfTurn(speculative)      Respond; it plays, still withdrawable
speculative answer     TurnContinued(false_start)  FlushOutput; Retract; the caller's turn goes on
speculative answer     TurnConfirmed               the answer stays (keys now interrupt it)
agent speaking         InterruptionSuspected       playout held, PauseOutput (nothing dropped)
held by suspicion      FalseInterruption           playout resumed, ResumeOutput
agent speaking/held    BargeIn                     FlushOutput; Interrupt(played frames); epoch+1
agent speaking/think.  DTMF                        FlushOutput; Interrupt(played frames)
any                    "#" or DTMF timeout         AddText("DTMF: ..."); Respond unless speaking
any                    ReplyEnded (not cut)        playout.mark_end; empty reply -> listening
any                    EngineFault / Rejected      counted; the reply's end is marked; call goes on
any                    hung_up                     Ended("caller: ...")
any                    transport_lost              HangUp + Ended("transport lost: ...")
=====================  ==========================  =============================================
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections import deque

import numpy as np

from agent.audio import MODEL_INPUT_RATE, MODEL_OUTPUT_RATE, Float32Array, PcmFrame, float32_to_int16
from agent.audio_clock import AudioClock
from agent.dtmf_input import DtmfInput
from agent.echo_gate import EchoGate
from agent.engine_api import (
    AddText,
    AudioChunk,
    EngineCommand,
    EngineEvent,
    EngineFault,
    Feed,
    Greet,
    Interrupt,
    InterruptDone,
    Rejected,
    ReplyEnded,
    Respond,
    Retract,
    TextDelta,
)
from agent.engine_feed import EngineFeed
from agent.events import (
    AgentAudioFinished,
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
from agent.log import event
from agent.playout import BargeInCoordinator, Interruption, Playout
from agent.resample import StreamingResampler
from agent.session_actions import (
    Action,
    Ended,
    FlushOutput,
    HangUp,
    PauseOutput,
    ResumeOutput,
    SendAudio,
    ToEngine,
)
from agent.session_record import BargeInMetrics, CallSummary, SessionOptions, TurnMetrics
from agent.transport import Int16Array
from agent.turn_taking import TurnState, TurnTaking
from agent.vad import VadState, VadTracker, VoiceDetector

log = logging.getLogger("agent.session")

PACKET_MS = 20
CONTROL_REQUESTS = 1 << 20  # request ids of Interrupt commands start here (replies use their epoch)




__all__ = ["Action", "BargeInMetrics", "CallSummary", "Ended", "FlushOutput", "HangUp", "PauseOutput",
           "ResumeOutput", "SendAudio", "SessionCore", "SessionOptions", "ToEngine", "TurnMetrics"]


class SessionCore:
    """One call's state machine. Every method takes ``now_ms`` and returns the actions to take."""

    def __init__(self, call_id: str, engine_call: int, sample_rate: int, detector: VoiceDetector,
                 options: SessionOptions | None = None, external_id: str = "",
                 started_at: float | None = None, playout_reported: bool = False) -> None:
        """`playout_reported`: the transport reports every packet that really left (``played``), so
        only reported audio counts as heard."""
        self.call_id = call_id
        self.engine_call = engine_call
        self.sample_rate = sample_rate
        options = options or SessionOptions()
        if playout_reported:
            options = dataclasses.replace(options, playout=dataclasses.replace(options.playout,
                                                                              playout_reported=True))
        self.options = options
        turn_end = self.options.turn_end
        self.turns = TurnTaking(self.options.turn, turn_end() if turn_end is not None else None)
        self.vad = VadTracker(detector, self.options.vad)
        self.gate = EchoGate() if self.options.echo_gate else None
        self.playout = Playout(self.options.playout)
        self.coordinator = BargeInCoordinator(self.playout)
        self._in_resampler = StreamingResampler(sample_rate, MODEL_INPUT_RATE)
        # the echo gate's reference at 16 kHz: what was sent, when the transport runs at 16 kHz
        self._ref_resampler = None if sample_rate == MODEL_INPUT_RATE else \
            StreamingResampler(MODEL_OUTPUT_RATE, MODEL_INPUT_RATE)
        self._packetizer = Packetizer(MODEL_OUTPUT_RATE, out_rate=sample_rate, packet_ms=PACKET_MS)
        self._silence_24k = np.zeros(MODEL_OUTPUT_RATE * PACKET_MS // 1000, np.int16)
        self.summary = CallSummary(call_id, time.time() if started_at is None else started_at, external_id)
        self.mark = self.summary.mark = self.options.mark.for_call(call_id)
        self._actions: list[Action] = []
        self._requests = itertools.count(CONTROL_REQUESTS)
        self.clock = AudioClock(MODEL_INPUT_RATE)  # caller audio (16 kHz samples) against the wall clock
        self._out_samples = 0  # agent audio sent, in 16 kHz samples (reference timeline)
        self._out_24k = 0  # agent audio sent, in 24 kHz samples
        self._held_since: int | None = None
        self.dtmf_input = DtmfInput(self.options.dtmf_end_of_input_ms)
        self._early: TurnMetrics | None = None  # answer started on EndOfTurnPredicted, held
        self.feed = EngineFeed()  # what of the caller's audio the engine hears
        self._turn_by_epoch: dict[int, TurnMetrics] = {}
        self._text_by_epoch: dict[int, str] = {}
        self._interrupt_turns: dict[int, TurnMetrics | None] = {}
        self._vad_start: int | None = None
        self._answer_epoch: int | None = None  # the reply asked for whose audio has not finished playing
        self._labels: deque[int | None] = deque()  # playout sequences of 24 kHz packets not out yet
        self._pending_delta = ""  # reply text that arrived since the last chunk (goes with the next one)
        self.ended: str | None = None
        self.sent_packets: dict[int, int] = {}  # playout sequence -> epoch, of packets handed out

    # -- inputs ---------------------------------------------------------------------------------------
    def start(self, now_ms: int) -> list[Action]:
        if self.options.greeting:
            epoch = self.coordinator.begin_response()
            self._turn_by_epoch[epoch] = TurnMetrics(epoch, None, None)
            self.summary.turns.append(self._turn_by_epoch[epoch])
            self._submit(Greet(self.engine_call, epoch, self.options.greeting))
            self._answer_epoch = epoch
        return self._take()

    def caller_audio(self, samples: Int16Array, now_ms: int) -> list[Action]:
        if self.ended is None:
            self._on_audio(samples, now_ms)
        return self._take()

    def dtmf(self, digit: str, now_ms: int) -> list[Action]:
        if self.ended is None:
            self.summary.dtmf += digit
            event(log, "call.dtmf", digit=digit)
            self._on_dtmf(digit, now_ms)
        return self._take()

    def hung_up(self, reason: str, now_ms: int) -> list[Action]:
        self._end(f"caller: {reason}", now_ms)
        return self._take()

    def transport_lost(self, reason: str, now_ms: int) -> list[Action]:
        if self.ended is None:
            self._actions.append(HangUp(f"transport lost: {reason}"))
        self._end(f"transport lost: {reason}", now_ms)
        return self._take()

    def end(self, reason: str, now_ms: int) -> list[Action]:
        """The agent's side ends the call (drain, shutdown)."""
        if self.ended is None:
            self._actions.append(HangUp(reason))
        self._end(reason, now_ms)
        return self._take()

    def played(self, sequence: int, now_ms: int) -> list[Action]:
        """Every agent packet up to ``sequence`` has really left the transport."""
        if sequence in self.sent_packets and self.sent_packets[sequence] == self.playout.epoch:
            self.playout.mark_played(sequence)
        return self._take()

    def engine(self, ev: EngineEvent, now_ms: int) -> list[Action]:
        if self.ended is None:
            self._on_engine(ev, now_ms)
        return self._take()

    def tick(self, now_ms: int) -> list[Action]:
        """The outbound 20 ms grid: send what is due (or silence), run the timers."""
        if self.ended is not None:
            return self._take()
        out = self.playout.pull(now_ms)
        if out.packets:
            for p in out.packets:
                self._send(p.samples, now_ms, p.epoch, p.sequence)
        else:
            self._send(self._silence_24k, now_ms, None, None)
        digits = self.dtmf_input.due(now_ms)
        if digits:
            self._end_dtmf_input(digits, now_ms)
        tt = self.clock.turn_time(now_ms)
        for pe in out.events:
            if isinstance(pe, AgentAudioFinished) and pe.epoch == self._answer_epoch:
                self._answer_epoch = None
            self._act(self.turns.handle(pe, tt), now_ms)
        self._act(self.turns.tick(tt), now_ms)
        return self._take()

    # -- internals --------------------------------------------------------------------------------------
    def _take(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    def _submit(self, command: EngineCommand) -> None:
        self._actions.append(ToEngine(command))

    def _end(self, reason: str, now_ms: int) -> None:
        if self.ended is None:
            self.ended = reason
            self.summary.ended_by = reason
            self.summary.duration_ms = now_ms
            self._actions.append(Ended(reason))

    def _on_audio(self, samples: Int16Array, now: int) -> None:
        pcm = np.asarray(self._in_resampler.process(samples), dtype=np.int16)
        if pcm.size == 0:
            return
        start = self.clock.packet(pcm.size, now)
        start_ms = start * 1000 // MODEL_INPUT_RATE
        heard: Int16Array | np.ndarray = pcm
        if self.gate is not None:
            heard = self.gate.process(pcm, start_ms).cleaned
        to_engine = float32_to_int16(np.asarray(heard, np.float32)) \
            if self.gate is not None and self.options.feed_cleaned_audio else pcm
        tt = self.clock.turn_time(now)
        offset = self.clock.offset_ms or 0
        for vad_event in self.vad.feed(heard, start_ms):
            self._track_vad(vad_event)
            at = max(0, min(tt, vad_event.at_ms - offset))
            self._act(self.turns.handle(dataclasses.replace(vad_event, at_ms=at), tt), now)
        # the caller's own audio, not the echo gate's output (which zeroes quiet blocks and so breaks the
        # contour's fade and the backchannel judge's spectra), with the VAD's state decided on the gated audio
        self.turns.audio(pcm, self.vad.state is VadState.SPEAKING, tt)
        self._act(self.turns.tick(tt), now)
        self._feed(self.feed.audio(start, to_engine, hold=self._early is not None))

    def _track_vad(self, vad_event: VadEvent) -> None:
        name = type(vad_event).__name__
        at = vad_event.at_ms - (self.clock.offset_ms or 0)
        if name == "VadSpeechStarted":
            self._vad_start = at
        elif name == "VadSpeechStopped" and self._vad_start is not None:
            self.summary.vad_segments.append((self._vad_start, at))
            self._vad_start = None

    def _feed(self, frames: list[Float32Array]) -> None:
        for frame in frames:
            self._submit(Feed(self.engine_call, frame))

    # -- turn events ----------------------------------------------------------------------------------------
    def _act(self, events: list[TurnEvent], now: int) -> None:
        for ev in events:
            if isinstance(ev, SpeechStarted):
                # from speech_preroll_ms before the onset (turn time -> audio samples)
                audio_ms = ev.at_ms + (self.clock.offset_ms or 0) - self.options.speech_preroll_ms
                self._feed(self.feed.start(audio_ms * MODEL_INPUT_RATE // 1000))
                event(log, "turn.speech_started", at_ms=ev.at_ms)
            elif isinstance(ev, EndOfTurnPredicted):
                # start the answer now, hold its audio until the end of turn is confirmed
                self.feed.hold_from_now()
                self._early = self._start_answer(ev.speech_ended_ms, None)
                self.playout.hold()
                event(log, "turn.end_predicted", at_ms=ev.at_ms, epoch=self._early.epoch)
            elif isinstance(ev, TurnContinued):
                if ev.false_start:  # the answer may be playing: stop it at the caller's ear too
                    self.summary.false_starts += 1
                    self._actions.append(FlushOutput())
                self._withdraw_early_answer(now)
            elif isinstance(ev, TurnConfirmed):  # the speculative answer stays
                self._early = None
                self.feed.drop_held()
            elif isinstance(ev, EndOfTurn):
                self.feed.stop()
                if self._early is not None:
                    metrics = self._early
                    self.playout.resume()
                else:
                    metrics = self._start_answer(ev.speech_ended_ms, ev.at_ms)
                # kept (with the caller's audio from now on) while the end is speculative: withdrawable
                self._early = metrics if ev.speculative else None
                if not ev.speculative:
                    self.feed.drop_held()
                metrics.end_of_turn_ms = ev.at_ms
                self.summary.end_of_turns.append(ev.at_ms)
                event(log, "turn.end", at_ms=ev.at_ms, speech_ended_ms=ev.speech_ended_ms, epoch=metrics.epoch,
                      reason=ev.reason.value, required_silence_ms=self.turns.detector.required_silence_ms(ev.at_ms))
            elif isinstance(ev, InterruptionSuspected):
                if not (self.playout.held and self._held_since is not None):  # (held since the onset: keep it)
                    self.playout.hold()
                    self._actions.append(PauseOutput())  # held, not discarded: it may be a cough
                    self._held_since = now
                event(log, "turn.interruption_suspected", at_ms=ev.at_ms, onset_only=ev.onset_only)
            elif isinstance(ev, FalseInterruption):
                self.playout.resume()
                self._actions.append(ResumeOutput())
                self._held_since = None
                if ev.onset_only:
                    self.summary.onset_holds += 1
                else:
                    self.summary.ignored_interruptions += 1
                event(log, "turn.false_interruption", voiced_ms=ev.voiced_ms, onset_only=ev.onset_only)
            elif isinstance(ev, BargeIn):
                self._barge_in(ev, now)
            elif isinstance(ev, ResponseTimedOut):
                event(log, "turn.response_timeout", logging.WARNING, end_of_turn_ms=ev.end_of_turn_ms)
            elif isinstance(ev, (AgentStartedSpeaking, AgentFinishedSpeaking)):
                event(log, "turn.agent_" + ("started" if isinstance(ev, AgentStartedSpeaking) else "finished"),
                      at_ms=ev.at_ms)

    def _start_answer(self, speech_ended_ms: int, end_of_turn_ms: int | None) -> TurnMetrics:
        epoch = self.coordinator.begin_response()
        metrics = TurnMetrics(epoch, speech_ended_ms, end_of_turn_ms)
        self._turn_by_epoch[epoch] = metrics
        self.summary.turns.append(metrics)
        self._submit(Respond(self.engine_call, epoch))
        self._answer_epoch = epoch
        return metrics

    # -- DTMF: keys stop the agent, the digits reach the model as text --------------------------------------
    def _on_dtmf(self, digit: str, now: int) -> None:
        if self._early is not None:  # keys during a pause: the caller's turn goes on
            self._withdraw_early_answer(now)
        elif self.turns.agent_audio_playing or self.turns.state is TurnState.AGENT_THINKING or \
                self._answer_epoch is not None:  # a reply asked for (e.g. by an earlier "#") and not over
            # callers key ahead of a prompt: stop the agent now, keep what was heard
            interruption = self._stop_agent(now)
            self._actions.append(FlushOutput())
            turn = self._turn_by_epoch.get(interruption.cleared.epoch)
            if turn is not None:
                turn.interrupted = True
            self._interrupt(interruption.cleared.played_frames, turn)
        digits = self.dtmf_input.key(digit, now)
        if digits:
            self._end_dtmf_input(digits, now)

    def _end_dtmf_input(self, digits: str, now: int) -> None:
        """The digits go into the caller's turn; the agent answers unless the caller is speaking."""
        self._submit(AddText(self.engine_call, f"DTMF: {digits}"))
        event(log, "call.dtmf_input", digits=digits)
        if self.turns.state is not TurnState.CALLER_SPEAKING:  # else the turn ends by silence as usual
            self.feed.stop()
            self._start_answer(self.dtmf_input.last_ms, now)
            self.summary.end_of_turns.append(now)

    def _withdraw_early_answer(self, now: int) -> None:
        """The caller only paused: drop the held answer, reopen the turn, feed the pause and go on."""
        early = self._early
        if early is None:
            return
        self._early = None
        self._submit(Retract(self.engine_call))
        self._stop_agent(now)  # new epoch: the held audio and late chunks are dropped
        self.summary.turns.remove(early)
        self.summary.withdrawn_answers += 1
        self._feed(self.feed.resume())
        event(log, "turn.continued", withdrawn_epoch=early.epoch)

    def _stop_agent(self, now: int) -> Interruption:
        """Clear Playout (new epoch); the watermark's count keeps only what the caller heard."""
        self._answer_epoch = None
        interruption = self.coordinator.barge_in(now)
        self.mark.truncate(interruption.cleared.epoch, interruption.cleared.played_frames)
        return interruption

    def _interrupt(self, played_frames: int, turn: TurnMetrics | None) -> None:
        request = next(self._requests)
        self._interrupt_turns[request] = turn
        # submitted now, so that it reaches the engine before the interrupting speech is fed
        self._submit(Interrupt(self.engine_call, request, played_frames))

    def _barge_in(self, ev: BargeIn, now: int) -> None:
        held_at = self._held_since if self.playout.held and self._held_since is not None else now
        self._held_since = None
        interruption = self._stop_agent(now)
        cleared = interruption.cleared
        self._actions.append(FlushOutput())
        metrics = BargeInMetrics(ev.speech_started_ms, now, held_at, cleared.played_frames)
        self.summary.barge_ins.append(metrics)
        turn = self._turn_by_epoch.get(cleared.epoch)
        if turn is not None:
            turn.interrupted = True
        self._interrupt(cleared.played_frames, turn)
        event(log, "turn.barge_in", speech_started_ms=ev.speech_started_ms, played_frames=cleared.played_frames)

    # -- engine -----------------------------------------------------------------------------------------------
    def _on_engine(self, ev: EngineEvent, now: int) -> None:
        if isinstance(ev, TextDelta):
            text = self._text_by_epoch.get(ev.request, "") + ev.text
            self._text_by_epoch[ev.request] = text
            live = self._turn_by_epoch.get(ev.request)
            if live is not None and not live.text_heard:
                live.text_generated = text  # the transcript so far, while the reply plays
            self._pending_delta += ev.text
        elif isinstance(ev, AudioChunk):
            pcm = float32_to_int16(ev.pcm)
            if ev.request >= self.playout.epoch:  # older epochs are dropped by Playout, unheard
                pcm = self.mark.embed(pcm, ev.request, ev.frame_index)
            delta, self._pending_delta = self._pending_delta, ""
            self.playout.push(pcm, ev.request, ev.frame_index, delta)
        elif isinstance(ev, ReplyEnded):
            turn = self._turn_by_epoch.get(ev.request)
            if turn is not None:
                if ev.interrupted:
                    turn.text_heard, turn.frames_heard = ev.text, ev.frames
                else:
                    turn.text_generated = turn.text_heard = ev.text
                    turn.frames_heard = ev.frames
            if not ev.interrupted:
                self.playout.mark_end(ev.request)
                if ev.frames == 0:
                    if ev.request == self._answer_epoch:
                        self._answer_epoch = None
                    self._act(self.turns.agent_response_empty(self.clock.turn_time(now)), now)
        elif isinstance(ev, InterruptDone):
            self._interrupt_turns.pop(ev.request, None)
        elif isinstance(ev, Rejected):
            self.summary.engine_rejections += 1
            event(log, "engine.rejected", logging.WARNING, command=ev.command, reason=ev.reason)
            if ev.command in ("Respond", "Greet") and ev.request == self.coordinator.epoch:
                self._reply_lost(now)
        elif isinstance(ev, EngineFault):
            self.summary.engine_errors += 1
            event(log, "engine.error", logging.ERROR, message=ev.message)
            self._reply_lost(now)

    def _reply_lost(self, now: int) -> None:
        """The current reply will not come: mark its end, so turn-taking goes back to listening."""
        if self._early is not None:
            self._early = None
            self.playout.resume()
        self.playout.mark_end(self.coordinator.epoch)
        self._answer_epoch = None
        self._act(self.turns.agent_response_empty(self.clock.turn_time(now)), now)

    # -- outbound ---------------------------------------------------------------------------------------------
    def _send(self, samples_24k: Int16Array, now: int, epoch: int | None, sequence: int | None) -> None:
        chunk = PcmFrame(samples_24k, MODEL_OUTPUT_RATE, self._out_24k)
        self._out_24k += samples_24k.size
        packets = self._packetizer.push(chunk)
        if sequence is not None and epoch is not None:
            self.sent_packets[sequence] = epoch
            if len(self.sent_packets) > 4096:
                for k in list(self.sent_packets)[:2048]:
                    del self.sent_packets[k]
        # 20 ms in, 20 ms out: the k-th packet out carries the k-th packet in (the resampler's delay
        # shifts it by less than a packet), so each playout sequence is reported by its own packet
        self._labels.append(sequence)
        for packet in packets:
            label = self._labels.popleft() if self._labels else None
            self._actions.append(SendAudio(packet.samples, label))
        while len(self._labels) > 50:
            self._labels.popleft()
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
