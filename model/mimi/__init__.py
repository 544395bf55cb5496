"""Kyutai's Mimi neural audio codec, implemented in-project (torch only, moshi's weight names).

Usage::

    mimi = load_mimi(weights_path, config)  # config None = the real Mimi
    wav = mimi.decode(codes)  # [B, 8, T] -> [B, 1, T * 1920] at 24 kHz
    state = mimi.new_decoder_state(batch_size=1)  # one per call
    chunk = mimi.decode_step(codes[..., t : t + 1], state)  # [B, 1, 1920]; state updated in place
"""

from __future__ import annotations

from model.mimi.codec import DEFAULT_NUM_CODEBOOKS, Mimi, MimiDecoderState
from model.mimi.config import DEFAULT_MIMI_CONFIG, MimiConfig, MimiError, tiny_mimi_config
from model.mimi.weights import (
    MIMI_CONFIG_NAME,
    MIMI_WEIGHTS_NAME,
    check_mimi_state_dict,
    load_mimi,
    randomize_for_tiny,
    save_mimi,
)

__all__ = [
    "DEFAULT_MIMI_CONFIG",
    "DEFAULT_NUM_CODEBOOKS",
    "MIMI_CONFIG_NAME",
    "MIMI_WEIGHTS_NAME",
    "Mimi",
    "MimiConfig",
    "MimiDecoderState",
    "MimiError",
    "check_mimi_state_dict",
    "load_mimi",
    "randomize_for_tiny",
    "save_mimi",
    "tiny_mimi_config",
]
