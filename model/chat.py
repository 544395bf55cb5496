"""Text tokenizer and the chat template (liquid-audio's ``ChatState`` equivalent).

Each piece is tokenized on its own (BPE merges never cross pieces), without special-token
post-processing: ``<|startoftext|>`` | ``<|im_start|>{role}\\n`` | text | ``<|im_end|>\\n`` ...
Audio inputs become mel features plus one AUDIO_IN flag per encoder frame (ceil(frames / 8)).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tokenizers import Tokenizer

from model.errors import CheckpointError
from model.lfm2_audio import Modality
from model.mel import MelFrontend

IM_END = 7
AUDIO_START = 128
TEXT_END = 130
BOS_TEXT = "<|startoftext|>"

Role = Literal["system", "user", "assistant"]


class TextTokenizer:
    """Thin wrapper over a ``tokenizers.Tokenizer`` loaded from ``tokenizer.json``."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tok = tokenizer

    @classmethod
    def from_file(cls, path: Path) -> TextTokenizer:
        try:
            return cls(Tokenizer.from_file(str(path)))
        except FileNotFoundError as exc:
            raise CheckpointError(f"{path}: tokenizer file not found") from exc
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot load tokenizer: {exc}") from exc

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=skip_special_tokens))

    def token_to_id(self, token: str) -> int | None:
        result = self._tok.token_to_id(token)
        return None if result is None else int(result)

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))


def mel_to_positions(frames: int, factor: int = 8) -> int:
    """Backbone positions of an audio input of ``frames`` mel frames: ceil(frames / factor)."""
    return -(frames // -factor)


class ChatState:
    """The model inputs of a chat: text ids, mel features, audio-out codes, modality flags."""

    def __init__(self, tokenizer: TextTokenizer, mel: MelFrontend, codebooks: int = 8,
                 subsampling_factor: int = 8, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.tokenizer = tokenizer
        self.mel = mel
        self.codebooks = codebooks
        self.subsampling_factor = subsampling_factor
        self.device = torch.device(device)
        self.dtype = dtype
        self.text = torch.tensor([tokenizer.encode(BOS_TEXT)], dtype=torch.long, device=self.device)
        self.audio_in = torch.empty((mel.config.features, 0), dtype=dtype, device=self.device)
        self.audio_in_lens = torch.empty((0,), dtype=torch.long, device=self.device)
        self.audio_out = torch.empty((codebooks, 0), dtype=torch.long, device=self.device)
        self.modality_flag = torch.full_like(self.text, int(Modality.TEXT))

    def __repr__(self) -> str:
        return (f"ChatState(text={self.text.shape[1]}, audio_in={self.audio_in.shape[1]}, "
                f"audio_out={self.audio_out.shape[1]}, positions={self.modality_flag.shape[1]})")

    def add_text(self, text: str) -> None:
        ids = torch.tensor([self.tokenizer.encode(text)], dtype=torch.long, device=self.device)
        self.text = torch.cat((self.text, ids), 1)
        self.modality_flag = torch.cat((self.modality_flag, torch.full_like(ids, int(Modality.TEXT))), 1)

    def new_turn(self, role: Role) -> None:
        self.add_text(f"<|im_start|>{role}\n")

    def end_turn(self) -> None:
        self.add_text("<|im_end|>\n")

    def add_audio(self, waveform: np.ndarray | torch.Tensor, sample_rate: int) -> None:
        """Mono float audio at the model's input rate (16 kHz)."""
        if sample_rate != self.mel.config.sample_rate:
            raise ValueError(f"audio must be {self.mel.config.sample_rate} Hz, got {sample_rate} Hz (resample first)")
        wave = torch.as_tensor(np.asarray(waveform, dtype=np.float32) if isinstance(waveform, np.ndarray) else waveform)
        if wave.dim() == 2 and wave.shape[0] == 1:
            wave = wave[0]
        if wave.dim() != 1 or wave.shape[0] == 0:
            raise ValueError(f"audio must be a non-empty mono waveform, got shape {list(wave.shape)}")
        wave = wave.to(device=self.device, dtype=torch.float32)
        features, _ = self.mel(wave[None], torch.tensor([wave.shape[0]], device=self.device))
        feats = features[0].to(self.dtype)
        frames = feats.shape[1]
        positions = mel_to_positions(frames, self.subsampling_factor)
        flags = torch.full((1, positions), int(Modality.AUDIO_IN), dtype=torch.long, device=self.device)
        self.audio_in = torch.cat((self.audio_in, feats), 1)
        self.audio_in_lens = torch.cat((self.audio_in_lens, torch.tensor([frames], device=self.device)))
        self.modality_flag = torch.cat((self.modality_flag, flags), 1)

    def append(self, text: torch.Tensor, audio_out: torch.Tensor, modality_flag: torch.Tensor) -> None:
        """Append generated items (text ids [1, n], codes [codebooks, m], flags [1, n+m])."""
        if modality_flag.dim() == 1:
            modality_flag = modality_flag[None]
        if modality_flag.shape[1] != text.shape[1] + audio_out.shape[1]:
            raise ValueError("modality_flag length must equal text + audio_out lengths")
        self.text = torch.cat((self.text, text.to(self.device)), 1)
        self.audio_out = torch.cat((self.audio_out, audio_out.to(self.device)), 1)
        self.modality_flag = torch.cat((self.modality_flag, modality_flag.to(self.device)), 1)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {
            "text": self.text, "audio_in": self.audio_in, "audio_in_lens": self.audio_in_lens,
            "audio_out": self.audio_out, "modality_flag": self.modality_flag,
        }
