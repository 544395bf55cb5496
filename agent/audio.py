"""Audio constants and the PCM frame type shared by every stage of the call path.

Inside the agent the unit of time is the 80 ms frame (one LFM2-Audio input embedding, one Mimi output
frame); transports speak 20 ms packets. A ``PcmFrame`` carries mono int16 samples plus the sample rate
and the position of its first sample, counted in samples at that rate from the start of the call, so
that every stage can reason about time without reading a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FRAME_MS = 80
PACKET_MS = 20
MODEL_INPUT_RATE = 16000
MODEL_OUTPUT_RATE = 24000

INT16_FULL_SCALE = 32768.0
# Level reported for digital silence, instead of -inf.
SILENCE_DBFS = -120.0

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]


class AudioError(ValueError):
    """Malformed audio: wrong dtype or shape, bad sample rate, unreadable file, broken stream order."""


def samples_per_ms(sample_rate: int, duration_ms: int) -> int:
    """Number of samples in ``duration_ms`` at ``sample_rate``; the duration must be a whole number of samples."""
    if sample_rate <= 0:
        raise AudioError(f"sample rate must be positive, got {sample_rate}")
    if duration_ms < 0:
        raise AudioError(f"duration must not be negative, got {duration_ms} ms")
    num, rem = divmod(sample_rate * duration_ms, 1000)
    if rem:
        raise AudioError(f"{duration_ms} ms at {sample_rate} Hz is not a whole number of samples")
    return num


def rms_dbfs(samples: npt.NDArray[np.int16] | npt.NDArray[np.float32] | npt.NDArray[np.float64]) -> float:
    """RMS level in dB relative to full scale (a full-scale square wave is 0 dBFS).

    int16 input is scaled by 1/32768; float input is taken as already in [-1, 1). Empty or silent input
    gives ``SILENCE_DBFS``.
    """
    if samples.size == 0:
        return SILENCE_DBFS
    x = samples.astype(np.float64)
    if samples.dtype == np.int16:
        x /= INT16_FULL_SCALE
    mean_square = float(np.mean(x * x))
    if mean_square <= 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 10.0 * float(np.log10(mean_square)))


def float32_to_int16(x: npt.NDArray[np.floating]) -> Int16Array:
    """Scale [-1, 1) float audio to int16: clip, multiply by 32768, round half to even."""
    scaled = np.rint(np.clip(x.astype(np.float64, copy=False), -1.0, 1.0) * INT16_FULL_SCALE)
    return np.clip(scaled, -INT16_FULL_SCALE, INT16_FULL_SCALE - 1).astype(np.int16)


def int16_to_float32(x: Int16Array) -> Float32Array:
    """int16 to float32 in [-1, 1), exactly ``x / 32768``."""
    return x.astype(np.float32) / np.float32(INT16_FULL_SCALE)


@dataclass(frozen=True, eq=False)
class PcmFrame:
    """Mono int16 audio with its rate and the call-relative position of its first sample.

    ``timestamp`` is in samples at ``sample_rate`` from the start of the call. Equality is identity
    (numpy arrays have no single truth value); compare ``samples`` with ``np.array_equal``.
    """

    samples: Int16Array
    sample_rate: int
    timestamp: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.samples, np.ndarray):
            raise AudioError(f"PcmFrame samples must be a numpy array, got {type(self.samples).__name__}")
        if self.samples.dtype != np.int16:
            raise AudioError(f"PcmFrame samples must be int16, got {self.samples.dtype}")
        if self.samples.ndim != 1:
            raise AudioError(f"PcmFrame samples must be mono (1-D), got shape {self.samples.shape}")
        if isinstance(self.sample_rate, bool) or not isinstance(self.sample_rate, int | np.integer):
            raise AudioError(f"PcmFrame sample_rate must be an int, got {self.sample_rate!r}")
        if self.sample_rate <= 0:
            raise AudioError(f"PcmFrame sample_rate must be positive, got {self.sample_rate}")
        if isinstance(self.timestamp, bool) or not isinstance(self.timestamp, int | np.integer):
            raise AudioError(f"PcmFrame timestamp must be an int, got {self.timestamp!r}")
        if self.timestamp < 0:
            raise AudioError(f"PcmFrame timestamp must not be negative, got {self.timestamp}")

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration_ms(self) -> float:
        return 1000.0 * self.num_samples / self.sample_rate

    @property
    def end_timestamp(self) -> int:
        """Position just after the last sample (the next frame's ``timestamp`` when contiguous)."""
        return int(self.timestamp) + self.num_samples

    @property
    def start_ms(self) -> float:
        return 1000.0 * self.timestamp / self.sample_rate

    def to_float32(self) -> Float32Array:
        return int16_to_float32(self.samples)

    @classmethod
    def from_float32(cls, x: npt.NDArray[np.floating], sample_rate: int, timestamp: int = 0) -> PcmFrame:
        """Build a frame from float audio in [-1, 1): clipped, scaled by 32768 and rounded."""
        arr = np.asarray(x)
        if arr.ndim != 1:
            raise AudioError(f"from_float32 needs mono (1-D) audio, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise AudioError(f"from_float32 needs float samples, got {arr.dtype}")
        return cls(float32_to_int16(arr), sample_rate, timestamp)

    @classmethod
    def silence(cls, num_samples: int, sample_rate: int, timestamp: int = 0) -> PcmFrame:
        return cls(np.zeros(num_samples, dtype=np.int16), sample_rate, timestamp)
