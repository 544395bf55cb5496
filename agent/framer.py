"""Conversion between transport packets and the agent's 80 ms frames.

``Framer`` (caller -> model): packets of any size at the transport's rate in, exact 80 ms frames at
16 kHz out (1280 samples). ``Packetizer`` (model -> caller): 80 ms agent chunks at 24 kHz in, exact
20 ms packets at the transport's rate out; ``clear()`` drops everything buffered on barge-in.

Both are the same machine: a ``StreamingResampler`` followed by a cutter. Timeline rule: a *segment*
starts at the first push (or after ``flush``/``clear``); its output timestamps start at
``ceil(first_timestamp * out_rate / in_rate)`` and then run contiguously, one chunk length per
output. Inside a segment, input timestamps must continue where the previous push ended: a forward
gap (a packet the transport could not conceal) is filled with silence, so frames stay on the call's
clock; a backward step or overlap is a bug upstream and raises ``AudioError``. Output is the
delay-compensated resampled stream, so frame ``k`` of a segment holds exactly samples
``[k * frame_samples, (k + 1) * frame_samples)`` of offline resampling of the whole segment.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.audio import (
    FRAME_MS,
    MODEL_INPUT_RATE,
    MODEL_OUTPUT_RATE,
    PACKET_MS,
    AudioError,
    PcmFrame,
    samples_per_ms,
)
from agent.resample import StreamingResampler

# Largest forward timestamp gap filled with silence; anything longer means a broken clock upstream.
MAX_GAP_MS = 2000


class _Rechunker:
    """Resample a PcmFrame stream and cut it into chunks of exactly ``chunk_samples``."""

    def __init__(self, in_rate: int, out_rate: int, chunk_ms: int, max_gap_ms: int) -> None:
        self._resampler = StreamingResampler(in_rate, out_rate)
        self._in_rate = self._resampler.in_rate
        self._out_rate = self._resampler.out_rate
        self._chunk_samples = samples_per_ms(self._out_rate, chunk_ms)
        if self._chunk_samples == 0:
            raise AudioError(f"chunk length must be positive, got {chunk_ms} ms")
        self._max_gap_samples = self._in_rate * max_gap_ms // 1000
        self._pending: list[npt.NDArray[np.int16]] = []
        self._pending_samples = 0
        self._segment_open = False
        self._next_in_timestamp = 0
        self._next_out_timestamp = 0
        self._segment_in_samples = 0
        self._segment_out_emitted = 0
        self.gap_samples_filled = 0

    @property
    def chunk_samples(self) -> int:
        return self._chunk_samples

    @property
    def delay_samples(self) -> int:
        """Resampler latency, in output samples (see ``StreamingResampler.delay_samples``)."""
        return self._resampler.delay_samples

    @property
    def buffered_input_samples(self) -> int:
        """Input samples taken in this segment whose output has not left in a whole chunk yet."""
        emitted_in = -((-self._segment_out_emitted * self._in_rate) // self._out_rate)
        return max(0, self._segment_in_samples - emitted_in)

    def _push(self, frame: PcmFrame) -> list[PcmFrame]:
        if frame.sample_rate != self._in_rate:
            raise AudioError(f"expected {self._in_rate} Hz audio, got a {frame.sample_rate} Hz frame")
        if not self._segment_open:
            self._segment_open = True
            self._next_in_timestamp = frame.timestamp
            # First output sample at or after the segment's start time.
            self._next_out_timestamp = -((-frame.timestamp * self._out_rate) // self._in_rate)
        gap = frame.timestamp - self._next_in_timestamp
        if gap < 0:
            raise AudioError(
                f"frame at sample {frame.timestamp} overlaps the stream, which is already at "
                f"sample {self._next_in_timestamp} ({self._in_rate} Hz)"
            )
        if gap > self._max_gap_samples:
            raise AudioError(
                f"frame at sample {frame.timestamp} leaves a gap of {gap} samples "
                f"(over {self._max_gap_samples}) after sample {self._next_in_timestamp} ({self._in_rate} Hz)"
            )
        if gap:
            self.gap_samples_filled += gap
            self._take(self._resample(np.zeros(gap, dtype=np.int16)), gap)
        self._take(self._resample(frame.samples), frame.num_samples)
        self._next_in_timestamp = frame.end_timestamp
        return self._cut()

    def _resample(self, pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
        return self._resampler.process(pcm).astype(np.int16, copy=False)  # int16 in -> int16 out

    def _take(self, out: npt.NDArray[np.int16], in_samples: int) -> None:
        self._segment_in_samples += in_samples
        if out.shape[0]:
            # The identity resampler hands back the caller's own array; keep a private copy.
            self._pending.append(out.copy() if self._resampler.is_identity else out)
            self._pending_samples += out.shape[0]

    def _cut(self) -> list[PcmFrame]:
        n = self._chunk_samples
        if self._pending_samples < n:
            return []
        joined = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        whole = (joined.shape[0] // n) * n
        chunks = [
            PcmFrame(joined[i : i + n].copy(), self._out_rate, self._next_out_timestamp + i)
            for i in range(0, whole, n)
        ]
        rest = joined[whole:]
        self._pending = [rest] if rest.shape[0] else []
        self._pending_samples = rest.shape[0]
        self._next_out_timestamp += whole
        self._segment_out_emitted += whole
        return chunks

    def _flush(self, pad: bool) -> list[PcmFrame]:
        if not self._segment_open:
            return []
        tail = self._resampler.flush()
        self._take(tail.astype(np.int16, copy=False), 0)
        chunks = self._cut()
        if self._pending_samples:
            rest = np.concatenate(self._pending)
            if pad:
                rest = np.concatenate([rest, np.zeros(self._chunk_samples - rest.shape[0], dtype=np.int16)])
            chunks.append(PcmFrame(rest, self._out_rate, self._next_out_timestamp))
        self._reset()
        return chunks

    def _reset(self) -> None:
        self._resampler.reset()
        self._pending = []
        self._pending_samples = 0
        self._segment_open = False
        self._segment_in_samples = 0
        self._segment_out_emitted = 0


class Framer(_Rechunker):
    """Caller audio: packets of any size at ``in_rate`` -> exact ``frame_ms`` frames at ``out_rate``.

    ``Framer(8000).push(PcmFrame(160 samples, 8000, ts))`` returns a (usually empty) list of
    1280-sample 16 kHz frames with contiguous timestamps. ``flush()`` ends the stream: it drains
    the resampler and returns the last frames, the final one padded with silence to full length
    unless ``pad=False``.
    """

    def __init__(
        self,
        in_rate: int,
        frame_ms: int = FRAME_MS,
        out_rate: int = MODEL_INPUT_RATE,
        *,
        max_gap_ms: int = MAX_GAP_MS,
    ) -> None:
        super().__init__(in_rate, out_rate, frame_ms, max_gap_ms)

    @property
    def frame_samples(self) -> int:
        return self.chunk_samples

    def push(self, frame: PcmFrame) -> list[PcmFrame]:
        return self._push(frame)

    def flush(self, pad: bool = True) -> list[PcmFrame]:
        return self._flush(pad)


class Packetizer(_Rechunker):
    """Agent audio: 80 ms chunks at ``in_rate`` (24 kHz) -> exact ``packet_ms`` packets at ``out_rate``.

    ``flush()`` ends the utterance (last packet padded with silence unless ``pad=False``);
    ``clear()`` drops everything buffered, for barge-in, and says how many input samples were lost.
    """

    def __init__(
        self,
        in_rate: int = MODEL_OUTPUT_RATE,
        *,
        out_rate: int,
        packet_ms: int = PACKET_MS,
        max_gap_ms: int = MAX_GAP_MS,
    ) -> None:
        super().__init__(in_rate, out_rate, packet_ms, max_gap_ms)

    @property
    def packet_samples(self) -> int:
        return self.chunk_samples

    def push(self, chunk: PcmFrame) -> list[PcmFrame]:
        return self._push(chunk)

    def flush(self, pad: bool = True) -> list[PcmFrame]:
        return self._flush(pad)

    def clear(self) -> int:
        """Drop all buffered audio (resampler state included); return the input samples never packetized.

        The count is in input samples (at ``in_rate``) taken since the segment started minus those
        whose output already left in whole packets. The next push starts a new segment.
        """
        dropped = self.buffered_input_samples
        self._reset()
        return dropped
