"""Voice activity: detectors that give a speech probability per chunk, and the hysteresis over them.

Theory of operation
-------------------
A ``VoiceDetector`` only answers "how likely is this chunk speech" (``speech_probability``) for fixed
chunks (Silero: 512 samples at 16 kHz = 32 ms). ``VadTracker`` owns everything else: it cuts a stream
of frames of any length into whole chunks (carrying the remainder to the next frame), and runs the
quiet/starting/speaking/stopping hysteresis over the probabilities:

=========  ===========================  ===========  =========================================
state      chunk probability p          next state   event (at = real start / end of speech)
=========  ===========================  ===========  =========================================
QUIET      p >= start_threshold         STARTING     VadVoiceOnset(candidate = chunk start)
STARTING   p >= stop_threshold          STARTING     -> SPEAKING + VadSpeechStarted(candidate)
                                                     once speech lasted ``start_ms``
STARTING   p <  stop_threshold          QUIET        VadVoiceOnsetDropped (too short: a click)
SPEAKING   p <  stop_threshold          STOPPING     VadSpeechPaused(chunk start)
STOPPING   p >= start_threshold         SPEAKING     VadSpeechResumed(chunk start)
STOPPING   otherwise                    STOPPING     -> QUIET + VadSpeechStopped(pause start)
                                                     once the silence lasted ``stop_ms``
=========  ===========================  ===========  =========================================

``start_ms`` = 0 confirms on the first chunk. Times are integer ms from call start, computed from the
sample count so that 1280-sample frames and 512-sample chunks never drift against each other.
Deciding *turns* (end of turn after 600 ms, barge-in after 300 ms of speech) is TurnTaking's job;
keep ``stop_ms`` short here so that a talkspurt ends promptly.
"""

from __future__ import annotations

import enum
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from agent.audio import AudioError
from agent.events import (
    VadEvent,
    VadSpeechPaused,
    VadSpeechResumed,
    VadSpeechStarted,
    VadSpeechStopped,
    VadVoiceOnset,
    VadVoiceOnsetDropped,
)

if TYPE_CHECKING:
    import torch

Float32Array = npt.NDArray[np.float32]

SILERO_SAMPLE_RATE = 16000
SILERO_CHUNK_SAMPLES = 512  # 32 ms; the only chunk size the 16 kHz Silero model accepts


class VoiceDetector(Protocol):
    """Supplies a speech confidence for one chunk; state (if any) carries from chunk to chunk."""

    @property
    def sample_rate(self) -> int: ...

    @property
    def chunk_samples(self) -> int: ...

    def speech_probability(self, chunk: Float32Array) -> float:
        """Probability in [0, 1] that ``chunk`` (exactly ``chunk_samples`` float32 in [-1, 1)) is speech."""
        ...

    def reset(self) -> None: ...


def _check_chunk(chunk: Float32Array, chunk_samples: int, who: str) -> None:
    if chunk.dtype != np.float32 or chunk.ndim != 1:
        raise AudioError(f"{who} needs a 1-D float32 chunk, got {chunk.dtype} with shape {chunk.shape}")
    if chunk.shape[0] != chunk_samples:
        raise AudioError(f"{who} needs chunks of {chunk_samples} samples, got {chunk.shape[0]}")


class SileroVad:
    """Silero VAD v5+ (the TorchScript model shipped inside the ``silero-vad`` package), 16 kHz, 32 ms.

    Load once with ``SileroVad.load()`` at the entry point, then ``fork()`` one detector per call.
    Every fork shares the packaged network (its 16 kHz ``_model``: ``(x, state) -> (prob, state)``,
    pure) and keeps only its own recurrent state and 64-sample context, which is what the package's
    stateful wrapper keeps inside. A fork costs microseconds: copying the TorchScript module per call
    held the GIL for ~5 ms at every call set-up, long enough to delay every call's RTP send.
    """

    def __init__(self, net: Any) -> None:
        self._net = net
        self._context_samples = int(net.context_size_samples)
        self.sample_rate = SILERO_SAMPLE_RATE
        self.chunk_samples = SILERO_CHUNK_SAMPLES
        self._state: torch.Tensor
        self._context: torch.Tensor
        self.reset()

    @classmethod
    def load(cls, *, num_threads: int | None = 1) -> SileroVad:
        """Load the packaged model. ``num_threads`` sets torch's (process-wide) CPU thread count."""
        import torch
        from silero_vad import load_silero_vad

        if num_threads is not None:
            torch.set_num_threads(num_threads)
        with warnings.catch_warnings():  # the package uses deprecated importlib/jit entry points
            warnings.simplefilter("ignore", DeprecationWarning)
            model = load_silero_vad()
        model.eval()
        vad = cls(model._model)
        silence = np.zeros(vad.chunk_samples, np.float32)
        for _ in range(3):  # TorchScript optimises itself on its first calls: here, not in a call
            vad.speech_probability(silence)
        vad.reset()
        return vad

    def fork(self) -> SileroVad:
        """An independent detector with fresh state, sharing the network."""
        return SileroVad(self._net)

    def speech_probability(self, chunk: Float32Array) -> float:
        import torch

        _check_chunk(chunk, self.chunk_samples, "SileroVad")
        with torch.inference_mode():
            x = torch.cat([self._context, torch.from_numpy(chunk)[None]], 1)
            out, self._state = self._net(x, self._state)
            self._context = x[:, -self._context_samples:]
        return float(out.item())

    def reset(self) -> None:
        import torch

        self._state = torch.zeros(0)  # empty: the network starts from zeros, as the package's reset does
        self._context = torch.zeros(1, self._context_samples)


@dataclass(frozen=True)
class EnergyVadSettings:
    """Level-to-probability ramp: ``silence_dbfs`` and below -> 0, ``speech_dbfs`` and above -> 1."""

    sample_rate: int = 16000
    chunk_ms: int = 20
    silence_dbfs: float = -50.0
    speech_dbfs: float = -35.0

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.chunk_ms <= 0 or (self.sample_rate * self.chunk_ms) % 1000:
            raise ValueError(f"chunk of {self.chunk_ms} ms at {self.sample_rate} Hz is not whole samples")
        if self.speech_dbfs <= self.silence_dbfs:
            raise ValueError(f"speech_dbfs ({self.speech_dbfs}) must exceed silence_dbfs ({self.silence_dbfs})")


class EnergyVad:
    """A stateless level detector: simple, fast, deterministic (tests, and a fallback without torch)."""

    def __init__(self, settings: EnergyVadSettings | None = None) -> None:
        self.settings = settings or EnergyVadSettings()
        self.sample_rate = self.settings.sample_rate
        self.chunk_samples = self.settings.sample_rate * self.settings.chunk_ms // 1000

    def speech_probability(self, chunk: Float32Array) -> float:
        _check_chunk(chunk, self.chunk_samples, "EnergyVad")
        mean_square = float(np.mean(np.square(chunk, dtype=np.float64)))
        level_dbfs = 10.0 * math.log10(mean_square) if mean_square > 1e-12 else -120.0
        s = self.settings
        return min(1.0, max(0.0, (level_dbfs - s.silence_dbfs) / (s.speech_dbfs - s.silence_dbfs)))

    def reset(self) -> None:
        return None


class VadState(enum.Enum):
    QUIET = "quiet"
    STARTING = "starting"
    SPEAKING = "speaking"
    STOPPING = "stopping"


@dataclass(frozen=True)
class VadSettings:
    start_threshold: float = 0.5
    stop_threshold: float = 0.35
    start_ms: int = 64  # speech must last this long to count as started
    stop_ms: int = 160  # silence must last this long to count as stopped (a talkspurt, not a turn)

    def __post_init__(self) -> None:
        if not 0.0 < self.stop_threshold <= self.start_threshold <= 1.0:
            raise ValueError(
                f"need 0 < stop_threshold <= start_threshold <= 1, got {self.stop_threshold} / {self.start_threshold}"
            )
        if self.start_ms < 0 or self.stop_ms < 0:
            raise ValueError(f"start_ms and stop_ms must not be negative, got {self.start_ms} / {self.stop_ms}")


class VadTracker:
    """Hysteresis over a detector's probabilities; ``feed`` audio frames or ``update`` probabilities."""

    def __init__(self, detector: VoiceDetector | None = None, settings: VadSettings | None = None) -> None:
        self.detector = detector
        self.settings = settings or VadSettings()
        self.state = VadState.QUIET
        self.last_probability = 0.0
        self._candidate_ms = 0  # candidate start (STARTING) or candidate end (STOPPING)
        self._carry: Float32Array = np.zeros(0, dtype=np.float32)
        self._anchor_ms: int | None = None  # call time of sample 0 of the current contiguous stream
        self._consumed_samples = 0  # samples of that stream already turned into chunks

    @property
    def speaking(self) -> bool:
        """True from confirmed start until confirmed stop (including a not yet confirmed pause)."""
        return self.state in (VadState.SPEAKING, VadState.STOPPING)

    def reset(self) -> None:
        self.state = VadState.QUIET
        self.last_probability = 0.0
        self._carry = np.zeros(0, dtype=np.float32)
        self._anchor_ms = None
        self._consumed_samples = 0
        if self.detector is not None:
            self.detector.reset()

    def update(self, probability: float, start_ms: int, duration_ms: int) -> list[VadEvent]:
        """Advance by one chunk covering [start_ms, start_ms + duration_ms) with this speech probability."""
        if not 0.0 <= probability <= 1.0 or math.isnan(probability):
            raise ValueError(f"speech probability must be in [0, 1], got {probability}")
        if duration_ms <= 0:
            raise ValueError(f"chunk duration must be positive, got {duration_ms} ms")
        s = self.settings
        self.last_probability = probability
        end_ms = start_ms + duration_ms
        events: list[VadEvent] = []
        if self.state is VadState.QUIET:
            if probability >= s.start_threshold:
                self.state = VadState.STARTING
                self._candidate_ms = start_ms
                events.append(VadVoiceOnset(at_ms=start_ms))
        elif self.state is VadState.STARTING:
            if probability < s.stop_threshold:
                self.state = VadState.QUIET
                events.append(VadVoiceOnsetDropped(at_ms=start_ms))
        elif self.state is VadState.SPEAKING:
            if probability < s.stop_threshold:
                self.state = VadState.STOPPING
                self._candidate_ms = start_ms
                events.append(VadSpeechPaused(at_ms=start_ms))
        elif probability >= s.start_threshold:  # STOPPING, voice is back
            self.state = VadState.SPEAKING
            events.append(VadSpeechResumed(at_ms=start_ms))

        if self.state is VadState.STARTING and end_ms - self._candidate_ms >= s.start_ms:
            self.state = VadState.SPEAKING
            events.append(VadSpeechStarted(at_ms=self._candidate_ms))
        elif self.state is VadState.STOPPING and end_ms - self._candidate_ms >= s.stop_ms:
            self.state = VadState.QUIET
            events.append(VadSpeechStopped(at_ms=self._candidate_ms))
        return events

    def feed(self, samples: npt.NDArray[np.int16] | Float32Array, start_ms: int) -> list[VadEvent]:
        """Feed audio at the detector's rate whose first sample is at ``start_ms``.

        Whole chunks are scored; the remainder waits for the next frame. A frame that does not follow
        the previous one (more than 1 ms off) starts a new stream: the carried remainder is dropped.
        """
        detector = self.detector
        if detector is None:
            raise ValueError("VadTracker.feed needs a detector; use update() to feed probabilities")
        if samples.ndim != 1:
            raise AudioError(f"VAD input must be mono (1-D), got shape {samples.shape}")
        audio: Float32Array
        if samples.dtype == np.int16:
            audio = samples.astype(np.float32) / np.float32(32768.0)
        elif samples.dtype == np.float32:
            audio = samples.astype(np.float32, copy=False)
        else:
            raise AudioError(f"VAD input must be int16 or float32, got {samples.dtype}")
        rate = detector.sample_rate
        if self._anchor_ms is not None:
            expected_ms = self._anchor_ms + (self._consumed_samples + self._carry.shape[0]) * 1000 / rate
            if abs(start_ms - expected_ms) > 1.0:
                self._anchor_ms = None
        if self._anchor_ms is None:
            self._anchor_ms = start_ms
            self._consumed_samples = 0
            self._carry = np.zeros(0, dtype=np.float32)
        buffered = np.concatenate([self._carry, audio]) if self._carry.shape[0] else audio
        n = detector.chunk_samples
        events: list[VadEvent] = []
        whole = buffered.shape[0] // n
        for i in range(whole):
            chunk = np.ascontiguousarray(buffered[i * n : (i + 1) * n])
            begin = self._consumed_samples
            chunk_start_ms = self._anchor_ms + begin * 1000 // rate
            chunk_end_ms = self._anchor_ms + (begin + n) * 1000 // rate
            self._consumed_samples += n
            probability = detector.speech_probability(chunk)
            events.extend(self.update(probability, chunk_start_ms, chunk_end_ms - chunk_start_ms))
        self._carry = buffered[whole * n :].copy()
        return events
