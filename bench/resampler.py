"""Resampler bench: python-soxr ``ResampleStream`` against PyAV ``av.AudioResampler`` (libswresample).

Run: ``python -m bench.resampler`` (add ``--quick`` for a shorter timing loop).

For every rate pair the bridge uses it prints, per backend:

- ``sinad_db``: a 12-tone signal inside the shared pass band (up to 85 % of the lower Nyquist, which is
  3.4 kHz at 8 kHz) is resampled; the output is least-squares fitted with sines and cosines at the
  tone frequencies (so delay and phase do not matter) and the residual (aliases, images, filter
  noise) is compared with the fitted signal. Higher is better.
- ``ripple_db``: worst amplitude error of a fitted tone, the pass-band flatness. Lower is better.
- ``alias_db`` (down-sampling only): output level of single tones between 1.1x the new Nyquist and
  95 % of the old one, relative to their input level, worst case. Lower (more negative) is better.
- ``lag_ms``: mean / max of (output owed - output delivered) while 20 ms packets stream in, that is
  the latency the resampler adds on the live path.
- ``us_per_pkt``: wall time per 20 ms packet, int16 in and int16 out, as the Framer and Packetizer
  use it (conversion to float32 included).

After each rate pair a line gives the soxr-HQ / PyAV-default ratios. A last table times the
chosen pipeline as the call path runs it: ``agent.framer.Framer`` per 20 ms caller packet and
``agent.framer.Packetizer`` per 80 ms agent chunk (resampling, cutting and PcmFrame building).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt
import soxr

FloatArray = npt.NDArray[np.float32]

RATE_PAIRS: tuple[tuple[int, int], ...] = (
    (8000, 16000),
    (48000, 16000),
    (24000, 8000),
    (24000, 48000),
    (16000, 24000),
)
PACKET_MS = 20


class Backend:
    """One streaming float32 mono resampler: ``process`` a chunk, ``flush`` the tail."""

    name = "?"

    def process(self, x: FloatArray) -> FloatArray:
        raise NotImplementedError

    def flush(self) -> FloatArray:
        raise NotImplementedError


class SoxrBackend(Backend):
    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ") -> None:
        self.name = f"soxr-{quality}"
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality)

    def process(self, x: FloatArray) -> FloatArray:
        return np.asarray(self._stream.resample_chunk(x), dtype=np.float32)

    def flush(self) -> FloatArray:
        return np.asarray(self._stream.resample_chunk(np.zeros(0, np.float32), last=True), dtype=np.float32)


class PyavBackend(Backend):
    def __init__(self, in_rate: int, out_rate: int, options: dict[str, str] | None = None) -> None:
        label = ",".join(f"{k}={v}" for k, v in (options or {}).items())
        self.name = "pyav" + (f"[{label}]" if label else "")
        self._in_rate = in_rate
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=out_rate, options=options)
        self._pts = 0

    def _collect(self, frames: list[av.AudioFrame]) -> FloatArray:
        if not frames:
            return np.zeros(0, np.float32)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32, copy=False)

    def process(self, x: FloatArray) -> FloatArray:
        if x.size == 0:
            return np.zeros(0, np.float32)
        frame = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self._in_rate
        frame.time_base = Fraction(1, self._in_rate)
        frame.pts = self._pts
        self._pts += x.size
        return self._collect(self._resampler.resample(frame))

    def flush(self) -> FloatArray:
        return self._collect(self._resampler.resample(None))


@dataclass(frozen=True)
class Result:
    backend: str
    sinad_db: float
    ripple_db: float
    alias_db: float | None
    lag_mean_ms: float
    lag_max_ms: float
    us_per_packet: float


def run_offline(backend: Backend, x: FloatArray) -> FloatArray:
    return np.concatenate([backend.process(x), backend.flush()])


def tone_fit(
    y: npt.NDArray[np.float64], freqs_hz: npt.NDArray[np.float64], rate: int
) -> tuple[npt.NDArray[np.float64], float]:
    """Least-squares fit of sines/cosines at ``freqs_hz``; returns (amplitudes, residual power)."""
    t = np.arange(y.size) / rate
    basis = np.concatenate(
        [np.sin(2 * np.pi * np.outer(t, freqs_hz)), np.cos(2 * np.pi * np.outer(t, freqs_hz))], 1
    )
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    amps = np.hypot(coef[: freqs_hz.size], coef[freqs_hz.size :])
    residual = y - basis @ coef
    return amps, float(np.mean(residual**2))


def trimmed(y: FloatArray, rate: int) -> npt.NDArray[np.float64]:
    """Drop 100 ms at each end, where filters ramp up and down."""
    edge = rate // 10
    return y[edge : y.size - edge].astype(np.float64)


def passband_quality(make: Callable[[], Backend], in_rate: int, out_rate: int) -> tuple[float, float]:
    nyquist_hz = min(in_rate, out_rate) / 2
    freqs_hz = np.geomspace(110.0, 0.85 * nyquist_hz, 12) * (1 + 0.013 * np.arange(12) / 12)
    amp = 0.05
    t = np.arange(in_rate) / in_rate
    phases = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    x = (amp * np.sin(2 * np.pi * np.outer(t, freqs_hz) + phases).sum(1)).astype(np.float32)
    y = trimmed(run_offline(make(), x), out_rate)
    amps, residual_power = tone_fit(y, freqs_hz, out_rate)
    signal_power = float(np.sum(amps**2) / 2)
    sinad_db = 10 * np.log10(signal_power / max(residual_power, 1e-30))
    ripple_db = float(np.max(np.abs(20 * np.log10(np.maximum(amps, 1e-12) / amp))))
    return float(sinad_db), ripple_db


def alias_rejection(make: Callable[[], Backend], in_rate: int, out_rate: int) -> float | None:
    if out_rate >= in_rate:
        return None
    worst_db = -300.0
    t = np.arange(in_rate) / in_rate
    for freq_hz in np.linspace(1.1 * out_rate / 2, 0.95 * in_rate / 2, 9):
        x = (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)
        y = trimmed(run_offline(make(), x), out_rate)
        level_db = 10 * np.log10(max(float(np.mean(y**2)), 1e-30) / 0.125)
        worst_db = max(worst_db, float(level_db))
    return worst_db


def streaming_lag(make: Callable[[], Backend], in_rate: int, out_rate: int) -> tuple[float, float]:
    backend = make()
    packet = in_rate * PACKET_MS // 1000
    rng = np.random.default_rng(1)
    x = (0.1 * rng.standard_normal(in_rate * 2)).astype(np.float32)
    delivered = 0
    lags: list[float] = []
    for start in range(0, x.size, packet):
        delivered += backend.process(x[start : start + packet]).size
        lags.append((start + packet) * out_rate / in_rate - delivered)
    steady = np.array(lags[10:]) * 1000 / out_rate
    return float(steady.mean()), float(steady.max())


def packet_cost_us(make: Callable[[], Backend], in_rate: int, packets: int) -> float:
    packet = in_rate * PACKET_MS // 1000
    rng = np.random.default_rng(2)
    pcm = (3000 * rng.standard_normal(packet * packets)).astype(np.int16)
    best = float("inf")
    for _ in range(3):
        backend = make()
        start_ns = time.perf_counter_ns()
        for i in range(packets):
            chunk = pcm[i * packet : (i + 1) * packet].astype(np.float32) / 32768.0
            y = backend.process(chunk)
            np.clip(np.rint(y * 32768.0), -32768, 32767).astype(np.int16)
        best = min(best, (time.perf_counter_ns() - start_ns) / 1000 / packets)
    return best


def measure(make: Callable[[], Backend], in_rate: int, out_rate: int, packets: int) -> Result:
    sinad_db, ripple_db = passband_quality(make, in_rate, out_rate)
    lag_mean_ms, lag_max_ms = streaming_lag(make, in_rate, out_rate)
    return Result(
        backend=make().name,
        sinad_db=sinad_db,
        ripple_db=ripple_db,
        alias_db=alias_rejection(make, in_rate, out_rate),
        lag_mean_ms=lag_mean_ms,
        lag_max_ms=lag_max_ms,
        us_per_packet=packet_cost_us(make, in_rate, packets),
    )


def backends(in_rate: int, out_rate: int) -> list[Callable[[], Backend]]:
    return [
        lambda: SoxrBackend(in_rate, out_rate, "HQ"),
        lambda: SoxrBackend(in_rate, out_rate, "LQ"),
        lambda: PyavBackend(in_rate, out_rate),
        lambda: PyavBackend(in_rate, out_rate, {"filter_size": "64", "cutoff": "0.91"}),
    ]


def framer_costs(packets: int) -> None:
    from agent.audio import PcmFrame
    from agent.framer import Framer, Packetizer

    rng = np.random.default_rng(4)
    print()
    print(f"{'stage':<40} {'us/call':>8} {'us per 20 ms of audio':>22}")
    for in_rate in (8000, 16000, 24000, 48000):
        packet = in_rate * PACKET_MS // 1000
        pcm = (3000 * rng.standard_normal(packet * packets)).astype(np.int16)
        inputs = [PcmFrame(pcm[i * packet : (i + 1) * packet], in_rate, i * packet) for i in range(packets)]
        framer = Framer(in_rate)
        start_ns = time.perf_counter_ns()
        for frame in inputs:
            framer.push(frame)
        per_call = (time.perf_counter_ns() - start_ns) / 1000 / packets
        print(f"{f'Framer {in_rate // 1000}k -> 16k, 20 ms packet':<40} {per_call:8.1f} {per_call:22.1f}")
    for out_rate in (8000, 16000, 48000):
        chunk = 1920
        chunks = max(packets // 4, 1)
        pcm = (3000 * rng.standard_normal(chunk * chunks)).astype(np.int16)
        inputs = [PcmFrame(pcm[i * chunk : (i + 1) * chunk], 24000, i * chunk) for i in range(chunks)]
        packetizer = Packetizer(out_rate=out_rate)
        start_ns = time.perf_counter_ns()
        for frame in inputs:
            packetizer.push(frame)
        per_call = (time.perf_counter_ns() - start_ns) / 1000 / chunks
        print(
            f"{f'Packetizer 24k -> {out_rate // 1000}k, 80 ms chunk':<40} {per_call:8.1f} {per_call / 4:22.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timing packets")
    args = parser.parse_args(argv)
    packets = 100 if args.quick else 500
    header = f"{'pair':>12} {'backend':<34} {'sinad_db':>8} {'ripple_db':>9} {'alias_db':>8} {'lag_ms mean/max':>16} {'us/pkt':>7}"
    print(header)
    print("-" * len(header))
    for in_rate, out_rate in RATE_PAIRS:
        results = [measure(make, in_rate, out_rate, packets) for make in backends(in_rate, out_rate)]
        for r in results:
            alias = "-" if r.alias_db is None else f"{r.alias_db:8.1f}"
            print(
                f"{in_rate // 1000:>4}k->{out_rate // 1000:>3}k {r.backend:<34} {r.sinad_db:8.1f} {r.ripple_db:9.3f} "
                f"{alias:>8} {r.lag_mean_ms:7.1f}/{r.lag_max_ms:6.1f} {r.us_per_packet:7.1f}"
            )
        soxr_hq, pyav_default = results[0], results[2]
        print(
            f"{'':>12} ratio soxr-HQ/pyav: time {soxr_hq.us_per_packet / pyav_default.us_per_packet:.2f}x, "
            f"sinad {soxr_hq.sinad_db - pyav_default.sinad_db:+.1f} dB, "
            f"max lag {soxr_hq.lag_max_ms / max(pyav_default.lag_max_ms, 1e-9):.1f}x"
        )
    framer_costs(packets)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
