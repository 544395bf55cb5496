"""Tiny checkpoint builder round trip: make -> load -> generate; plus the ASR/TTS tools."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import load_model
from model.generation import GenerationMode, start_generation
from model.lfm2_audio import Modality
from model.tiny import make_tiny_checkpoint
from model.tools import synthesize, transcribe


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0)
    return load_model(path, device="cpu")


def test_layout_and_determinism(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    names = {p.name for p in tiny.path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
            "tokenizer-e351c8d8-checkpoint125.safetensors", "mimi_config.json"} <= names
    assert tiny.tokenizer.token_to_id("<|audio_start|>") == 128
    assert tiny.tokenizer.token_to_id("<|im_end|>") == 7
    again = make_tiny_checkpoint(tmp_path / "again", seed=0)
    assert (again / "model.safetensors").read_bytes() == (tiny.path / "model.safetensors").read_bytes()


def test_interleaved_generation_emits_audio_and_ends(tiny) -> None:  # type: ignore[no-untyped-def]
    chat = tiny.new_chat()
    chat.new_turn("system")
    chat.add_text("Respond with interleaved text and audio.")
    chat.end_turn()
    chat.new_turn("user")
    chat.add_text("Hello, please book a table for two.")
    chat.end_turn()
    chat.new_turn("assistant")
    gen = start_generation(tiny.model, chat.model_inputs(), GenerationMode.INTERLEAVED, max_new_tokens=60)
    items = list(gen)
    kinds = [it.modality for it in items]
    assert kinds[:6] == [Modality.TEXT] * 6
    assert kinds[6] == Modality.AUDIO_OUT and items[6].codes is not None and items[6].codes.shape == (8,)
    assert gen.end_reason == "im_end"


def test_tools(tiny) -> None:  # type: ignore[no-untyped-def]
    audio = np.sin(np.arange(16000, dtype=np.float32) / 16000 * 2 * np.pi * 220) * 0.3
    text = transcribe(tiny, audio, max_new_tokens=8)
    assert isinstance(text, str)
    wav = synthesize(tiny, "Hello, how can I help you today?", max_new_tokens=12)
    assert wav.dtype == np.float32 and wav.ndim == 1 and wav.size % 1920 == 0 and wav.size > 0
    with pytest.raises(ValueError):
        synthesize(tiny, "   ")
