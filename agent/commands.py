"""The model-backed subcommands: asr, tts, make-tiny-checkpoint and the offline smoke run.

Models are loaded here, at the entry point, after the settings have been validated. Every command
prints which model it runs on (real weights, a given folder, or the offline tiny model).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.audio import MODEL_INPUT_RATE, MODEL_OUTPUT_RATE, PcmFrame, float32_to_int16
from agent.errors import CliError
from agent.model_choice import TINY_HIDDEN_SIZE, ModelChoice, ModelChoiceError, choose_model
from agent.resample import resample_offline
from agent.wavio import read_wav, write_wav
from config.schema import ModelSettings, Settings

if TYPE_CHECKING:
    from model.checkpoint import LoadedModel
    from model.engine import EngineSettings


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def choose_for_settings(settings: ModelSettings) -> ModelChoice:
    try:
        choice = choose_model(settings)
    except ModelChoiceError as exc:
        raise CliError(str(exc)) from None
    _say(f"model: {choice.description}")
    return choice


def load_for_settings(settings: ModelSettings) -> tuple[LoadedModel, ModelChoice]:
    choice = choose_for_settings(settings)
    return load_choice(settings, choice), choice


def load_choice(settings: ModelSettings, choice: ModelChoice) -> LoadedModel:
    from model.checkpoint import load_model
    from model.errors import ModelError

    device = None if settings.device == "auto" else settings.device
    dtype = None if settings.dtype == "auto" else settings.dtype
    try:
        loaded = load_model(choice.path, device=device, dtype=dtype, audio_decoder=settings.audio_decoder)
    except ModelError as exc:
        raise CliError(str(exc)) from None
    decoder = loaded.decoder.name if loaded.decoder is not None else "none"
    _say(f"model: loaded on {loaded.device} ({loaded.dtype}), audio decoder: {decoder}")
    return loaded


def engine_settings(settings: ModelSettings, tiny: bool = False, slots: int = 16) -> EngineSettings:
    from model.engine import EngineSettings
    from model.lfm2_audio import Sampling

    def sampling(temperature: float, top_k: int) -> Sampling:
        return Sampling(temperature if temperature > 0 else None, top_k if top_k > 0 else None)

    reply_ms = settings.tiny_max_reply_ms if tiny else settings.max_reply_ms
    frames = reply_ms // 80
    audio_temperature, audio_top_k = (0.0, 0) if tiny else (settings.audio_temperature, settings.audio_top_k)
    return EngineSettings(
        max_reply_items=frames + frames // 2 + 8,  # interleaved: 6 text tokens per 12 frames
        reply_reserve_tokens=max(1024, frames + frames // 2 + 64),
        input_mode=settings.input_mode,
        chunk_frames=settings.chunk_frames,
        left_context_frames=settings.chunk_left_context_frames,
        right_context_frames=settings.chunk_right_context_frames,
        system_prompt=settings.system_prompt,
        instructions=settings.instructions,
        max_context_tokens=settings.max_context_tokens,
        text_sampling=sampling(settings.text_temperature, settings.text_top_k),
        audio_sampling=sampling(audio_temperature, audio_top_k),
        slots=slots,
    )


def choice_is_tiny(loaded: LoadedModel) -> bool:
    """The offline tiny model (or any checkpoint far too small to be the real one)."""
    return loaded.config.lfm.hidden_size < TINY_HIDDEN_SIZE


def _read_16k(path: Path) -> np.ndarray:
    from agent.audio import AudioError

    try:
        samples, rate = read_wav(path)
    except (AudioError, OSError) as exc:

        raise CliError(str(exc)) from None
    audio = resample_offline(samples.astype(np.float32) / 32768.0, rate, MODEL_INPUT_RATE)
    return np.asarray(audio, dtype=np.float32)


def run_asr(settings: Settings, wav: Path) -> int:
    from model.tools import transcribe

    audio = _read_16k(wav)
    loaded, _ = load_for_settings(settings.model)
    print(transcribe(loaded, audio))
    return 0


def run_tts(settings: Settings, text: str, output: Path, voice: str | None) -> int:
    from model.tools import synthesize

    loaded, _ = load_for_settings(settings.model)
    try:
        audio = synthesize(loaded, text, voice=voice)
    except ValueError as exc:

        raise CliError(str(exc)) from None
    write_wav(output, float32_to_int16(audio), MODEL_OUTPUT_RATE)
    _say(f"tts: wrote {output} ({len(audio) / MODEL_OUTPUT_RATE:.2f} s)")
    return 0


def run_make_tiny(directory: Path, seed: int, long_replies: bool = False) -> int:
    from model.tiny import make_tiny_checkpoint

    path = make_tiny_checkpoint(directory, seed=seed, long_replies=long_replies)
    _say(f"make-tiny-checkpoint: wrote {path}")
    return 0


# -- smoke: one exchange through the G.711 line path -------------------------------------------------

SMOKE_QUESTION = "Hello. Could you book a table for two at seven tonight?"
LINE_RATE = 8000


def _line_roundtrip(pcm16k: np.ndarray) -> np.ndarray:
    """16 kHz int16 -> 8 kHz G.711 µ-law line -> int16 at 8 kHz, as a phone caller's audio arrives."""
    from agent.g711 import ulaw_decode, ulaw_encode

    narrow = resample_offline(pcm16k, MODEL_INPUT_RATE, LINE_RATE)
    return ulaw_decode(ulaw_encode(np.asarray(narrow, dtype=np.int16)))


async def _smoke_call(loaded: LoadedModel, settings: Settings, caller_8k: np.ndarray) -> dict[str, Any]:
    from agent.framer import Framer, Packetizer
    from agent.g711 import ulaw_decode, ulaw_encode
    from model.engine import AgentAudio, Engine, EngineError, ReplyFinished

    engine = Engine(loaded, engine_settings(settings.model, choice_is_tiny(loaded)))
    engine.start()
    try:
        conv = engine.open()
        heard: list[np.ndarray] = []
        packetizer = Packetizer(MODEL_OUTPUT_RATE, out_rate=LINE_RATE)
        results: dict[str, Any] = {}
        position = [0]  # agent audio sent so far, in 24 kHz samples (across greeting and reply)

        async def play_reply(label: str) -> None:
            t0 = time.perf_counter()
            first: float | None = None
            while True:
                event = await asyncio.wait_for(conv.events.get(), 120)
                if isinstance(event, AgentAudio):
                    first = first if first is not None else time.perf_counter() - t0
                    chunk = PcmFrame(float32_to_int16(event.pcm), MODEL_OUTPUT_RATE, position[0])
                    position[0] += chunk.num_samples
                    for packet in packetizer.push(chunk):
                        heard.append(ulaw_decode(ulaw_encode(packet.samples)))
                elif isinstance(event, ReplyFinished):
                    results[label] = {"first_audio_ms": None if first is None else round(first * 1000, 1),
                                      "frames": event.frames, "text": event.text}
                    return
                elif isinstance(event, EngineError):
                    raise RuntimeError(event.message)

        if settings.model.greeting:
            conv.greet(settings.model.greeting)
            await play_reply("greeting")
        framer = Framer(LINE_RATE)
        for i in range(0, len(caller_8k), 160):
            packet = PcmFrame(caller_8k[i : i + 160], LINE_RATE, i)
            for frame in framer.push(packet):
                conv.feed(frame.samples)
        for frame in framer.flush():
            conv.feed(frame.samples)
        conv.respond()
        await play_reply("reply")
        results["agent_8k"] = np.concatenate(heard) if heard else np.zeros(0, np.int16)
        return results
    finally:
        engine.stop()


def run_smoke(settings: Settings, out_dir: Path) -> int:
    from agent.caller_voice import render_say
    from agent.report import atomic_write_json, atomic_write_text

    loaded, choice = load_for_settings(settings.model)
    caller_16k = render_say(SMOKE_QUESTION, "en-us", 160, 0.0, sample_rate=MODEL_INPUT_RATE)
    caller_8k = _line_roundtrip(caller_16k)
    results = asyncio.run(_smoke_call(loaded, settings, caller_8k))
    agent_8k: np.ndarray = results.pop("agent_8k")
    out_dir.mkdir(parents=True, exist_ok=True)
    n = max(len(caller_8k), len(agent_8k))
    stereo = np.zeros((n, 2), np.int16)
    stereo[: len(caller_8k), 0] = caller_8k
    stereo[: len(agent_8k), 1] = agent_8k
    write_wav(out_dir / "call.wav", stereo, LINE_RATE)
    transcript = [f"caller: {SMOKE_QUESTION}"]
    for label in ("greeting", "reply"):
        if label in results:
            transcript.append(f"agent ({label}): {results[label]['text']}")
    atomic_write_text(out_dir / "transcript.txt", "\n".join(transcript) + "\n")
    report = {"model": choice.description, "tiny_fallback": choice.is_tiny_fallback,
              "line": "G.711 u-law 8 kHz", "device": str(loaded.device), "dtype": str(loaded.dtype),
              **results}
    atomic_write_json(out_dir / "report.json", report)
    for label in ("greeting", "reply"):
        if label in results:
            r = results[label]
            _say(f"smoke: {label}: {r['frames']} frames ({r['frames'] * 0.08:.2f} s), "
                 f"first audio after {r['first_audio_ms']} ms")
    _say(f"smoke: wrote {out_dir}/call.wav (caller left, agent right), transcript.txt, report.json")
    _say(f"smoke: model used: {choice.description}")
    return 0
