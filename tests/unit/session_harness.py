"""A hand-moved harness around SessionCore for unit tests: a ScriptedEngineDouble, a fake line that
records what the core sends, and a clock that moves only when the test says so."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agent.engine_api import EngineCommand, Interrupt, Open
from agent.session_core import (
    Action,
    Ended,
    FlushOutput,
    HangUp,
    PauseOutput,
    ResumeOutput,
    SendAudio,
    SessionCore,
    SessionOptions,
    ToEngine,
)
from agent.turn_taking import TurnTakingSettings
from agent.vad import EnergyVad
from tests.unit.scripted_engine import ScriptedEngineDouble

RATE = 16000
PACKET = RATE // 50
_t = np.arange(PACKET) / RATE


def speech_packet(k: int) -> np.ndarray:
    return (8000 * np.sin(2 * np.pi * 220 * (_t + k * 0.02))).astype(np.int16)


SILENCE = np.zeros(PACKET, np.int16)


@dataclass
class Harness:
    options: SessionOptions = field(default_factory=lambda: SessionOptions(echo_gate=False))
    reply_frames: int = 6
    reported: bool = True  # the line reports what it sent (playout truth)
    auto_play: bool = True  # every packet sent is reported played at once
    engine_steps_per_tick: int = 1

    def __post_init__(self) -> None:
        self.engine = ScriptedEngineDouble(self.reply_frames)
        self.core = SessionCore("t-1", 1, RATE, EnergyVad(), self.options, started_at=0.0,
                                playout_reported=self.reported)
        self.engine.submit(Open(1))
        self.now = 0
        self.k = 0
        self.actions: list[Action] = []
        self.sent: list[SendAudio] = []
        self.line_paused = False
        self.line_queue: list[SendAudio] = []  # sent but not yet played (when not auto_play)
        self.played_up_to = -1
        # (epoch cut, played_frames asked, frames of it the line reported played)
        self.interrupts: list[tuple[int, int, int]] = []
        self._epoch_before = 0

    # -- plumbing ---------------------------------------------------------------------------------
    def do(self, actions: list[Action]) -> None:
        for a in actions:
            self.actions.append(a)
            if isinstance(a, ToEngine):
                if isinstance(a.command, Interrupt):
                    self.interrupts.append((self._epoch_before, a.command.played_frames,
                                            self.reported_frames(self._epoch_before)))
                self.engine.submit(a.command)
            elif isinstance(a, SendAudio):
                self.sent.append(a)
                self.line_queue.append(a)
            elif isinstance(a, PauseOutput):
                self.line_paused = True
            elif isinstance(a, ResumeOutput):
                self.line_paused = False
            elif isinstance(a, FlushOutput):
                self.line_queue.clear()
                self.line_paused = False
        if self.auto_play and not self.line_paused:
            self.play(len(self.line_queue))

    def reported_frames(self, epoch: int) -> int:
        """Whole frames of `epoch` the line has reported played."""
        packets = sum(1 for seq, e in self.core.sent_packets.items() if e == epoch and seq <= self.played_up_to)
        return packets // 4

    def play(self, n: int) -> None:
        """The line sends `n` queued packets and reports the last tracked one (nothing while paused)."""
        if self.line_paused:
            return
        taken, self.line_queue = self.line_queue[:n], self.line_queue[n:]
        seqs = [p.sequence for p in taken if p.sequence is not None]
        if seqs and self.reported:
            self.played_up_to = max(seqs)
            self.do(self.core.played(max(seqs), self.now))

    def play_agent(self, n: int) -> None:
        """The line sends queued packets until `n` packets of agent audio have left."""
        seen = 0
        for i, p in enumerate(self.line_queue):
            seen += p.sequence is not None
            if seen == n:
                self.play(i + 1)
                return
        raise AssertionError(f"only {seen} agent packets are queued, not {n}")

    def deliver(self) -> None:
        for ev in self.engine.drain(1):
            self._epoch_before = self.core.playout.epoch
            self.do(self.core.engine(ev, self.now))

    def start(self) -> None:
        self.do(self.core.start(self.now))

    def tick(self, caller: np.ndarray | None = None) -> None:
        """20 ms: the caller's packet arrives, the engine steps, the outbound grid ticks."""
        self.now += 20
        self.k += 1
        self._epoch_before = self.core.playout.epoch
        self.do(self.core.caller_audio(SILENCE if caller is None else caller, self.now))
        for _ in range(self.engine_steps_per_tick):
            self.engine.step()
        self.deliver()
        self._epoch_before = self.core.playout.epoch
        self.do(self.core.tick(self.now))

    def speak(self, ms: int) -> None:
        for _ in range(ms // 20):
            self.tick(speech_packet(self.k))

    def silence(self, ms: int) -> None:
        for _ in range(ms // 20):
            self.tick()

    # -- queries ----------------------------------------------------------------------------------
    def commands(self, kind: type) -> list[EngineCommand]:
        return [c for c in self.engine.submitted if isinstance(c, kind)]

    def count(self, kind: type) -> int:
        return sum(isinstance(a, kind) for a in self.actions)

    def agent_packets(self) -> list[SendAudio]:
        return [p for p in self.sent if p.sequence is not None]

    @property
    def ended(self) -> list[Ended]:
        return [a for a in self.actions if isinstance(a, Ended)]

    @property
    def hangups(self) -> list[HangUp]:
        return [a for a in self.actions if isinstance(a, HangUp)]


def options(**turn: int) -> SessionOptions:
    return SessionOptions(echo_gate=False, turn=TurnTakingSettings(**turn))
