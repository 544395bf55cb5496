"""A simulated phone line between a scripted caller and the agent, one 20 ms packet per call.

Pure and seeded: every random draw comes from numpy Generators spawned from the seed, time is passed
in (``now_ms``, checked to never go backwards), nothing reads a clock. Both directions carry the
same packet size, ``sample_rate * 20 ms`` int16 samples.

Uplink, what the agent receives from the caller, per packet::

    caller mic + echo of what the caller's phone played (delay_ms, gain_db) + noise (snr_db)
      -> codec round trip -> loss -> jitter buffer -> concealment -> agent

Downlink, what the caller hears: agent -> codec -> loss -> jitter buffer -> concealment -> caller.

- Codec: G.711 u-law (pcmu) or A-law (pcma) at 8 kHz through ``agent.g711``, with resampling to
  and from the line rate; the two resamplers add a constant ~8 ms. The echo is taken from the
  downlink output, so it is already G.711-filtered when a codec is set.
- Loss: independent (Bernoulli) at ``loss_pct``, or with ``loss_burst_packets`` > 1 a two-state
  Gilbert-Elliott chain whose bad state drops every packet, with that mean burst length and the
  same long-run loss rate. Each direction draws its own losses.
- Jitter: each packet gets an extra one-way delay ``|N(0, jitter_ms)|``. The receiver plays packets
  out at a fixed delay (``jitter_buffer_ms``, default 2 x jitter_ms, rounded up to whole packets);
  a packet whose extra delay exceeds it is late, which is the same as lost. The buffer's delay is
  added to the whole direction.
- Concealment (PLC): ``repeat`` replays the last packet faded (1 -> 0.5 on the first loss, 0.5 -> 0 on
  the second, silence after); ``silence`` plays zeros.
- Noise: white or pink (1/f power) noise whose RMS is ``noise_snr_db`` below ``speech_level_dbfs``,
  the active speech level of the caller (the runner passes the level of what the caller says; by
  default the nominal level the caller voice is rendered at).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.audio import INT16_FULL_SCALE, PACKET_MS, AudioError, Int16Array, samples_per_ms
from agent.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from agent.resample import StreamingResampler
from agent.scenario import Codec, Concealment, LineConfig, NoiseKind

G711_RATE = 8000
NOMINAL_SPEECH_LEVEL_DBFS = -26.0
NOISE_BLOCK_MS = 1000
PINK_LOW_CUT_HZ = 20.0

FloatArray = npt.NDArray[np.float64]


@dataclass
class DirectionStats:
    """Counters of one direction; ``lost`` includes ``late``."""

    packets: int = 0
    lost: int = 0
    late: int = 0

    @property
    def loss_pct(self) -> float:
        return 100.0 * self.lost / self.packets if self.packets else 0.0


class _Fifo:
    """Sample FIFO that pads with leading zeros when asked for more than it holds (start-up delay)."""

    def __init__(self, prefill: int = 0) -> None:
        self._buf: Int16Array = np.zeros(prefill, dtype=np.int16)

    def push(self, x: Int16Array) -> None:
        self._buf = np.concatenate([self._buf, x]) if self._buf.size else x.copy()

    def pop(self, n: int) -> Int16Array:
        if self._buf.size < n:
            self._buf = np.concatenate([np.zeros(n - self._buf.size, dtype=np.int16), self._buf])
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


class _CodecPath:
    """G.711 round trip at 8 kHz, keeping exactly one packet out per packet in."""

    def __init__(self, codec: Codec, sample_rate: int) -> None:
        self._codec = codec
        self._down = StreamingResampler(sample_rate, G711_RATE)
        self._up = StreamingResampler(G711_RATE, sample_rate)
        self._narrow = _Fifo()
        self._wide = _Fifo()
        self._narrow_samples = samples_per_ms(G711_RATE, PACKET_MS)

    def process(self, packet: Int16Array) -> Int16Array:
        if self._codec is Codec.NONE:
            return packet
        self._narrow.push(np.asarray(self._down.process(packet), dtype=np.int16))
        narrow = self._narrow.pop(self._narrow_samples)
        if self._codec is Codec.PCMU:
            decoded = ulaw_decode(ulaw_encode(narrow))
        else:
            decoded = alaw_decode(alaw_encode(narrow))
        self._wide.push(np.asarray(self._up.process(decoded), dtype=np.int16))
        return self._wide.pop(packet.shape[0])


class _Loss:
    def __init__(self, loss_pct: float, burst_packets: float, rng: np.random.Generator) -> None:
        self._p = loss_pct / 100.0
        self._rng = rng
        self._bad = False
        # Gilbert-Elliott: leave the bad state with 1/L, enter it so that the stationary share is p.
        self._p_bad_to_good = 1.0 / burst_packets
        self._p_good_to_bad = min(1.0, self._p * self._p_bad_to_good / max(1e-12, 1.0 - self._p))
        self._bursty = burst_packets > 1.0

    def lost(self) -> bool:
        u = float(self._rng.random())
        if self._p <= 0.0 or self._p >= 1.0:
            return self._p >= 1.0
        if not self._bursty:
            return u < self._p
        self._bad = u >= self._p_bad_to_good if self._bad else u < self._p_good_to_bad
        return self._bad


class _Direction:
    """Codec, loss, jitter buffer and concealment for one direction."""

    def __init__(self, cfg: LineConfig, sample_rate: int, rng: np.random.Generator) -> None:
        self.stats = DirectionStats()
        self._packet_samples = samples_per_ms(sample_rate, PACKET_MS)
        self._codec = _CodecPath(cfg.codec, sample_rate)
        self._loss = _Loss(cfg.loss_pct, cfg.loss_burst_packets, rng)
        self._rng = rng
        self._jitter_ms = cfg.jitter_ms
        buffer_ms = cfg.jitter_buffer_ms if cfg.jitter_buffer_ms is not None else 2.0 * cfg.jitter_ms
        self.buffer_packets = math.ceil(buffer_ms / PACKET_MS - 1e-9)
        self._queue: deque[Int16Array | None] = deque([None] * self.buffer_packets)
        self._plc = cfg.plc
        self._last: Int16Array | None = None
        self._missing_run = 0
        self._last_now_ms: float | None = None
        self._fade_first = np.linspace(1.0, 0.5, self._packet_samples, endpoint=False)
        self._fade_second = np.linspace(0.5, 0.0, self._packet_samples, endpoint=False)

    def check_packet(self, packet: Int16Array | None, now_ms: float, what: str) -> Int16Array:
        if self._last_now_ms is not None and now_ms < self._last_now_ms:
            raise ValueError(f"{what}: time went backwards ({now_ms} ms after {self._last_now_ms} ms)")
        self._last_now_ms = now_ms
        if packet is None:
            return np.zeros(self._packet_samples, dtype=np.int16)
        if not isinstance(packet, np.ndarray) or packet.dtype != np.int16 or packet.shape != (self._packet_samples,):
            got = f"{packet.dtype} {packet.shape}" if isinstance(packet, np.ndarray) else type(packet).__name__
            raise AudioError(f"{what}: expected int16 packet of {self._packet_samples} samples, got {got}")
        return packet

    def process(self, packet: Int16Array) -> Int16Array:
        coded = self._codec.process(packet)
        self.stats.packets += 1
        lost = self._loss.lost()
        delay_ms = abs(float(self._rng.normal(0.0, self._jitter_ms))) if self._jitter_ms > 0 else 0.0
        late = not lost and delay_ms > self.buffer_packets * PACKET_MS
        if lost or late:
            self.stats.lost += 1
            self.stats.late += int(late)
        self._queue.append(None if lost or late else coded)
        out = self._queue.popleft()
        return self._conceal() if out is None else self._remember(out)

    def _remember(self, packet: Int16Array) -> Int16Array:
        self._last, self._missing_run = packet, 0
        return packet

    def _conceal(self) -> Int16Array:
        self._missing_run += 1
        if self._plc is Concealment.SILENCE or self._last is None or self._missing_run > 2:
            return np.zeros(self._packet_samples, dtype=np.int16)
        fade = self._fade_first if self._missing_run == 1 else self._fade_second
        return np.rint(self._last * fade).astype(np.int16)


class _Noise:
    """Block-wise noise at a fixed RMS (each 1 s block is scaled to it exactly)."""

    def __init__(self, kind: NoiseKind, rms: float, sample_rate: int, rng: np.random.Generator) -> None:
        self._kind, self._rms, self._rate, self._rng = kind, rms, sample_rate, rng
        self._block_samples = samples_per_ms(sample_rate, NOISE_BLOCK_MS)
        self._buf: FloatArray = np.zeros(0)
        freqs = np.fft.rfftfreq(self._block_samples, 1.0 / sample_rate)
        self._shape = np.where(freqs >= PINK_LOW_CUT_HZ, 1.0 / np.sqrt(np.maximum(freqs, 1.0)), 0.0)

    def take(self, n: int) -> FloatArray:
        while self._buf.size < n:
            self._buf = np.concatenate([self._buf, self._block()])
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _block(self) -> FloatArray:
        white = self._rng.standard_normal(self._block_samples)
        if self._kind is NoiseKind.PINK:
            white = np.fft.irfft(np.fft.rfft(white) * self._shape, n=self._block_samples)
        return white * (self._rms / float(np.sqrt(np.mean(white * white))))


def db_to_gain(db: float) -> float:
    return float(10.0 ** (db / 20.0))


class LineModel:
    """One simulated call leg; call ``downlink`` and ``uplink`` once per 20 ms tick, in either order.

    ``seed`` overrides ``cfg.seed``. ``speech_level_dbfs`` is the caller's active speech level, the
    reference for ``noise_snr_db``.
    """

    def __init__(self, cfg: LineConfig, sample_rate: int, seed: int | None = None,
                 speech_level_dbfs: float = NOMINAL_SPEECH_LEVEL_DBFS) -> None:
        self.cfg = cfg
        self.sample_rate = sample_rate
        self.packet_samples = samples_per_ms(sample_rate, PACKET_MS)
        up_rng, down_rng, noise_rng = (
            np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed if seed is None else seed).spawn(3)
        )
        self._up = _Direction(cfg, sample_rate, up_rng)
        self._down = _Direction(cfg, sample_rate, down_rng)
        self._noise: _Noise | None = None
        if cfg.noise_snr_db is not None:
            rms = INT16_FULL_SCALE * db_to_gain(speech_level_dbfs - cfg.noise_snr_db)
            self._noise = _Noise(cfg.noise, rms, sample_rate, noise_rng)
        self._echo: _Fifo | None = None
        self._echo_gain = 0.0
        if cfg.echo is not None:
            self._echo = _Fifo(prefill=round(cfg.echo.delay_ms * sample_rate / 1000.0))
            self._echo_gain = db_to_gain(cfg.echo.gain_db)

    @property
    def uplink_stats(self) -> DirectionStats:
        return self._up.stats

    @property
    def downlink_stats(self) -> DirectionStats:
        return self._down.stats

    @property
    def jitter_buffer_ms(self) -> int:
        """Fixed delay the jitter buffer adds to each direction."""
        return self._up.buffer_packets * PACKET_MS

    def uplink(self, caller_packet: Int16Array | None, agent_packet_played: Int16Array | None,
               now_ms: float) -> Int16Array:
        """The packet the agent receives; ``agent_packet_played`` is what the caller's phone played
        this tick (the last ``downlink`` output), the source of echo. ``None`` means silence."""
        caller = self._up.check_packet(caller_packet, now_ms, "uplink caller packet")
        mic = caller.astype(np.float64)
        if self._echo is not None:
            played = self._down_zero_if_none(agent_packet_played)
            self._echo.push(played)
            mic += self._echo_gain * self._echo.pop(self.packet_samples)
        if self._noise is not None:
            mic += self._noise.take(self.packet_samples)
        mixed = np.clip(np.rint(mic), -INT16_FULL_SCALE, INT16_FULL_SCALE - 1).astype(np.int16)
        return self._up.process(mixed)

    def downlink(self, agent_packet: Int16Array | None, now_ms: float) -> Int16Array:
        """The packet the caller hears this tick (``None`` in means the agent sent nothing)."""
        return self._down.process(self._down.check_packet(agent_packet, now_ms, "downlink agent packet"))

    def _down_zero_if_none(self, packet: Int16Array | None) -> Int16Array:
        if packet is None:
            return np.zeros(self.packet_samples, dtype=np.int16)
        if not isinstance(packet, np.ndarray) or packet.dtype != np.int16 or packet.shape != (self.packet_samples,):
            raise AudioError(f"uplink: agent_packet_played must be int16 of {self.packet_samples} samples")
        return packet
