"""The modality schedule of generation, separated from the forward passes.

The official generators decide, before every backbone call, whether the next item is a text token
or an audio frame, and update that decision from the item produced. Keeping the rule as a small
pure object lets the engine step many conversations in one batched forward and still apply each
conversation's own schedule. `model.generation.Generation` follows the same rules (the engine's
tests check that a single conversation reproduces its trace item for item).

Interleaved (liquid-audio ``generate_interleaved``): budgets of ``n_text`` text items and
``n_audio`` frames alternate, the budget counter dropping once per backbone call; ``<|im_end|>``
in text ends generation (not yielded); ``<|text_end|>`` marks text as done and switches to audio;
while text is done audio does not switch back at the budget, and after an end-of-audio frame
exactly one text item is generated; an end-of-audio frame before text is done does not reset the
counter.

Sequential (``generate_sequential``): text until ``<|audio_start|>`` (yielded) switches to audio;
audio until an end-of-audio frame (yielded) switches back; ``<|im_end|>`` is yielded and ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from model.lfm2_audio import Modality

IM_END = 7
AUDIO_START = 128
TEXT_END = 130


@dataclass
class InterleavedSchedule:
    n_text: int
    n_audio: int
    modality: Modality = Modality.TEXT
    left: int = field(default=0)
    text_done: bool = False
    finished: bool = False

    def __post_init__(self) -> None:
        self.left = self.n_text

    def begin_step(self) -> Modality:
        """Called once before each backbone call; returns what this call will produce."""
        self.left -= 1
        return self.modality

    def after_text(self, token: int) -> bool:
        """Apply a text token; returns False when it ends generation (and is not yielded)."""
        if token == IM_END:
            self.finished = True
            return False
        if token == TEXT_END:
            self.text_done = True
        if not self.left or self.text_done:
            self.modality = Modality.AUDIO_OUT
            self.left = self.n_audio
        return True

    def after_audio(self, end_of_audio: bool) -> None:
        if not self.left and not self.text_done:
            self.modality = Modality.TEXT
            self.left = self.n_text
        if end_of_audio:
            self.modality = Modality.TEXT


@dataclass
class SequentialSchedule:
    modality: Modality = Modality.TEXT
    finished: bool = False

    def begin_step(self) -> Modality:
        return self.modality

    def after_text(self, token: int) -> bool:
        """Sequential mode yields every token; `<|im_end|>` is yielded and then ends generation."""
        if token == AUDIO_START:
            self.modality = Modality.AUDIO_OUT
        if token == IM_END:
            self.finished = True
        return True

    def after_audio(self, end_of_audio: bool) -> None:
        if end_of_audio:
            self.modality = Modality.TEXT
