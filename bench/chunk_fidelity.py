"""What `chunked` input costs against `turn` input: embedding fidelity, reply changes, latency gain.

    python -m bench.chunk_fidelity [--checkpoint DIR] [--device cpu|cuda] [--dtype ...] [--quick]

For several utterances (espeak-ng speech of 1-10 s, and the fixture's reference input.wav) the
adapter outputs of the caller's turn are computed both ways: `turn` encodes the whole turn at once
(``Conversation.encode_waveform``, the official computation); `chunked` runs the engine's own path
(``Conversation.add_frame`` / ``encode_chunk`` / ``close_user_turn``) and reads the turn's audio
segments back. Reported per (chunk_frames, left_context_frames): mean and minimum cosine similarity
per embedding; how many greedy replies (audio codes through the Engine) differ from turn mode; the
time to first audio after end of turn for a 10 s utterance fed at once and prefilled.

On the tiny random checkpoint the cosine figures show how much the input representation moves
(short normalisation windows, missing right context); how much that matters to the answers can
only be judged on the real weights.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np
import torch

from bench.common import (
    FRAME_SAMPLES,
    TINY_INPUT_WAV,
    SpeechClip,
    add_model_arguments,
    first_audio_latency,
    format_table,
    load_for_bench,
    machine_description,
    median,
    pad_to_frames,
    replies,
    speech_clip,
)
from model.checkpoint import LoadedModel
from model.conversation import Conversation, InputSettings
from model.engine import Engine, EngineSettings
from model.parity import read_wav

SETTINGS = ((4, 8), (8, 16), (8, 32), (16, 32), (16, 64), (8, 100000))
QUICK_SETTINGS = ((8, 16),)
LOOKAHEAD_SETTINGS = ((8, 16, 0), (8, 16, 1), (8, 16, 2), (8, 16, 4), (16, 32, 2))  # chunk, left, right
UTTERANCES = ((1.0, 6), (2.5, 0), (4.0, 1), (7.0, 2), (10.0, 3))  # (seconds, sentence seed)
LATENCY_UTTERANCE_S = 10.0
NOISE_DBFS = -70.0  # white noise added for the calibration row (speech is at about -26 dBFS)


def _context_label(frames: int) -> str:
    return "all" if frames >= 100000 else str(frames)


def fidelity_clips(quick: bool) -> list[tuple[str, SpeechClip]]:
    clips = [(f"espeak {s:g} s", speech_clip(s, seed)) for s, seed in (UTTERANCES[:2] if quick else UTTERANCES)]
    if TINY_INPUT_WAV.is_file():
        data, rate = read_wav(TINY_INPUT_WAV)
        if rate == 16000:
            clips.append(("input.wav", SpeechClip(pad_to_frames(data), "wav")))
    return clips


@torch.no_grad()
def turn_embeddings(loaded: LoadedModel, clip: SpeechClip) -> torch.Tensor:
    conv = _conversation(loaded, InputSettings("turn"))
    return conv.encode_waveform(clip.samples).float()


@torch.no_grad()
def chunked_embeddings(loaded: LoadedModel, clip: SpeechClip, chunk_frames: int, left_context_frames: int) -> torch.Tensor:
    """The engine's chunked path: a chunk encoded as soon as it is complete, the tail at end of turn."""
    conv = _conversation(loaded, InputSettings("chunked", chunk_frames, left_context_frames))
    for frame in clip.frames:
        conv.add_frame(frame)
        while conv.chunk_ready():
            conv.encode_chunk(final=False)
    conv.close_user_turn()
    rows = [seg.embeds for seg in conv.turns[-1].segments if seg.kind == "audio_in" and seg.embeds is not None]
    return torch.cat(rows).float()


@torch.no_grad()
def lookahead_embeddings(loaded: LoadedModel, clip: SpeechClip, chunk_frames: int, left_context_frames: int,
                         right_context_frames: int) -> torch.Tensor:
    """The chunked window rule with `right_context_frames` of lookahead (encoded once they have arrived).

    With no lookahead this is exactly ``Conversation.encode_chunk``'s rule; with lookahead a chunk
    waits for that many more frames while the caller speaks, but not at end of turn (the tail is
    encoded with whatever is there).
    """
    conv = _conversation(loaded, InputSettings("turn"))
    total = len(clip.frames)
    rows = []
    start = 0
    while True:
        full = start + chunk_frames + right_context_frames <= total
        ctx_start = max(0, start - left_context_frames)
        stop = start + chunk_frames + right_context_frames if full else total
        embeds = conv.encode_waveform(clip.samples[ctx_start * FRAME_SAMPLES : stop * FRAME_SAMPLES])
        skip = start - ctx_start
        if not full:  # end of turn: the tail, with the extra embedding of the last mel frame
            rows.append(embeds[skip:])
            break
        rows.append(embeds[skip : skip + chunk_frames])
        start += chunk_frames
    return torch.cat(rows).float()


def _conversation(loaded: LoadedModel, settings: InputSettings) -> Conversation:
    state = loaded.model.lfm.new_state(batch_size=1, kv_capacity=512)
    return Conversation(0, loaded, state, settings, max_context_tokens=32768, reply_reserve_tokens=1024)


def cosines(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    if a.shape != b.shape:
        raise ValueError(f"embedding counts differ: turn {list(a.shape)} vs chunked {list(b.shape)}")
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).cpu().numpy()


async def greedy_codes(loaded: LoadedModel, settings: EngineSettings,
                       clips: list[tuple[str, SpeechClip]]) -> list[list[tuple[int, ...]]]:
    engine = Engine(loaded, settings)
    engine.start()
    try:
        out = []
        for _, clip in clips:
            (timing,), _ = await replies(engine, [clip], together=True)
            if timing.error is not None:
                raise RuntimeError(f"reply failed: {timing.error}")
            out.append(timing.codes)
        return out
    finally:
        engine.stop()


async def latency_ms(loaded: LoadedModel, settings: EngineSettings, clip: SpeechClip, repeats: int) -> float:
    engine = Engine(loaded, settings)
    engine.start()
    try:
        await first_audio_latency(engine, speech_clip(1.0, 7), paced=False)  # warm-up
        return median([await first_audio_latency(engine, clip, paced=False) for _ in range(repeats)]) * 1000
    finally:
        engine.stop()


def _with_noise(clip: SpeechClip, level_dbfs: float, seed: int) -> SpeechClip:
    rng = np.random.default_rng(1000 + seed)
    noise = rng.standard_normal(clip.samples.shape) * 10 ** (level_dbfs / 20)
    return SpeechClip((clip.samples + noise).astype(np.float32), clip.source)


def _where(clips: list[tuple[str, SpeechClip]], diffs: list[int | None]) -> str:
    return ", ".join(f"{clips[i][0]}@{d}" for i, d in enumerate(diffs) if d is not None) or "-"


def first_difference(a: list[tuple[int, ...]], b: list[tuple[int, ...]]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


async def run(loaded: LoadedModel, quick: bool, reply_items: int, repeats: int) -> None:
    clips = fidelity_clips(quick)
    settings = QUICK_SETTINGS if quick else SETTINGS
    print("utterances: " + ", ".join(f"{name} ({clip.seconds:.2f} s, {len(clip.frames)} frames, {clip.source})"
                                      for name, clip in clips))
    reference = [turn_embeddings(loaded, clip) for _, clip in clips]
    base = EngineSettings(input_mode="turn", max_reply_items=reply_items)
    turn_codes = await greedy_codes(loaded, base, clips)
    turn_again = await greedy_codes(loaded, base, clips)
    long_clip = speech_clip(2.0 if quick else LATENCY_UTTERANCE_S, 4)
    turn_latency = await latency_ms(loaded, base, long_clip, repeats)
    rows: list[list[object]] = [["turn (repeat)", "-", 1.0, 1.0, "-",
                                 f"{sum(a == b for a, b in zip(turn_codes, turn_again, strict=True))}/{len(clips)}",
                                 "-", turn_latency, 1.0]]
    # calibration: how much a barely audible change of the input moves embeddings and replies
    noisy = [(name, _with_noise(clip, NOISE_DBFS, seed)) for seed, (name, clip) in enumerate(clips)]
    noisy_sims = np.concatenate([cosines(ref, turn_embeddings(loaded, clip))
                                 for ref, (_, clip) in zip(reference, noisy, strict=True)])
    noisy_codes = await greedy_codes(loaded, base, noisy)
    noisy_diffs = [first_difference(a, b) for a, b in zip(turn_codes, noisy_codes, strict=True)]
    rows.append([f"turn, + noise {NOISE_DBFS} dBFS", "-", float(noisy_sims.mean()), float(noisy_sims.min()), "-",
                 f"{sum(d is None for d in noisy_diffs)}/{len(clips)}", _where(clips, noisy_diffs), "-", "-"])
    per_clip: list[list[object]] = []
    for chunk, context in settings:
        sims = []
        for (name, clip), ref in zip(clips, reference, strict=True):
            cos = cosines(ref, chunked_embeddings(loaded, clip, chunk, context))
            sims.append(cos)
            per_clip.append([chunk, _context_label(context), name, float(cos.mean()), float(cos.min())])
        every = np.concatenate(sims)
        worst = min(range(len(clips)), key=lambda i: float(sims[i].mean()))
        chunked = EngineSettings(input_mode="chunked", chunk_frames=chunk, left_context_frames=context,
                                 max_reply_items=reply_items)
        codes = await greedy_codes(loaded, chunked, clips)
        diffs = [first_difference(a, b) for a, b in zip(turn_codes, codes, strict=True)]
        same = sum(d is None for d in diffs)
        where = _where(clips, diffs)
        lat = await latency_ms(loaded, chunked, long_clip, repeats)
        rows.append([chunk, _context_label(context), float(every.mean()), float(every.min()), clips[worst][0],
                     f"{same}/{len(clips)}", where, lat, lat / turn_latency])
    print(f"\n## embedding fidelity, greedy replies ({reply_items} items) and end-of-turn latency "
          f"({long_clip.seconds:g} s utterance, fed at once and prefilled)\n")
    print(format_table(["chunk frames", "left context frames", "mean cos", "min cos", "worst utterance",
                        "same reply as turn", "first differing frame", "first audio ms", "vs turn"], rows))
    print("\n## lookahead: chunks encoded with right context (window rule reproduced here, not in the engine)\n")
    look_rows: list[list[object]] = []
    for chunk, left, right in LOOKAHEAD_SETTINGS[:2] if quick else LOOKAHEAD_SETTINGS:
        sims = [cosines(ref, lookahead_embeddings(loaded, clip, chunk, left, right))
                for (_, clip), ref in zip(clips, reference, strict=True)]
        every = np.concatenate(sims)
        look_rows.append([chunk, left, right, right * 80, float(every.mean()), float(every.min())])
    print(format_table(["chunk frames", "left context frames", "right context frames", "added delay while speaking ms",
                        "mean cos", "min cos"], look_rows))
    print("\n## cosine similarity per utterance\n")
    print(format_table(["chunk frames", "left context frames", "utterance", "mean cos", "min cos"], per_clip))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chunk_fidelity", description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="two utterances, one setting (smoke run)")
    parser.add_argument("--reply-items", type=int, default=36, help="cap on each greedy reply's items")
    parser.add_argument("--repeats", type=int, default=3, help="latency repeats per setting")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    loaded, label = load_for_bench(args)
    print(f"# chunked vs turn input: {label}")
    print(f"machine: {machine_description(loaded.device)}")
    asyncio.run(run(loaded, args.quick, args.reply_items, 1 if args.quick else args.repeats))
    print(f"\n(total {time.perf_counter() - started:.0f} s; {FRAME_SAMPLES} samples per frame)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
