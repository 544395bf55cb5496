"""One call's two timelines: the caller's audio (sample count) and the wall clock (``now``).

Pure: fed each packet's sample span and arrival time, it tells

- ``offset_ms``: audio time minus wall time for the least delayed recent packet (over
  ``window_ms``; a transport that conceals losses or drops late packets moves the audio clock
  against the wall, so only recent packets count);
- ``turn_time(now)``: TurnTaking's clock, the caller audio processed so far placed on the wall
  timeline, so that a stalled event loop cannot turn a backlog of unprocessed silence into "speech
  still going"; it never lags the wall clock by more than ``max_lag_ms`` (a transport that stops
  sending in silence, e.g. Opus DTX, must not stop time), and never goes back.
"""

from __future__ import annotations

from collections import deque

MAX_AUDIO_LAG_MS = 1000
OFFSET_WINDOW_MS = 2000


class AudioClock:
    def __init__(self, rate: int, *, max_lag_ms: int = MAX_AUDIO_LAG_MS, window_ms: int = OFFSET_WINDOW_MS) -> None:
        self.rate = rate
        self.max_lag_ms = max_lag_ms
        self.window_ms = window_ms
        self.samples = 0  # caller audio received so far
        self.offset_ms: int | None = None  # None until the first packet
        self._offsets: deque[tuple[int, int]] = deque()  # (wall ms, offset) of recent packets
        self._last = 0

    def packet(self, samples: int, now: int) -> int:
        """A packet of ``samples`` arrived at ``now``; returns its first sample's position."""
        start = self.samples
        self.samples += samples
        self._offsets.append((now, self.samples * 1000 // self.rate - now))
        while self._offsets and self._offsets[0][0] < now - self.window_ms:
            self._offsets.popleft()
        self.offset_ms = max(o for _, o in self._offsets)
        return start

    def turn_time(self, now: int) -> int:
        audio_now = now if self.offset_ms is None else self.samples * 1000 // self.rate - self.offset_ms
        t = max(audio_now, now - self.max_lag_ms, self._last)
        self._last = t
        return t
