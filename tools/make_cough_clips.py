"""Write config/scenarios/clips/cough.wav: a synthesised double cough (espeak-ng cannot cough).

    python tools/make_cough_clips.py

Each cough is band-limited noise (300-3500 Hz) with a 10 ms attack and an 80-150 ms decay, after a
20 ms glottal click; two of them 250 ms apart, at about the nominal caller level. Seeded: the same
file every time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.wavio import write_wav

RATE = 16000
OUT = Path(__file__).resolve().parent.parent / "config" / "scenarios" / "clips" / "cough.wav"


def cough(rng: np.random.Generator, decay_s: float) -> np.ndarray:
    n = int((0.03 + decay_s * 3) * RATE)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    spec[(f < 300) | (f > 3500)] = 0
    noise = np.fft.irfft(spec, n)
    t = np.arange(n) / RATE
    env = np.minimum(1.0, t / 0.01) * np.exp(-np.maximum(0.0, t - 0.01) / decay_s)
    click = np.zeros(n)
    k = int(0.02 * RATE)
    click[:k] = np.sin(2 * np.pi * 110 * t[:k]) * np.hanning(k) * 0.6
    x = noise / (np.abs(noise).max() + 1e-9) * env + click
    return np.asarray(x)


def main() -> int:
    rng = np.random.default_rng(7)
    gap = np.zeros(int(0.25 * RATE))
    x = np.concatenate([cough(rng, 0.12), gap, cough(rng, 0.08)])
    x = x / np.abs(x).max() * 0.5
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_wav(OUT, np.round(x * 32767).astype(np.int16), RATE)
    print(OUT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
