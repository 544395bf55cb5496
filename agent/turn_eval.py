"""`lfm-call turn-eval DIR`: end-of-turn detectors on labelled recordings, false cut-offs vs latency.

DIR holds WAV files (any rate, mono or the first channel) and ``labels.csv`` with at least the
columns ``file`` and ``turn_end_s`` (one row per true end of turn: the end of the turn's last speech).
Each file is run through the VAD in 20 ms pieces, as a call would be; every VAD pause is a candidate
end of turn. A pause within 400 ms of a labelled end is a true end; any other pause is a pause
inside a turn.

For a detector, each pause ends the turn if its silence reaches ``scale * required_silence_ms``:
at a true end that is the latency (decision time minus the labelled end); at a pause inside a turn
it is a false cut-off. Sweeping ``scale`` gives the curve of false cut-off rate (cut-offs per true
turn end) against median latency, as LiveKit's eot-bench does; ``scale = 1`` is the configured
operating point. The figures are the detector's own: the engine's time to first audio and the
line's delay come on top.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.resample import resample_offline
from agent.turn_end import (
    RATE,
    ProsodicFeatures,
    TurnEndDetector,
    policy_from_settings,
    prosodic_features,
)
from agent.vad import EnergyVad, VadSettings, VadTracker, VoiceDetector
from agent.wavio import read_wav_channels

PIECE = 320  # 20 ms at 16 kHz
MATCH_MS = 400
SCALES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.15, 1.3, 1.5, 1.75, 2.0, 2.5)


class TurnEvalError(ValueError):
    pass


@dataclass
class Recording:
    name: str
    audio: npt.NDArray[np.int16]  # 16 kHz
    turn_ends_ms: list[int]


@dataclass(frozen=True)
class Pause:
    start_ms: int
    length_ms: int  # to the next speech (or the end of the file)
    true_end_ms: int | None  # the labelled end this pause follows, None: a pause inside a turn


@dataclass
class Prepared:
    """A recording through the VAD: the voiced state per 20 ms piece and its pauses."""

    rec: Recording
    voiced: list[bool]
    pauses: list[Pause]
    pause_at_piece: dict[int, Pause] = field(default_factory=dict)  # the piece index where a pause starts


@dataclass(frozen=True)
class CurvePoint:
    scale: float
    cut_off_rate: float
    median_latency_ms: float | None
    p90_latency_ms: float | None
    cut_offs: int
    turn_ends: int
    missed: int


def load_corpus(folder: str | Path) -> list[Recording]:
    d = Path(folder)
    labels = d / "labels.csv"
    if not labels.is_file():
        raise TurnEvalError(f"{d}: no labels.csv (columns file,turn_end_s; one row per end of turn)")
    ends: dict[str, list[int]] = {}
    with open(labels, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"file", "turn_end_s"} <= set(reader.fieldnames):
            raise TurnEvalError(f"{labels}: needs the columns file and turn_end_s")
        for n, row in enumerate(reader, start=2):
            try:
                t = float(row["turn_end_s"])
            except (TypeError, ValueError):
                raise TurnEvalError(f"{labels}:{n}: turn_end_s is not a number: {row['turn_end_s']!r}") from None
            if not math.isfinite(t) or t < 0:
                raise TurnEvalError(f"{labels}:{n}: turn_end_s must be a time >= 0, got {t}")
            ends.setdefault(row["file"], []).append(round(t * 1000))
    if not ends:
        raise TurnEvalError(f"{labels}: no rows")
    out = []
    for name in sorted(ends):
        path = d / name
        if not path.is_file():
            raise TurnEvalError(f"{labels}: {name} is listed but {path} does not exist")
        channels, rate = read_wav_channels(path)
        mono = channels[:, 0] if channels.ndim == 2 else channels
        pcm = np.clip(np.round(mono * 32768.0), -32768, 32767).astype(np.int16)
        if rate != RATE:
            pcm = np.asarray(resample_offline(pcm, rate, RATE), dtype=np.int16)
        out.append(Recording(name, pcm, sorted(ends[name])))
    return out


def prepare(rec: Recording, detector: VoiceDetector, vad_settings: VadSettings) -> Prepared:
    tracker = VadTracker(detector, vad_settings)
    voiced: list[bool] = []
    starts: list[int] = []  # pause starts (ms)
    resumes: list[int | None] = []
    for i in range(rec.audio.size // PIECE):
        piece = rec.audio[i * PIECE:(i + 1) * PIECE]
        for ev in tracker.feed(piece, i * 20):
            kind = type(ev).__name__
            if kind == "VadSpeechPaused":
                starts.append(ev.at_ms)
                resumes.append(None)
            elif kind in ("VadSpeechResumed", "VadSpeechStarted") and resumes and resumes[-1] is None:
                resumes[-1] = ev.at_ms
        voiced.append(tracker.state.value == "speaking")
    total_ms = len(voiced) * 20
    pauses = []
    for s, r in zip(starts, resumes, strict=True):
        true = next((e for e in rec.turn_ends_ms if e - MATCH_MS <= s <= e + MATCH_MS), None)
        pauses.append(Pause(s, (total_ms if r is None else r) - s, true))
    prep = Prepared(rec, voiced, pauses)
    for p in pauses:
        prep.pause_at_piece.setdefault(p.start_ms // 20 + 1, p)
    return prep


def required_silences(prep: Prepared, make: Callable[[], TurnEndDetector], scale: float) -> list[int]:
    """Run a fresh detector over the recording; the required silence at each pause."""
    det = make()
    out: list[int] = []
    audio = prep.rec.audio
    pending: list[tuple[int, int]] = []  # (decision time, ends turn) for turn_ended calls
    for i, v in enumerate(prep.voiced):
        now = (i + 1) * 20
        det.feed(audio[i * PIECE:(i + 1) * PIECE], v, now)
        while pending and pending[0][0] <= now:
            det.turn_ended(pending.pop(0)[0])
        p = prep.pause_at_piece.get(i)
        if p is not None:
            need = int(det.required_silence_ms(now) * scale)
            out.append(need)
            if need < p.length_ms:
                pending.append((p.start_ms + need, 1))
    # pauses whose piece index was past the end of the file (never asked): never end
    return out + [10 ** 9] * (len(prep.pauses) - len(out))


def evaluate(prepared: Sequence[Prepared], make: Callable[[], TurnEndDetector],
             scales: Sequence[float] = SCALES) -> list[CurvePoint]:
    """The curve over ``scales``. Each detector runs once (at scale 1); its required silences are
    scaled afterwards (an adaptive detector learns from the scale-1 decisions)."""
    base = [required_silences(prep, make, 1.0) for prep in prepared]
    points = []
    for scale in scales:
        cut, lat, missed, ends = 0, [], 0, 0
        for prep, need1 in zip(prepared, base, strict=True):
            need = [int(r * scale) for r in need1]
            seen: set[int] = set()
            for p, r in zip(prep.pauses, need, strict=True):
                if p.true_end_ms is None:
                    cut += int(r < p.length_ms)
                elif p.true_end_ms not in seen:
                    seen.add(p.true_end_ms)
                    if r < p.length_ms:
                        lat.append(p.start_ms + r - p.true_end_ms)
                    else:
                        missed += 1
            ends += len(prep.rec.turn_ends_ms)
            missed += len(set(prep.rec.turn_ends_ms) - seen)
        points.append(CurvePoint(scale, cut / max(1, ends), float(np.median(lat)) if lat else None,
                                 float(np.percentile(lat, 90)) if lat else None, cut, ends, missed))
    return points


def pause_features(prepared: Sequence[Prepared]) -> list[tuple[ProsodicFeatures, bool]]:
    """The prosodic features at every pause and whether it was a true end (for fitting)."""
    out = []
    for prep in prepared:
        x = prep.rec.audio.astype(np.float64) / 32768.0
        v = np.repeat(np.asarray(prep.voiced, bool), PIECE)
        for p in prep.pauses:
            end = (p.start_ms // 20 + 1) * PIECE
            lo = max(0, end - 6 * RATE)
            out.append((prosodic_features(x[lo:end], v[lo:end]), p.true_end_ms is not None))
    return out


def fit_logistic(samples: Sequence[tuple[ProsodicFeatures, bool]], l2: float = 0.01,
                 steps: int = 3000) -> tuple[list[float], float]:
    """Weights and bias of a logistic model P(true end | features), balanced classes, L2."""
    x = np.array([f.vector() for f, _ in samples])
    y = np.array([1.0 if t else 0.0 for _, t in samples])
    pos = max(1.0, y.sum())
    neg = max(1.0, len(y) - y.sum())
    w_s = np.where(y > 0, 0.5 / pos, 0.5 / neg)
    w = np.zeros(x.shape[1])
    b = 0.0
    lr = 0.5
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w + b)))
        g = (p - y) * w_s
        w -= lr * (x.T @ g + l2 * w)
        b -= lr * float(g.sum())
    return [round(float(v), 3) for v in w], round(b, 3)


def load_vad(backend: str) -> VoiceDetector:
    if backend == "energy":
        return EnergyVad()
    from agent.vad import SileroVad

    return SileroVad.load()


def render_plot(curves: dict[str, list[CurvePoint]], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agent.report import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, pts in curves.items():
        xs = [p.median_latency_ms for p in pts if p.median_latency_ms is not None]
        ys = [100 * p.cut_off_rate for p in pts if p.median_latency_ms is not None]
        line, = ax.plot(xs, ys, marker="o", markersize=3, label=name)
        op = next((p for p in pts if p.scale == 1.0 and p.median_latency_ms is not None), None)
        if op is not None:
            ax.plot([op.median_latency_ms or 0.0], [100 * op.cut_off_rate], marker="*", markersize=12,
                    color=line.get_color())
    ax.axhline(5, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("median end-of-turn latency after the caller's last word, ms")
    ax.set_ylabel("false cut-offs per turn end, %")
    ax.set_title("end-of-turn detectors (star: configured operating point)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    import io

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def format_table(curves: dict[str, list[CurvePoint]]) -> str:
    lines = [f"{'detector':<22} {'scale':>5} {'cut-offs %':>10} {'median ms':>9} {'p90 ms':>7} {'missed':>6}"]
    for name, pts in curves.items():
        for p in pts:
            med = "-" if p.median_latency_ms is None else f"{p.median_latency_ms:.0f}"
            p90 = "-" if p.p90_latency_ms is None else f"{p.p90_latency_ms:.0f}"
            mark = " *" if p.scale == 1.0 else ""
            lines.append(f"{name:<22} {p.scale:>5.2f} {100 * p.cut_off_rate:>10.1f} {med:>9} {p90:>7} "
                         f"{p.missed:>6}{mark}")
    return "\n".join(lines)


def best_at(pts: Sequence[CurvePoint], max_rate: float = 0.05) -> CurvePoint | None:
    """The fastest point with at most ``max_rate`` false cut-offs."""
    ok = [p for p in pts if p.cut_off_rate <= max_rate and p.median_latency_ms is not None]
    return min(ok, key=lambda p: p.median_latency_ms or 0.0) if ok else None


def run_turn_eval(folder: str | Path, settings: Any, *, policies: Sequence[str] | None = None,
                  vad_backend: str | None = None, plot: str | Path | None = None, fit: bool = False,
                  out: Callable[[str], None] = print) -> dict[str, list[CurvePoint]]:
    recs = load_corpus(folder)
    backend = vad_backend or settings.vad.backend
    detector = load_vad(backend)
    v = settings.vad
    vs = VadSettings(start_threshold=v.start_threshold, stop_threshold=v.stop_threshold, start_ms=v.start_ms,
                     stop_ms=v.stop_ms)
    prepared = []
    for rec in recs:
        detector.reset()
        prepared.append(prepare(rec, detector, vs))
    n_ends = sum(len(r.turn_ends_ms) for r in recs)
    n_pauses = sum(1 for p in prepared for q in p.pauses if q.true_end_ms is None)
    out(f"{len(recs)} recordings, {n_ends} turn ends, {n_pauses} pauses inside turns (VAD: {backend})")
    if fit:
        w, b = fit_logistic(pause_features(prepared))
        out(f"PROSODIC_WEIGHTS = {tuple(w)}\nPROSODIC_BIAS = {b}")
    names = list(policies) if policies else ["silence", "adaptive", "prosodic", "default"]
    if settings.endpointing.learned_model_path and not policies:
        names.insert(3, "learned")
    curves: dict[str, list[CurvePoint]] = {}
    for name in names:
        chosen = None if name == "default" else name.split("+")
        label = ("default: " + "+".join(settings.endpointing.detectors) + f" ({settings.endpointing.combine})") \
            if name == "default" else name

        def make(chosen: list[str] | None = chosen) -> TurnEndDetector:
            return policy_from_settings(settings, chosen)

        curves[label] = evaluate(prepared, make)
    out(format_table(curves))
    for label, pts in curves.items():
        b5 = best_at(pts)
        op = next(p for p in pts if p.scale == 1.0)
        at5 = "none reaches 5 %" if b5 is None else f"{b5.median_latency_ms:.0f} ms at {100 * b5.cut_off_rate:.1f} %"
        opm = "-" if op.median_latency_ms is None else f"{op.median_latency_ms:.0f} ms"
        out(f"{label}: configured {opm} at {100 * op.cut_off_rate:.1f} % cut-offs; fastest <= 5 %: {at5}")
    if plot is not None:
        out(f"plot: {render_plot(curves, plot)}")
    return curves


def add_arguments(p: Any) -> None:
    """The `lfm-call turn-eval` arguments (agent/cli.py hooks this in)."""
    p.add_argument("dir", metavar="DIR", help="WAV files and labels.csv (file,turn_end_s)")
    p.add_argument("--policy", action="append", metavar="NAME",
                   help="detector or combination to sweep, e.g. silence, prosodic, prosodic+adaptive, default "
                        "(repeatable; default: silence, adaptive, prosodic, [learned,] default)")
    p.add_argument("--vad", choices=["silero", "energy"], help="VAD backend (default: vad.backend)")
    p.add_argument("--plot", default="turn-eval.png", metavar="OUT.png", help="where to write the plot")
    p.add_argument("--fit", action="store_true", help="also fit and print prosodic weights on DIR")


def run_command(args: Any, settings: Any) -> int:
    from agent.errors import CliError

    try:
        run_turn_eval(args.dir, settings, policies=args.policy, vad_backend=args.vad, plot=args.plot, fit=args.fit)
    except TurnEvalError as exc:
        raise CliError(str(exc)) from None
    return 0
