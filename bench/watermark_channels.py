"""Telephone channels for watermark tests and benchmarks, built from the project's real codec paths.

Every stage is the code a call's audio goes through: ``agent.resample`` (libswresample), ``agent.g711``,
the ``g722`` package as ``sip_bridge.media.G722Codec`` uses it, aiortc's ``OpusEncoder``/``OpusDecoder``
(libopus through PyAV, the WebRTC path, at a chosen bit rate) and ``agent.line.LineModel`` (packet
loss with its concealment, line noise). A channel is a list of stages applied in order to mono
int16 audio; each stage knows its input and output rates. ``run_chain`` takes 24 kHz agent audio.
"""

from __future__ import annotations

import fractions
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from agent.line import LineModel
from agent.resample import resample_offline
from agent.scenario import Codec, LineConfig

Int16Array = npt.NDArray[np.int16]
PACKET_MS = 20


@dataclass(frozen=True)
class Stage:
    name: str
    apply: Callable[[Int16Array, int], tuple[Int16Array, int]]  # (audio, rate) -> (audio, rate)


def resample(to_rate: int) -> Stage:
    def apply(x: Int16Array, rate: int) -> tuple[Int16Array, int]:
        return np.asarray(resample_offline(x, rate, to_rate), dtype=np.int16), to_rate

    return Stage(f"resample {to_rate // 1000} kHz", apply)


def g711(law: str) -> Stage:
    """G.711 at 8 kHz (resampled to 8 kHz first when needed), packet by packet."""

    def apply(x: Int16Array, rate: int) -> tuple[Int16Array, int]:
        narrow = x if rate == 8000 else np.asarray(resample_offline(x, rate, 8000), dtype=np.int16)
        coded = ulaw_decode(ulaw_encode(narrow)) if law == "u" else alaw_decode(alaw_encode(narrow))
        return coded, 8000

    return Stage("G.711 " + ("µ-law" if law == "u" else "A-law"), apply)


def g722() -> Stage:
    """G.722 at 64 kbit/s, 20 ms packets (16 kHz)."""

    def apply(x: Int16Array, rate: int) -> tuple[Int16Array, int]:
        import G722

        wide = x if rate == 16000 else np.asarray(resample_offline(x, rate, 16000), dtype=np.int16)
        encoder, decoder = G722.G722(16000, 64000), G722.G722(16000, 64000)
        n = 320
        wide = np.concatenate([wide, np.zeros((-wide.size) % n, np.int16)])
        out = [np.asarray(decoder.decode(bytes(encoder.encode(np.ascontiguousarray(wide[i : i + n])))), np.int16)
               for i in range(0, wide.size, n)]
        return np.concatenate(out) if out else wide, 16000

    return Stage("G.722", apply)


def opus(bitrate: int) -> Stage:
    """aiortc's Opus encoder (libopus, VoIP mode, 48 kHz) at ``bitrate``, and its decoder."""

    def apply(x: Int16Array, rate: int) -> tuple[Int16Array, int]:
        from aiortc.codecs.opus import OpusDecoder, OpusEncoder
        from aiortc.jitterbuffer import JitterFrame
        from av import AudioFrame

        full = x if rate == 48000 else np.asarray(resample_offline(x, rate, 48000), dtype=np.int16)
        full = np.concatenate([full, np.zeros((-full.size) % 960 + 960, np.int16)])
        encoder, decoder = OpusEncoder(), OpusDecoder()
        encoder.codec.bit_rate = bitrate
        out: list[Int16Array] = []
        for i in range(0, full.size, 960):
            frame = AudioFrame.from_ndarray(full[i : i + 960].reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 48000, i, fractions.Fraction(1, 48000)
            payloads, _ = encoder.encode(frame)
            for payload in payloads:
                for decoded in decoder.decode(JitterFrame(payload, i)):
                    out.append(decoded.to_ndarray().reshape(-1, 2)[:, 0].astype(np.int16))
        y = np.concatenate(out) if out else np.zeros(0, np.int16)
        return y[: x.size * 48000 // rate], 48000

    return Stage(f"Opus {bitrate // 1000} kbit/s", apply)


def line(loss_pct: float = 0.0, noise_snr_db: float | None = None, codec: Codec = Codec.NONE,
         seed: int = 1) -> Stage:
    """One direction of ``agent.line.LineModel``: noise (at the nominal speech level), optional G.711,
    packet loss and its concealment (repeat, fade), 20 ms packets. The uplink direction is the one
    that adds line noise, so the agent's audio goes in where a caller's microphone would."""

    def apply(x: Int16Array, rate: int) -> tuple[Int16Array, int]:
        cfg = LineConfig(codec=codec, loss_pct=loss_pct, noise_snr_db=noise_snr_db, seed=seed)
        model = LineModel(cfg, rate, seed=seed)
        n = rate * PACKET_MS // 1000
        padded = np.concatenate([x, np.zeros((-x.size) % n, np.int16)])
        out = [model.uplink(padded[k : k + n], None, k * 1000.0 / rate) for k in range(0, padded.size, n)]
        return np.concatenate(out)[: x.size], rate

    parts = [f"{loss_pct:g} % loss"] if loss_pct else []
    if noise_snr_db is not None:
        parts.append(f"noise {noise_snr_db:g} dB SNR")
    if codec is not Codec.NONE:
        parts.append(codec.value)
    return Stage("line " + ", ".join(parts or ["clean"]), apply)


def run_chain(x24: Int16Array, stages: Sequence[Stage], rate: int = 24000) -> tuple[Int16Array, int]:
    """Apply ``stages`` to ``x24`` (24 kHz agent audio); returns (audio, its rate)."""
    y, r = x24, rate
    for stage in stages:
        y, r = stage.apply(y, r)
    return y, r


def chain_name(stages: Sequence[Stage]) -> str:
    return " -> ".join(s.name for s in stages) or "direct"


# The acceptance channels of the detection benchmark, and held-out chains for robustness checks.
def standard_channels() -> dict[str, list[Stage]]:
    return {
        "G.711 µ-law": [g711("u"), resample(16000)],
        "G.711 A-law": [g711("a"), resample(16000)],
        "G.722": [g722()],
        "Opus 24 kbit/s": [opus(24000), resample(16000)],
        "Opus 16 kbit/s": [opus(16000)],
        "3 % loss (PLC), 16 kHz": [resample(16000), line(loss_pct=3.0)],
        "line noise 20 dB SNR, 8 kHz": [resample(8000), line(noise_snr_db=20.0)],
        "resample 24->8->16->48 kHz": [resample(8000), resample(16000), resample(48000)],
    }


def held_out_channels() -> dict[str, list[Stage]]:
    return {
        "Opus 32 -> 48->8 kHz -> G.711 A-law": [opus(32000), resample(8000), g711("a")],
        "16 kHz -> G.722 -> 3 % loss -> 8 kHz µ-law": [g722(), line(loss_pct=3.0), g711("u")],
        "48 kHz -> Opus 20 kbit/s -> 3 % loss": [resample(48000), opus(20000), line(loss_pct=3.0)],
        "8 kHz µ-law, 3 % loss, noise 25 dB": [g711("u"), line(loss_pct=3.0, noise_snr_db=25.0, seed=5)],
    }
