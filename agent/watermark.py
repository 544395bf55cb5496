"""A keyed watermark in every 80 ms chunk of agent speech, made to survive the telephone line.

Why this method
---------------
The mark has to survive G.711 (8 kHz, 300-3400 Hz on real lines), G.722, Opus at 16-32 kbit/s,
resampling, packet loss with concealment and line noise, and it has to be cheap enough to run on
every 80 ms chunk of every call. Published neural marks (AudioSeal, WavMark, ...) lose most of
their detection under low-bit-rate speech codecs and need weights we cannot ship. Classic
narrowband spread spectrum carries a hidden signal through telephone speech because every codec
on the path is a waveform coder in the 300-3400 Hz core band (Cheng & Sorensen, "Spread spectrum
signaling for speech watermarking", ICASSP 2001; Hofbauer, Kubin & Kleijn, IEEE TASLP 17(4),
2009, report hundreds of bit/s through such channels). So this is spread spectrum:

* **Carrier.** Two keyed pseudo-noise carriers (pilot and data), periodic with the 2 s block, flat
  in magnitude and random in phase on every 0.5 Hz DFT bin between 300 and 3400 Hz (phases from
  SHAKE-256 of the key, so they are the same on every machine and numpy version). A carrier
  defined by its DFT bins is exactly the same signal at 24 kHz (embedding) and 16 kHz (detection).
* **Perceptual shaping (multiplicative, Cox et al. 1997).** Per 16 ms frame (384 samples, hop 192,
  sqrt-Hann analysis and synthesis), the mark's spectrum is ``|S(f)|`` of the speech times the
  carrier's unit-magnitude spectrum, in band only: the mark sits under the speech's own harmonics
  and formants at -14 dB (10.5 dB less below 700 Hz, where a 16 ms frame cannot resolve the first
  harmonics of a high voice and PESQ hears the filled gaps), vanishes in pauses, and never adds
  noise where the speech is silent. Longer frames smear the mark before onsets (pre-echo),
  shorter ones fill the gaps between harmonics: both measured worse.
  Objectively: PESQ (ITU-T P.862.2 wideband, the ``pesq`` package) of marked against unmarked
  speech stays above 4.2 (``bench/watermark.py``).
* **Detection (``agent.watermark_detect``).** The receiver compresses each 60 ms frame's spectrum
  (``Y / |Y|^0.75``, which undoes the shaping and whitens the speech), folds the window onto one
  2 s period and correlates with the pilot at every lag with one FFT. With random carrier phases
  the statistic of unmarked audio is a sum of independent random-phase terms, sub-Gaussian with
  unit variance whatever the audio is, so the false-positive rate has a closed-form bound (see
  ``agent.watermark_detect``): no tuning on test sets.
* **Payload.** 60 % of the mark's power is the pilot (detection and synchronisation), 40 % carries
  125 coded bits per 2 s block (16 ms per bit, keyed interleaving): three 16-bit fields, node id,
  call tag (keyed hash of the call id) and time counter (2 s blocks of agent speech since the
  call started), each in its own (42 or 41, 16) linear block code with minimum distance 9, decoded
  by exhaustive maximum-likelihood correlation. The node and call fields repeat in every block, so
  the receiver adds their soft scores over all blocks of an utterance; the counter's scores are
  added along its known increments.

Per-call state (``CallWatermark``): the count of agent chunks kept in the call, which fixes the
block phase and the time counter. Chunks pushed for a reply that is interrupted are not all
heard; ``truncate(epoch, played_frames)`` rolls the count back to what the caller heard, exactly
as the engine truncates its conversation, so the counter at the caller's ear never skips.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agent.audio import MODEL_OUTPUT_RATE, AudioError, Int16Array
from config.schema import Settings

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]

SCHEME = "lfm-call-ss-v1"
EMBED_RATE = MODEL_OUTPUT_RATE  # 24 kHz, before any line resampling
CHUNK_SAMPLES = 1920  # 80 ms at 24 kHz
BLOCK_CHUNKS = 25  # one payload block: 2.0 s
BLOCK_S = 2.0
BAND_LOW_HZ = 300.0
BAND_HIGH_HZ = 3400.0
FRAME_SAMPLES = 384  # 16 ms analysis/synthesis frame at 24 kHz
HOP_SAMPLES = 192
FRAMES_PER_CHUNK = CHUNK_SAMPLES // HOP_SAMPLES  # 10
STRENGTH_DB = -14.0  # mark power relative to the speech, in band, per frame
PILOT_SHARE = 0.6  # share of the mark's power in the pilot; the rest carries the payload
BITS_PER_CHUNK = 5
BITS_PER_BLOCK = BITS_PER_CHUNK * BLOCK_CHUNKS  # 125
BIT_SAMPLES = CHUNK_SAMPLES // BITS_PER_CHUNK  # 384 at 24 kHz (16 ms)
FIELD_BITS = 16
FIELD_NAMES = ("node", "call", "counter")
# (code length, generator seed): seeds chosen once for the largest minimum distance (9 for both)
FIELD_CODES = ((42, 16), (42, 16), (41, 41))
DEFAULT_SECRET = "lfm-call public watermark key v1"  # published: anyone can verify default nodes


def _shake(label: bytes, n: int) -> bytes:
    return hashlib.shake_256(label).digest(n)


def _key_stream(secret: bytes, label: str, n: int) -> bytes:
    """``n`` pseudo-random bytes for ``label`` under ``secret`` (HMAC-derived SHAKE-256 seed)."""
    seed = hmac.new(secret, f"{SCHEME}:{label}".encode(), hashlib.sha256).digest()
    return _shake(seed, n)


def band_bins(period_samples_rate: int) -> npt.NDArray[np.int64]:
    """DFT bins of a BLOCK_S-periodic signal inside the band (spacing 1 / BLOCK_S Hz)."""
    lo = int(np.ceil(BAND_LOW_HZ * BLOCK_S))
    hi = int(np.floor(BAND_HIGH_HZ * BLOCK_S))
    del period_samples_rate
    return np.arange(lo, hi + 1)


@dataclass(frozen=True)
class PayloadFields:
    """What one 2 s block says: node id, keyed call tag, time counter (2 s blocks since call start)."""

    node: int
    call: int
    counter: int

    def __post_init__(self) -> None:
        for name in FIELD_NAMES:
            value = getattr(self, name)
            if not 0 <= value < 1 << FIELD_BITS:
                raise ValueError(f"watermark {name} field must be 0..65535, got {value}")

    def as_dict(self) -> dict[str, int]:
        return {"node": self.node, "call": self.call, "counter": self.counter}


@functools.lru_cache(maxsize=4)
def generator_matrix(n: int, seed: int) -> npt.NDArray[np.uint8]:
    raw = _shake(f"lfm-call watermark v1 code {n} {seed}".encode(), FIELD_BITS * n)
    out: npt.NDArray[np.uint8] = (np.frombuffer(raw, np.uint8).reshape(FIELD_BITS, n) & 1).astype(np.uint8)
    return out


def encode_field(value: int, index: int) -> npt.NDArray[np.uint8]:
    n, seed = FIELD_CODES[index]
    bits = ((value >> np.arange(FIELD_BITS)) & 1).astype(np.uint8)
    out: npt.NDArray[np.uint8] = (bits @ generator_matrix(n, seed) % 2).astype(np.uint8)
    return out


@functools.lru_cache(maxsize=2)
def interleaver() -> npt.NDArray[np.int64]:
    """Position in the block of each coded bit (node bits, then call, then counter)."""
    raw = np.frombuffer(_shake(b"lfm-call watermark v1 interleaver", 8 * BITS_PER_BLOCK), np.uint64)
    return np.argsort(raw, kind="stable").astype(np.int64)


@functools.lru_cache(maxsize=64)
def encode_block(fields: PayloadFields) -> npt.NDArray[np.float64]:
    """The block's 125 channel symbols (+1/-1) in transmission order."""
    coded = np.concatenate([encode_field(getattr(fields, name), i) for i, name in enumerate(FIELD_NAMES)])
    symbols = np.empty(BITS_PER_BLOCK)
    symbols[interleaver()] = 1.0 - 2.0 * coded
    symbols.flags.writeable = False
    return symbols


class WatermarkKey:
    """The keyed carriers. Build once per process (``for_secret``); immutable and shared by all calls."""

    def __init__(self, secret: str | bytes) -> None:
        raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if not raw:
            raise ValueError("watermark secret must not be empty")
        self._secret = raw
        self.key_id = hashlib.sha256(b"lfm-call watermark key id:" + raw).hexdigest()[:16]
        bins = band_bins(0)
        self.bins = bins
        self._phases = {}
        for label in ("pilot", "data"):
            u = np.frombuffer(_key_stream(raw, label, 4 * bins.size), dtype="<u4").astype(np.float64)
            self._phases[label] = 2.0 * np.pi * u / 2.0**32
        self._carriers: dict[tuple[str, int], FloatArray] = {}
        self.pilot_24k = self.carrier("pilot", EMBED_RATE)
        self.data_24k = self.carrier("data", EMBED_RATE)

    def __repr__(self) -> str:  # never the secret
        return f"WatermarkKey(key_id={self.key_id})"

    @classmethod
    @functools.lru_cache(maxsize=8)
    def for_secret(cls, secret: str) -> WatermarkKey:
        return cls(secret or DEFAULT_SECRET)

    def call_tag(self, call_id: str) -> int:
        """16-bit keyed hash of a call id (the call field of the payload)."""
        digest = hmac.new(self._secret, f"{SCHEME}:call:{call_id}".encode(), hashlib.sha256).digest()
        return int.from_bytes(digest[:2], "big")

    def spectrum(self, label: str) -> ComplexArray:
        """Unit-magnitude DFT coefficients of the carrier on ``self.bins``."""
        out: ComplexArray = np.exp(1j * self._phases[label])
        return out

    def carrier(self, label: str, rate: int) -> FloatArray:
        """One 2 s period of the carrier at ``rate``, unit RMS."""
        cached = self._carriers.get((label, rate))
        if cached is not None:
            return cached
        n = round(rate * BLOCK_S)
        spec = np.zeros(n // 2 + 1, dtype=np.complex128)
        spec[self.bins] = self.spectrum(label)
        c = np.fft.irfft(spec, n)
        c /= float(np.sqrt(np.mean(c * c)))
        c.flags.writeable = False
        self._carriers[(label, rate)] = c
        return c


_WINDOW = np.sqrt(np.hanning(FRAME_SAMPLES + 1)[:-1])  # periodic sqrt-Hann: overlap-adds to 1 at hop N/2
_FREQS = np.fft.rfftfreq(FRAME_SAMPLES, 1.0 / EMBED_RATE)
_BAND_MASK = (_FREQS >= BAND_LOW_HZ) & (_FREQS <= BAND_HIGH_HZ)
LOW_BAND_HZ = 700.0  # below this the mark is LOW_BAND_GAIN weaker (amplitude)
LOW_BAND_GAIN = 0.3
_GAIN = np.where(_FREQS[_BAND_MASK] < LOW_BAND_HZ, LOW_BAND_GAIN, 1.0)
# frame m of a chunk covers chunk samples [192 m, 192 m + 384); the last one straddles the next chunk
_FRAME_INDEX = np.arange(FRAMES_PER_CHUNK)[:, None] * HOP_SAMPLES + np.arange(FRAME_SAMPLES)[None, :]


@dataclass
class UtteranceMark:
    """What was marked into one reply (epoch): its first chunk in the call and the chunks kept."""

    epoch: int
    first_chunk: int
    chunks: int = 0

    @property
    def blocks(self) -> list[int]:
        """The time counters (2 s blocks) this reply's audio carries."""
        if self.chunks <= 0:
            return []
        return list(range(self.first_chunk // BLOCK_CHUNKS, (self.first_chunk + self.chunks - 1) // BLOCK_CHUNKS + 1))


@dataclass
class CallWatermark:
    """Per-call embedder: ``embed`` every agent chunk on its way to playout, ``truncate`` on barge-in."""

    key: WatermarkKey
    node: int
    call_tag: int
    enabled: bool = True
    strength_db: float = STRENGTH_DB
    chunks: int = 0  # agent chunks kept in this call (what fixes block phase and counter)
    utterances: list[UtteranceMark] = field(default_factory=list)
    _spill: FloatArray = field(default_factory=lambda: np.zeros(HOP_SAMPLES))
    _blocks: dict[int, FloatArray] = field(default_factory=dict)
    _last: tuple[int, int] | None = None  # (epoch, frame index) of the last chunk embedded

    @classmethod
    def for_call(cls, key: WatermarkKey, node: int, call_id: str, *, enabled: bool = True,
                 strength_db: float = STRENGTH_DB) -> CallWatermark:
        return cls(key=key, node=node, call_tag=key.call_tag(call_id), enabled=enabled, strength_db=strength_db)

    def fields(self, block: int) -> PayloadFields:
        return PayloadFields(self.node, self.call_tag, block % (1 << FIELD_BITS))

    def embed(self, chunk: Int16Array, epoch: int, frame_index: int) -> Int16Array:
        """Mark one 80 ms chunk (1920 int16 samples at 24 kHz) of reply ``epoch``; returns a new array."""
        if not isinstance(chunk, np.ndarray) or chunk.dtype != np.int16 or chunk.shape != (CHUNK_SAMPLES,):
            got = f"{chunk.dtype} {chunk.shape}" if isinstance(chunk, np.ndarray) else type(chunk).__name__
            raise AudioError(f"watermark chunk must be int16 of {CHUNK_SAMPLES} samples, got {got}")
        if not self.utterances or self.utterances[-1].epoch != epoch:
            self.utterances.append(UtteranceMark(epoch, self.chunks))
        if self._last is None or self._last != (epoch, frame_index - 1):
            self._spill = np.zeros(HOP_SAMPLES)
        self._last = (epoch, frame_index)
        position = self.chunks
        self.chunks += 1
        self.utterances[-1].chunks += 1
        host = chunk.astype(np.float64)
        if not self.enabled:
            return chunk.copy()
        mark = self._mark(host, position)
        out = np.clip(np.rint(host + mark), -32768, 32767).astype(np.int16)
        return out

    def truncate(self, epoch: int, played_frames: int) -> None:
        """Reply ``epoch`` was cut: only its first ``played_frames`` chunks reached the caller, so the
        count (block phase, time counter) goes back to what was heard."""
        for i, utt in enumerate(self.utterances):
            if utt.epoch != epoch or played_frames >= utt.chunks:
                continue
            kept = max(0, played_frames)
            if i == len(self.utterances) - 1:
                self.chunks = utt.first_chunk + kept
            utt.chunks = kept
            self._last = None
            return

    # -- the signal --------------------------------------------------------------------------------------
    def _block_carrier(self, block: int) -> FloatArray:
        """Pilot plus payload carrier of one 2 s block (gains applied), cached for the running block."""
        cached = self._blocks.get(block)
        if cached is not None:
            return cached
        total = 10.0 ** (self.strength_db / 20.0)
        g_pilot, g_data = total * np.sqrt(PILOT_SHARE), total * np.sqrt(1.0 - PILOT_SHARE)
        symbols = np.repeat(encode_block(self.fields(block)), BIT_SAMPLES)
        signal = g_pilot * self.key.pilot_24k + g_data * symbols * self.key.data_24k
        if len(self._blocks) >= 2:
            self._blocks.pop(min(self._blocks))
        self._blocks[block] = signal
        out: FloatArray = signal
        return out

    def _carrier_span(self, position: int, n: int) -> FloatArray:
        """The carrier for ``n`` samples (at most one block) from the start of chunk ``position``."""
        block, start = divmod(position, BLOCK_CHUNKS)
        start *= CHUNK_SAMPLES
        signal = self._block_carrier(block)
        if start + n <= signal.size:
            return signal[start : start + n]
        head = signal[start:]
        return np.concatenate([head, self._block_carrier(block + 1)[: n - head.size]])

    def _mark(self, host: FloatArray, position: int) -> FloatArray:
        """The mark for one chunk: ten frames, the last straddling into the next chunk (its second
        half is kept and added to the next chunk's first 8 ms)."""
        n = CHUNK_SAMPLES
        carrier = self._carrier_span(position, n + HOP_SAMPLES)
        host_frames = np.fft.rfft(np.concatenate([host, np.zeros(HOP_SAMPLES)])[_FRAME_INDEX] * _WINDOW, axis=1)
        magnitude = np.abs(host_frames[:, _BAND_MASK])
        magnitude[-1] = magnitude[-2]  # the straddling frame: the last whole frame's spectrum
        carrier_frames = np.fft.rfft(carrier[_FRAME_INDEX] * _WINDOW, axis=1)[:, _BAND_MASK]
        band_power = np.mean(carrier_frames.real**2 + carrier_frames.imag**2, axis=1, keepdims=True)
        total = 10.0 ** (self.strength_db / 20.0)  # the carriers' gains set the pilot/data split only
        spectra = np.zeros((FRAMES_PER_CHUNK, _FREQS.size), dtype=np.complex128)
        spectra[:, _BAND_MASK] = (magnitude * _GAIN) * carrier_frames * (total / np.sqrt(np.maximum(band_power, 1e-12)))
        frames = np.fft.irfft(spectra, FRAME_SAMPLES, axis=1) * _WINDOW
        out = np.zeros(n + HOP_SAMPLES)
        out[:n] += frames[:, :HOP_SAMPLES].reshape(-1)  # first halves
        out[HOP_SAMPLES:] += frames[:, HOP_SAMPLES:].reshape(-1)  # second halves
        out[:HOP_SAMPLES] += self._spill
        self._spill = out[n:].copy()
        return out[:n]


@dataclass(frozen=True)
class MarkOptions:
    """How a node marks its calls: the key, the node id carried in the payload, the strength."""

    key: WatermarkKey = field(default_factory=lambda: WatermarkKey.for_secret(""))
    node: int = 0
    enabled: bool = True
    strength_db: float = STRENGTH_DB

    @classmethod
    def from_settings(cls, settings: Settings) -> MarkOptions:
        w = settings.watermark
        return cls(WatermarkKey.for_secret(w.secret), w.node_id, w.enabled, w.strength_db)

    def for_call(self, call_id: str) -> CallWatermark:
        return CallWatermark.for_call(self.key, self.node, call_id, enabled=self.enabled,
                                      strength_db=self.strength_db)


def mark_signal(samples: Int16Array, key: WatermarkKey, node: int = 0, call_id: str = "offline",
                strength_db: float = STRENGTH_DB) -> Int16Array:
    """Mark a whole 24 kHz signal as one reply, chunk by chunk (zero-padded to whole chunks)."""
    mark = CallWatermark.for_call(key, node, call_id, strength_db=strength_db)
    n = -(-samples.size // CHUNK_SAMPLES) * CHUNK_SAMPLES
    padded = np.zeros(n, np.int16)
    padded[: samples.size] = samples
    out = [mark.embed(padded[i : i + CHUNK_SAMPLES], 1, i // CHUNK_SAMPLES) for i in range(0, n, CHUNK_SAMPLES)]
    return np.concatenate(out)[: samples.size] if out else samples.copy()
