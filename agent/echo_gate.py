"""Echo gate: tell caller-side sound that is only the agent's own voice coming back down the line.

Theory of operation
-------------------
Phone lines return the agent's voice to us: delayed (20-300 ms: jitter buffers, network, the hybrid),
attenuated (6-30 dB), band-limited and quantised by G.711. Fed to the VAD, that echo looks like the
caller talking and the agent barges in on itself. The gate keeps what the agent played (the
*reference*: 16 kHz, timestamped as played, ``push_reference``) and the caller's audio (``process``),
and models the echo path as a bulk delay plus a short FIR filter around it:

1. Delay: normalised cross-correlation of the last ``estimate_window_ms`` of caller audio with the
   reference over lags 0..``max_delay_ms`` (one FFT); the best lag is the bulk delay.
2. Filter: ``2 * taps_each_side + 1`` taps around that lag fitted by (ridge) least squares over the same
   window; it absorbs fractional delay, the line's band limit and the gain.
3. A new estimate replaces the current one only if it removes at least ``accept_erle_db`` of the caller
   energy where the echo is active (and no less than the current path does): windows with double talk
   fit badly and are rejected, so the caller's voice does not spoil the path. Estimates are retried
   every frame until one is accepted, then every ``reestimate_interval_ms``.

For each ``block_ms`` block of caller audio the gate subtracts the predicted echo. The block is *echo
only* when echo is expected there and the residual is ``echo_margin_db`` below the caller block's
energy or below ``residual_floor_dbfs``. ``EchoVerdict.cleaned`` is the residual with echo-only blocks
silenced: feed *that* to the VAD, so that echo alone never starts speech, while a caller talking over
the agent (whose voice the path cannot predict) leaves a loud residual and still does. Until a path has
been accepted, caller audio during the first ``convergence_grace_ms`` of reference activity is treated as
echo, unless a fit over loud caller audio (above ``grace_release_level_dbfs`` where the agent's echo could
be) explains under ``grace_release_erle_db`` of it: that is a caller talking over the agent's first words on a line
without echo, and the grace ends there (``grace_released_at_ms``). Without a path after the grace, the
audio passes unchanged (a line without echo); estimates go on, and a path found later gates again.

Measured on simulated lines (tests/unit/test_echo_gate.py; agent at -16 dBFS, 16 -> 8 kHz -> mu-law ->
16 kHz, -60 dBFS noise; delays 40/120/250 ms x gains -6/-12/-20 dB): delay found to the sample, fitted
ERLE 23-34 dB, first path accepted 200-240 ms after the echo begins, 100% of audible echo blocks gated
after that; a caller cutting in at -20 dBFS over -6 dB echo (or -26 over -12) reaches the VAD in 100%
of its voiced blocks, while 92-97% of the echo-only blocks in between stay gated. Cost: ~0.2 s of CPU
per 5 s of call (one estimate per 480 ms, an FFT and a 33-tap least-squares fit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from agent.audio import AudioError

Float64Array = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EchoGateSettings:
    sample_rate: int = 16000
    block_ms: int = 20
    max_delay_ms: int = 400
    estimate_window_ms: int = 1000
    min_reference_ms: int = 160  # reference activity in the window needed for an estimate
    taps_each_side: int = 16
    reestimate_interval_ms: int = 1000
    converge_interval_ms: int = 100  # attempts while looking for the first path
    accept_erle_db: float = 10.0
    replace_tolerance_db: float = 3.0
    echo_margin_db: float = 8.0
    residual_floor_dbfs: float = -58.0
    reference_active_dbfs: float = -55.0
    convergence_grace_ms: int = 600
    # the grace ends early when a fit over loud caller audio explains almost none of it: that sound
    # is not the agent's echo (the caller talks over the agent's first words on a line without echo)
    grace_release_erle_db: float = 3.0
    grace_release_level_dbfs: float = -45.0

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.block_ms <= 0 or (self.sample_rate * self.block_ms) % 1000:
            raise ValueError(f"block of {self.block_ms} ms at {self.sample_rate} Hz is not whole samples")
        if self.max_delay_ms <= 0 or self.estimate_window_ms <= 0 or self.taps_each_side < 0:
            raise ValueError("max_delay_ms and estimate_window_ms must be positive, taps_each_side >= 0")
        if self.min_reference_ms > self.estimate_window_ms:
            raise ValueError("min_reference_ms cannot exceed estimate_window_ms")

    def samples(self, duration_ms: int) -> int:
        return self.sample_rate * duration_ms // 1000


@dataclass(frozen=True)
class EchoPath:
    """Current echo path: ``taps[j]`` weighs the reference ``delay_samples - taps_each_side + j`` back."""

    delay_samples: int
    taps: Float64Array
    erle_db: float  # echo removed on the window it was fitted on
    estimated_at_ms: int

    @property
    def gain_db(self) -> float:
        return 20.0 * math.log10(max(float(np.sqrt(np.sum(self.taps**2))), 1e-9))


@dataclass(frozen=True, eq=False)
class EchoVerdict:
    """Outcome for one caller frame; ``cleaned`` (float32 in [-1, 1)) is what the VAD should hear."""

    cleaned: Float32Array
    residual: Float32Array  # caller audio minus the predicted echo (no gating)
    echo_blocks: int  # blocks judged to be echo only
    blocks: int
    echo_expected: bool  # some echo of the agent was predicted in this frame
    path: EchoPath | None

    @property
    def echo_only(self) -> bool:
        return self.blocks > 0 and self.echo_blocks == self.blocks


def _dbfs(mean_square: float) -> float:
    return 10.0 * math.log10(mean_square) if mean_square > 1e-15 else -150.0


def _to_float(samples: npt.NDArray[np.int16] | Float32Array, who: str) -> Float64Array:
    if samples.ndim != 1:
        raise AudioError(f"{who} audio must be mono (1-D), got shape {samples.shape}")
    if samples.dtype == np.int16:
        return samples.astype(np.float64) / 32768.0
    if samples.dtype == np.float32:
        return samples.astype(np.float64)
    raise AudioError(f"{who} audio must be int16 or float32, got {samples.dtype}")


class _Timeline:
    """A sliding buffer of audio addressed by absolute sample index (zeros where nothing was written)."""

    def __init__(self, keep_samples: int) -> None:
        self.keep = keep_samples
        self.start = 0
        self.data: Float64Array = np.zeros(0)

    @property
    def end(self) -> int:
        return self.start + int(self.data.shape[0])

    def write(self, index: int, x: Float64Array) -> None:
        if self.data.shape[0] == 0 or index > self.end + self.keep:
            self.start, self.data = index, x.copy()
        elif index < self.start:
            raise AudioError(f"audio at sample {index} is older than the buffer (starts at {self.start})")
        else:
            gap = max(0, index - self.end)
            data = np.concatenate([self.data, np.zeros(gap)]) if gap else self.data
            offset = index - self.start
            tail = max(0, offset + x.shape[0] - data.shape[0])
            if tail:
                data = np.concatenate([data, np.zeros(tail)])
            data[offset : offset + x.shape[0]] = x
            self.data = data
        excess = self.data.shape[0] - self.keep
        if excess > 0:
            self.data = self.data[excess:]
            self.start += excess

    def read(self, a: int, b: int) -> Float64Array:
        out = np.zeros(max(0, b - a))
        lo, hi = max(a, self.start), min(b, self.end)
        if hi > lo:
            out[lo - a : hi - a] = self.data[lo - self.start : hi - self.start]
        return out


class EchoGate:
    def __init__(self, settings: EchoGateSettings | None = None) -> None:
        s = self.settings = settings or EchoGateSettings()
        self._max_delay = s.samples(s.max_delay_ms)
        self._window = s.samples(s.estimate_window_ms)
        self._block = s.samples(s.block_ms)
        keep = self._window + self._max_delay + 2 * s.taps_each_side + s.samples(500)
        self._reference = _Timeline(keep)
        self._caller = _Timeline(self._window)
        self.path: EchoPath | None = None
        self._first_reference_ms: int | None = None
        self._last_estimate_ms: int | None = None
        self.converged_at_ms: int | None = None
        self.grace_released_at_ms: int | None = None  # the grace ended early: the caller's sound is not echo
        self._last_fit: tuple[int, Float64Array, Float64Array] | None = None  # (window start, caller, fitted echo)
        self.estimates_tried = 0
        self.estimates_accepted = 0

    def push_reference(self, samples: npt.NDArray[np.int16] | Float32Array, start_ms: int) -> None:
        """The agent's audio as played to the caller (at the gate's rate), first sample at ``start_ms``."""
        x = _to_float(samples, "reference")
        if self._first_reference_ms is None and x.size and _dbfs(float(np.mean(x * x))) > self.settings.reference_active_dbfs:
            self._first_reference_ms = start_ms
        self._reference.write(self.settings.samples(start_ms), x)

    def process(self, samples: npt.NDArray[np.int16] | Float32Array, start_ms: int) -> EchoVerdict:
        """Judge one caller frame (at the gate's rate) whose first sample is at ``start_ms``."""
        s = self.settings
        y = _to_float(samples, "caller")
        a = s.samples(start_ms)
        self._caller.write(a, y)
        end_ms = start_ms + y.shape[0] * 1000 // s.sample_rate
        self._maybe_estimate(end_ms)
        path = self.path
        echo = self._predict(path, a, a + y.shape[0]) if path is not None else np.zeros_like(y)
        residual = y - echo
        cleaned = residual.copy()
        in_grace = (
            path is None
            and self.grace_released_at_ms is None
            and self._first_reference_ms is not None
            and start_ms - self._first_reference_ms < s.convergence_grace_ms
        )
        echo_blocks = 0
        blocks = 0
        echo_expected = False
        floor = 10.0 ** (s.residual_floor_dbfs / 10.0)
        margin = 10.0 ** (-s.echo_margin_db / 10.0)
        for i in range(0, y.shape[0], self._block):
            blocks += 1
            sl = slice(i, min(i + self._block, y.shape[0]))
            if in_grace:
                recent = self._reference.read(a + i - self._max_delay, a + sl.stop)
                expected = _dbfs(float(np.mean(recent * recent))) > s.reference_active_dbfs
                is_echo = expected
            else:
                e_y = float(np.mean(y[sl] ** 2))
                e_r = float(np.mean(residual[sl] ** 2))
                expected = _dbfs(float(np.mean(echo[sl] ** 2))) > s.reference_active_dbfs
                is_echo = expected and (e_r <= e_y * margin or e_r <= floor)
            echo_expected = echo_expected or expected
            if is_echo:
                echo_blocks += 1
                cleaned[sl] = 0.0
        return EchoVerdict(
            cleaned=cleaned.astype(np.float32),
            residual=residual.astype(np.float32),
            echo_blocks=echo_blocks,
            blocks=blocks,
            echo_expected=echo_expected,
            path=path,
        )

    # --- estimation -----------------------------------------------------------------------------

    def _predict(self, path: EchoPath, a: int, b: int) -> Float64Array:
        k = self.settings.taps_each_side
        lo = path.delay_samples - k  # smallest lag the filter uses
        hi = path.delay_samples + k
        x = self._reference.read(a - hi, b - lo)
        # echo[n] = sum_j taps[j] * ref[n - lo - j]
        return np.convolve(x, path.taps, mode="valid")[: b - a]

    def _maybe_estimate(self, now_ms: int) -> None:
        s = self.settings
        if self._first_reference_ms is None:
            return
        converging = self.path is None and now_ms - self._first_reference_ms < s.convergence_grace_ms + 500
        interval = s.converge_interval_ms if converging else s.reestimate_interval_ms
        last = self._last_estimate_ms
        if last is not None and now_ms - last < interval:
            return
        self._last_estimate_ms = now_ms  # attempts are rate-limited whether or not they succeed
        self._last_fit = None
        candidate = self._estimate(now_ms)
        if self.path is None and self.grace_released_at_ms is None \
                and now_ms - self._first_reference_ms < s.convergence_grace_ms and self._not_echo():
            self.grace_released_at_ms = now_ms
        if candidate is None:
            return
        self.estimates_tried += 1
        if candidate.erle_db < s.accept_erle_db:
            return
        if self.path is not None:
            # Double talk fits badly: a replacement must fit about as well as the current path did.
            if candidate.erle_db < self.path.erle_db - s.replace_tolerance_db:
                return
            current = self._window_erle(self.path)
            if current is not None and current > candidate.erle_db:
                return
        if self.path is None:
            self.converged_at_ms = now_ms
        self.path = candidate
        self.estimates_accepted += 1

    def _window_data(self) -> tuple[int, Float64Array] | None:
        end = self._caller.end
        a = max(self._caller.start, end - self._window)
        if end - a < self._block:
            return None
        return a, self._caller.read(a, end)

    def _active_blocks(self, x: Float64Array) -> npt.NDArray[np.bool_]:
        """Per whole block of `x`: is it above ``reference_active_dbfs``."""
        n = x.shape[0] // self._block * self._block
        blocks = x[:n].reshape(-1, self._block)
        active: npt.NDArray[np.bool_] = 10.0 * np.log10(np.mean(blocks**2, axis=1) + 1e-15) \
            > self.settings.reference_active_dbfs
        return active

    def _rows(self, blocks: npt.NDArray[np.bool_], w: int) -> npt.NDArray[np.bool_]:
        """Block flags spread over a window of `w` rows (a partial last block is False)."""
        rows = np.zeros(w, dtype=bool)
        rows[: blocks.size * self._block] = np.repeat(blocks, self._block)
        return rows

    def _active_rows(self, echo: Float64Array) -> npt.NDArray[np.bool_]:
        """Rows of the window inside blocks where the predicted echo is active."""
        return self._rows(self._active_blocks(echo), echo.shape[0])

    def _erle(self, y: Float64Array, echo: Float64Array) -> float | None:
        rows = self._active_rows(echo)
        if int(rows.sum()) < self.settings.samples(self.settings.min_reference_ms):
            return None
        e_y = float(np.sum(y[rows] ** 2))
        e_r = float(np.sum((y[rows] - echo[rows]) ** 2))
        return 10.0 * math.log10(max(e_y, 1e-15) / max(e_r, 1e-15))

    def _not_echo(self) -> bool:
        """Whether the last fit shows loud caller sound, where echo of the agent could be, that it
        explains almost none of (under ``grace_release_erle_db``): that sound is not echo."""
        s = self.settings
        fit = self._last_fit
        if fit is None:
            return False
        a, y, echo = fit
        rows = self._echo_possible_rows(a, y.shape[0])
        if int(rows.sum()) < s.samples(s.min_reference_ms):
            return False
        e_y = float(np.mean(y[rows] ** 2))
        if _dbfs(e_y) <= s.grace_release_level_dbfs:
            return False
        e_r = float(np.mean((y[rows] - echo[rows]) ** 2))
        return 10.0 * math.log10(e_y / max(e_r, 1e-15)) < s.grace_release_erle_db

    def _echo_possible_rows(self, a: int, w: int) -> npt.NDArray[np.bool_]:
        """Rows of the caller window (from sample `a`, `w` long) with agent audio in the
        ``max_delay_ms`` before them: where its echo could be."""
        b, d = self._block, self._max_delay
        active = self._active_blocks(self._reference.read(a - d, a + w))  # block j starts at sample a - d + j * b
        cum = np.concatenate([[0], np.cumsum(active)])
        ks = np.arange(w // b)  # caller block k sees reference blocks k .. k + d // b
        possible = cum[np.minimum(ks + d // b + 1, active.size)] - cum[ks] > 0
        return self._rows(possible, w)

    def _window_erle(self, path: EchoPath) -> float | None:
        data = self._window_data()
        if data is None:
            return None
        a, y = data
        return self._erle(y, self._predict(path, a, a + y.shape[0]))

    def _estimate(self, now_ms: int) -> EchoPath | None:
        s = self.settings
        data = self._window_data()
        if data is None:
            return None
        a, y = data
        w = y.shape[0]
        d_max = self._max_delay
        k = s.taps_each_side
        # seg[m] = ref[a - d_max - k + m]; lag L of caller sample i reads seg[d_max + k + i - L]
        seg = self._reference.read(a - d_max - k, a + w + k)
        x = seg[k : k + d_max + w]  # x[m] = ref[a - d_max + m]
        min_energy = w * 10.0 ** (s.reference_active_dbfs / 10.0) * s.min_reference_ms / s.estimate_window_ms
        if float(np.dot(x, x)) <= min_energy:  # the agent was silent: nothing to learn from
            return None
        n_fft = 1 << math.ceil(math.log2(x.shape[0] + w))
        c = np.fft.irfft(np.fft.rfft(x, n_fft) * np.conj(np.fft.rfft(y, n_fft)), n_fft)
        # c[m] = sum_i y[i] * x[i + m]; lag L uses m = d_max - L
        lags = np.arange(d_max + 1)
        corr = c[d_max - lags]
        csum = np.concatenate([[0.0], np.cumsum(x * x)])
        energy = csum[d_max - lags + w] - csum[d_max - lags]
        valid = energy > min_energy
        if not np.any(valid):
            return None
        score = np.where(valid, np.abs(corr) / np.sqrt(np.maximum(energy, 1e-15)), 0.0)
        delay = int(np.argmax(score))
        # Least squares over taps at lags delay-k .. delay+k: column j holds ref[a + i - (delay - k + j)].
        start = d_max + k - (delay + k)  # seg index of ref[a - delay - k]
        windows = sliding_window_view(seg[start : start + w + 2 * k], 2 * k + 1)[:w]
        design = windows[:, ::-1]
        gram = design.T @ design
        ridge = 1e-6 * (float(np.trace(gram)) / gram.shape[0] + 1e-12)
        taps = np.linalg.solve(gram + ridge * np.eye(gram.shape[0]), design.T @ y)
        echo = design @ taps
        self._last_fit = (a, y, echo)
        erle = self._erle(y, echo)
        if erle is None:
            return None
        return EchoPath(delay_samples=delay, taps=taps, erle_db=erle, estimated_at_ms=now_ms)
