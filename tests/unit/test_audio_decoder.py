"""One audio-decoder interface (Mimi, detokenizer), its selection, the end-of-audio code rule, and the
engine's batched decode with the detokenizer's lookahead tail."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from model.audio_decoder import MimiStreams, decoder_codes, is_end_of_audio, select_audio_decoder
from model.checkpoint import MIMI_CONFIG_FILE, MIMI_FILE, LoadedModel, load_model
from model.detokenizer import (
    DETOKENIZER_DIR,
    LOOKAHEAD_SAMPLES,
    Detokenizer,
    DetokenizerConfig,
    tiny_detokenizer_config,
    write_detokenizer,
)
from model.engine import AgentAudio, Engine, EngineSettings, ReplyFinished
from model.errors import CheckpointError
from model.seeded import detokenizer_rule, materialize


@pytest.fixture(scope="module")
def both_decoders(tiny_checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint (Mimi) plus a seeded detokenizer: an LFM2.5-style folder with both."""
    folder = tmp_path_factory.mktemp("both") / "ckpt"
    shutil.copytree(tiny_checkpoint_dir, folder)
    raw = tiny_detokenizer_config()
    detok = Detokenizer(DetokenizerConfig.from_dict(raw)).eval()
    materialize(detok, 5, detokenizer_rule())
    with torch.no_grad():
        detok.lin.bias[:641] += 2.0
    write_detokenizer(detok, raw, folder / DETOKENIZER_DIR)
    return folder


def test_decoder_codes_clamp_end_of_audio_in_later_codebooks() -> None:
    frame = torch.tensor([5, 2048, 7, 2048, 0, 1, 2, 2047])
    assert decoder_codes(frame).tolist() == [5, 2047, 7, 2047, 0, 1, 2, 2047]
    assert not is_end_of_audio(frame)
    assert is_end_of_audio(torch.full((8,), 2048))


@pytest.mark.parametrize("choice, remove, expected", [
    ("auto", (), "detokenizer"),
    ("mimi", (), "mimi"),
    ("detokenizer", (), "detokenizer"),
    ("auto", (DETOKENIZER_DIR,), "mimi"),
    ("auto", (MIMI_FILE, MIMI_CONFIG_FILE), "detokenizer"),
])
def test_selection_by_setting_and_by_what_the_folder_ships(both_decoders: Path, tmp_path: Path, choice: str,
                                                          remove: tuple[str, ...], expected: str) -> None:
    folder = tmp_path / "ckpt"
    shutil.copytree(both_decoders, folder)
    for name in remove:
        target = folder / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    loaded = load_model(folder, device="cpu", dtype="float32", audio_decoder=choice)
    assert loaded.decoder is not None and loaded.decoder.name == expected
    assert (loaded.mimi is not None) == (expected == "mimi")
    assert (loaded.detokenizer is not None) == (expected == "detokenizer")


@pytest.mark.parametrize("choice, remove, message", [
    ("auto", (DETOKENIZER_DIR, MIMI_FILE), f"neither the Mimi weights {MIMI_FILE} nor the detokenizer folder"),
    ("mimi", (MIMI_FILE,), f"the Mimi weights {MIMI_FILE} (model.audio_decoder: mimi) is present"),
    ("detokenizer", (DETOKENIZER_DIR,), "the detokenizer folder audio_detokenizer/ with config.json"),
])
def test_a_missing_decoder_is_named(both_decoders: Path, tmp_path: Path, choice: str, remove: tuple[str, ...],
                                    message: str) -> None:
    folder = tmp_path / "ckpt"
    shutil.copytree(both_decoders, folder)
    for name in remove:
        target = folder / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(CheckpointError, match="no audio decoder") as err:
        load_model(folder, device="cpu", dtype="float32", audio_decoder=choice)
    assert message in str(err.value)


def test_unknown_choice_is_refused() -> None:
    with pytest.raises(ValueError, match="auto, mimi, detokenizer"):
        select_audio_decoder("vocoder", None, None, "x")


def test_mimi_streams_subset_steps_equal_streams_alone(tiny_checkpoint_dir: Path) -> None:
    loaded = load_model(tiny_checkpoint_dir, device="cpu", dtype="float32", audio_decoder="mimi")
    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 2048, (8, n), generator=gen) for n in (4, 2, 5)]
    alone = [loaded.decoder.decode(c[None])[0] for c in seqs]  # type: ignore[union-attr]
    streams = MimiStreams(loaded.mimi, capacity=1)
    slots = [streams.open() for _ in seqs]
    out: list[list[torch.Tensor]] = [[] for _ in seqs]
    for t in range(5):
        live = [i for i, c in enumerate(seqs) if t < c.shape[1]]
        audio = streams.step([slots[i] for i in live], torch.stack([seqs[i][:, t] for i in live]))
        for row, i in enumerate(live):
            out[i].append(audio[row])
    for i in range(3):
        assert torch.allclose(torch.cat(out[i]), alone[i], atol=1e-5)
    assert streams.flush(slots).shape == (3, 0)


def _greeting_chunks(loaded: LoadedModel) -> tuple[list[AgentAudio], ReplyFinished]:
    async def run() -> tuple[list[AgentAudio], ReplyFinished]:
        engine = Engine(loaded, EngineSettings(max_reply_items=60))
        engine.start()
        try:
            conv = engine.open()
            conv.greet("Hello there, how are you doing today?")
            chunks: list[AgentAudio] = []
            while True:
                ev = await asyncio.wait_for(conv.events.get(), 60)
                if isinstance(ev, AgentAudio):
                    chunks.append(ev)
                elif isinstance(ev, ReplyFinished):
                    return chunks, ev
                else:
                    raise AssertionError(ev)
        finally:
            engine.stop()

    return asyncio.run(run())


def test_engine_streams_the_detokenizer_and_sends_each_tail(both_decoders: Path) -> None:
    """Chunks are 80 ms; every stretch of audio (up to an end-of-audio frame, or the reply's end) is the
    whole-sequence decode of its codes, delayed by 20 ms, its tail in a last zero-padded chunk."""
    torch.set_num_threads(1)
    loaded = load_model(both_decoders, device="cpu", dtype="float32", audio_decoder="detokenizer")
    chunks, finished = _greeting_chunks(loaded)
    assert chunks and all(c.pcm.shape == (1920,) for c in chunks)
    assert [c.frame_index for c in chunks] == list(range(len(chunks)))
    stretches: list[tuple[list[tuple[int, ...]], list[np.ndarray]]] = [([], [])]
    for c in chunks:
        stretches[-1][1].append(c.pcm)
        if c.codes:
            stretches[-1][0].append(c.codes)
        else:  # a tail: this stretch is complete
            stretches.append(([], []))
    assert stretches[-1] == ([], []), "the reply's last stretch must end with its tail"
    assert sum(len(codes) for codes, _ in stretches) == finished.generated_frames
    for codes, pcm in stretches[:-1]:
        frames = decoder_codes(torch.tensor(codes).T[None])
        whole = loaded.decoder.decode(frames)[0].numpy()  # type: ignore[union-attr]
        stream = np.concatenate(pcm)
        assert float(np.abs(stream[:LOOKAHEAD_SAMPLES]).max()) == 0.0
        got = stream[LOOKAHEAD_SAMPLES : LOOKAHEAD_SAMPLES + whole.shape[0]]
        assert float(np.abs(got - whole).max()) <= 1e-4 * max(1.0, float(np.abs(whole).max()))
        assert float(np.abs(stream[LOOKAHEAD_SAMPLES + whole.shape[0]:]).max()) == 0.0  # the padding


class _ScriptedGeneration:
    """Test double of model.generation.Generation: yields fixed items."""

    def __init__(self, items: list[object]) -> None:
        self.items = items

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.items)

    def stop(self) -> None:
        pass


@pytest.mark.parametrize("choice", ["mimi", "detokenizer"])
def test_tts_decodes_frames_with_end_of_audio_in_later_codebooks(both_decoders: Path, choice: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The crash `lfm-call tts` had on the offline model: codebooks 1-7 predicting 2048 in a frame."""
    import model.tools as tools
    from model.generation import GeneratedItem
    from model.lfm2_audio import Modality

    frames = [torch.tensor([1, 2048, 3, 4, 5, 6, 7, 8]), torch.tensor([9, 10, 11, 12, 13, 14, 15, 2048]),
              torch.full((8,), 2048)]
    items = [GeneratedItem(Modality.AUDIO_OUT, codes=f) for f in frames]
    monkeypatch.setattr(tools, "start_generation", lambda *a, **k: _ScriptedGeneration(items))
    loaded = load_model(both_decoders, device="cpu", dtype="float32", audio_decoder=choice)
    audio = tools.synthesize(loaded, "Hello there.")
    expected = loaded.decoder.decode(decoder_codes(torch.stack(frames[:2], dim=1)[None]))[0]  # type: ignore[union-attr]
    assert audio.shape == (2 * 1920,)
    assert np.allclose(audio, expected.numpy(), atol=1e-6)
