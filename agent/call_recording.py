"""Recordings of live calls (``server.record_dir``): a stereo WAV and its signed provenance record.

``CallRecorder`` taps one call in the session driver (agent/session.py): the caller's packets as
received (``AudioReceived``) go to the left channel, the agent's packets as handed to the transport
(``SendAudio``) to the right, each placed at the time it came or left (ms from call start, the
session's clock), silence elsewhere; a packet that would overlap the one before it on its channel
(several in one tick, a burst after a stall) follows it instead. Memory stays bounded: each channel
streams to its own temporary raw file in the recording folder (written at its sample offset, so
silence costs nothing), flushed every second of audio.

At the call's end ``CallRecordings.finish`` interleaves the two into ``<call_id>.wav`` (a temporary
file, fsync, ``os.replace``) and signs ``<call_id>.provenance.json`` beside it with the same code as
the simulator's records (``EarMarkCheck.sign_recording``): the agent's utterances (start: the
reply's first packet sent; end: its last agent packet before the next reply), the watermark payload
of the call (``CallSummary.mark``), the model and the node.

A recording that fails (a folder that cannot be made, a full disk) is logged
(``call.recording_failed``), counted (``CallRecordings.counts``, ``lfmcall_call_recordings_total``
on /metrics) and dropped; the call itself never notices.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from agent.call_marks import EarMarkCheck, session_marks
from agent.log import event
from agent.session_record import CallSummary
from agent.transport import Int16Array
from agent.wavio import wav_header

log = logging.getLogger(__name__)

FLUSH_S = 1.0  # each channel's pending audio is written once it holds this much
COPY_FRAMES = 1 << 16  # frames interleaved per step when the WAV is written
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


class _Track:
    """One channel: packets placed on the call's timeline, streamed to a raw int16 file."""

    def __init__(self, fd: int, path: Path, rate: int) -> None:
        self.fd = fd
        self.path = path
        self.rate = rate
        self.end = 0  # samples placed so far (the next free position)
        self._start = 0  # position of the pending audio
        self._pending: list[Int16Array] = []
        self._pending_n = 0

    def place(self, samples: Int16Array, now_ms: float) -> tuple[int, int]:
        """Put ``samples`` at ``now_ms`` (or right after the last packet); returns its (start, end)."""
        at = max(self.end, round(now_ms * self.rate / 1000))
        if at != self.end:  # a gap: silence (a hole in the file, read back as zeros)
            self.flush()
            self._start = at
        self._pending.append(np.ascontiguousarray(samples, dtype="<i2"))
        self._pending_n += samples.size
        self.end = at + samples.size
        if self._pending_n >= FLUSH_S * self.rate:
            self.flush()
        return at, self.end

    def flush(self) -> None:
        if self._pending:
            data = b"".join(p.tobytes() for p in self._pending)
            os.pwrite(self.fd, data, self._start * 2)
            self._start += self._pending_n
            self._pending, self._pending_n = [], 0

    def read(self, start: int, count: int) -> Int16Array:
        data = os.pread(self.fd, count * 2, start * 2)
        out = np.zeros(count, np.int16)
        got = np.frombuffer(data, "<i2")
        out[: got.size] = got
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(OSError):
            self.path.unlink()


class CallRecorder:
    """One call's two channels. ``caller``/``agent`` never raise: the first failure stops the
    recording (``failed`` says why); ``write_wav`` then raises it."""

    def __init__(self, call_id: str, sample_rate: int, folder: Path) -> None:
        self.call_id = call_id
        self.sample_rate = sample_rate
        self.folder = folder
        self.failed: str | None = None
        self.agent_spans: list[tuple[float, float]] = []  # agent audio (not silence) handed, ms
        stem = SAFE_NAME.sub("_", call_id) or "call"
        self.wav_path = folder / f"{stem}.wav"
        self._tracks: list[_Track] = []
        folder.mkdir(parents=True, exist_ok=True)
        try:
            for channel in ("caller", "agent"):
                fd, name = tempfile.mkstemp(dir=folder, prefix=f".{stem}.{channel}.", suffix=".raw.tmp")
                self._tracks.append(_Track(fd, Path(name), sample_rate))
        except BaseException:
            self.discard()
            raise

    def caller(self, samples: Int16Array, now_ms: float) -> None:
        self._place(0, samples, now_ms)

    def agent(self, samples: Int16Array, sequence: int | None, now_ms: float) -> None:
        """One agent packet handed to the transport; ``sequence`` None: silence, not speech."""
        span = self._place(1, samples, now_ms)
        if span is None or sequence is None:
            return
        a, b = (s * 1000 / self.sample_rate for s in span)
        if self.agent_spans and a - self.agent_spans[-1][1] < 1.0:
            self.agent_spans[-1] = (self.agent_spans[-1][0], b)
        else:
            self.agent_spans.append((a, b))

    def _place(self, channel: int, samples: Int16Array, now_ms: float) -> tuple[int, int] | None:
        if self.failed is not None or not self._tracks:
            return None
        try:
            return self._tracks[channel].place(samples, now_ms)
        except Exception as exc:  # a full disk, a removed folder: the recording ends, the call goes on
            self._fail(exc)
            return None

    def _fail(self, exc: BaseException) -> None:
        self.failed = f"{type(exc).__name__}: {exc}"
        self.discard()

    def write_wav(self) -> Path:
        """Interleave both channels into ``wav_path`` atomically; the temporary files go."""
        if self.failed is not None:
            raise OSError(self.failed)
        try:
            for track in self._tracks:
                track.flush()
            frames = max(t.end for t in self._tracks)
            header = wav_header(frames * 4, 2, self.sample_rate)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{self.wav_path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(header)
                    for start in range(0, frames, COPY_FRAMES):
                        n = min(COPY_FRAMES, frames - start)
                        both = np.empty((n, 2), "<i2")
                        both[:, 0] = self._tracks[0].read(start, n)
                        both[:, 1] = self._tracks[1].read(start, n)
                        handle.write(both.tobytes())
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.wav_path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        finally:
            self.discard()
        return self.wav_path

    def discard(self) -> None:
        """Remove the temporary channel files (idempotent)."""
        tracks, self._tracks = self._tracks, []
        for track in tracks:
            track.close()

    def utterances(self, summary: CallSummary) -> list[dict[str, Any]]:
        """The agent's replies on the recording's timeline: from each reply's first packet sent to
        the end of the last agent audio handed before the next reply's."""
        starts = [t.first_audio_sent_ms for t in summary.turns]
        out = []
        for i, turn in enumerate(summary.turns):
            start = turn.first_audio_sent_ms
            end = None
            if start is not None:
                later = [s for s in starts[i + 1:] if s is not None]
                until = later[0] if later else float("inf")
                end = max((b for a, b in self.agent_spans if b > start and a < until), default=None)
                end = None if end is None else min(end, until)
            out.append({"turn": i, "start_ms": start, "end_ms": end, "interrupted": turn.interrupted,
                        "epoch": turn.epoch})
        return out


class CallRecordings:
    """The node's recordings: where (``server.record_dir``), who signs, which model. Counts what it
    wrote and what failed (``counts``)."""

    def __init__(self, folder: Path, marks: EarMarkCheck, model: str | Callable[[], str] = "") -> None:
        self.folder = folder
        self.marks = marks
        self._model = model
        self.counts: Counter[str] = Counter()

    @property
    def model(self) -> str:
        return self._model() if callable(self._model) else self._model

    def start(self, call_id: str, sample_rate: int) -> CallRecorder | None:
        """A recorder for a new call, or None (counted, logged) when its files cannot be made."""
        try:
            return CallRecorder(call_id, sample_rate, self.folder)
        except Exception as exc:
            self._failed(call_id, f"{type(exc).__name__}: {exc}")
            return None

    def finish(self, recorder: CallRecorder, summary: CallSummary) -> Path | None:
        """Write the call's WAV and its signed record (blocking: run it in a thread). Returns the WAV,
        or None when the recording failed (counted, logged; never raises)."""
        try:
            wav = recorder.write_wav()
            mark = summary.mark
            self.marks.sign_recording(wav, call_id=summary.call_id, model=self.model,
                                      sample_rate=recorder.sample_rate,
                                      call_tag=mark.call_tag if mark is not None else None,
                                      utterances=recorder.utterances(summary), marks=session_marks(mark))
        except Exception as exc:
            recorder.discard()
            self._failed(recorder.call_id, recorder.failed or f"{type(exc).__name__}: {exc}")
            return None
        self.counts["written"] += 1
        event(log, "call.recorded", call_id=recorder.call_id, file=str(wav))
        return wav

    def _failed(self, call_id: str, error: str) -> None:
        self.counts["failed"] += 1
        event(log, "call.recording_failed", logging.WARNING, call_id=call_id, folder=str(self.folder),
              error=error[:200])
