"""Codes -> 24 kHz audio: one interface over Mimi and the LFM2.5 detokenizer, and one code rule.

``AudioDecoder.decode(codes)`` turns a whole sequence [B, 8, T] into [B, 1920 T] samples;
``AudioDecoder.streams(capacity)`` gives batched per-stream state (one slot per reply being spoken)
whose ``step(slots, codes [n, 8])`` returns 1920 samples per slot. A stream's output is the
whole-sequence decode delayed by ``lookahead_samples`` (0 for Mimi, 480 for the detokenizer); its
``flush`` returns those last samples when the sequence ends.

The code rule, for every path (engine, TTS, tools): a frame whose codebook 0 is end-of-audio
(2048) ends the audio and is never decoded; in any other frame, codebooks 1-7 may still predict
2048 (the official generators only check codebook 0), and neither decoder has such a code, so
``decoder_codes`` clamps it to the nearest real code. The raw frame stays in the history.

``select_audio_decoder`` implements ``model.audio_decoder``: ``auto`` uses the detokenizer when
the checkpoint ships one, else Mimi; ``mimi`` / ``detokenizer`` insist on one.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from model.detokenizer import LOOKAHEAD_SAMPLES, Detokenizer, DetokenizerStreams
from model.errors import CheckpointError
from model.lfm2_audio import END_OF_AUDIO
from model.slots import SlotPool

AUDIO_DECODER_CHOICES = ("auto", "mimi", "detokenizer")
FRAME_SAMPLES = 1920


def decoder_codes(codes: torch.Tensor) -> torch.Tensor:
    """Codes a decoder accepts: every value clamped into [0, 2048) (see the module docstring)."""
    return codes.clamp(0, END_OF_AUDIO - 1)


def is_end_of_audio(frame: torch.Tensor) -> bool:
    """The official rule: codebook 0 decides."""
    return int(frame.reshape(-1)[0]) == END_OF_AUDIO


class DecoderStreams(Protocol):
    def open(self) -> int: ...
    def close(self, slot: int) -> None: ...
    def reset(self, slots: list[int]) -> None: ...
    def step(self, slots: list[int], codes: torch.Tensor) -> torch.Tensor: ...
    def flush(self, slots: list[int]) -> torch.Tensor: ...


class AudioDecoder(Protocol):
    name: str
    lookahead_samples: int

    def decode(self, codes: torch.Tensor) -> torch.Tensor: ...
    def streams(self, capacity: int = 4) -> DecoderStreams: ...


class MimiStreams(SlotPool):
    """Mimi decoder states of many streams in one batched state; a step gathers the slots it decodes."""

    def __init__(self, mimi: object, capacity: int = 4) -> None:
        super().__init__()
        self.mimi = mimi
        self.state: Any = None
        self._grow(max(1, capacity))

    def _grow(self, capacity: int) -> None:
        from model.mimi import MimiDecoderState

        fresh = self.mimi.new_decoder_state(capacity)  # type: ignore[attr-defined]
        if self.state is not None:
            for key, tensor in self.state.tensors.items():
                fresh.tensors[key][: self.capacity] = tensor
        self.state = MimiDecoderState(fresh.tensors, capacity)
        super()._grow(capacity)

    def reset(self, slots: list[int]) -> None:
        assert self.state is not None
        self.state.reset(slots)

    @torch.no_grad()
    def step(self, slots: list[int], codes: torch.Tensor) -> torch.Tensor:
        from model.mimi import MimiDecoderState

        assert self.state is not None
        if slots == list(range(self.capacity)):
            sub = self.state
        else:
            idx = torch.tensor(slots, dtype=torch.long)
            sub = MimiDecoderState({k: v[idx.to(v.device)] for k, v in self.state.tensors.items()}, len(slots))
        out = self.mimi.decode_step(codes[:, :, None], sub)  # type: ignore[attr-defined]
        if sub is not self.state:
            for key, tensor in sub.tensors.items():
                self.state.tensors[key][idx.to(tensor.device)] = tensor
        return out[:, 0].float()

    def flush(self, slots: list[int]) -> torch.Tensor:
        device = next(iter(self.state.tensors.values())).device if self.state is not None else None
        return torch.zeros(len(slots), 0, device=device)


class MimiDecoder:
    name = "mimi"
    lookahead_samples = 0

    def __init__(self, mimi: object) -> None:
        self.mimi = mimi

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.mimi.decode(codes)[:, 0].float()  # type: ignore[attr-defined, no-any-return]

    def streams(self, capacity: int = 4) -> MimiStreams:
        return MimiStreams(self.mimi, capacity)


class DetokenizerDecoder:
    name = "detokenizer"
    lookahead_samples = LOOKAHEAD_SAMPLES

    def __init__(self, detok: Detokenizer) -> None:
        self.detok = detok

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.detok(codes).float()

    def streams(self, capacity: int = 4) -> DetokenizerStreams:
        return DetokenizerStreams(self.detok, capacity)


def select_audio_decoder(choice: str, mimi: object | None, detok: Detokenizer | None,
                         where: str) -> AudioDecoder:
    """The decoder ``choice`` (auto | mimi | detokenizer) names, from what the checkpoint ships."""
    if choice not in AUDIO_DECODER_CHOICES:
        raise ValueError(f"model.audio_decoder must be one of {', '.join(AUDIO_DECODER_CHOICES)}, got {choice!r}")
    if choice in ("auto", "detokenizer") and detok is not None:
        return DetokenizerDecoder(detok)
    if choice in ("auto", "mimi") and mimi is not None:
        return MimiDecoder(mimi)
    from model.checkpoint import MIMI_FILE
    from model.detokenizer import DETOKENIZER_DIR

    wanted = {
        "auto": f"neither the Mimi weights {MIMI_FILE} nor the detokenizer folder {DETOKENIZER_DIR}/",
        "mimi": f"the Mimi weights {MIMI_FILE} (model.audio_decoder: mimi)",
        "detokenizer": f"the detokenizer folder {DETOKENIZER_DIR}/ with config.json and model.safetensors "
                       "(model.audio_decoder: detokenizer)",
    }[choice]
    raise CheckpointError(f"{where}: no audio decoder: {wanted} is present")
