"""When has the caller finished? Pluggable end-of-turn detectors and the policy that combines them.

Theory of operation
-------------------
A ``TurnEndDetector`` is pure: it is fed the caller's 16 kHz audio as it arrives, each piece with
the VAD's state for it (``voiced``) and an explicit ``now_ms``; asked ``required_silence_ms(now)``, it
answers how long a silence after the caller's last voiced audio ends the turn, judged from what it
has heard so far. TurnTaking measures the silence itself (from ``VadSpeechPaused``) and ends the turn
once the silence reaches that figure. ``turn_ended(now)`` tells a detector that the turn was ended
(the gap running now is between turns, not a pause inside one).

Implementations:

- ``SilenceDetector``: a fixed silence (the behaviour before detectors existed).
- ``AdaptiveDetector``: learns this caller's pauses inside turns (the gaps after which they went on
  speaking) and asks for a silence a margin above the longest recent one, within ``[min_ms, max_ms]``.
- ``ProsodicDetector``: reads the pitch and energy contour of the last voiced stretch (numpy only):
  a final fall in pitch and energy and a lengthened last syllable mean "finished", a level or
  rising contour at full energy means "going on". It turns the contour into a probability ``q``
  that the turn is complete (a logistic model, ``PROSODIC_WEIGHTS``) and asks for
  ``min_ms + (max_ms - min_ms) * (1 - q)``.
- ``LearnedDetector``: the same mapping with ``q`` from an ONNX model on a local path (for example
  Smart Turn v3), run with onnxruntime (the optional ``turn`` extra). A model whose input has rank 2
  gets the last ``window_s`` of raw 16 kHz audio ``[1, samples]``; rank 3 gets Whisper-style log-mel
  features ``[1, 80, frames]``. The first output's first value is ``q``.

``EndpointPolicy`` combines several detectors (``min``: the quickest wins; ``max``: all must agree;
``mean``) and is itself a ``TurnEndDetector``. ``policy_from_settings`` builds it from the config's
``endpointing`` section (docs/endpointing.md).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

Int16Array = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.float64]

RATE = 16000
HOP = 160  # 10 ms analysis hop
WIN = 640  # 40 ms analysis window
F0_MIN, F0_MAX = 60.0, 400.0


class TurnEndDetector(Protocol):
    name: str

    def feed(self, pcm: Int16Array, voiced: bool, now_ms: int) -> None:
        """16 kHz caller audio that ends at ``now_ms``; ``voiced``: the VAD says speech for it."""

    def required_silence_ms(self, now_ms: int) -> int:
        """The silence after the last voiced audio that ends the turn, judged from what was heard."""

    def turn_ended(self, now_ms: int) -> None:
        """The turn was ended: the silence running now is a gap between turns, not a pause."""


# ---------------------------------------------------------------------------------------------- silence


@dataclass
class SilenceDetector:
    silence_ms: int = 1200
    name: str = "silence"

    def __post_init__(self) -> None:
        if self.silence_ms <= 0:
            raise ValueError(f"silence_ms must be positive, got {self.silence_ms}")

    def feed(self, pcm: Int16Array, voiced: bool, now_ms: int) -> None:
        return None

    def required_silence_ms(self, now_ms: int) -> int:
        return self.silence_ms

    def turn_ended(self, now_ms: int) -> None:
        return None


# ---------------------------------------------------------------------------------------------- adaptive


class _VoiceClock:
    """Voiced/unvoiced edges from the VAD state that comes with each piece of audio."""

    def __init__(self) -> None:
        self.voiced = False
        self.voice_end_ms: int | None = None  # end of the last voiced audio
        self.heard_voice = False

    def feed(self, pcm: Int16Array, voiced: bool, now_ms: int) -> int | None:
        """Returns the length of a pause that just ended (voice back after silence), else None."""
        ended: int | None = None
        if voiced:
            if not self.voiced and self.voice_end_ms is not None:
                ended = max(0, now_ms - pcm.size * 1000 // RATE - self.voice_end_ms)
            self.heard_voice = True
        elif self.voiced:
            self.voice_end_ms = now_ms - pcm.size * 1000 // RATE
        self.voiced = voiced
        return ended


@dataclass
class AdaptiveDetector:
    """Silence a margin above this caller's longest recent pause inside a turn, within bounds."""

    initial_ms: int = 800
    min_ms: int = 500
    max_ms: int = 1600
    margin_ms: int = 250
    history: int = 8
    name: str = "adaptive"
    _clock: _VoiceClock = field(default_factory=_VoiceClock, repr=False)
    _pauses: deque[int] = field(default_factory=deque, repr=False)
    _between_turns: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.min_ms <= self.initial_ms <= self.max_ms:
            raise ValueError(f"need 0 < min_ms <= initial_ms <= max_ms, got {self.min_ms}/{self.initial_ms}/{self.max_ms}")
        if self.margin_ms < 0 or self.history <= 0:
            raise ValueError("margin_ms must be >= 0 and history > 0")

    @property
    def pauses(self) -> list[int]:
        return list(self._pauses)

    def feed(self, pcm: Int16Array, voiced: bool, now_ms: int) -> None:
        ended = self._clock.feed(pcm, voiced, now_ms)
        if ended is not None:
            if not self._between_turns and ended <= self.max_ms:
                self._pauses.append(ended)
                while len(self._pauses) > self.history:
                    self._pauses.popleft()
            self._between_turns = False

    def required_silence_ms(self, now_ms: int) -> int:
        if not self._pauses:
            return self.initial_ms
        return int(min(self.max_ms, max(self.min_ms, max(self._pauses) + self.margin_ms)))

    def turn_ended(self, now_ms: int) -> None:
        self._between_turns = True


# ---------------------------------------------------------------------------------------------- prosody


def frame_analysis(x: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per 10 ms frame (40 ms windows) of 16 kHz audio in [-1, 1]: F0 in Hz, voicing strength (the
    normalised autocorrelation peak, 0-1) and level in dBFS."""
    n = (x.size - WIN) // HOP + 1
    if n <= 0:
        empty = np.zeros(0)
        return empty, empty, empty
    idx = np.arange(WIN)[None, :] + HOP * np.arange(n)[:, None]
    frames = x[idx]
    level = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)
    frames = (frames - frames.mean(axis=1, keepdims=True)) * np.hanning(WIN)[None, :]
    spec = np.fft.rfft(frames, 2 * WIN, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, :WIN]
    energy = ac[:, :1] + 1e-12
    ac = ac / energy  # biased (the window's own taper favours short lags: no octave-down errors)
    lo, hi = int(RATE / F0_MAX), int(RATE / F0_MIN)
    seg = ac[:, lo:hi]
    best = seg.max(axis=1)
    # the shortest lag whose peak is near the best: avoids subharmonic (octave-down) errors
    good = seg >= 0.9 * best[:, None]
    first = good.argmax(axis=1)
    # the top of that peak (within 12 lags), then parabolic interpolation
    span = np.clip(first[:, None] + np.arange(12)[None, :], 0, seg.shape[1] - 1)
    top = np.take_along_axis(span, np.take_along_axis(seg, span, 1).argmax(axis=1)[:, None], 1)[:, 0]
    left = seg[np.arange(n), np.maximum(top - 1, 0)]
    mid = seg[np.arange(n), top]
    right = seg[np.arange(n), np.minimum(top + 1, seg.shape[1] - 1)]
    denom = left - 2 * mid + right
    shift = np.where(np.abs(denom) > 1e-9, 0.5 * (left - right) / np.where(denom == 0, 1, denom), 0.0)
    lag = top + lo + np.clip(shift, -0.5, 0.5)
    f0 = RATE / np.maximum(lag, 1.0)
    return f0, np.clip(best, 0.0, 1.0), level


@dataclass(frozen=True)
class ProsodicFeatures:
    final_pitch_st: float  # pitch of the last 150 ms of voicing, semitones from the caller's median
    low_pitch_st: float  # 20th percentile of the pitch in the last 300 ms (a final fall reaches low)
    pitch_drop_st: float  # last 150 ms against 0.4-1.0 s before the end (the contour's final fall)
    fade_frames: float  # 10 ms frames from the last loud frame (ref - 6 dB) to the end of speech
    peak_level_db: float  # loudest frame of the last 200 ms relative to the caller's median
    final_voicing: float  # voicing strength of the last 100 ms of speech

    def vector(self) -> FloatArray:
        return np.array([self.final_pitch_st / 3, self.low_pitch_st / 3, self.pitch_drop_st / 3,
                         self.fade_frames / 10, self.peak_level_db / 5, self.final_voicing])


NEUTRAL = ProsodicFeatures(0.0, 0.0, 0.0, 0.0, 0.0, 0.5)
# Logistic weights over ProsodicFeatures.vector() and a bias, fitted with `lfm-call turn-eval --fit`
# on the seed-14 corpus (tools/turn_corpus/README.md); the seed-99 corpus is held out.
PROSODIC_WEIGHTS: tuple[float, ...] = (-0.884, -0.651, 0.95, -0.776, -1.006, -4.383)
PROSODIC_BIAS = 3.158


def _median(values: FloatArray, default: float = 0.0) -> float:
    return float(np.median(values)) if values.size else default


def prosodic_features(x: FloatArray, voiced: npt.NDArray[np.bool_]) -> ProsodicFeatures:
    """Features of the last voiced stretch of ``x`` (16 kHz in [-1, 1]); ``voiced``: the VAD's
    state per sample. Reference pitch and level: the caller's voiced audio in ``x``."""
    f0, strength, level = frame_analysis(x)
    if f0.size == 0:
        return NEUTRAL
    centre = np.minimum(np.arange(f0.size) * HOP + WIN // 2, voiced.size - 1)
    vad = voiced[centre]
    if not vad.any():
        return NEUTRAL
    ref_level = float(np.median(level[vad]))
    active = vad & (level > ref_level - 25)
    if not active.any():
        return NEUTRAL
    idx = np.arange(f0.size)
    last = int(np.nonzero(active)[0][-1])
    pitched = active & (strength > 0.45)
    semis = 12 * np.log2(np.maximum(f0, 1.0))
    ref_pitch = _median(semis[pitched])
    rel = np.clip(semis - ref_pitch, -12, 12)  # octave jumps of the pitch track are clipped
    final_pitch = _median(rel[pitched & (idx > last - 15)])
    tail = rel[pitched & (idx > last - 30)]
    low_pitch = float(np.percentile(tail, 20)) if tail.size > 2 else 0.0
    before = pitched & (idx > last - 100) & (idx <= last - 40)
    drop = final_pitch - _median(rel[before], final_pitch)
    loud = np.nonzero(active & (level > ref_level - 6))[0]
    fade = float(min(40, last - loud[-1])) if loud.size else 0.0
    peak = float(level[max(0, last - 20):last + 1].max() - ref_level)
    final_voicing = float(np.mean(strength[active & (idx > last - 10)]))
    return ProsodicFeatures(final_pitch, low_pitch, drop, fade, peak, final_voicing)


def completion_probability(features: ProsodicFeatures, weights: Sequence[float] = PROSODIC_WEIGHTS,
                           bias: float = PROSODIC_BIAS) -> float:
    z = float(np.dot(features.vector(), np.asarray(weights))) + bias
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


class _Recent:
    """The last ``keep_s`` of audio with the VAD state per sample."""

    def __init__(self, keep_s: float) -> None:
        self.keep = int(keep_s * RATE)
        self.parts: deque[tuple[Int16Array, bool]] = deque()
        self.size = 0

    def feed(self, pcm: Int16Array, voiced: bool) -> None:
        if pcm.size == 0:
            return
        self.parts.append((pcm, voiced))
        self.size += pcm.size
        while self.parts and self.size - self.parts[0][0].size >= self.keep:
            self.size -= self.parts.popleft()[0].size

    def audio(self) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
        if not self.parts:
            return np.zeros(0), np.zeros(0, bool)
        x = np.concatenate([p for p, _ in self.parts]).astype(np.float64) / 32768.0
        v = np.concatenate([np.full(p.size, f, bool) for p, f in self.parts])
        return x, v


def map_probability(q: float, min_ms: int, max_ms: int, unsure: float = 0.0, sure: float = 1.0) -> int:
    """``max_ms`` at or below the ``unsure`` probability, ``min_ms`` at or above ``sure``, linear between."""
    t = min(1.0, max(0.0, (q - unsure) / max(1e-6, sure - unsure)))
    return round(max_ms - (max_ms - min_ms) * t)


@dataclass
class _ProbabilityDetector:
    """Shared by the prosodic and learned detectors: q per pause, mapped to a silence."""

    min_ms: int = 250
    max_ms: int = 1600
    unsure: float = 0.0  # q at or below this: max_ms
    sure: float = 1.0  # q at or above this: min_ms
    keep_s: float = 6.0
    name: str = "probability"
    _recent: _Recent = field(init=False, repr=False)
    _q: float | None = field(default=None, init=False, repr=False)
    _voiced_since_q: bool = field(default=True, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.min_ms <= self.max_ms:
            raise ValueError(f"need 0 < min_ms <= max_ms, got {self.min_ms}/{self.max_ms}")
        if not 0.0 <= self.unsure < self.sure <= 1.0:
            raise ValueError(f"need 0 <= unsure < sure <= 1, got {self.unsure}/{self.sure}")
        self._recent = _Recent(self.keep_s)

    def feed(self, pcm: Int16Array, voiced: bool, now_ms: int) -> None:
        self._recent.feed(np.asarray(pcm, np.int16), voiced)
        if voiced:
            self._voiced_since_q = True

    def probability(self) -> float:
        """q for the current pause (computed once per pause, from the audio up to it)."""
        if self._q is None or self._voiced_since_q:
            x, v = self._recent.audio()
            self._q = self._complete(x, v) if v.any() else 0.5
            self._voiced_since_q = False
        return self._q

    def _complete(self, x: FloatArray, voiced: npt.NDArray[np.bool_]) -> float:
        raise NotImplementedError

    def required_silence_ms(self, now_ms: int) -> int:
        return map_probability(self.probability(), self.min_ms, self.max_ms, self.unsure, self.sure)

    def turn_ended(self, now_ms: int) -> None:
        return None


@dataclass
class ProsodicDetector(_ProbabilityDetector):
    weights: tuple[float, ...] = PROSODIC_WEIGHTS
    bias: float = PROSODIC_BIAS
    name: str = "prosodic"

    def _complete(self, x: FloatArray, voiced: npt.NDArray[np.bool_]) -> float:
        return completion_probability(prosodic_features(x, voiced), self.weights, self.bias)


# ---------------------------------------------------------------------------------------------- learned


class LearnedModelError(RuntimeError):
    pass


def log_mel(x: FloatArray, n_mels: int = 80, frames: int | None = None) -> npt.NDArray[np.float32]:
    """Whisper-style log-mel features [n_mels, frames] of 16 kHz audio (25 ms windows, 10 ms hop)."""
    n_fft, hop = 400, 160
    pad = np.pad(x, (n_fft // 2, n_fft // 2), mode="reflect") if x.size > n_fft // 2 else np.zeros(n_fft + hop)
    n = 1 + (pad.size - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(pad[idx] * np.hanning(n_fft + 1)[:-1], axis=1)) ** 2
    # HTK-style mel filter bank
    top = 2595 * np.log10(1 + 8000.0 / 700)
    edges = 700 * (10 ** (np.linspace(0.0, top, n_mels + 2) / 2595) - 1)
    bins = np.fft.rfftfreq(n_fft, 1 / RATE)
    fb = np.zeros((n_mels, bins.size))
    for m in range(n_mels):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        fb[m] = np.maximum(0, np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)))
    feats = np.log10(np.maximum(fb @ spec.T, 1e-10))
    feats = np.maximum(feats, feats.max() - 8.0)
    feats = (feats + 4.0) / 4.0
    if frames is not None:
        feats = feats[:, -frames:] if feats.shape[1] >= frames else \
            np.pad(feats, ((0, 0), (frames - feats.shape[1], 0)), constant_values=float(feats.min()))
    return np.asarray(feats, dtype=np.float32)


def load_onnx(path: str | Path) -> Any:
    """An onnxruntime session for the model at ``path`` (clear errors for a missing file or package)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise LearnedModelError(f"endpointing.learned.model_path: no ONNX file at {p}")
    try:
        import onnxruntime
    except ImportError:
        raise LearnedModelError("the learned end-of-turn detector needs onnxruntime: "
                                "pip install 'lfm-call[turn]' (or pip install onnxruntime)") from None
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise LearnedModelError(f"cannot load the ONNX model {p}: {exc}") from None


@dataclass
class LearnedDetector(_ProbabilityDetector):
    model_path: str = ""
    window_s: float = 8.0
    name: str = "learned"
    session: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.keep_s = max(self.keep_s, self.window_s)
        super().__post_init__()
        if self.session is None:
            self.session = load_onnx(self.model_path)
        inp = self.session.get_inputs()[0]
        self._input_name = inp.name
        self._rank = len(inp.shape)
        if self._rank not in (2, 3):
            raise LearnedModelError(f"{self.model_path}: input {inp.name} has rank {self._rank}; "
                                    "expected [1, samples] audio or [1, 80, frames] log-mel")
        last = inp.shape[-1]
        self._frames = last if isinstance(last, int) and last > 0 else None

    def _complete(self, x: FloatArray, voiced: npt.NDArray[np.bool_]) -> float:
        n = int(self.window_s * RATE)
        x = x[-n:]
        if self._rank == 2:
            feed = x.astype(np.float32)[None, :]
        else:
            feed = log_mel(x, frames=self._frames or int(self.window_s * 100))[None, :, :]
        out = self.session.run(None, {self._input_name: feed})[0]
        q = float(np.asarray(out).reshape(-1)[0])
        if not math.isfinite(q):
            return 0.5
        return min(1.0, max(0.0, q))


# ---------------------------------------------------------------------------------------------- policy


COMBINE_MODES = ("min", "max", "mean")


@dataclass
class EndpointPolicy:
    """Several detectors as one: the required silence is the min, max or mean of theirs."""

    detectors: list[TurnEndDetector]
    combine: str = "mean"
    name: str = "policy"

    def __post_init__(self) -> None:
        if not self.detectors:
            raise ValueError("EndpointPolicy needs at least one detector")
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {COMBINE_MODES}, got {self.combine!r}")
        self.name = "+".join(d.name for d in self.detectors) if len(self.detectors) > 1 else self.detectors[0].name

    def feed(self, pcm: Int16Array, voiced: bool, now_ms: int) -> None:
        for d in self.detectors:
            d.feed(pcm, voiced, now_ms)

    def required_silence_ms(self, now_ms: int) -> int:
        values = [d.required_silence_ms(now_ms) for d in self.detectors]
        if self.combine == "min":
            return min(values)
        if self.combine == "max":
            return max(values)
        return round(sum(values) / len(values))

    def turn_ended(self, now_ms: int) -> None:
        for d in self.detectors:
            d.turn_ended(now_ms)


DETECTOR_NAMES = ("silence", "adaptive", "prosodic", "learned")


def build_detector(name: str, settings: Any) -> TurnEndDetector:
    """One detector from the settings (``endpointing`` section; silence: ``turn.end_of_turn_silence_ms``)."""
    e = settings.endpointing
    if name == "silence":
        return SilenceDetector(settings.turn.end_of_turn_silence_ms)
    if name == "adaptive":
        return AdaptiveDetector(initial_ms=e.adaptive_initial_ms, min_ms=e.adaptive_min_ms, max_ms=e.adaptive_max_ms,
                                margin_ms=e.adaptive_margin_ms)
    if name == "prosodic":
        return ProsodicDetector(min_ms=e.min_silence_ms, max_ms=e.max_silence_ms, unsure=e.unsure_probability,
                                sure=e.sure_probability)
    if name == "learned":
        return LearnedDetector(min_ms=e.min_silence_ms, max_ms=e.max_silence_ms, unsure=e.unsure_probability,
                               sure=e.sure_probability, model_path=e.learned_model_path,
                               window_s=e.learned_window_s)
    raise ValueError(f"unknown end-of-turn detector {name!r} (one of {', '.join(DETECTOR_NAMES)})")


def policy_from_settings(settings: Any, detectors: Sequence[str] | None = None) -> EndpointPolicy:
    """The configured policy (``endpointing.detectors`` combined by ``endpointing.combine``)."""
    names = settings.endpointing.detectors if detectors is None else detectors
    return EndpointPolicy([build_detector(n, settings) for n in names], combine=settings.endpointing.combine)
