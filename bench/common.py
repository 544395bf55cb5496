"""Helpers shared by the engine benchmarks: machine line, model loading, test speech, tables.

Every figure a benchmark prints names the machine it came from (``machine_description``). Models
come either from a checkpoint (default: the tiny fixture in tests/fixtures) or, with ``--full-size``, from a
config file built with random weights (no download); see ``add_model_arguments``/``load_for_bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from model.checkpoint import LoadedModel, build_model, load_model, parse_device, parse_dtype
from model.engine import AgentAudio, CallConversation, Engine, EngineError, ReplyFinished
from model.errors import CheckpointError

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures"
TINY_CHECKPOINT = FIXTURES_DIR / "lfm2-audio-tiny" / "checkpoint"
TINY_INPUT_WAV = FIXTURES_DIR / "lfm2-audio-tiny" / "reference" / "input.wav"
FULL_SIZE_CONFIG = FIXTURES_DIR / "lfm2-audio-1.5b-config.json"

SAMPLE_RATE = 16000
FRAME_SAMPLES = 1280  # 80 ms at 16 kHz
FRAME_SECONDS = 0.08  # one input embedding, one output Mimi frame
EVENT_TIMEOUT_S = 300.0

# Sentences a caller might say; concatenated (150 ms apart) to reach a target length.
SENTENCES = (
    "Hello, I am calling about the order I placed last week.",
    "It was supposed to arrive on Monday, but nothing has come yet.",
    "Could you tell me where the parcel is right now?",
    "My account number is four five seven, two two one, eight nine.",
    "I would also like to change the delivery address to my office.",
    "Thank you, that would be very helpful.",
    "Can you repeat the last part, please?",
    "Yes, the name on the account is Maria Gonzalez.",
)


# -- the machine --------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: torch.device) -> str:
    """'CPU <model>, <n> cores, torch <version>[, GPU <name>]' for the line under every table."""
    parts = [f"CPU {cpu_model()}", f"{os.cpu_count()} cores", f"torch {torch.__version__}",
             f"{torch.get_num_threads()} torch threads"]
    if device.type == "cuda" and torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name(device)}")
    return ", ".join(parts)


# -- timing -------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of fn takes (device synchronised before and after)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


# -- test speech --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeechClip:
    samples: np.ndarray  # float32, 16 kHz, a whole number of 80 ms frames
    source: str  # "espeak-ng" or "synthetic"

    @property
    def seconds(self) -> float:
        return int(self.samples.shape[0]) / SAMPLE_RATE

    @property
    def frames(self) -> list[np.ndarray]:
        return [self.samples[i : i + FRAME_SAMPLES] for i in range(0, self.samples.shape[0], FRAME_SAMPLES)]


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """A voiced, syllable-modulated signal (deterministic), float32 at 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 110 + 40 * rng.random()
    voiced = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * (3 + rng.random()) * t))
    return np.asarray(0.2 * voiced * envelope + 0.01 * rng.standard_normal(t.shape), dtype=np.float32)


def espeak_sentence(text: str) -> np.ndarray | None:
    """One sentence from espeak-ng as float32 at 16 kHz, or None when espeak-ng is not usable."""
    try:
        from agent.caller_voice import CallerVoiceError, render_say
    except ImportError:
        return None
    try:
        pcm = render_say(text, voice="en-us", rate_wpm=160, volume_db=0, sample_rate=SAMPLE_RATE)
    except (CallerVoiceError, OSError):
        return None
    return np.asarray(pcm, dtype=np.float32) / 32768.0


def speech_clip(seconds: float, seed: int = 0) -> SpeechClip:
    """`seconds` of speech (rounded up to whole 80 ms frames): espeak-ng sentences, else synthetic.

    Sentences start at ``SENTENCES[seed % len]`` and are joined with 150 ms pauses; the clip is cut
    at the target length with a 10 ms fade.
    """
    if seconds <= 0:
        raise ValueError(f"speech_clip needs seconds > 0, got {seconds}")
    target = int(np.ceil(seconds / FRAME_SECONDS)) * FRAME_SAMPLES
    pieces: list[np.ndarray] = []
    total = 0
    source = "espeak-ng"
    k = seed
    while total < target:
        sentence = espeak_sentence(SENTENCES[k % len(SENTENCES)])
        if sentence is None:
            source = "synthetic"
            pieces = [speech_like(target / SAMPLE_RATE, seed)]
            break
        pieces += [sentence, np.zeros(int(0.15 * SAMPLE_RATE), np.float32)]
        total += sentence.shape[0] + int(0.15 * SAMPLE_RATE)
        k += 1
    wave = np.concatenate(pieces)[:target]
    wave = np.pad(wave, (0, target - wave.shape[0]))
    fade = int(0.01 * SAMPLE_RATE)
    wave[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return SpeechClip(np.ascontiguousarray(wave, dtype=np.float32), source)


def pad_to_frames(wave: np.ndarray) -> np.ndarray:
    """Zero-pad a 16 kHz clip to a whole number of 80 ms frames."""
    extra = (-wave.shape[0]) % FRAME_SAMPLES
    return np.pad(np.asarray(wave, dtype=np.float32), (0, extra))


# -- models -------------------------------------------------------------------------------------------


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="checkpoint folder (default: the tiny fixture in tests/fixtures)")
    parser.add_argument("--full-size", type=Path, default=None, metavar="CONFIG.json",
                        help="build this config with random weights instead of loading a checkpoint")
    parser.add_argument("--mimi-config", type=Path, default=None,
                        help="with --full-size: a mimi_config.json (default: the real Mimi)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, ... (default: bf16 on cuda)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def random_full_size(config_path: Path, device: torch.device, dtype: torch.dtype, mimi_config: Path | None,
                     tokenizer_dir: Path = TINY_CHECKPOINT, seed: int = 0) -> LoadedModel:
    """The architecture of `config_path` with random weights; Mimi real-size (or `mimi_config`), random.

    The tokenizer comes from `tokenizer_dir` (the tiny fixture's stand-in BPE has the LFM2 special
    tokens at their real ids, which is all the engine needs).
    """
    import json

    from model.audio_decoder import MimiDecoder
    from model.chat import TextTokenizer
    from model.config import LFM2AudioConfig
    from model.mel import MelFrontend
    from model.mimi import Mimi, MimiConfig, randomize_for_tiny

    config = LFM2AudioConfig.from_file(config_path)
    torch.manual_seed(seed)
    model = build_model(config, device=device, dtype=dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.fill_(1.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.normal_(0.0, 0.02)
    if mimi_config is None:
        mcfg = MimiConfig.default()
    else:
        mcfg = MimiConfig.from_dict(json.loads(mimi_config.read_text(encoding="utf-8")))
    mimi = randomize_for_tiny(Mimi(mcfg), seed).to(device).eval()
    tokenizer = TextTokenizer.from_file(tokenizer_dir / "tokenizer.json")
    mel = MelFrontend(config.preprocessor).to(device)
    return LoadedModel(path=config_path, config=config, model=model, tokenizer=tokenizer, mel=mel, mimi=mimi,
                       device=device, dtype=dtype, decoder=MimiDecoder(mimi))


def load_for_bench(args: argparse.Namespace) -> tuple[LoadedModel, str]:
    """(model, label) from the parsed `add_model_arguments` options."""
    torch.set_num_threads(args.threads)
    device = parse_device(args.device)
    dtype = parse_dtype(args.dtype, device)
    if args.full_size is not None:
        loaded = random_full_size(args.full_size, device, dtype, args.mimi_config)
        label = f"{args.full_size.name} built with random weights"
        label += f", Mimi {'real-size' if args.mimi_config is None else args.mimi_config.name} random"
    else:
        path = args.checkpoint or TINY_CHECKPOINT
        if not path.is_dir():
            raise CheckpointError(f"{path}: checkpoint folder not found (use --checkpoint)")
        loaded = load_model(path, device=device, dtype=dtype)
        label = f"checkpoint {path.name if path != TINY_CHECKPOINT else 'lfm2-audio-tiny'}"
    label += f"; device {device}; dtype {str(dtype).removeprefix('torch.')}"
    return loaded, label


def apply_compile(loaded: LoadedModel, backend: str = "inductor", mode: str | None = None) -> list[str]:
    """torch.compile the shape-stable parts (SwiGLU blocks of backbone and depthformer); returns names.

    The batched step itself loops over per-call states in Python (each call its own length), which
    torch.compile would re-trace at every position, so only the per-layer feed-forwards are compiled.
    ``mode="reduce-overhead"`` adds CUDA graphs (on CUDA); ``backend="eager"`` only traces (CPU smoke).
    """
    compiled = []
    for prefix, layers in (("lfm.layers", loaded.model.lfm.layers), ("depthformer.layers",
                                                                      loaded.model.depthformer.layers)):
        for i, layer in enumerate(layers):
            block = torch.compile(cast(torch.nn.Module, layer.feed_forward), dynamic=True, backend=backend, mode=mode)
            layer.add_module("feed_forward", cast(torch.nn.Module, block))
            compiled.append(f"{prefix}.{i}.feed_forward")
    return compiled


# -- output ---------------------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (pastes into BENCHMARKS.md unchanged)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


# -- driving the engine (reads Engine._calls and wraps Engine._step; changes no engine state) --------


async def feed_paced(conv: CallConversation, clip: SpeechClip) -> None:
    """Feed 80 ms frames in real time: frame i is handed over when it has been spoken, (i + 1) * 80 ms."""
    start = time.perf_counter()
    for i, frame in enumerate(clip.frames):
        delay = start + (i + 1) * FRAME_SECONDS - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        conv.feed(frame)


def feed_instantly(conv: CallConversation, clip: SpeechClip) -> None:
    for frame in clip.frames:
        conv.feed(frame)


async def wait_prefilled(engine: Engine, conv: CallConversation, fed_frames: int, settle_s: float = 0.05,
                         timeout_s: float = EVENT_TIMEOUT_S) -> None:
    """Wait until the worker holds all `fed_frames` frames and has no full chunk left to encode.

    `settle_s` more is waited at the end, so that a chunk whose encoding has just started is fed too.
    """
    deadline = time.perf_counter() + timeout_s
    while True:
        call = engine._calls.get(conv.id)
        worker_conv = call.conv if call is not None else None
        if worker_conv is not None and len(worker_conv.turn_audio) == fed_frames and not worker_conv.chunk_ready():
            break
        if time.perf_counter() > deadline:
            raise TimeoutError(f"call {conv.id}: prefill of {fed_frames} frames did not finish in {timeout_s} s")
        await asyncio.sleep(0.002)
    await asyncio.sleep(settle_s)


@dataclass
class ReplyTiming:
    """One reply as seen by the call: chunk arrival times in seconds after respond()."""

    arrivals_s: list[float] = field(default_factory=list)
    codes: list[tuple[int, ...]] = field(default_factory=list)
    finish_s: float = float("nan")
    text: str = ""
    error: str | None = None

    @property
    def frames(self) -> int:
        return len(self.arrivals_s)

    @property
    def first_audio_s(self) -> float:
        return self.arrivals_s[0] if self.arrivals_s else float("nan")

    @property
    def real_time_factor(self) -> float:
        """Audio seconds generated per wall second, respond() to the end of the reply."""
        return self.frames * FRAME_SECONDS / self.finish_s if self.frames else float("nan")

    @property
    def buffer_needed_s(self) -> float:
        """Playout lead needed so that playback started at the first chunk never runs dry."""
        if not self.arrivals_s:
            return float("nan")
        first = self.arrivals_s[0]
        return max(0.0, max(t - first - k * FRAME_SECONDS for k, t in enumerate(self.arrivals_s)))


async def collect_reply(conv: CallConversation, start: float, stop_after: int | None = None) -> ReplyTiming:
    """Events of one reply until ReplyFinished/EngineError (or `stop_after` chunks), timed from `start`."""
    timing = ReplyTiming()
    while True:
        event = await asyncio.wait_for(conv.events.get(), EVENT_TIMEOUT_S)
        now = time.perf_counter() - start
        if isinstance(event, AgentAudio):
            timing.arrivals_s.append(now)
            timing.codes.append(event.codes)
            timing.text = event.text
            if stop_after is not None and timing.frames >= stop_after:
                timing.finish_s = now
                return timing
        elif isinstance(event, ReplyFinished):
            timing.finish_s = now
            timing.text = event.text
            return timing
        elif isinstance(event, EngineError):
            timing.finish_s = now
            timing.error = event.message
            return timing


async def first_audio_latency(engine: Engine, clip: SpeechClip, paced: bool) -> float:
    """Seconds from respond() to the first AgentAudio of the reply, on a fresh call."""
    conv = engine.open()
    try:
        if paced:
            await feed_paced(conv, clip)
        else:
            feed_instantly(conv, clip)
            await wait_prefilled(engine, conv, len(clip.frames))
        start = time.perf_counter()
        conv.respond()
        timing = await collect_reply(conv, start, stop_after=1)
        if timing.error is not None or not timing.frames:
            raise RuntimeError(f"reply failed before its first chunk: {timing.error or 'no audio'}")
        await conv.interrupt(0)
        return timing.first_audio_s
    finally:
        conv.close()


async def replies(engine: Engine, clips: list[SpeechClip], together: bool) -> tuple[list[ReplyTiming], float]:
    """Replies to `clips`, all calls generating at once (together) or one call at a time.

    Returns each reply's timing and the wall seconds of generation (sum of the replies when
    one at a time). Every call is prefilled before its respond() so that only the end of turn and
    the generation are timed.
    """
    if not together:
        timings = []
        for clip in clips:
            timing, _ = await replies(engine, [clip], together=True)
            timings += timing
        return timings, sum(t.finish_s for t in timings)
    convs = [engine.open() for _ in clips]
    try:
        for conv, clip in zip(convs, clips, strict=True):
            feed_instantly(conv, clip)
        for conv, clip in zip(convs, clips, strict=True):
            await wait_prefilled(engine, conv, len(clip.frames))
        start = time.perf_counter()
        for conv in convs:
            conv.respond()
        timings = list(await asyncio.gather(*(collect_reply(c, start) for c in convs)))
        return timings, max(t.finish_s for t in timings)
    finally:
        for conv in convs:
            conv.close()


# -- the model-math clock ----------------------------------------------------------------------------


class MathClock:
    """Seconds spent in model math inside the engine's generation steps.

    Wraps (while installed) every model call a step makes: the batched generation step (backbone,
    text logits, depthformer, sampling, embeddings), the backbone forward and the batched feeds of reply
    headers and ends of turn (``Engine._feed_rows``), and the audio decoder's streaming step. Time is counted only while ``Engine._step`` runs and only for
    the outermost wrapped call; the device is synchronised around each call.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self.calls = 0
        self.by_name: dict[str, float] = {}
        self._in_step = False
        self._depth = 0

    def _timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self._in_step or self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            try:
                sync(self.device)
                start = time.perf_counter()
                out = fn(*args, **kwargs)
                sync(self.device)
                elapsed = time.perf_counter() - start
                self.seconds += elapsed
                self.by_name[name] = self.by_name.get(name, 0.0) + elapsed
                self.calls += 1
                return out
            finally:
                self._depth -= 1

        return timed

    @contextlib.contextmanager
    def installed(self, engine: Engine) -> Iterator[MathClock]:
        loaded = engine.loaded
        model = loaded.model
        engine.pool  # noqa: B018  (makes the batched step, so it can be wrapped)
        captured = engine._captured  # what the engine calls: it runs (or replays) the batched step
        assert captured is not None
        generation_step = captured.step
        captured.step = self._timed("generation_step", generation_step)  # type: ignore[assignment]
        instance_patches: list[tuple[Any, str]] = [(model.lfm, "text_logits"), (model.lfm, "forward"),
                                                   (model, "embed_text"), (model, "embed_audio_frames"),
                                                   (engine.streams, "step"), (engine.streams, "flush"),
                                                   (engine, "_feed_rows")]
        for obj, name in instance_patches:
            obj.__dict__[name] = self._timed(name, getattr(obj, name))
        original_step = engine._step

        def step(active: list[Any]) -> None:
            self._in_step = True
            try:
                original_step(active)
            finally:
                self._in_step = False

        engine.__dict__["_step"] = step
        try:
            yield self
        finally:
            del engine.__dict__["_step"]
            captured.step = generation_step
            for obj, name in instance_patches:
                del obj.__dict__[name]


async def wait_idle(engine: Engine, timeout_s: float = EVENT_TIMEOUT_S) -> None:
    """Wait until no call is generating and the last step's duration is recorded.

    A reply's last event is sent from inside the step, before ``Engine.step_seconds`` gets that
    step's time, so readers of the step statistics wait for this first.
    """
    deadline = time.perf_counter() + timeout_s
    seen = -1
    while time.perf_counter() < deadline:
        busy = any(c.conv is not None and c.conv.job is not None for c in list(engine._calls.values()))
        count = len(engine.step_seconds)
        if not busy and count == seen:
            return
        seen = count
        await asyncio.sleep(0.01)
    raise TimeoutError(f"engine still generating after {timeout_s} s")


def same_codes(a: list[ReplyTiming], b: list[ReplyTiming]) -> int:
    """How many replies have identical audio code sequences in `a` and `b`."""
    return sum(1 for x, y in zip(a, b, strict=True) if x.codes == y.codes)


def quantiles_ms(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max) in milliseconds."""
    arr = np.asarray(values, dtype=np.float64) * 1000.0
    return float(np.median(arr)), float(arr.min()), float(arr.max())
