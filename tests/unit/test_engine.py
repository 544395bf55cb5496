"""Engine behaviour on the tiny checkpoint: batching, failures, greeting, context budget."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from model.batched import backbone_positions, backbone_rows
from model.checkpoint import LoadedModel, load_model
from model.conversation import Conversation, InputSettings, Segment, heard_items
from model.engine import AgentAudio, CallConversation, Engine, EngineError, EngineSettings, ReplyFinished
from model.lfm2_audio import Modality
from model.pool import BackbonePool

FRAME = 1280


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint_dir: Path) -> LoadedModel:
    torch.set_num_threads(1)
    return load_model(tiny_checkpoint_dir, device="cpu", dtype="float32")


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """A voiced, syllable-modulated signal (deterministic), float32 at 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    f0 = 110 + 40 * rng.random()
    voiced = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * (3 + rng.random()) * t))
    return (0.2 * voiced * envelope + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


async def reply(conv: CallConversation) -> tuple[list[AgentAudio], object]:
    frames: list[AgentAudio] = []
    while True:
        event = await asyncio.wait_for(conv.events.get(), 60)
        if isinstance(event, AgentAudio):
            frames.append(event)
        else:
            return frames, event


def feed(conv: CallConversation, wave: np.ndarray) -> None:
    for i in range(0, len(wave), FRAME):
        conv.feed(wave[i : i + FRAME])


def test_backbone_rows_batched_equal_one_by_one_and_idle_rows_keep_their_state(loaded: LoadedModel) -> None:
    """One masked attention over static slots equals each conversation stepped alone; a row that does not
    advance (a call in prefill, a free slot) keeps its conv state, K/V and position."""
    lfm = loaded.model.lfm
    gen = torch.Generator().manual_seed(0)
    lengths = [3, 11, 7, 5]
    pool = BackbonePool(lfm.config, slots=4, context=64, device="cpu", dtype=torch.float32)
    slot_states = [pool.open_state() for _ in lengths]
    solo_states = []
    for n, slot in zip(lengths, slot_states, strict=True):
        prompt = torch.randn(1, n, lfm.config.hidden_size, generator=gen)
        a = lfm.new_state()
        lfm(prompt, a)
        lfm(prompt, slot)
        solo_states.append(a)
    idle = 2  # row 2 stays out of the steps
    frozen = [c.clone() for c in slot_states[idle].conv if c is not None]
    advance = torch.tensor([i != idle for i in range(len(lengths))])
    for _ in range(4):
        x = torch.randn(len(lengths), lfm.config.hidden_size, generator=gen)
        kv_len = max(s.position for s in slot_states) + 1
        batched = backbone_rows(lfm, pool, x, advance, kv_len)
        for i, s in enumerate(slot_states):
            if advance[i]:
                s.advanced()
                solo = lfm(x[i, None, None], solo_states[i])[0, -1]
                torch.testing.assert_close(batched[i], solo, atol=1e-5, rtol=1e-5)
    assert [s.position for s in slot_states] == [n + (4 if i != idle else 0) for i, n in enumerate(lengths)]
    assert pool.positions.tolist() == [s.position for s in slot_states]
    assert all(torch.equal(a, b) for a, b in zip(frozen, [c for c in slot_states[idle].conv if c is not None],
                                                   strict=True))
    # the idle conversation goes on exactly as if nothing had happened around it
    y = torch.randn(1, 1, lfm.config.hidden_size, generator=gen)
    torch.testing.assert_close(lfm(y, slot_states[idle]), lfm(y, solo_states[idle]), atol=1e-5, rtol=1e-5)


def test_slot_truncate_equals_a_fresh_prefill(loaded: LoadedModel) -> None:
    lfm = loaded.model.lfm
    gen = torch.Generator().manual_seed(3)
    pool = BackbonePool(lfm.config, slots=2, context=64, device="cpu", dtype=torch.float32)
    state = pool.open_state()
    first, second = (torch.randn(1, n, lfm.config.hidden_size, generator=gen) for n in (9, 6))
    lfm(first, state)
    mark = state.save()
    lfm(second, state)
    state.truncate(mark)
    probe = torch.randn(1, 2, lfm.config.hidden_size, generator=gen)
    fresh = lfm.new_state()
    lfm(first, fresh)
    torch.testing.assert_close(lfm(probe, state), lfm(probe, fresh), atol=1e-5, rtol=1e-5)


def test_depthformer_batched_equals_one_by_one(loaded: LoadedModel) -> None:
    gen = torch.Generator().manual_seed(1)
    hidden = 6 * torch.randn(5, loaded.config.lfm.hidden_size, generator=gen)
    batched, _ = loaded.model.depth_frames(hidden, lambda logits: logits.argmax(-1))
    solo = torch.stack([loaded.model.sample_audio_frame(h)[0] for h in hidden])
    assert torch.equal(batched, solo)


def test_several_positions_per_row_equal_each_slot_fed_alone(loaded: LoadedModel) -> None:
    """``backbone_positions``: n positions for several slots in one pass (causal within the n) equals each
    state fed alone, and a slot that does not advance keeps its K/V, conv state and position."""
    lfm = loaded.model.lfm
    gen = torch.Generator().manual_seed(4)
    lengths = [6, 2, 9]
    pool = BackbonePool(lfm.config, slots=4, context=64, device="cpu", dtype=torch.float32)
    slot_states = [pool.open_state() for _ in lengths]
    solo_states = []
    for n, slot in zip(lengths, slot_states, strict=True):
        prompt = torch.randn(1, n, lfm.config.hidden_size, generator=gen)
        a = lfm.new_state()
        lfm(prompt, a)
        lfm(prompt, slot)
        solo_states.append(a)
    idle = 1
    frozen_keys = [k[idle, :, :-1].clone() for k in pool.keys if k is not None]  # the last row is the write-off
    frozen_conv = [c[idle].clone() for c in pool.conv if c is not None]
    advance = torch.tensor([i != idle for i in range(len(lengths))])
    x = torch.randn(len(lengths), 3, lfm.config.hidden_size, generator=gen)
    out = backbone_positions(lfm, pool, x, advance, max(lengths) + 3)
    for i, s in enumerate(slot_states):
        if advance[i]:
            s.advanced(3)
            torch.testing.assert_close(out[i], lfm(x[i, None], solo_states[i])[0], atol=1e-5, rtol=1e-5)
    assert pool.positions.tolist()[:3] == [9, 2, 12]
    assert all(torch.equal(a, k[idle, :, :-1]) for a, k in zip(frozen_keys, [k for k in pool.keys if k is not None],
                                                      strict=True))
    assert all(torch.equal(a, c[idle]) for a, c in zip(frozen_conv, [c for c in pool.conv if c is not None],
                                                      strict=True))
    # and every state goes on as if it had been fed alone
    y = torch.randn(1, 1, lfm.config.hidden_size, generator=gen)
    for slot, solo in zip(slot_states, solo_states, strict=True):
        torch.testing.assert_close(lfm(y, slot), lfm(y, solo), atol=1e-5, rtol=1e-5)


def test_concurrent_calls_get_the_same_replies_as_alone(loaded: LoadedModel) -> None:
    """Two turns per call: replies that start together (one batched feed of their headers) and end
    together (one batched feed of their ends of turn) equal each call alone."""
    waves = [speech_like(1.5, seed) for seed in range(3)]
    second = [speech_like(0.8, 10 + seed) for seed in range(3)]

    async def alone(w: np.ndarray, w2: np.ndarray) -> list[tuple[int, ...]]:
        engine = Engine(loaded, EngineSettings(input_mode="turn", max_reply_items=60))
        engine.start()
        try:
            conv = engine.open()
            codes = []
            for wave in (w, w2):
                feed(conv, wave)
                conv.respond()
                frames, done = await reply(conv)
                assert isinstance(done, ReplyFinished)
                codes += [f.codes for f in frames]
            return codes
        finally:
            engine.stop()

    async def together() -> list[list[tuple[int, ...]]]:
        engine = Engine(loaded, EngineSettings(input_mode="turn", max_reply_items=60))
        engine.start()
        try:
            convs = [engine.open() for _ in waves]
            codes: list[list[tuple[int, ...]]] = [[] for _ in convs]
            for turn in (waves, second):
                steps_before = engine.steps
                for conv, w in zip(convs, turn, strict=True):
                    feed(conv, w)
                for conv in convs:
                    conv.respond()
                results = await asyncio.gather(*(reply(c) for c in convs))
                assert engine.steps - steps_before < sum(len(f) for f, _ in results)  # steps were shared
                for i, (frames, _) in enumerate(results):
                    codes[i] += [f.codes for f in frames]
            return codes
        finally:
            engine.stop()

    solo = [asyncio.run(alone(w, w2)) for w, w2 in zip(waves, second, strict=True)]
    assert all(len(s) > 0 for s in solo)
    assert asyncio.run(together()) == solo


def test_failing_call_gets_error_and_others_continue(loaded: LoadedModel) -> None:
    async def run() -> tuple[object, object, int]:
        engine = Engine(loaded, EngineSettings(input_mode="turn", max_reply_items=30))
        engine.start()
        try:
            good, bad = engine.open(), engine.open()
            feed(good, speech_like(1.0, 1))
            feed(bad, speech_like(1.0, 2))

            def hook(ids: list[int]) -> None:
                if bad.id in ids and len(ids) == 1:
                    raise RuntimeError("injected fault")

            engine.fault_hook = hook
            bad.respond()
            bad_event = await asyncio.wait_for(bad.events.get(), 30)
            engine.fault_hook = None
            good.respond()
            frames, good_done = await reply(good)
            # the failed call was reset and can still talk
            feed(bad, speech_like(1.0, 3))
            bad.respond()
            _, bad_again = await reply(bad)
            return bad_event, good_done, len(frames) if bad_again is not None else -1
        finally:
            engine.stop()

    bad_event, good_done, good_frames = asyncio.run(run())
    assert isinstance(bad_event, EngineError) and "injected fault" in bad_event.message
    assert isinstance(good_done, ReplyFinished) and good_frames > 0


class WorkerCrash(BaseException):
    """Escapes the per-step guard: kills the worker thread."""


def test_worker_death_errors_every_call_and_restarts(loaded: LoadedModel) -> None:
    async def run() -> tuple[list[object], object, int]:
        engine = Engine(loaded, EngineSettings(input_mode="turn", max_reply_items=20))
        engine.start()
        try:
            a, b = engine.open(), engine.open()
            feed(a, speech_like(0.5, 1))
            a.respond()
            await reply(a)  # commands are FIFO: both calls are open on the worker now
            fired: list[int] = []

            def hook(ids: list[int]) -> None:
                if not fired:
                    fired.append(1)
                    raise WorkerCrash

            engine.fault_hook = hook
            feed(a, speech_like(0.5, 3))
            a.respond()
            errors = [await asyncio.wait_for(a.events.get(), 30), await asyncio.wait_for(b.events.get(), 30)]
            engine.fault_hook = None
            c = engine.open()
            feed(c, speech_like(0.5, 2))
            c.respond()
            _, done = await reply(c)
            return errors, done, engine.restarts
        finally:
            engine.stop()

    errors, done, restarts = asyncio.run(run())
    assert all(isinstance(e, EngineError) and "died" in e.message for e in errors)
    assert isinstance(done, ReplyFinished) and restarts == 1


def test_greeting_is_spoken_and_kept_in_history(loaded: LoadedModel) -> None:
    async def run() -> tuple[list[AgentAudio], object, Engine]:
        engine = Engine(loaded, EngineSettings(max_reply_items=40))
        engine.start()
        conv = engine.open()
        conv.greet("Hello, this is an automated assistant.")
        frames, done = await reply(conv)
        return frames, done, engine

    frames, done, engine = asyncio.run(run())
    try:
        assert isinstance(done, ReplyFinished) and done.frames == len(frames) > 0
        assert done.text == "Hello, this is an automated assistant."  # the forced text, spoken
        assert done.text.startswith(frames[-1].text)
        conv = next(c.conv for c in engine._calls.values())
        assert conv is not None and conv.turns[-1].role == "assistant"
        assert conv.state.position == conv.history_positions
    finally:
        engine.stop()


def test_heard_items_cuts_text_after_last_played_frame() -> None:
    audio = (Modality.AUDIO_OUT, None, torch.zeros(8, dtype=torch.long))
    eoa = (Modality.AUDIO_OUT, None, torch.full((8,), 2048))
    text = (Modality.TEXT, 5, None)
    items = [text, text, audio, audio, text, audio, eoa, text]
    assert heard_items(items, 0) == []
    assert heard_items(items, 1) == items[:3]
    assert heard_items(items, 2) == items[:4]
    assert heard_items(items, 3) == items[:6]
    assert heard_items(items, 10) == items
    assert heard_items(items, None) == items


@pytest.mark.parametrize("budget", [32768, 8192])
def test_thirty_minute_call_stays_within_context_budget(loaded: LoadedModel, budget: int) -> None:
    """Synthetic history of a 30-minute call: 10 s caller turns, 10 s interleaved replies.

    A 30-minute call of continuous talk is about 29,000 positions, so the real budget (32,768) holds
    it; a smaller budget shows the oldest turns being dropped again and again with the call going on.
    """
    lfm = loaded.model.lfm
    conv = Conversation(1, loaded, lfm.new_state(), InputSettings("turn"), budget, reply_reserve_tokens=1024)
    conv.append_segment("system", Segment("text", conv.text_ids("<|startoftext|>system prompt")), new_turn=True)
    gen = torch.Generator().manual_seed(0)
    hidden = loaded.config.lfm.hidden_size
    seconds = 0.0
    while seconds < 30 * 60:
        conv.append_segment("user", Segment("text", conv.text_ids("<|im_start|>user\n")), new_turn=True)
        conv.append_segment("user", Segment("audio_in", embeds=0.1 * torch.randn(125, hidden, generator=gen)))
        conv.append_segment("user", Segment("text", conv.text_ids("<|im_end|>\n")))
        conv.append_segment("assistant", Segment("text", conv.text_ids("<|im_start|>assistant\n")), new_turn=True)
        for _block in range(10):  # interleaved: 6 text tokens, then 12 audio frames
            conv.append_segment("assistant", Segment("text", [int(x) for x in torch.randint(200, 400, (6,))]))
            codes = torch.randint(0, 2048, (12, 8), generator=gen)
            conv.append_segment("assistant", Segment("audio_out", codes=codes))
        conv.append_segment("assistant", Segment("text", conv.text_ids("<|im_end|>\n")))
        seconds += 20
        assert conv.state.position == conv.history_positions
        assert conv.state.position + conv.reply_reserve_tokens <= budget
    assert conv.compactions >= (3 if budget < 20000 else 0)
    assert conv.turns[0].role == "system"
    # the compacted state equals a fresh prefill of what remains
    state = lfm.new_state(kv_capacity=conv.state.kv_capacity)
    lfm(torch.cat([conv.embed_segment(s) for t in conv.turns for s in t.segments])[None], state)
    probe = loaded.model.embed_text(torch.tensor([[6]]))
    torch.testing.assert_close(lfm(probe, conv.state), lfm(probe, state), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("right", [0, 2])
def test_chunked_input_encodes_while_speaking_with_turn_mode_row_count(loaded: LoadedModel, right: int) -> None:
    """Chunks are encoded as frames arrive (as the worker does); the tail at end of turn; same rows."""
    wave = speech_like(2.3, seed=4)
    frames = [wave[i : i + FRAME] for i in range(0, len(wave), FRAME)]
    lfm = loaded.model.lfm
    chunked = Conversation(1, loaded, lfm.new_state(), InputSettings("chunked", 4, 8, right), 32768, 1024)
    encoded_before_end = 0
    for frame in frames:
        chunked.add_frame(frame)
        while chunked.chunk_ready():
            chunked.encode_chunk(final=False)
        encoded_before_end = chunked.turn_encoded_frames
    assert encoded_before_end >= len(frames) - 4 - right  # only the tail is left for the end of turn
    chunked.close_user_turn()
    turn = Conversation(2, loaded, lfm.new_state(), InputSettings("turn"), 32768, 1024)
    for frame in frames:
        turn.add_frame(frame)
    turn.close_user_turn()

    def rows(conv: Conversation) -> torch.Tensor:
        return torch.cat([s.embeds for s in conv.turns[-1].segments if s.kind == "audio_in" and s.embeds is not None])

    a, b = rows(chunked), rows(turn)
    assert a.shape == b.shape
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert float(cosine.mean()) > 0.9


@pytest.mark.parametrize("mode", ["turn", "chunked"])
def test_caller_text_keeps_its_place_after_the_audio_received(loaded: LoadedModel, mode: str) -> None:
    """DTMF digits reach the model as text, after the caller's audio so far, in the same turn."""
    lfm = loaded.model.lfm
    conv = Conversation(1, loaded, lfm.new_state(), InputSettings(mode, 4, 8), 32768, 1024)
    wave = speech_like(1.0, seed=7)
    for i in range(0, len(wave) - FRAME + 1, FRAME):
        conv.add_frame(wave[i : i + FRAME])
    conv.add_user_text("DTMF: 42#")
    conv.close_user_turn()
    kinds = [s.kind for s in conv.turns[-1].segments]
    assert kinds[0] == "text" and kinds[-2:] == ["text", "text"]  # header ... digits, <|im_end|>
    assert "audio_in" in kinds and kinds.index("audio_in") < len(kinds) - 2
    assert loaded.tokenizer.decode(conv.turns[-1].segments[-2].ids) == "DTMF: 42#"
    state = lfm.new_state(kv_capacity=conv.state.kv_capacity)
    lfm(torch.cat([conv.embed_segment(s) for t in conv.turns for s in t.segments])[None], state)
    probe = loaded.model.embed_text(torch.tensor([[6]]))
    torch.testing.assert_close(lfm(probe, conv.state), lfm(probe, state), atol=1e-4, rtol=1e-4)
