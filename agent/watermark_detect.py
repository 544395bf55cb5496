"""Finding the agent's watermark (``agent.watermark``) in received audio: files and live streams.

Theory of operation
-------------------
Everything runs at 16 kHz (input of any rate is resampled with the project's resampler).

1. **Whitening.** 60 ms frames (960 samples, hop 480, sqrt-Hann analysis and synthesis): each
   in-band bin becomes ``Y / |Y|^0.75``; the frame is weighted by ``E / (E + 10^-3.5 E_max)``, with
   ``E_max`` the loudest frame of the last 3 s, so that pauses and line noise do not dilute the
   statistic. This undoes the mark's shaping by the speech spectrum and flattens the speech.
2. **Window statistic.** A window (3 s) of whitened samples ``z`` is folded onto one 2 s period by
   absolute sample index; its DFT ``Z_k`` is correlated with the pilot's unit coefficients
   ``C_k = exp(i theta_k)`` at every lag ``d`` (one inverse FFT):
   ``r(d) = (2 / P) sum_k |Z_k| cos(arg Z_k - theta_k + 2 pi k d / P)`` over the in-band bins.
   ``T = max_d |r(d)| / sigma`` with ``sigma^2 = (2 / P^2) sum_k |Z_k|^2``.
3. **False positives.** For audio that does not carry this key's mark, the carrier phases
   ``theta_k`` are independent and uniform with respect to the audio (they come from SHAKE-256 of
   a secret key), so for each lag ``r(d) / sigma`` is a weighted sum of independent ``cos(U)``
   terms. ``E exp(l cos U) = I0(l) <= exp(l^2 / 4)`` makes it sub-Gaussian with variance proxy 1,
   so ``P(|r(d)| / sigma >= t) <= 2 exp(-t^2 / 2)`` for any audio: music, tones, noise or other
   speech. A union over the ``P = 32000`` lags gives the bound per window
   ``FP(t) <= 2 P exp(-t^2 / 2)``; the threshold for a target ``alpha`` is
   ``t = sqrt(2 ln(2 P / alpha))``: 6.37 for 1e-4 per 3 s window. It is a bound (the lags are
   strongly correlated and the Chernoff bound is not tight), measured rates are lower.
4. **Payload.** At the detected lag the soft value of each 16 ms coded bit is the correlation with
   the data carrier over its slot (sign-corrected by the pilot's polarity); each 16-bit field is
   decoded by correlating with all 65,536 codewords of its code. Node and call fields add their
   scores over every block of a segment; the counter adds them along ``counter + k``. A field is
   reported when its normalised score reaches ``DECODE_Z`` (a wrong codeword does so with
   probability <= 65536 exp(-DECODE_Z^2 / 2), about 1e-3).

A live stream goes through ``StreamingDetector.push(samples, rate)`` (RTP payloads once decoded,
WebRTC frames via ``push_frame``); it evaluates the last 3 s every 0.5 s and decides as soon as a
window crosses the threshold, so 3 s of agent speech always suffice.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agent.audio import AudioError
from agent.resample import StreamingResampler
from agent.watermark import (
    BAND_HIGH_HZ,
    BAND_LOW_HZ,
    BITS_PER_BLOCK,
    BLOCK_S,
    FIELD_BITS,
    FIELD_CODES,
    FIELD_NAMES,
    WatermarkKey,
    generator_matrix,
    interleaver,
)

FloatArray = npt.NDArray[np.float64]

DETECT_RATE = 16000
PERIOD = int(DETECT_RATE * BLOCK_S)  # 32000 lags
BIT_SAMPLES_16K = PERIOD // BITS_PER_BLOCK  # 256
WHITEN_FRAME = 960
WHITEN_HOP = 480
WHITEN_GAMMA = 0.75
FRAME_FLOOR = 10.0 ** -3.5  # frames 35 dB below the loudest of the last 3 s weigh half
WINDOW_S = 3.0
WINDOW_SAMPLES = int(WINDOW_S * DETECT_RATE)
STREAM_STEP_S = 0.5
DEFAULT_ALPHA = 1e-4  # false positives per window
DECODE_Z = 6.0
LAG_TOLERANCE = 4  # samples: windows whose lags differ by less belong to one segment

_WINDOW = np.sqrt(np.hanning(WHITEN_FRAME + 1)[:-1])
_FREQS = np.fft.rfftfreq(WHITEN_FRAME, 1.0 / DETECT_RATE)
_BAND = (_FREQS >= BAND_LOW_HZ) & (_FREQS <= BAND_HIGH_HZ)


def threshold_for(alpha: float, lags: int = PERIOD) -> float:
    """Statistic threshold whose false-positive bound per window is ``alpha``."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"false-positive target must be in (0, 1), got {alpha}")
    return math.sqrt(2.0 * math.log(2.0 * lags / alpha))


def false_positive_bound(statistic: float, lags: int = PERIOD) -> float:
    """Upper bound on the probability that unmarked audio reaches ``statistic`` in one window."""
    return min(1.0, 2.0 * lags * math.exp(-0.5 * statistic * statistic))


def log10_false_positive_bound(statistic: float, lags: int = PERIOD) -> float:
    return min(0.0, math.log10(2.0 * lags) - 0.5 * statistic * statistic / math.log(10.0))


class Whitener:
    """Streaming whitening at 16 kHz; output sample k is input sample k (emitted 30 ms later)."""

    def __init__(self) -> None:
        self._buf = np.zeros(0)
        self._tail = np.zeros(WHITEN_HOP)  # overlap-add of the previous frame's second half
        self._energies: deque[float] = deque(maxlen=int(WINDOW_S * DETECT_RATE) // WHITEN_HOP)
        self.emitted = 0  # whitened samples returned so far

    def process(self, x: FloatArray) -> FloatArray:
        """Whiten; returns every sample that is final (a multiple of the 30 ms hop)."""
        buf = np.concatenate([self._buf, x]) if self._buf.size else np.asarray(x, dtype=np.float64)
        frames = 0 if buf.size < WHITEN_FRAME else (buf.size - WHITEN_FRAME) // WHITEN_HOP + 1
        if frames == 0:
            self._buf = buf
            return np.zeros(0)
        idx = np.arange(frames)[:, None] * WHITEN_HOP + np.arange(WHITEN_FRAME)[None, :]
        spectra = np.fft.rfft(buf[idx] * _WINDOW, axis=1)
        mag = np.abs(spectra)
        energy = np.sum(mag[:, _BAND] ** 2, axis=1)
        peak = mag.max(axis=1, keepdims=True)
        compressed = np.where(_BAND[None, :], spectra / (mag + 1e-3 * peak + 1e-9) ** WHITEN_GAMMA, 0.0)
        weights = np.empty(frames)
        for i in range(frames):
            self._energies.append(float(energy[i]))
            ref = max(self._energies)
            weights[i] = energy[i] / (energy[i] + FRAME_FLOOR * ref) if ref > 0.0 else 0.0
        time_frames = np.fft.irfft(compressed * weights[:, None], WHITEN_FRAME, axis=1) * _WINDOW
        out = np.zeros((frames + 1) * WHITEN_HOP)
        out[:WHITEN_HOP] += self._tail
        for i in range(frames):
            out[i * WHITEN_HOP : i * WHITEN_HOP + WHITEN_FRAME] += time_frames[i]
        self._tail = out[frames * WHITEN_HOP :].copy()
        self._buf = buf[frames * WHITEN_HOP :]
        done = out[: frames * WHITEN_HOP]
        self.emitted += done.size
        return done


def whiten(x16: FloatArray) -> FloatArray:
    """Whiten a whole 16 kHz signal (same as streaming it); the result has the input's length."""
    w = Whitener()
    out = w.process(np.concatenate([np.asarray(x16, dtype=np.float64), np.zeros(WHITEN_FRAME)]))
    return out[: x16.size] if out.size >= x16.size else np.concatenate([out, np.zeros(x16.size - out.size)])


@dataclass(frozen=True)
class WindowResult:
    start_s: float
    end_s: float
    statistic: float
    lag: int  # block start, in 16 kHz samples modulo PERIOD (absolute sample index)
    polarity: int  # +1, or -1 when the channel inverted the signal


def _spectrum_in_band(folded: FloatArray, key: WatermarkKey) -> npt.NDArray[np.complex128]:
    spec: npt.NDArray[np.complex128] = np.fft.rfft(folded)[key.bins]
    return spec


def fold(z: FloatArray, first_index: int) -> FloatArray:
    """Sum ``z`` (starting at absolute sample ``first_index``) onto one period by index mod PERIOD."""
    out = np.zeros(PERIOD)
    offset = first_index % PERIOD
    padded = np.concatenate([np.zeros(offset), z])
    padded = np.concatenate([padded, np.zeros((-padded.size) % PERIOD)])
    out += padded.reshape(-1, PERIOD).sum(axis=0)
    return out


def window_statistic(z: FloatArray, first_index: int, key: WatermarkKey) -> tuple[float, int, int]:
    """(statistic, lag, polarity) of whitened samples ``z`` that start at absolute index ``first_index``."""
    zk = _spectrum_in_band(fold(z, first_index), key)
    var = 2.0 * float(np.sum(np.abs(zk) ** 2)) / PERIOD**2
    if var <= 0.0:
        return 0.0, 0, 1
    full = np.zeros(PERIOD // 2 + 1, dtype=np.complex128)
    full[key.bins] = zk * np.conj(key.spectrum("pilot"))
    r = np.fft.irfft(full, PERIOD)
    lag = int(np.argmax(np.abs(r)))
    return float(abs(r[lag]) / math.sqrt(var)), lag, 1 if r[lag] >= 0 else -1


@functools.lru_cache(maxsize=4)
def _codewords(index: int) -> npt.NDArray[np.float32]:
    n, seed = FIELD_CODES[index]
    msgs = ((np.arange(1 << FIELD_BITS)[:, None] >> np.arange(FIELD_BITS)[None, :]) & 1).astype(np.uint8)
    bits = msgs @ generator_matrix(n, seed) % 2
    out: npt.NDArray[np.float32] = (1.0 - 2.0 * bits).astype(np.float32)
    return out


def soft_bits(z: FloatArray, first_index: int, lag: int, polarity: int, key: WatermarkKey) -> dict[int, FloatArray]:
    """Soft value of every coded bit slot covered by ``z``, per block (block 0 starts at ``lag`` mod P
    at or before ``first_index``); bits in transmission order."""
    data = key.carrier("data", DETECT_RATE)
    n = np.arange(z.size) + first_index - lag
    product = z * data[n % PERIOD] * polarity
    block = n // PERIOD
    slot = (n % PERIOD) // BIT_SAMPLES_16K
    out: dict[int, FloatArray] = {}
    for b in np.unique(block):
        sel = block == b
        if np.count_nonzero(sel) < PERIOD // 4:  # a sliver of a block: too little to add anything
            continue
        sums: FloatArray = np.bincount(slot[sel], weights=product[sel], minlength=BITS_PER_BLOCK).astype(np.float64)
        out[int(b)] = sums[:BITS_PER_BLOCK]
    return out


@dataclass(frozen=True)
class FieldDecode:
    value: int | None  # None: not decoded with confidence
    z: float  # the best codeword's normalised score
    best: int


def _decode(scores: FloatArray, energy: float) -> FieldDecode:
    if energy <= 0.0:
        return FieldDecode(None, 0.0, 0)
    best = int(np.argmax(scores))
    z = float(scores[best] / math.sqrt(energy))
    return FieldDecode(best if z >= DECODE_Z else None, z, best)


@dataclass(frozen=True)
class PayloadDecode:
    node: FieldDecode
    call: FieldDecode
    counter: FieldDecode  # the counter of the first block
    blocks: int

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"blocks": self.blocks}
        for name in FIELD_NAMES:
            f: FieldDecode = getattr(self, name)
            out[name] = f.value
            out[f"{name}_z"] = round(f.z, 2)
        if self.counter.value is not None:
            out["counters"] = [(self.counter.value + k) % (1 << FIELD_BITS) for k in range(self.blocks)]
        return out


def decode_payload(blocks: dict[int, FloatArray]) -> PayloadDecode:
    """Combine the soft bits of consecutive blocks (node and call constant, counter + 1 per block)."""
    order = interleaver()  # coded bit i travels in slot order[i]
    keys = sorted(blocks)
    if not keys:
        empty = FieldDecode(None, 0.0, 0)
        return PayloadDecode(empty, empty, empty, 0)
    starts = np.cumsum([0] + [FIELD_CODES[i][0] for i in range(len(FIELD_CODES))])
    results: list[FieldDecode] = []
    for i in range(len(FIELD_NAMES)):
        cw = _codewords(i)
        total = np.zeros(cw.shape[0])
        energy = 0.0
        for k, b in enumerate(keys):
            soft = blocks[b][order[starts[i] : starts[i + 1]]]
            scores = cw @ soft.astype(np.float32)
            if FIELD_NAMES[i] == "counter":  # block b carries counter c0 + (b - first)
                scores = np.roll(scores, -(b - keys[0]))
            total += scores
            energy += float(soft @ soft)
            del k
        results.append(_decode(total, energy))
    return PayloadDecode(results[0], results[1], results[2], len(keys))


@dataclass
class Segment:
    """Consecutive detected windows with one lag: a stretch of marked speech."""

    start_s: float
    end_s: float
    lag: int
    polarity: int
    statistic: float
    windows: int = 1
    payload: PayloadDecode | None = None


@dataclass
class Analysis:
    duration_s: float
    threshold: float
    alpha: float
    windows: list[WindowResult] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)

    @property
    def detected(self) -> list[WindowResult]:
        return [w for w in self.windows if w.statistic >= self.threshold]

    @property
    def present(self) -> bool:
        return bool(self.detected)

    @property
    def max_statistic(self) -> float:
        return max((w.statistic for w in self.windows), default=0.0)


def to_detect_rate(samples: npt.NDArray[np.int16] | FloatArray, rate: int) -> FloatArray:
    """Mono audio at ``rate`` as float64 at 16 kHz (the project's resampler)."""
    if samples.ndim != 1:
        raise AudioError(f"detector needs mono audio, got shape {samples.shape}")
    if not 8000 <= rate <= 192000:
        raise AudioError(f"detector needs 8-192 kHz audio, got {rate} Hz")
    x = np.asarray(samples, dtype=np.float32)
    if rate == DETECT_RATE:
        return x.astype(np.float64)
    r = StreamingResampler(rate, DETECT_RATE)
    head = r.process(x)
    return np.concatenate([head, r.flush()]).astype(np.float64)


def analyse(samples: npt.NDArray[np.int16] | FloatArray, rate: int, key: WatermarkKey,
            alpha: float = DEFAULT_ALPHA, step_s: float = 1.0) -> Analysis:
    """Every 3 s window (hop ``step_s``) of a recording, then segments and their payloads."""
    x16 = to_detect_rate(samples, rate)
    z = whiten(x16)
    result = Analysis(duration_s=x16.size / DETECT_RATE, threshold=threshold_for(alpha), alpha=alpha)
    step = int(step_s * DETECT_RATE)
    last = max(0, z.size - WINDOW_SAMPLES)
    starts = list(range(0, last + 1, step))
    if starts and starts[-1] != last:
        starts.append(last)
    for s in starts:
        seg = z[s : s + WINDOW_SAMPLES]
        stat, lag, pol = window_statistic(seg, s, key)
        result.windows.append(WindowResult(s / DETECT_RATE, (s + seg.size) / DETECT_RATE, stat, lag, pol))
    current: Segment | None = None
    for w in result.windows:
        if w.statistic < result.threshold:
            current = None
            continue
        same = current is not None and min(abs(w.lag - current.lag), PERIOD - abs(w.lag - current.lag)) <= LAG_TOLERANCE
        if current is not None and same and w.start_s <= current.end_s:
            current.end_s = w.end_s
            current.windows += 1
            if w.statistic > current.statistic:
                current.statistic, current.lag, current.polarity = w.statistic, w.lag, w.polarity
        else:
            current = Segment(w.start_s, w.end_s, w.lag, w.polarity, w.statistic)
            result.segments.append(current)
    for segment in result.segments:
        a, b = int(segment.start_s * DETECT_RATE), int(segment.end_s * DETECT_RATE)
        segment.payload = decode_payload(soft_bits(z[a:b], a, segment.lag, segment.polarity, key))
    return result


@dataclass(frozen=True)
class StreamDecision:
    """The detector's state after a push: ``present`` once a window crossed the threshold."""

    at_s: float  # stream time of the evaluated window's end
    present: bool
    statistic: float
    false_positive_bound: float
    lag: int


class StreamingDetector:
    """Watermark detection on a live stream (RTP or WebRTC audio after decoding).

    ``push(samples, rate)`` takes mono int16 or float audio at the stream's rate (8-48 kHz) and
    returns the decisions made on the way (one per 0.5 s of audio once 1 s has arrived).
    """

    def __init__(self, key: WatermarkKey, rate: int, alpha: float = DEFAULT_ALPHA) -> None:
        if not 8000 <= rate <= 192000:
            raise AudioError(f"detector needs 8-192 kHz audio, got {rate} Hz")
        self.key = key
        self.rate = rate
        self.threshold = threshold_for(alpha)
        self._resampler = None if rate == DETECT_RATE else StreamingResampler(rate, DETECT_RATE)
        self._whitener = Whitener()
        self._ring = np.zeros(0)
        self._ring_start = 0  # absolute 16 kHz index of self._ring[0]
        self._next_eval = int(1.0 * DETECT_RATE)
        self._step = int(STREAM_STEP_S * DETECT_RATE)
        self.present = False
        self.best: StreamDecision | None = None

    def push(self, samples: npt.NDArray[np.int16] | FloatArray, rate: int | None = None) -> list[StreamDecision]:
        if rate is not None and rate != self.rate:
            raise AudioError(f"this detector was opened at {self.rate} Hz, got {rate} Hz")
        x = np.asarray(samples)
        if x.ndim != 1:
            raise AudioError(f"detector needs mono audio, got shape {x.shape}")
        f: npt.NDArray[np.float32] = x.astype(np.float32)
        x16 = f if self._resampler is None else self._resampler.process(f)
        z = self._whitener.process(x16.astype(np.float64))
        self._ring = np.concatenate([self._ring, z])
        decisions: list[StreamDecision] = []
        end = self._ring_start + self._ring.size
        while end >= self._next_eval:
            cut = self._next_eval - self._ring_start
            first = max(0, cut - WINDOW_SAMPLES)
            stat, lag, _ = window_statistic(self._ring[first:cut], self._ring_start + first, self.key)
            hit = stat >= self.threshold
            self.present = self.present or hit
            d = StreamDecision(self._next_eval / DETECT_RATE, hit, stat, false_positive_bound(stat), lag)
            if self.best is None or stat > self.best.statistic:
                self.best = d
            decisions.append(d)
            self._next_eval += self._step
        keep = WINDOW_SAMPLES
        if self._ring.size > keep:
            drop = self._ring.size - keep
            self._ring = self._ring[drop:]
            self._ring_start += drop
        return decisions

    def push_frame(self, frame: object) -> list[StreamDecision]:
        """An ``av.AudioFrame`` as aiortc delivers it (s16, mono or packed stereo): channel 0."""
        import av

        if not isinstance(frame, av.AudioFrame):
            raise AudioError(f"push_frame needs an av.AudioFrame, got {type(frame).__name__}")
        channels = len(frame.layout.channels)
        pcm: FloatArray = frame.to_ndarray().reshape(-1, channels)[:, 0].astype(np.float64)
        return self.push(pcm, int(frame.sample_rate))
