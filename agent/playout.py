"""Agent audio out: 80 ms epoch-tagged chunks in, 20 ms packets out on absolute deadlines; knows what was heard.

Theory of operation
-------------------
The engine pushes 80 ms chunks (``push``), each tagged with the turn *epoch* it belongs to. The
transport asks for what is due (``pull(now_ms)``) whenever it likes; ``next_deadline_ms(now_ms)`` says
when to ask next. Packets sit on a fixed grid of ``packet_ms`` slots counted from call start: packet k
of a stream is due at ``anchor + k * packet_ms``, where the anchor is the first slot at or after the
stream's first pull, so timing never drifts however late the transport wakes up. A late transport gets
every due packet at once (a burst the remote jitter buffer absorbs) unless a packet is more than
``max_late_ms`` overdue: such packets are dropped, never heard, and the stream keeps its grid. When the
queue runs dry before the response is complete (an engine underrun) the stream re-anchors at the next
pull that finds audio.

Epochs: chunks of an older epoch than the current one are dropped on arrival; a chunk of a newer epoch
supersedes whatever is queued. ``clear(now_ms, new_epoch)`` (barge-in) drops the queue and reports
what the caller actually heard of the current epoch (``PlayoutCleared``): heard = confirmed by the
transport (``mark_played``), or else handed out (when the transport cannot take audio back), or handed
out at least ``output_latency_ms`` ago (``settings.unplayed_audio_is_flushed``: a local sink can drop
its buffer). ``played_frames`` counts whole 80 ms frames; the engine truncates to exactly that.

Facts for TurnTaking (returned by ``pull``, in order): ``AgentAudioStarted`` when the first packet of an
epoch is handed out; ``AgentAudioFinished`` when a completed response (``mark_end``) has drained and
its last packet has played (``output_latency_ms`` after hand-out, or confirmed), when an epoch is
cleared or superseded (reason INTERRUPTED), or after ``stall_timeout_ms`` without audio (STALLED).

Barge-in, as the session wires it (``BargeInCoordinator`` holds the epoch counter):
``EndOfTurn`` -> ``epoch = coordinator.begin_response()``; ``engine.respond(epoch)``; engine chunks ->
``playout.push(chunk, epoch, step_index, text)``; engine done -> ``playout.mark_end(epoch)``.
``BargeIn`` -> ``cleared = coordinator.barge_in(now_ms)``;
``engine.interrupt(cleared.epoch, cleared.played_frames)``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agent.audio import AudioError
from agent.events import AgentAudioFinished, AgentAudioStarted, FinishReason, PlayoutCleared, PlayoutEvent

Int16Array = npt.NDArray[np.int16]


@dataclass(frozen=True)
class PlayoutSettings:
    sample_rate: int = 24000
    frame_ms: int = 80
    packet_ms: int = 20
    output_latency_ms: int = 60  # hand-out to the caller's ear (jitter buffer, device)
    max_late_ms: int = 200  # a packet overdue by more than this is dropped instead of sent in a burst
    stall_timeout_ms: int = 3000  # queue dry, response not complete: give up after this long
    unplayed_audio_is_flushed: bool = False  # True: clear() also takes back audio not yet at the ear
    playout_reported: bool = False  # True: the transport reports what left (mark_played); unreported = unheard
    report_grace_ms: int = 1000  # a response counts as finished this long after its last packet, reported or not

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.packet_ms <= 0 or self.frame_ms <= 0:
            raise ValueError("sample_rate, frame_ms and packet_ms must be positive")
        if self.frame_ms % self.packet_ms:
            raise ValueError(f"frame_ms ({self.frame_ms}) must be a multiple of packet_ms ({self.packet_ms})")
        if (self.sample_rate * self.packet_ms) % 1000:
            raise ValueError(f"{self.packet_ms} ms at {self.sample_rate} Hz is not a whole number of samples")
        if self.output_latency_ms < 0 or self.max_late_ms < 0 or self.stall_timeout_ms <= 0:
            raise ValueError("output_latency_ms and max_late_ms must be >= 0, stall_timeout_ms > 0")

    @property
    def packet_samples(self) -> int:
        return self.sample_rate * self.packet_ms // 1000

    @property
    def packets_per_frame(self) -> int:
        return self.frame_ms // self.packet_ms

    @property
    def frame_samples(self) -> int:
        return self.packet_samples * self.packets_per_frame


@dataclass(frozen=True, eq=False)
class PlayoutPacket:
    """One packet for the transport: send ``samples`` (``packet_ms`` at the playout rate) now."""

    samples: Int16Array
    deadline_ms: int
    sequence: int  # increases by one per packet handed out, over the whole call
    epoch: int
    step_index: int  # the engine step (80 ms frame) it belongs to


@dataclass(frozen=True)
class PlayoutOutput:
    packets: list[PlayoutPacket]
    events: list[PlayoutEvent]


@dataclass
class _Frame:
    samples: Int16Array
    step_index: int
    text: str
    next_packet: int = 0


@dataclass
class _Sent:
    sequence: int
    handed_ms: int
    dropped: bool


@dataclass
class _EpochLog:
    """What happened to the current epoch's audio, in order."""

    frames: list[_Frame] = field(default_factory=list)  # every frame pushed (for texts)
    sent: list[_Sent] = field(default_factory=list)  # every packet taken off the queue, in order
    started: bool = False
    ended: bool = False


class Playout:
    def __init__(self, settings: PlayoutSettings | None = None, *, epoch: int = 0) -> None:
        self.settings = settings or PlayoutSettings()
        self.epoch = epoch
        self.stale_frames_dropped = 0
        self.late_packets_dropped = 0
        self._queue: deque[_Frame] = deque()
        self._log = _EpochLog()
        self._next_slot_ms: int | None = None  # deadline of the next packet of the running stream
        self._last_slot_ms: int | None = None
        self._sequence = 0
        self._confirmed_sequence = -1
        self._confirmation_seen = self.settings.playout_reported
        self._pending_events: list[PlayoutEvent] = []
        self._held = False

    def dropped_counts(self) -> dict[str, int]:
        """Agent audio never sent, by where (``lfmcall_dropped_frames_total``): packets more than
        ``max_late_ms`` overdue (20 ms each), and 80 ms frames of an older epoch."""
        return {"playout_late_packet": self.late_packets_dropped, "playout_stale_frame": self.stale_frames_dropped}

    # --- engine side ----------------------------------------------------------------------------

    def push(self, chunk: Int16Array, epoch: int, step_index: int, text: str = "") -> bool:
        """Queue one 80 ms chunk; False (and nothing queued) when its epoch is older than the current.

        A chunk of a newer epoch drops whatever is queued of the current one (its AgentAudioFinished,
        reason INTERRUPTED, is dated at the last slot handed out and comes with the next ``pull``).
        """
        s = self.settings
        if chunk.dtype != np.int16 or chunk.ndim != 1:
            raise AudioError(f"playout chunk must be 1-D int16, got {chunk.dtype} with shape {chunk.shape}")
        if chunk.shape[0] != s.frame_samples:
            raise AudioError(
                f"playout chunk must be {s.frame_samples} samples ({s.frame_ms} ms at {s.sample_rate} Hz), "
                f"got {chunk.shape[0]}"
            )
        if epoch < self.epoch:
            self.stale_frames_dropped += 1
            return False
        if epoch > self.epoch:
            self._retire_epoch(self._last_slot_ms or 0, FinishReason.INTERRUPTED)
            self.epoch = epoch
        if self._log.ended:
            raise ValueError(f"chunk pushed for epoch {epoch} after mark_end({epoch})")
        frame = _Frame(samples=chunk.copy(), step_index=step_index, text=text)
        self._queue.append(frame)
        self._log.frames.append(frame)
        return True

    def mark_end(self, epoch: int) -> None:
        """The engine's response for ``epoch`` is complete; AgentAudioFinished follows once it has played."""
        if epoch == self.epoch:
            self._log.ended = True

    # --- transport side -------------------------------------------------------------------------

    def pull(self, now_ms: int) -> PlayoutOutput:
        """Packets due at ``now_ms`` (in order, possibly several when late) and the facts that arose."""
        s = self.settings
        packets: list[PlayoutPacket] = []
        events = self._pending_events
        self._pending_events = []
        if self._held:  # the caller may be cutting in: hand out nothing, keep the queue
            return PlayoutOutput(packets=packets, events=events)
        if self._queue and self._next_slot_ms is None:
            self._next_slot_ms = self._anchor(now_ms)
        while self._next_slot_ms is not None and self._next_slot_ms <= now_ms:
            if not self._queue:  # underrun: the stream re-anchors when audio comes back
                self._next_slot_ms = None
                break
            slot_ms = self._next_slot_ms
            frame = self._queue[0]
            k = frame.next_packet
            frame.next_packet += 1
            if frame.next_packet == s.packets_per_frame:
                self._queue.popleft()
            self._last_slot_ms = slot_ms
            self._next_slot_ms = slot_ms + s.packet_ms
            sequence = self._sequence
            self._sequence += 1
            dropped = now_ms - slot_ms > s.max_late_ms
            self._log.sent.append(_Sent(sequence=sequence, handed_ms=now_ms, dropped=dropped))
            if dropped:
                self.late_packets_dropped += 1
                continue
            if not self._log.started:
                self._log.started = True
                events.append(AgentAudioStarted(at_ms=now_ms, epoch=self.epoch))
            samples = frame.samples[k * s.packet_samples : (k + 1) * s.packet_samples]
            packets.append(PlayoutPacket(samples=samples, deadline_ms=slot_ms, sequence=sequence,
                                         epoch=self.epoch, step_index=frame.step_index))
        finished = self._check_finished(now_ms)
        if finished is not None:
            events.append(finished)
        return PlayoutOutput(packets=packets, events=events)

    def next_deadline_ms(self, now_ms: int) -> int | None:
        """When ``pull`` has something to do next (a packet or a fact); None when idle."""
        if self._pending_events:
            return now_ms
        if self._held:
            return None
        if self._queue:
            return self._next_slot_ms if self._next_slot_ms is not None else self._anchor(now_ms)
        if self._log.started:
            heard_end = self._heard_end_ms()
            if self._log.ended:
                return heard_end
            return None if heard_end is None else heard_end + self.settings.stall_timeout_ms
        return None

    @property
    def held(self) -> bool:
        return self._held

    def hold(self) -> None:
        """Stop handing out packets, keeping the queue (the caller may be cutting in).

        What was handed out stays heard; nothing is dropped. ``resume`` continues from the same
        packet on a fresh grid slot; ``clear`` (a real barge-in) drops the queue as usual.
        """
        self._held = True
        self._next_slot_ms = None

    def resume(self) -> None:
        """The suspected interruption was not one (a backchannel, a cough): play on."""
        self._held = False

    def mark_played(self, sequence: int) -> None:
        """The transport reports that every packet up to ``sequence`` has been played to the caller.

        From the first report on, only confirmed packets count as heard.
        """
        if sequence >= self._sequence:
            raise ValueError(f"mark_played({sequence}) for a packet not handed out yet (next is {self._sequence})")
        self._confirmation_seen = True
        self._confirmed_sequence = max(self._confirmed_sequence, sequence)

    def clear(self, now_ms: int, new_epoch: int) -> PlayoutCleared:
        """Barge-in: drop everything queued, move to ``new_epoch``, report what was heard of the old one."""
        if new_epoch <= self.epoch:
            raise ValueError(f"clear() needs a newer epoch than {self.epoch}, got {new_epoch}")
        cleared = self._played(now_ms)
        self._retire_epoch(now_ms, FinishReason.INTERRUPTED)
        self.epoch = new_epoch
        self._held = False
        return cleared

    @property
    def queued_ms(self) -> int:
        s = self.settings
        packets = sum(s.packets_per_frame - f.next_packet for f in self._queue)
        return packets * s.packet_ms

    # --- internals ------------------------------------------------------------------------------

    def _anchor(self, now_ms: int) -> int:
        packet_ms = self.settings.packet_ms
        slot = -(-now_ms // packet_ms) * packet_ms  # first grid slot at or after now
        if self._last_slot_ms is not None:
            slot = max(slot, self._last_slot_ms + packet_ms)
        return slot

    def _is_heard(self, sent: _Sent, now_ms: int) -> bool:
        if self._confirmation_seen:
            return sent.sequence <= self._confirmed_sequence
        if self.settings.unplayed_audio_is_flushed:
            return sent.handed_ms + self.settings.output_latency_ms <= now_ms
        return True

    def _played(self, now_ms: int) -> PlayoutCleared:
        s = self.settings
        done_packets = 0
        heard_packets = 0
        for sent in self._log.sent:
            if sent.dropped:
                done_packets += 1
            elif self._is_heard(sent, now_ms):
                done_packets += 1
                heard_packets += 1
            else:
                break
        played_frames = done_packets // s.packets_per_frame
        frames = self._log.frames
        return PlayoutCleared(
            at_ms=now_ms,
            epoch=self.epoch,
            played_frames=played_frames,
            played_ms=heard_packets * s.packet_ms,
            played_text="".join(f.text for f in frames[:played_frames]),
            dropped_frames=len(frames) - played_frames,
        )

    def _retire_epoch(self, now_ms: int, reason: FinishReason) -> None:
        if self._log.started:
            played_ms = self._played(now_ms).played_ms
            self._pending_events.append(
                AgentAudioFinished(at_ms=now_ms, epoch=self.epoch, reason=reason, played_ms=played_ms)
            )
        self._queue.clear()
        self._log = _EpochLog()
        self._next_slot_ms = None

    def _heard_end_ms(self) -> int | None:
        """When the last packet handed out so far finishes playing at the caller (time-based estimate)."""
        for sent in reversed(self._log.sent):
            if not sent.dropped:
                return sent.handed_ms + self.settings.output_latency_ms + self.settings.packet_ms
        return None

    def _check_finished(self, now_ms: int) -> AgentAudioFinished | None:
        log = self._log
        if not log.started or self._queue:
            return None
        heard_end = self._heard_end_ms()
        if heard_end is None:
            return None
        if log.ended:
            if self._confirmation_seen:
                # confirmed; or a report that never came (the transport dropped the packet) must not
                # keep the agent "speaking" for ever
                last = max(sent.sequence for sent in log.sent if not sent.dropped)
                done = last <= self._confirmed_sequence or now_ms >= heard_end + self.settings.report_grace_ms
            else:
                done = now_ms >= heard_end
            reason = FinishReason.COMPLETED
        else:
            done = now_ms >= heard_end + self.settings.stall_timeout_ms
            reason = FinishReason.STALLED
        if not done:
            return None
        played_ms = self._played(now_ms).played_ms
        finished = AgentAudioFinished(at_ms=now_ms, epoch=self.epoch, reason=reason, played_ms=played_ms)
        # Keep the epoch: a stalled response may still deliver more audio (a new AgentAudioStarted follows).
        frames = log.frames
        self._log = _EpochLog(frames=frames, sent=log.sent, started=False, ended=log.ended)
        self._next_slot_ms = None
        return finished


@dataclass(frozen=True)
class Interruption:
    """What ``BargeInCoordinator.barge_in`` did: the old epoch was cleared, ``new_epoch`` is current."""

    cleared: PlayoutCleared
    new_epoch: int


class BargeInCoordinator:
    """Owns the session's turn epoch: every response and every barge-in moves it forward."""

    def __init__(self, playout: Playout) -> None:
        self.playout = playout
        self.epoch = playout.epoch

    def begin_response(self) -> int:
        """On EndOfTurn: the epoch the engine's answer (and its chunks) must carry."""
        self.epoch += 1
        return self.epoch

    def barge_in(self, now_ms: int) -> Interruption:
        """On BargeIn: stop the audio now; pass ``cleared.epoch``/``cleared.played_frames`` to the engine."""
        self.epoch = max(self.epoch, self.playout.epoch) + 1
        cleared = self.playout.clear(now_ms, self.epoch)
        return Interruption(cleared=cleared, new_epoch=self.epoch)
