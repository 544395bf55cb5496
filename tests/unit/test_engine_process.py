"""The engine process's pieces without a process: the wire, step-time admission, the socket
framing and supervision bookkeeping."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent import engine_wire as wire
from agent.engine_api import (
    AddText,
    AudioChunk,
    Close,
    EndTurn,
    EngineFault,
    Feed,
    Greet,
    Interrupt,
    InterruptDone,
    Open,
    Rejected,
    ReplyEnded,
    Respond,
    Retract,
    TextDelta,
)
from agent.engine_process import ENGINE_LOST, EngineProcessClient, StepBudget
from agent.engine_socket import FramedSocket
from agent.model_choice import ModelChoice
from config.schema import Settings

VALUES: list[Any] = [
    Open(3, "be brief ünïcode", 0), Feed(3, np.linspace(-1, 1, 1280, dtype=np.float32), 9), AddText(3, "DTMF: 12#"),
    EndTurn(3), Respond(3, 7), Greet(3, 8, "Hello!"), Interrupt(3, 11, 4), Retract(3), Close(3),
    AudioChunk(3, 7, 2, np.full(1920, 0.25, np.float32), (1, 2, 2047, 0, 5, 6, 7, 8)), TextDelta(3, 7, "hi "),
    ReplyEnded(3, 7, "hi there", 12, True, 20), InterruptDone(3, 11, True), Rejected(3, 9, "Feed", "backlog"),
    EngineFault(3, None, "engine died", True), EngineFault(3, 7, "step failed", False),
]


def same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            if not (isinstance(y, np.ndarray) and y.dtype == np.float32 and np.array_equal(x, y)):
                return False
        elif x != y:
            return False
    return True


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_every_command_and_event_round_trips(value: Any) -> None:
    data = wire.encode(value)
    (body,) = wire.FrameBuffer().push(data)
    assert same(wire.decode(body), value)


def test_frames_are_compact() -> None:
    assert len(wire.encode(Feed(1, np.zeros(1280, np.float32)))) < 5200
    assert len(wire.encode(AudioChunk(1, 1, 0, np.zeros(1920, np.float32), tuple(range(8))))) < 7800


def test_frame_buffer_reassembles_byte_by_byte() -> None:
    stream = b"".join(wire.encode(v) for v in VALUES)
    buf = wire.FrameBuffer()
    bodies = [b for i in range(len(stream)) for b in buf.push(stream[i : i + 1])]
    assert len(bodies) == len(VALUES)
    assert all(same(wire.decode(b), v) for b, v in zip(bodies, VALUES, strict=True))


@pytest.mark.parametrize("cut", [1, 5, 12])
def test_truncated_frame_is_a_wire_error(cut: int) -> None:
    body = wire.encode(ReplyEnded(1, 2, "some text", 3, False, 3))[4:]
    with pytest.raises(wire.WireError):
        wire.decode(body[:cut])


def test_unknown_kind_stray_bytes_and_direction_are_wire_errors() -> None:
    with pytest.raises(wire.WireError, match="unknown"):
        wire.decode(b"\xee\x00")
    with pytest.raises(wire.WireError, match="stray"):
        wire.decode(wire.encode(EndTurn(1))[4:] + b"\x00")
    with pytest.raises(wire.WireError, match="not a command"):
        wire.decode_command(wire.encode(TextDelta(1, 1, "x"))[4:])
    with pytest.raises(wire.WireError, match="not an event"):
        wire.decode_event(wire.encode(Close(1))[4:])
    with pytest.raises(wire.WireError, match="exceeds"):
        wire.FrameBuffer().push(wire.LENGTH.pack(wire.MAX_FRAME_BYTES + 1))


def test_control_frames_round_trip() -> None:
    pid, info = wire.decode_ready(wire.ready(1234, {"device": "cpu", "tiny": True})[4:])
    assert pid == 1234 and info == {"device": "cpu", "tiny": True}
    assert wire.decode_failed(wire.failed("no weights in /x")[4:]) == "no weights in /x"
    steps, calls, refused, times = wire.decode_stats(wire.stats(99, 4, 2, [0.01, 0.02])[4:])
    assert (steps, calls, refused) == (99, 4, 2) and np.allclose(times, [0.01, 0.02])


# -- admission --------------------------------------------------------------------------------------
def test_step_budget_admits_while_p90_fits_and_forgets_old_steps() -> None:
    budget = StepBudget(margin=0.8)  # 80 ms / 1.5 steps * 0.8 = 42.7 ms
    assert budget.budget_ms == pytest.approx(42.667, abs=0.01)
    assert budget.fits(now=0.0)  # nothing measured yet
    budget.observe([0.010] * 50, now=1.0)
    assert budget.fits(now=1.0)
    budget.observe([0.060] * 20, now=1.5)  # over a fifth of recent steps are slow: p90 is over budget
    assert budget.p90_ms(1.5) == pytest.approx(60.0) and not budget.fits(now=1.5)
    assert budget.fits(now=4.0)  # the window (2 s) has moved past them
    off = StepBudget(margin=0.0)
    off.observe([1.0], now=0.0)
    assert off.fits(now=0.0)  # 0 = no check


# -- the socket ------------------------------------------------------------------------------------
async def test_framed_socket_carries_frames_both_ways_and_reports_eof() -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    got: list[bytes] = []
    ended: list[str] = []
    arrived, closed = asyncio.Event(), asyncio.Event()

    def on_eof(why: str) -> None:
        ended.append(why)
        closed.set()

    def on_frame(body: bytes) -> None:
        got.append(body)
        if len(got) == 200:
            arrived.set()

    left = FramedSocket(a, loop, lambda body: None, ended.append)
    right = FramedSocket(b, loop, on_frame, on_eof)
    chunk = wire.encode(AudioChunk(1, 1, 0, np.zeros(1920, np.float32)))
    for _ in range(200):  # 1.5 MB: more than the socket buffer, so writes queue and drain
        left.send(chunk)
    await asyncio.wait_for(arrived.wait(), 10)
    assert all(body == chunk[4:] for body in got)
    assert left.blocked_for(loop.time()) == 0.0
    left.close()
    await asyncio.wait_for(closed.wait(), 5)
    assert ended == ["socket closed"]
    right.close()


# -- supervision bookkeeping (no process: the client's state is set by hand) -------------------------
async def test_client_rejects_when_down_and_faults_every_call_when_the_engine_is_lost() -> None:
    client = EngineProcessClient(Settings(), ModelChoice(Path("."), "test", False), slots=4)
    client._loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    client._wire = FramedSocket(a, client._loop, lambda body: None, lambda why: None)
    client._generation, client.state = 1, "running"
    lost: list[str] = []
    client.on_lost.append(lost.append)
    calls = [client.new_call_id() for _ in range(3)]
    for call in calls:
        client.submit(Open(call))
    assert client.refusal(now=0.0) is None and client.active_calls == 3
    client._lost(1, "process exited")
    assert client.state == "restarting" and client.restarts == 1 and len(lost) == 1
    assert client.refusal(now=0.0) == "engine_restarting"
    for call in calls:
        event = await asyncio.wait_for(client.next_event(call), 1)
        assert isinstance(event, EngineFault) and event.engine_restarted
    client.submit(Feed(calls[0], np.zeros(1280, np.float32)))
    rejected = await asyncio.wait_for(client.next_event(calls[0]), 1)
    assert isinstance(rejected, Rejected) and rejected.command == "Feed"
    assert client.dropped["engine_down"] == 1
    client._lost(1, "socket closed")  # the same death seen twice: handled once
    assert client.restarts == 1
    client.stop()
    b.close()
    assert ENGINE_LOST.startswith("agent:")
