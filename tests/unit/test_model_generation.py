"""Generation control flow on scripted decisions, including branches the reference traces never visit."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from model.generation import Generation, GenerationMode
from model.lfm2_audio import END_OF_AUDIO, Modality

T, A, EOA = "T", "A", "EOA"


class _ScriptedModel:
    """Stands in for LFM2AudioModel: each backbone call's decision comes from a script."""

    def __init__(self, text_tokens: list[int], frames: list[int]) -> None:
        self.config = SimpleNamespace(interleaved_n_text=6, interleaved_n_audio=12)
        self.codebooks = 8
        self.codebook_offsets = torch.zeros(8, dtype=torch.long)
        self._text = iter(text_tokens)
        self._frames = iter(frames)
        self.lfm = SimpleNamespace(text_logits=self._text_logits)

    def _text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(512)
        logits[next(self._text)] = 1.0
        return logits

    def sample_audio_frame(self, hidden, sampling, rng, keep):  # type: ignore[no-untyped-def]
        code0 = next(self._frames)
        return torch.tensor([code0] + [5] * 7), None

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(1, 1, 4)

    def embed_audio_frames(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.zeros(4)


def _run(mode: GenerationMode, text_tokens: list[int], frames: list[int], max_new_tokens: int = 200) -> tuple[list[str], Generation]:
    model = _ScriptedModel(text_tokens, frames)
    model.lfm = _Backbone(model.lfm.text_logits)  # type: ignore[assignment]
    gen = Generation(model, state=None, pending=torch.zeros(1, 3, 4), mode=mode, max_new_tokens=max_new_tokens)  # type: ignore[arg-type]
    out = []
    for item in gen:
        if item.modality == Modality.TEXT:
            out.append(f"T{item.token}")
        else:
            out.append(EOA if item.is_end_of_audio else A)
    return out, gen


class _Backbone:
    def __init__(self, text_logits) -> None:  # type: ignore[no-untyped-def]
        self.text_logits = text_logits

    def __call__(self, x: torch.Tensor, state: object) -> torch.Tensor:
        return torch.zeros(1, x.shape[1], 4)


def test_interleaved_budgets_and_im_end_not_yielded() -> None:
    out, gen = _run(GenerationMode.INTERLEAVED, [10, 11, 12, 13, 14, 15, 16, 7], [1] * 12)
    assert out == ["T10", "T11", "T12", "T13", "T14", "T15"] + [A] * 12 + ["T16"]
    assert gen.end_reason == "im_end" and gen.calls == 20


def test_interleaved_end_of_audio_before_text_end_keeps_counter() -> None:
    # EOA as the 4th frame of the first audio block: the counter (12 -> 8 left after 4 calls) is not
    # reset, so the next text block lasts 8 items, then a full 12-frame block follows.
    text = [20 + i for i in range(6)] + [40 + i for i in range(8)] + [7]
    frames = [1, 1, 1, END_OF_AUDIO] + [1] * 12
    out, _ = _run(GenerationMode.INTERLEAVED, text, frames)
    assert out == [f"T{20 + i}" for i in range(6)] + [A, A, A, EOA] + [f"T{40 + i}" for i in range(8)] + [A] * 12


def test_interleaved_text_end_then_single_text_after_end_of_audio() -> None:
    # Once <|text_end|> is out, audio ignores the 12-frame budget; after each end-of-audio frame
    # exactly one text item is generated, then audio resumes (here <|im_end|> ends it instead).
    text = [20, 130, 50, 7]
    frames = [1] * 14 + [END_OF_AUDIO] + [1, 1, END_OF_AUDIO]
    out, gen = _run(GenerationMode.INTERLEAVED, text, frames)
    assert out == ["T20", "T130"] + [A] * 14 + [EOA, "T50"] + [A, A, EOA]
    assert gen.end_reason == "im_end"


def test_sequential_switches_and_yields_im_end() -> None:
    out, gen = _run(GenerationMode.SEQUENTIAL, [30, 128, 31, 130, 7], [1, 1, END_OF_AUDIO])
    assert out == ["T30", "T128", A, A, EOA, "T31", "T130", "T7"]
    assert gen.end_reason == "im_end"


def test_max_new_tokens_and_stop() -> None:
    out, gen = _run(GenerationMode.SEQUENTIAL, list(range(40, 60)), [], max_new_tokens=5)
    assert len(out) == 5 and gen.end_reason == "max_new_tokens"
    model = _ScriptedModel([41, 42], [])
    model.lfm = _Backbone(model.lfm.text_logits)  # type: ignore[assignment]
    g = Generation(model, None, torch.zeros(1, 1, 4), GenerationMode.SEQUENTIAL)  # type: ignore[arg-type]
    assert g.step() is not None
    g.stop()
    assert g.step() is None and g.end_reason == "stopped"
