"""A scenario's caller, step by step, and what the caller hears — pure, driven by explicit time.

`CallerScript.tick(now_ms, heard)` is called every 20 ms with the agent audio that reached the
caller's ear in that slot; it returns what the caller sends in the same slot (a packet of speech or
nothing), DTMF digits to send and whether to hang up. The ear tracker turns what is heard into
agent-speech segments (level above a threshold, with a hangover that bridges short gaps), which
is what `after_agent_done` and `cut_in_ms` wait on, and what latencies are measured against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agent.audio import rms_dbfs
from agent.caller_leg import LEG_PACKET_SAMPLES, Int16Array
from agent.report import CallerUtterance, Segment
from agent.scenario import DtmfStep, HangupStep, SayStep, Step, WaitStep, When, WhenKind

PACKET_MS = 20
EAR_THRESHOLD_DBFS = -50.0
EAR_HANGOVER_MS = 200
EAR_MAX_PENDING_PACKETS = 6  # agent packets waiting at the caller beyond this are late: dropped
EAR_TARGET_PENDING_PACKETS = 1  # what the ear keeps waiting while it catches up in quiet packets
EAR_QUIET_DBFS = -60.0  # a packet this quiet may be skipped to catch up (no agent speech in it)


class EarBuffer:
    """The caller's playout buffer: legs deliver agent audio in whatever sizes their transport
    decodes, the ear plays one 20 ms packet per tick.

    Producer and consumer run at the same rate, so any backlog that a burst or an empty tick
    leaves would otherwise stay for the rest of the call and delay everything the caller hears
    (up to ``max_pending`` packets: 120 ms). A phone's jitter buffer drains such excess delay (WebRTC's
    NetEQ "accelerates"); this one does it where nothing is lost, by skipping quiet packets while
    more than ``target_pending`` wait. Agent speech is never skipped, except the oldest beyond
    ``max_pending`` (counted as ``late``).
    """

    def __init__(self, *, max_pending: int = EAR_MAX_PENDING_PACKETS, target_pending: int = EAR_TARGET_PENDING_PACKETS,
                 quiet_dbfs: float = EAR_QUIET_DBFS) -> None:
        self.max_pending = max_pending
        self.target_pending = target_pending
        self.quiet_dbfs = quiet_dbfs
        self._pending = np.zeros(0, np.int16)
        self.late = 0  # packets dropped beyond max_pending
        self.drained = 0  # quiet packets skipped to catch up

    @property
    def pending_packets(self) -> int:
        return self._pending.size // LEG_PACKET_SAMPLES

    def push(self, parts: list[Int16Array]) -> None:
        for part in parts:
            self._pending = np.concatenate([self._pending, part]) if self._pending.size else part
        excess = self._pending.size - self.max_pending * LEG_PACKET_SAMPLES
        if excess > 0:
            self._pending = self._pending[excess:]
            self.late += -(-excess // LEG_PACKET_SAMPLES)

    def take(self) -> Int16Array | None:
        """The packet the caller hears in this tick (None: nothing has arrived)."""
        n = LEG_PACKET_SAMPLES
        while self._pending.size >= (self.target_pending + 2) * n and rms_dbfs(self._pending[:n]) < self.quiet_dbfs:
            self._pending = self._pending[n:]
            self.drained += 1
        if self._pending.size < n:
            return None
        packet, self._pending = self._pending[:n], self._pending[n:]
        return packet


@dataclass
class EarTracker:
    """Agent speech at the caller's ear."""

    threshold_dbfs: float = EAR_THRESHOLD_DBFS
    hangover_ms: int = EAR_HANGOVER_MS
    segments: list[Segment] = field(default_factory=list)
    active_since: int | None = None
    last_active_ms: int | None = None

    def update(self, now_ms: int, heard: Int16Array) -> None:
        loud = heard.size > 0 and rms_dbfs(heard) > self.threshold_dbfs
        if loud:
            if self.active_since is None:
                self.active_since = now_ms
            self.last_active_ms = now_ms
        elif self.active_since is not None and self.last_active_ms is not None \
                and now_ms - self.last_active_ms >= self.hangover_ms:
            self.segments.append(Segment(self.active_since, self.last_active_ms + PACKET_MS, "agent"))
            self.active_since = None

    @property
    def speaking(self) -> bool:
        return self.active_since is not None

    def close(self) -> None:
        if self.active_since is not None and self.last_active_ms is not None:
            self.segments.append(Segment(self.active_since, self.last_active_ms + PACKET_MS, "agent"))
            self.active_since = None

    def segment_started_after(self, t_ms: float) -> tuple[float, float | None] | None:
        """The first agent segment starting at or after t_ms: (start, end or None while running)."""
        for seg in self.segments:
            if seg.start_ms >= t_ms:
                return seg.start_ms, seg.end_ms
        if self.active_since is not None and self.active_since >= t_ms:
            return self.active_since, None
        return None


@dataclass
class TickResult:
    packet: Int16Array | None = None  # caller audio in this slot (None: silence)
    record_only: bool = False  # DTMF tones: they go to the recording, not down the line (RFC 4733)
    dtmf: list[tuple[str, int]] = field(default_factory=list)  # (digit, duration_ms)
    hang_up: bool = False


class CallerScript:
    def __init__(self, steps: tuple[Step, ...] | list[Step], audio: dict[int, Int16Array]) -> None:
        """`audio[i]`: the rendered 16 kHz audio of step i (speech, or DTMF tones for the recording)."""
        self.steps = list(steps)
        self.audio = audio
        self.ear = EarTracker()
        self.utterances: list[CallerUtterance] = []
        self.dtmf_sent = ""
        self.index = 0
        self.prev_end_ms = 0
        self._playing: Int16Array | None = None
        self._pos = 0
        self._started_ms = 0
        self._dtmf_plan: list[tuple[int, str, int]] = []  # (due ms, digit, duration)
        self.done = False

    # -- conditions ---------------------------------------------------------------------------------
    def _due(self, when: When, now_ms: int) -> bool:
        waited = now_ms - self.prev_end_ms
        if when.kind is WhenKind.AT:
            return now_ms >= when.ms
        if when.kind is WhenKind.AFTER_SILENCE:
            return waited >= when.ms
        seg = self.ear.segment_started_after(self.prev_end_ms)
        if when.kind is WhenKind.CUT_IN:
            return (seg is not None and now_ms >= seg[0] + when.ms) or waited >= when.max_wait_ms
        # AFTER_AGENT_DONE: a reply started after the previous step, ended, then silence_ms passed
        if seg is not None and seg[1] is not None and not self.ear.speaking:
            last = self.ear.last_active_ms if self.ear.last_active_ms is not None else seg[1]
            if now_ms - (last + PACKET_MS) >= when.ms:
                return True
        return waited >= when.max_wait_ms

    # -- one slot -----------------------------------------------------------------------------------
    def tick(self, now_ms: int, heard: Int16Array) -> TickResult:
        self.ear.update(now_ms, heard)
        result = TickResult()
        while self._dtmf_plan and self._dtmf_plan[0][0] <= now_ms:
            _, digit, duration = self._dtmf_plan.pop(0)
            result.dtmf.append((digit, duration))
            self.dtmf_sent += digit
        if self._playing is not None:
            result.record_only = isinstance(self.steps[self.index], DtmfStep)
            result.packet = self._next_packet(now_ms)
            return result
        if self.done:
            return result
        while self.index < len(self.steps):
            step = self.steps[self.index]
            if isinstance(step, WaitStep):
                if now_ms - self.prev_end_ms < step.wait_ms:
                    return result
                self.prev_end_ms = now_ms
                self.index += 1
                continue
            if not self._due(step.when, now_ms):
                return result
            if isinstance(step, HangupStep):
                self.utterances.append(CallerUtterance("hangup", now_ms, now_ms, ""))
                self.done = True
                result.hang_up = True
                return result
            self._start(step, now_ms)
            if isinstance(step, DtmfStep):
                result.dtmf.extend(self._take_due_dtmf(now_ms))
                result.record_only = True
            result.packet = self._next_packet(now_ms)
            return result
        self.done = True
        return result

    def _take_due_dtmf(self, now_ms: int) -> list[tuple[str, int]]:
        due = [(d, dur) for t, d, dur in self._dtmf_plan if t <= now_ms]
        self._dtmf_plan = [p for p in self._dtmf_plan if p[0] > now_ms]
        self.dtmf_sent += "".join(d for d, _ in due)
        return due

    def _start(self, step: SayStep | DtmfStep, now_ms: int) -> None:
        self._playing = self.audio[self.index]
        self._pos = 0
        self._started_ms = now_ms
        if isinstance(step, DtmfStep):
            period = step.tone_ms + step.gap_ms
            self._dtmf_plan = [(now_ms + i * period, d, step.tone_ms) for i, d in enumerate(step.digits)]

    def _next_packet(self, now_ms: int) -> Int16Array:
        assert self._playing is not None
        chunk = self._playing[self._pos : self._pos + LEG_PACKET_SAMPLES]
        self._pos += LEG_PACKET_SAMPLES
        if chunk.size < LEG_PACKET_SAMPLES:
            chunk = np.concatenate([chunk, np.zeros(LEG_PACKET_SAMPLES - chunk.size, np.int16)])
        if self._pos >= self._playing.size:
            step = self.steps[self.index]
            end_ms = now_ms + PACKET_MS
            if isinstance(step, SayStep):
                text = step.text if step.text is not None else str(step.wav)
                self.utterances.append(CallerUtterance("wav" if step.text is None else "say",
                                                       self._started_ms, end_ms, text, step.unfinished))
            elif isinstance(step, DtmfStep):
                self.utterances.append(CallerUtterance("dtmf", self._started_ms, end_ms, step.digits))
            self._playing = None
            self.prev_end_ms = end_ms
            self.index += 1
        return chunk
