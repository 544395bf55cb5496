"""Is speech over the agent a real barge-in, or a backchannel or a cough? Decided from its shape.

Theory of operation
-------------------
``BackchannelJudge`` is pure (explicit ``now``). It is fed the caller's 16 kHz audio with the VAD
state and whether the agent is speaking. While the caller speaks and the agent does not, it keeps
the caller's own speech level. Asked ``verdict(start_ms, now_ms)`` about the speech since
``start_ms`` (the interruption's onset), it answers:

- ``COUGH``: little of it is voiced (a cough, a knock, a breath): not speech;
- ``BACKCHANNEL``: speech well below the caller's own level (an aside, someone in the room), or a
  short voiced stretch of open front/central vowels without an obstruent ("uh-huh", "mm-hmm",
  "yeah", "okay", "right": continuous voicing, the second formant region present throughout, no
  fricative or burst);
- ``WORDS``: a fricative or a stop burst (strong energy above 2.5 kHz: "stop", "wait a second",
  "excuse me"), or back-vowel/nasal stretches with a low second formant ("no", "hold on", "hang
  on") — the shapes of the words people use to take the floor;
- ``UNSURE``: too little audio yet.

TurnTaking barges in on ``WORDS`` once ``barge_in_word_ms`` of it are voiced; anything else only
interrupts after ``backchannel_max_ms`` of voiced speech (nobody says "mm-hmm" for 1.5 s). Where the
judge is wrong, the cost is bounded: a real barge-in it misses still stops the agent at
``backchannel_max_ms``, and the agent's audio is held from the onset anyway (InterruptionSuspected).

The thresholds were set on espeak-ng renderings (tests/unit/test_backchannel.py lists the words);
real callers' backchannels vary more, which is why the decision also keeps the duration bound.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agent.turn_end import HOP, RATE, WIN, frame_analysis

Int16Array = npt.NDArray[np.int16]

MIN_ANALYSIS_MS = 160
VOICED_STRENGTH = 0.45
COUGH_VOICED_FRACTION = 0.25
OBSTRUENT_HIGH_RATIO = 0.6  # 90th percentile of the >2.5 kHz share of a frame's energy
LOW_F2_RATIO = 0.03  # a voiced frame whose 1-3 kHz energy is below 3 % of its 0.1-1 kHz energy
LOW_F2_FRACTION = 0.15  # this share of voiced frames like that: back vowels / nasals ("no", "on")
QUIET_DB = 10.0  # this far below the caller's own speech level: not addressed to the agent


class Verdict(enum.Enum):
    UNSURE = "unsure"
    WORDS = "words"
    BACKCHANNEL = "backchannel"
    COUGH = "cough"


@dataclass(frozen=True)
class ShapeFeatures:
    voiced_fraction: float
    high_ratio_p90: float
    low_f2_fraction: float
    level_db: float  # median level of the active frames, dBFS


def shape_features(x: npt.NDArray[np.float64]) -> ShapeFeatures | None:
    """Spectral and voicing shape of ``x`` (16 kHz in [-1, 1]); None when it is too short."""
    f0, strength, level = frame_analysis(x)
    if f0.size < 4:
        return None
    active = level > level.max() - 30
    n = f0.size
    idx = np.arange(WIN)[None, :] + HOP * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(WIN)[None, :], axis=1)) ** 2
    freqs = np.fft.rfftfreq(WIN, 1 / RATE)
    total = spec.sum(axis=1) + 1e-12
    high = spec[:, freqs > 2500].sum(axis=1) / total
    f2 = spec[:, (freqs > 1000) & (freqs < 3000)].sum(axis=1) / (spec[:, (freqs > 100) & (freqs < 1000)].sum(axis=1)
                                                                  + 1e-12)
    voiced = active & (strength > VOICED_STRENGTH)
    return ShapeFeatures(
        voiced_fraction=float(np.mean(voiced[active])) if active.any() else 0.0,
        high_ratio_p90=float(np.percentile(high[active], 90)) if active.any() else 0.0,
        low_f2_fraction=float(np.mean(f2[voiced] < LOW_F2_RATIO)) if voiced.any() else 0.0,
        level_db=float(np.median(level[active])) if active.any() else -120.0,
    )


def classify(f: ShapeFeatures, caller_level_db: float | None) -> Verdict:
    if f.voiced_fraction < COUGH_VOICED_FRACTION:
        return Verdict.COUGH
    if caller_level_db is not None and f.level_db < caller_level_db - QUIET_DB:
        return Verdict.BACKCHANNEL
    if f.high_ratio_p90 > OBSTRUENT_HIGH_RATIO or f.low_f2_fraction >= LOW_F2_FRACTION:
        return Verdict.WORDS
    return Verdict.BACKCHANNEL


@dataclass
class BackchannelJudge:
    keep_ms: int = 3000
    _parts: deque[tuple[int, Int16Array]] = field(default_factory=deque, repr=False)  # (end ms, audio)
    _levels: deque[float] = field(default_factory=deque, repr=False)  # caller's own voiced levels
    _cache: tuple[int, int, Verdict] | None = field(default=None, repr=False)

    @property
    def caller_level_db(self) -> float | None:
        return float(np.median(self._levels)) if len(self._levels) >= 10 else None

    def feed(self, pcm: Int16Array, voiced: bool, now_ms: int, agent_speaking: bool) -> None:
        if pcm.size == 0:
            return
        self._parts.append((now_ms, pcm))
        while self._parts and self._parts[0][0] < now_ms - self.keep_ms:
            self._parts.popleft()
        if voiced and not agent_speaking:
            ms = float(np.mean(np.square(pcm.astype(np.float64) / 32768.0)))
            if ms > 1e-9:
                self._levels.append(10 * np.log10(ms))
                while len(self._levels) > 500:
                    self._levels.popleft()

    def verdict(self, start_ms: int, now_ms: int) -> Verdict:
        """About the caller's audio from ``start_ms`` to ``now_ms``."""
        if now_ms - start_ms < MIN_ANALYSIS_MS:
            return Verdict.UNSURE
        if self._cache is not None and self._cache[:2] == (start_ms, now_ms):
            return self._cache[2]
        pieces = [p for end, p in self._parts if end - p.size * 1000 // RATE >= start_ms - 20]
        if not pieces:
            return Verdict.UNSURE
        x = np.concatenate(pieces).astype(np.float64) / 32768.0
        f = shape_features(x)
        v = Verdict.UNSURE if f is None else classify(f, self.caller_level_db)
        self._cache = (start_ms, now_ms, v)
        return v
