"""ThreadEngineClient: the in-thread engine behind the EngineClient protocol (tiny checkpoint)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.engine_api import (
    AudioChunk,
    EngineEvent,
    EngineFault,
    Feed,
    Interrupt,
    InterruptDone,
    Open,
    Rejected,
    ReplyEnded,
    Respond,
    TextDelta,
)
from agent.engine_thread import ThreadEngineClient
from model.checkpoint import LoadedModel, load_model
from model.engine import Engine, EngineSettings


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint_dir: Path) -> LoadedModel:
    torch.set_num_threads(1)
    return load_model(tiny_checkpoint_dir, device="cpu", dtype="float32")


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.2 * np.sin(2 * np.pi * 140 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)


async def until(client: ThreadEngineClient, call: int, kind: type) -> list[EngineEvent]:
    out: list[EngineEvent] = []
    while True:
        ev = await asyncio.wait_for(client.next_event(call), 60)
        out.append(ev)
        if isinstance(ev, kind):
            return out


def feed(client: ThreadEngineClient, call: int, wave: np.ndarray) -> None:
    for i in range(0, len(wave) - 1279, 1280):
        client.submit(Feed(call, wave[i : i + 1280]))


def test_reply_events_carry_the_request_id_and_interrupt_answers_by_event(loaded: LoadedModel) -> None:
    async def run() -> tuple[list[EngineEvent], list[EngineEvent]]:
        engine = Engine(loaded, EngineSettings(input_mode="turn", max_reply_items=24))
        engine.start()
        client = ThreadEngineClient(engine)
        try:
            call = client.new_call_id()
            client.submit(Open(call))
            feed(client, call, tone(0.8))
            client.submit(Respond(call, request=7))
            first = await until(client, call, ReplyEnded)
            feed(client, call, tone(0.8))
            client.submit(Respond(call, request=8))
            second: list[EngineEvent] = []
            while not any(isinstance(e, AudioChunk) for e in second):
                second.append(await asyncio.wait_for(client.next_event(call), 60))
            client.submit(Interrupt(call, request=9, played_frames=1))
            second += await until(client, call, InterruptDone)
            return first, second
        finally:
            engine.stop()

    first, second = asyncio.run(run())
    chunks = [e for e in first if isinstance(e, AudioChunk)]
    end = first[-1]
    assert chunks and all(c.request == 7 for c in chunks) and [c.frame_index for c in chunks] == list(range(len(chunks)))
    assert isinstance(end, ReplyEnded) and end.request == 7 and not end.interrupted and end.frames == len(chunks)
    assert "".join(e.text for e in first if isinstance(e, TextDelta)) == end.text
    ended = [e for e in second if isinstance(e, ReplyEnded)]
    done = second[-1]
    assert isinstance(done, InterruptDone) and done.request == 9 and done.cut
    assert len(ended) == 1 and ended[0].request == 8 and ended[0].interrupted and ended[0].frames == 1


def test_a_full_queue_is_a_rejected_event_not_an_exception(loaded: LoadedModel) -> None:
    async def run() -> list[EngineEvent]:
        engine = Engine(loaded, EngineSettings(command_queue_size=1))  # never started: the queue stays full
        client = ThreadEngineClient(engine)
        call = client.new_call_id()
        client.submit(Open(call))
        client.submit(Respond(call, request=3))
        client.submit(Feed(call, np.zeros(1280, np.float32)))
        return [await client.next_event(call), await client.next_event(call)]

    events = asyncio.run(run())
    assert [type(e) for e in events] == [Rejected, Rejected]
    assert events[0].request == 3 and events[0].command == "Respond"  # type: ignore[union-attr]
    assert events[1].command == "Feed"  # type: ignore[union-attr]


def test_a_failed_step_is_a_fault_event_of_the_running_request(loaded: LoadedModel) -> None:
    async def run() -> EngineEvent:
        engine = Engine(loaded, EngineSettings(input_mode="turn", max_reply_items=24))
        engine.start()
        client = ThreadEngineClient(engine)
        try:
            call = client.new_call_id()
            client.submit(Open(call))
            feed(client, call, tone(0.5))

            def hook(ids: list[int]) -> None:
                raise RuntimeError("injected")

            await asyncio.sleep(0)
            engine.fault_hook = hook
            client.submit(Respond(call, request=5))
            return (await until(client, call, EngineFault))[-1]
        finally:
            engine.stop()

    fault = asyncio.run(run())
    assert isinstance(fault, EngineFault) and fault.request == 5 and "injected" in fault.message
