"""One-shot ASR and TTS on a loaded model (sequential generation, as the official demos do)."""

from __future__ import annotations

import numpy as np
import torch

from model.audio_decoder import decoder_codes
from model.chat import AUDIO_START, IM_END
from model.checkpoint import LoadedModel
from model.generation import GenerationMode, start_generation
from model.lfm2_audio import GREEDY, Sampling

ASR_SYSTEM_PROMPT = "Perform ASR."
TTS_SYSTEM_PROMPT = "Perform TTS."
ASR_MAX_NEW_TOKENS = 512
TTS_MAX_NEW_TOKENS = 1024


def transcribe(loaded: LoadedModel, audio_16k: np.ndarray, max_new_tokens: int = ASR_MAX_NEW_TOKENS) -> str:
    """Transcript of mono float audio at 16 kHz (special tokens dropped)."""
    audio = np.asarray(audio_16k, dtype=np.float32)
    if audio.ndim != 1 or audio.size == 0:
        raise ValueError(f"audio_16k must be a non-empty 1-D array, got shape {audio.shape}")
    inputs = loaded.one_turn_chat(ASR_SYSTEM_PROMPT, audio_16k=audio)
    gen = start_generation(loaded.model, inputs, GenerationMode.SEQUENTIAL, max_new_tokens)
    ids: list[int] = []
    for item in gen:
        if item.token is None or item.token in (IM_END, AUDIO_START):
            break
        ids.append(item.token)
    gen.stop()
    return loaded.tokenizer.decode(ids, skip_special_tokens=True).strip()


def synthesize(loaded: LoadedModel, text: str, voice: str | None = None, max_new_tokens: int = TTS_MAX_NEW_TOKENS,
               audio_sampling: Sampling = GREEDY, seed: int | None = None) -> np.ndarray:
    """Speech for ``text`` as float32 mono at the codec rate (24 kHz); ``voice`` is a style description."""
    if not text.strip():
        raise ValueError("text to synthesize is empty")
    if loaded.decoder is None:
        raise ValueError("this LoadedModel was loaded without an audio decoder (load_codec=False)")
    system = TTS_SYSTEM_PROMPT if not voice else f"{TTS_SYSTEM_PROMPT} {voice.strip()}"
    rng = None if seed is None else torch.Generator(device=loaded.device).manual_seed(seed)
    gen = start_generation(loaded.model, loaded.one_turn_chat(system, text=text), GenerationMode.SEQUENTIAL,
                           max_new_tokens,
                           audio_sampling=audio_sampling, rng=rng)
    frames: list[torch.Tensor] = []
    for item in gen:
        if item.codes is None:
            continue
        if item.is_end_of_audio:
            break  # an end-of-audio frame is never decoded
        frames.append(item.codes)
    gen.stop()
    if not frames:
        return np.zeros(0, dtype=np.float32)
    codes = decoder_codes(torch.stack(frames, dim=1)[None].to(loaded.device))
    wav = loaded.decoder.decode(codes)
    return wav[0].float().cpu().numpy().astype(np.float32)
