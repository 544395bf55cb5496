"""The engine against the official reference, and interrupt truncation against a fresh prefill."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model.checkpoint import LoadedModel, load_model
from model.conversation import Conversation
from model.engine import AgentAudio, CallConversation, Engine, EngineSettings, ReplyFinished
from model.parity import read_wav

FRAME = 1280


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint_dir: Path) -> LoadedModel:
    torch.set_num_threads(1)
    return load_model(tiny_checkpoint_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def reference(tiny_reference_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(tiny_reference_dir / "reference.safetensors"))


@pytest.fixture(scope="module")
def wave(tiny_reference_dir: Path) -> np.ndarray:
    data, rate = read_wav(tiny_reference_dir / "input.wav")
    assert rate == 16000
    return data


async def collect(conv: CallConversation, stop_after: int | None = None) -> tuple[list[AgentAudio], object]:
    frames: list[AgentAudio] = []
    while True:
        event = await asyncio.wait_for(conv.events.get(), 60)
        if isinstance(event, AgentAudio):
            frames.append(event)
            if stop_after is not None and len(frames) == stop_after:
                return frames, None
        else:
            return frames, event


def feed_all(conv: CallConversation, wave: np.ndarray) -> None:
    for i in range(0, len(wave), FRAME):
        conv.feed(wave[i : i + FRAME])


@pytest.mark.parametrize("mode", ["turn", "chunked"])
def test_reply_reproduces_official_interleaved_trace(loaded: LoadedModel, reference: dict[str, torch.Tensor],
                                                     wave: np.ndarray, mode: str) -> None:
    """Turn mode is the official computation; on this short input chunked mode gives the same reply."""
    kinds = reference["interleaved.kind"].tolist()
    rows = reference["interleaved.tokens"]
    want_codes = [tuple(rows[i].tolist()) for i, k in enumerate(kinds) if k == 3 and int(rows[i][0]) != 2048]
    want_text = loaded.tokenizer.decode([int(rows[i][0]) for i, k in enumerate(kinds) if k == 1],
                                        skip_special_tokens=True)

    async def run() -> tuple[list[AgentAudio], object]:
        engine = Engine(loaded, EngineSettings(input_mode=mode))
        engine.start()
        try:
            conv = engine.open()
            feed_all(conv, wave)
            conv.respond()
            return await collect(conv)
        finally:
            engine.stop()

    frames, done = asyncio.run(run())
    assert [f.codes for f in frames] == want_codes
    assert [f.frame_index for f in frames] == list(range(len(want_codes)))
    assert all(f.pcm.shape == (1920,) and f.pcm.dtype == np.float32 for f in frames)
    assert isinstance(done, ReplyFinished) and not done.interrupted
    assert done.text == want_text and done.frames == len(want_codes)


def fresh_prefill_hidden(loaded: LoadedModel, conv: Conversation) -> tuple[torch.Tensor, object]:
    """Feed the conversation's recorded history into a new state in one forward."""
    state = loaded.model.lfm.new_state(batch_size=1, kv_capacity=conv.state.kv_capacity)
    embeds = torch.cat([conv.embed_segment(s) for t in conv.turns for s in t.segments])
    hidden = loaded.model.lfm(embeds[None], state)[0, -1]
    return hidden, state


@pytest.mark.parametrize("played", [0, 1, 5, 13])
def test_interrupt_state_equals_fresh_prefill_of_heard_history(loaded: LoadedModel, wave: np.ndarray,
                                                              played: int) -> None:
    async def run() -> tuple[Engine, CallConversation, ReplyFinished | None, list[AgentAudio]]:
        engine = Engine(loaded, EngineSettings(input_mode="turn"))
        engine.start()
        conv = engine.open()
        feed_all(conv, wave)
        conv.respond()
        frames, _ = await collect(conv, stop_after=max(played, 1) + 2)
        result = await conv.interrupt(played)
        return engine, conv, result, frames

    engine, _handle, result, frames = asyncio.run(run())
    try:
        assert result is not None and result.interrupted and result.frames == played
        conv = next(c.conv for c in engine._calls.values() if c.conv is not None)
        # the history holds exactly the played codes, in order
        kept = [tuple(int(x) for x in row) for t in conv.turns for s in t.segments if s.kind == "audio_out"
                and s.codes is not None for row in s.codes]
        assert kept == [f.codes for f in frames[:played]]
        assert conv.state.position == conv.history_positions
        hidden_fresh, fresh = fresh_prefill_hidden(loaded, conv)
        # continuing from the rolled-back state equals continuing from a fresh prefill
        probe = loaded.model.embed_text(torch.tensor([[6]]))
        ours = loaded.model.lfm(probe, conv.state)[0, -1]
        theirs = loaded.model.lfm(probe, fresh)[0, -1]  # type: ignore[arg-type]
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
        for a, b in zip(conv.state.conv, fresh.conv, strict=True):  # type: ignore[attr-defined]
            if a is not None:
                torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        assert hidden_fresh.shape == ours.shape
    finally:
        engine.stop()


@pytest.mark.parametrize("kind", ["reply", "greeting"])
def test_late_barge_in_cuts_a_completed_reply_to_what_was_heard(loaded: LoadedModel, wave: np.ndarray,
                                                                kind: str) -> None:
    """Generation finished before playout did; the caller cuts in while it is still playing."""
    played = 3

    async def run() -> tuple[Engine, list[AgentAudio], object, ReplyFinished | None]:
        engine = Engine(loaded, EngineSettings(input_mode="turn", max_reply_items=40))
        engine.start()
        conv = engine.open()
        if kind == "greeting":
            conv.greet("Hello, you are talking to an automated assistant.")
        else:
            feed_all(conv, wave)
            conv.respond()
        frames, done = await collect(conv)
        result = await conv.interrupt(played)
        again = await conv.interrupt(played)  # nothing left to cut
        assert again is None
        return engine, frames, done, result

    engine, frames, done, result = asyncio.run(run())
    try:
        assert isinstance(done, ReplyFinished) and not done.interrupted and done.frames > played
        assert result is not None and result.interrupted and result.frames == played
        conv = next(c.conv for c in engine._calls.values() if c.conv is not None)
        kept = [tuple(int(x) for x in row) for t in conv.turns for s in t.segments if s.kind == "audio_out"
                and s.codes is not None for row in s.codes]
        assert kept == [f.codes for f in frames[:played]]
        assert conv.turns[-1].role == "assistant" and conv.state.position == conv.history_positions
        _, fresh = fresh_prefill_hidden(loaded, conv)
        probe = loaded.model.embed_text(torch.tensor([[6]]))
        torch.testing.assert_close(loaded.model.lfm(probe, conv.state), loaded.model.lfm(probe, fresh),
                                   atol=1e-4, rtol=1e-4)
    finally:
        engine.stop()


@pytest.mark.parametrize("mode", ["turn", "chunked"])
def test_retracted_reply_reopens_the_caller_turn(loaded: LoadedModel, wave: np.ndarray, mode: str) -> None:
    """The caller paused, the answer started early, then the caller went on: one caller turn remains."""
    half = (len(wave) // 2) // FRAME * FRAME

    async def run() -> tuple[Engine, list[object]]:
        engine = Engine(loaded, EngineSettings(input_mode=mode, max_reply_items=30))
        engine.start()
        conv = engine.open()
        feed_all(conv, wave[:half])
        conv.respond()
        await collect(conv, stop_after=2)
        conv.retract()
        retracted = await asyncio.wait_for(conv.events.get(), 30)
        while isinstance(retracted, AgentAudio):
            retracted = await asyncio.wait_for(conv.events.get(), 30)
        feed_all(conv, wave[half:])
        conv.respond()
        _, done = await collect(conv)
        return engine, [retracted, done]

    engine, (retracted, done) = asyncio.run(run())
    try:
        assert isinstance(retracted, ReplyFinished) and retracted.interrupted and retracted.frames == 0
        assert isinstance(done, ReplyFinished) and not done.interrupted
        conv = next(c.conv for c in engine._calls.values() if c.conv is not None)
        roles = [t.role for t in conv.turns]
        assert roles == ["system", "user", "assistant"]  # the withdrawn answer left no trace
        user = conv.turns[1]
        audio_rows = sum(s.length for s in user.segments if s.kind == "audio_in")
        assert audio_rows >= (len(wave) // FRAME)  # both halves are in the one caller turn
        assert conv.state.position == conv.history_positions
        _, fresh = fresh_prefill_hidden(loaded, conv)
        probe = loaded.model.embed_text(torch.tensor([[6]]))
        torch.testing.assert_close(loaded.model.lfm(probe, conv.state), loaded.model.lfm(probe, fresh),
                                   atol=1e-4, rtol=1e-4)
    finally:
        engine.stop()
