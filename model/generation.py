"""Sequential and interleaved generation, step by step, reproducing liquid-audio 1.0.0's control flow.

``Generation.step()`` makes exactly one backbone call and returns the item it decided (a text
token or an audio frame of ``codebooks`` codes), or ``None`` once generation has ended; a caller
(the real-time engine) may stop after any step. The backbone state is the caller's: it holds the
conversation so far and can be saved/truncated between steps.

The official control flow (which modality comes next, what ends generation) lives in
``model.schedule``, shared with the real-time engine's batched steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

import torch

from model.backbone import BackboneState
from model.lfm2_audio import END_OF_AUDIO, GREEDY, LFM2AudioModel, Modality, Sampling, sample_from_logits
from model.schedule import InterleavedSchedule, SequentialSchedule


class GenerationMode(Enum):
    SEQUENTIAL = "sequential"
    INTERLEAVED = "interleaved"


@dataclass(frozen=True)
class GeneratedItem:
    """One generated item: a text token, or an audio frame (codes [codebooks], int64 on CPU)."""

    modality: Modality
    token: int | None = None
    codes: torch.Tensor | None = None

    @property
    def is_text(self) -> bool:
        return self.modality == Modality.TEXT

    @property
    def is_end_of_audio(self) -> bool:
        return self.codes is not None and int(self.codes[0]) == END_OF_AUDIO

    def as_row(self, codebooks: int) -> list[int]:
        """Reference encoding: text -> [id, -1, ...]; audio -> the codes."""
        if self.codes is not None:
            return [int(c) for c in self.codes]
        assert self.token is not None
        return [self.token] + [-1] * (codebooks - 1)


def top2_margin(logits: torch.Tensor) -> float:
    """top1 - top2 along the last axis, minimum over leading axes."""
    top = torch.topk(logits.float(), 2, dim=-1).values
    return float((top[..., 0] - top[..., 1]).min())


class Generation:
    """A running generation over a backbone ``state``; ``pending`` [B=1, N, D] is not yet consumed."""

    def __init__(self, model: LFM2AudioModel, state: BackboneState, pending: torch.Tensor,
                 mode: GenerationMode, max_new_tokens: int = 512,
                 text_sampling: Sampling = GREEDY, audio_sampling: Sampling = GREEDY,
                 rng: torch.Generator | None = None, keep_logits: bool = False) -> None:
        if pending.dim() != 3 or pending.shape[0] != 1 or pending.shape[1] == 0:
            raise ValueError(f"pending input must be [1, N>0, hidden], got {list(pending.shape)}")
        self.model = model
        self.state = state
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.text_sampling = text_sampling
        self.audio_sampling = audio_sampling
        self.rng = rng
        self.keep_logits = keep_logits
        self.calls = 0
        self.finished = False
        self.end_reason: str | None = None  # "im_end", "max_new_tokens" or "stopped"
        self.schedule: InterleavedSchedule | SequentialSchedule = (
            InterleavedSchedule(model.config.interleaved_n_text, model.config.interleaved_n_audio)
            if mode is GenerationMode.INTERLEAVED else SequentialSchedule())
        self.last_hidden: torch.Tensor | None = None
        self.last_logits: torch.Tensor | None = None
        self.last_margin: float | None = None
        self._pending: torch.Tensor | None = pending

    @property
    def modality(self) -> Modality:
        """What the next backbone call will produce."""
        return self.schedule.modality

    def __iter__(self) -> Iterator[GeneratedItem]:
        while True:
            item = self.step()
            if item is None:
                return
            yield item

    def stop(self) -> None:
        """End generation now; the last item's input is left unconsumed."""
        self.finished = True
        self.end_reason = self.end_reason or "stopped"
        self._pending = None

    def _backbone(self) -> torch.Tensor:
        assert self._pending is not None
        hidden = self.model.lfm(self._pending, self.state)[0, -1]
        self._pending = None
        self.calls += 1
        self.last_hidden = hidden
        return hidden

    def _text(self, hidden: torch.Tensor) -> int:
        logits = self.model.lfm.text_logits(hidden)
        if self.keep_logits:
            self.last_logits = logits
            self.last_margin = top2_margin(logits)
        return sample_from_logits(logits, self.text_sampling, self.rng)

    def _audio(self, hidden: torch.Tensor) -> torch.Tensor:
        codes, logits = self.model.sample_audio_frame(hidden, self.audio_sampling, self.rng, self.keep_logits)
        if logits is not None:
            self.last_logits = logits
            self.last_margin = top2_margin(logits)
        if int(codes[0]) == END_OF_AUDIO:
            codes[:] = END_OF_AUDIO
        return codes

    def _feed_text(self, token: int) -> None:
        ids = torch.tensor([[token]], dtype=torch.long, device=self.model.codebook_offsets.device)
        self._pending = self.model.embed_text(ids)

    def _feed_audio(self, codes: torch.Tensor) -> None:
        self._pending = self.model.embed_audio_frames(codes)[None, None, :]

    @torch.no_grad()
    def step(self) -> GeneratedItem | None:
        if self.finished:
            return None
        if self.calls >= self.max_new_tokens:
            self.finished = True
            self.end_reason = "max_new_tokens"
            return None
        modality = self.schedule.begin_step()
        hidden = self._backbone()
        if modality == Modality.TEXT:
            token = self._text(hidden)
            yielded = self.schedule.after_text(token)
            if self.schedule.finished:
                self.finished = True
                self.end_reason = "im_end"
            else:
                self._feed_text(token)
            return GeneratedItem(Modality.TEXT, token=token) if yielded else None
        codes = self._audio(hidden)
        self.schedule.after_audio(int(codes[0]) == END_OF_AUDIO)
        self._feed_audio(codes)
        return GeneratedItem(Modality.AUDIO_OUT, codes=codes.cpu())


def start_generation(model: LFM2AudioModel, inputs: dict[str, torch.Tensor], mode: GenerationMode,
                     max_new_tokens: int = 512, text_sampling: Sampling = GREEDY,
                     audio_sampling: Sampling = GREEDY, rng: torch.Generator | None = None,
                     keep_logits: bool = False) -> Generation:
    """Fresh state + the whole chat as the first (prefill) input, like the official generators."""
    with torch.no_grad():
        embeds = model.prefill_embeddings(**inputs)
    state = model.lfm.new_state(batch_size=1, kv_capacity=max(16, embeds.shape[1] + max_new_tokens + 1))
    return Generation(model, state, embeds, mode, max_new_tokens, text_sampling, audio_sampling, rng, keep_logits)
