"""The engine boundary: a closed set of frozen commands and events, and the `EngineClient` protocol.

Theory of operation
-------------------
A call talks to the engine only by *submitting commands* and *receiving events*; nothing else
crosses the boundary, so the engine can live in a thread of this process (``agent.engine_thread``),
in its own process (a pipe or shared memory carries the same values), or be a scripted double in
unit tests. Every command names its call (``call``, an id the client hands out with
``new_call_id``) and carries a ``request`` id chosen by the caller of ``submit``; every event that
answers or belongs to a command carries that command's request id back. There are no futures: an
interrupt's result is an `InterruptDone` event, a reply's audio carries the request id of the
`Respond` or `Greet` that asked for it.

Rules every client keeps:

* ``submit`` never blocks and never raises for a call's own traffic: a command the engine cannot
  take (queue full, engine restarting, unknown call) comes back as a `Rejected` event on that call,
  counted; one overloaded moment never fails a call.
* Events of one call arrive in the order the engine produced them. After `Close` the call's
  events stop (the client forgets the call).
* `ReplyEnded` follows every reply that started (`Greet`/`Respond`), exactly once: finished
  (``interrupted=False``), cut by `Interrupt` (``frames`` = what the caller heard) or withdrawn by
  `Retract` (``frames=0``). `InterruptDone` follows every `Interrupt`, after the `ReplyEnded` it
  caused (if any).
* `EngineFault` says the call's engine-side state was lost (a step failed, or the engine died and
  restarted); the conversation starts over from its system prompt.

Audio: `Feed` carries 80 ms of caller audio at 16 kHz (1280 float32 samples in [-1, 1));
`AudioChunk` carries 80 ms of agent audio at 24 kHz (1920 float32 samples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

Float32Array = npt.NDArray[np.float32]

FEED_SAMPLES = 1280  # 80 ms at 16 kHz
CHUNK_SAMPLES = 1920  # 80 ms at 24 kHz


# -- commands -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Open:
    """Register a call; `instructions` are appended to the engine's system prompt."""

    call: int
    instructions: str = ""
    request: int = 0


@dataclass(frozen=True, eq=False)
class Feed:
    """80 ms of caller audio, in order with `AddText`, in the caller's current turn."""

    call: int
    pcm: Float32Array
    request: int = 0


@dataclass(frozen=True)
class AddText:
    """Text in the caller's turn, in order with its audio (e.g. "DTMF: 1234#")."""

    call: int
    text: str
    request: int = 0


@dataclass(frozen=True)
class EndTurn:
    """Close the caller's turn without asking for a reply."""

    call: int
    request: int = 0


@dataclass(frozen=True)
class Respond:
    """Close the caller's turn (if open) and generate a reply; its events carry `request`."""

    call: int
    request: int


@dataclass(frozen=True)
class Greet:
    """Speak `text` first; it is written into the history as the agent's turn."""

    call: int
    request: int
    text: str


@dataclass(frozen=True)
class Interrupt:
    """Stop the current reply (or cut the last one still playing) to exactly `played_frames` frames.

    Also cancels a reply that was requested but not started yet. Answered by `InterruptDone`.
    """

    call: int
    request: int
    played_frames: int


@dataclass(frozen=True)
class Retract:
    """Withdraw the reply to the caller's last turn and reopen that turn (the caller only paused)."""

    call: int
    request: int = 0


@dataclass(frozen=True)
class Close:
    call: int
    request: int = 0


EngineCommand = Open | Feed | AddText | EndTurn | Respond | Greet | Interrupt | Retract | Close


# -- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AudioChunk:
    """80 ms of agent speech of the reply asked for by `request`; `frame_index` counts from 0."""

    call: int
    request: int
    frame_index: int
    pcm: Float32Array
    codes: tuple[int, ...] = ()


@dataclass(frozen=True)
class TextDelta:
    """Text appended to the reply's transcript (sent before the chunk it was generated with)."""

    call: int
    request: int
    text: str


@dataclass(frozen=True)
class ReplyEnded:
    """The reply of `request` is over; `text`/`frames` are what the history keeps."""

    call: int
    request: int
    text: str
    frames: int
    interrupted: bool
    generated_frames: int


@dataclass(frozen=True)
class InterruptDone:
    """The answer to `Interrupt(request)`; `cut` is False when there was nothing to cut."""

    call: int
    request: int
    cut: bool


@dataclass(frozen=True)
class Rejected:
    """The engine did not take command `command` (its class name) of `request`; nothing happened."""

    call: int
    request: int
    command: str
    reason: str


@dataclass(frozen=True)
class EngineFault:
    """The call's engine-side state was lost; `request` is the reply that was running, if any."""

    call: int
    request: int | None
    message: str
    engine_restarted: bool = False


EngineEvent = AudioChunk | TextDelta | ReplyEnded | InterruptDone | Rejected | EngineFault


# -- the client -----------------------------------------------------------------------------------


class EngineClient(Protocol):
    """All a CallSession needs of the engine."""

    def new_call_id(self) -> int:
        """A fresh call id for `Open` (unique for this client's lifetime)."""
        ...

    def submit(self, command: EngineCommand) -> None:
        """Hand a command over; never blocks, never raises for a refusal (see `Rejected`)."""
        ...

    async def next_event(self, call: int) -> EngineEvent:
        """The call's next event, in engine order (waits until there is one)."""
        ...


def command_name(command: EngineCommand) -> str:
    return type(command).__name__
