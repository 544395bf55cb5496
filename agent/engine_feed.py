"""What of the caller's audio the engine is fed: from a pre-roll before speech onset, in whole frames.

Pure (no clock, no I/O): the session hands in each packet of 16 kHz caller audio with its sample
position and says when a turn starts, pauses or ends; it gets back the 80 ms model frames
(float32, 1280 samples) to submit as ``Feed`` commands, in order, none twice.

- ``start(first_sample)``: a turn began; feed from ``first_sample`` (the onset minus the pre-roll),
  out of the last ``keep_ms`` of audio.
- ``audio(start, pcm, hold)``: one packet. Fed at once while feeding; with ``hold`` (an early answer
  is being prepared) kept aside, so that if the caller goes on (``resume``) the engine hears the
  pause and the rest of the turn, nothing lost.
- ``stop()`` ends feeding (end of turn); ``drop_held()`` forgets the kept pause (the answer stays).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from agent.audio import MODEL_INPUT_RATE, Float32Array, Int16Array
from agent.engine_api import FEED_SAMPLES

PREROLL_KEEP_MS = 3000  # caller audio kept for the pre-roll, ms


class EngineFeed:
    def __init__(self, keep_ms: int = PREROLL_KEEP_MS) -> None:
        self.keep_samples = keep_ms * MODEL_INPUT_RATE // 1000
        self.feeding = False
        self._recent: deque[tuple[int, Int16Array]] = deque()  # (16 kHz start sample, samples)
        self._end = 0  # the sample after the newest audio
        self._buf = np.zeros(0, np.int16)  # less than one frame, waiting for the rest
        self._fed_until = 0  # audio before this sample was already fed
        self._held: list[Int16Array] = []  # audio since an early answer started (fed if the turn goes on)

    def audio(self, start: int, pcm: Int16Array, hold: bool) -> list[Float32Array]:
        """One packet of caller audio beginning at sample ``start``; the frames to feed now."""
        self._recent.append((start, pcm))
        self._end = start + pcm.size
        while self._recent and self._recent[0][0] < self._end - self.keep_samples:
            self._recent.popleft()
        if self.feeding and start >= self._fed_until:  # (feeding that started just now took this packet)
            return self._frames(pcm)
        if hold:
            self._held.append(pcm)
        return []

    def start(self, first_sample: int) -> list[Float32Array]:
        """Feed from ``first_sample`` on (what is still kept of it); no-op while already feeding."""
        if self.feeding:
            return []
        parts = [pcm[max(0, first_sample - s):] for s, pcm in self._recent if s + pcm.size > first_sample]
        self.feeding = True
        self._buf = np.zeros(0, np.int16)
        self._fed_until = self._end
        return self._frames(np.concatenate(parts)) if parts else []

    def stop(self) -> None:
        self.feeding = False

    def drop_held(self) -> None:
        self._held = []

    def hold_from_now(self) -> None:
        """An early answer starts: stop feeding, keep what comes (``audio(hold=True)``) from here."""
        self.feeding = False
        self._held = []

    def resume(self) -> list[Float32Array]:
        """The caller went on after an early answer: feed the kept pause and everything after it."""
        self.feeding = True
        self._buf = np.zeros(0, np.int16)
        frames = [f for pcm in self._held for f in self._frames(pcm)]
        self._held = []
        return frames

    def _frames(self, pcm: Int16Array) -> list[Float32Array]:
        buf = np.concatenate([self._buf, pcm]) if self._buf.size else pcm
        whole = buf.size // FEED_SAMPLES
        frames = [buf[i * FEED_SAMPLES:(i + 1) * FEED_SAMPLES].astype(np.float32) / np.float32(32768.0)
                  for i in range(whole)]
        self._buf = buf[whole * FEED_SAMPLES:].copy()
        return frames
