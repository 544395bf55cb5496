"""A picture of one simulated call: who spoke when, what the agent decided, and both waveforms.

Top panel, one lane each: caller speech (what the caller said, by step), agent speech at the caller's
ear, the agent's VAD on the caller's audio, DTMF; vertical marks for the agent's end-of-turn
decisions (dashed green), barge-ins (orange: caller onset -> agent audio stopped, shaded) and false
interruptions (red). Under it the caller-sent and caller-heard waveforms on the same time axis.

Drawn with matplotlib's object API on the Agg canvas (no pyplot global state, safe off the main
thread) and written atomically.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from agent.audio import INT16_FULL_SCALE, Int16Array
from agent.report import CallRecord, Segment, atomic_write_bytes

LANES = ("caller", "agent", "VAD", "DTMF")
LANE_COLORS = {"caller": "tab:blue", "agent": "tab:purple", "VAD": "tab:gray", "DTMF": "tab:olive"}
WAVE_BINS = 3000
FIG_WIDTH_IN = 14.0
FIG_HEIGHT_IN = 6.5
DPI = 100
TITLE_FONT_PT = 10
TITLE_CHARS = 150  # per title line: wider text (capitals) still fits 14 in at 10 pt
TITLE_MAX_LINES = 6


def _bars(ax: Axes, lane: int, spans: list[tuple[float, float]], color: str) -> None:
    widths = [(start / 1000.0, max(end - start, 1.0) / 1000.0) for start, end in spans]
    if widths:
        ax.broken_barh(widths, (lane - 0.35, 0.7), facecolors=color, edgecolors="black", linewidth=0.4)


def _segments(segments: list[Segment]) -> list[tuple[float, float]]:
    return [(s.start_ms, s.end_ms) for s in segments]


def _draw_lanes(ax: Axes, call: CallRecord, end_s: float) -> None:
    lane = {name: len(LANES) - 1 - i for i, name in enumerate(LANES)}
    speech = [u for u in call.caller_utterances if u.kind in ("say", "wav")]
    _bars(ax, lane["caller"], [(u.start_ms, u.end_ms) for u in speech], LANE_COLORS["caller"])
    for u in speech:
        label = u.text if len(u.text) <= 28 else u.text[:27] + "…"
        ax.text(u.start_ms / 1000.0, lane["caller"] + 0.42, label, fontsize=7, va="bottom", clip_on=True)
    _bars(ax, lane["agent"], _segments(call.agent_segments), LANE_COLORS["agent"])
    for t in call.turns:
        if t.agent_start_ms is not None and t.text_heard:
            heard = "".join(ch if ch.isprintable() and ord(ch) < 0x2500 else "·" for ch in t.text_heard)
            label = heard if len(heard) <= 28 else heard[:27] + "…"
            ax.text(t.agent_start_ms / 1000.0, lane["agent"] + 0.42, label, fontsize=7, va="bottom", clip_on=True)
    _bars(ax, lane["VAD"], _segments(call.vad_segments), LANE_COLORS["VAD"])
    dtmf = _segments(call.dtmf_segments) or [(u.start_ms, u.end_ms) for u in call.caller_utterances
                                             if u.kind == "dtmf"]
    _bars(ax, lane["DTMF"], dtmf, LANE_COLORS["DTMF"])
    for u in call.caller_utterances:
        if u.kind == "dtmf":
            ax.text(u.start_ms / 1000.0, lane["DTMF"] + 0.42, u.text, fontsize=7, va="bottom")
        if u.kind == "hangup":
            ax.axvline(u.start_ms / 1000.0, color="black", linewidth=1.5)
            ax.text(u.start_ms / 1000.0, len(LANES) - 0.45, "hang-up ", fontsize=7, va="bottom", ha="right")
    for i, eot in enumerate(call.end_of_turn_ms):
        ax.axvline(eot / 1000.0, color="tab:green", linestyle="--", linewidth=1.0,
                   label="end of turn" if i == 0 else None)
    for i, b in enumerate(call.barge_ins):
        stop = b.stop_ms if b.stop_ms is not None else end_s * 1000.0
        ax.axvspan(b.onset_ms / 1000.0, stop / 1000.0, color="tab:orange", alpha=0.25,
                   label="barge-in (onset→stop)" if i == 0 else None)
        ax.axvline(b.onset_ms / 1000.0, color="tab:orange", linewidth=1.2)
        if b.stop_latency_ms is not None:
            ax.text(stop / 1000.0, len(LANES) - 0.45, f" {b.stop_latency_ms:.0f} ms", fontsize=7,
                    color="tab:orange", va="bottom")
    for i, c in enumerate(call.cut_offs):
        ax.axvspan(c.start_ms / 1000.0, c.end_ms / 1000.0, color="tab:red", alpha=0.35,
                   label="cut-off (agent in the caller's pause)" if i == 0 else None)
    if call.false_starts:
        ax.text(0.0, len(LANES) - 0.45, f"false starts: {call.false_starts}", fontsize=7, color="tab:red",
                va="bottom")
    for i, f in enumerate(call.false_interruptions):
        ax.axvline(f.at_ms / 1000.0, color="tab:red", linewidth=1.5, label="false interruption" if i == 0 else None)
    for t in call.turns:
        if t.response_latency_ms is not None and t.agent_start_ms is not None:
            ax.annotate("", xy=(t.agent_start_ms / 1000.0, lane["agent"]),
                        xytext=(t.agent_start_ms / 1000.0 - t.response_latency_ms / 1000.0, lane["agent"]),
                        arrowprops={"arrowstyle": "->", "color": "tab:green", "linewidth": 0.8})
            ax.text((t.agent_start_ms - t.response_latency_ms / 2) / 1000.0, lane["agent"] - 0.3,
                    f"{t.response_latency_ms:.0f} ms", fontsize=7, color="tab:green", ha="center", va="top")
    ax.set_yticks(list(lane.values()), list(lane.keys()))
    ax.set_ylim(-0.6, len(LANES) - 0.1)
    ax.grid(axis="x", alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, framealpha=0.8)


def _draw_wave(ax: Axes, samples: Int16Array, sample_rate: int, label: str, color: str) -> None:
    if samples.size:
        bins = min(WAVE_BINS, samples.size)
        usable = samples[: samples.size // bins * bins].astype(np.float64).reshape(bins, -1) / INT16_FULL_SCALE
        t = (np.arange(bins) + 0.5) * usable.shape[1] / sample_rate
        ax.fill_between(t, usable.min(axis=1), usable.max(axis=1), color=color, linewidth=0)
    ax.set_ylim(-1.0, 1.0)
    ax.set_ylabel(label, fontsize=8)
    ax.grid(axis="x", alpha=0.3)


def title_lines(call: CallRecord) -> list[str]:
    """The picture's title, wrapped to the figure's width (model descriptions are long)."""
    m = call.metrics()
    lat = m["response_latency_ms"]
    status = "PASS" if call.passed else ("ERROR: " + call.error if call.error else "FAIL")
    latency = f"response latency max {max(lat):.0f} ms" if lat else "no measured reply"
    paragraphs = [
        f"{call.call_id} — {call.scenario} over {call.transport} — {status}",
        f"agent turns {m['agent_turns']}, {latency}, barge-ins {m['barge_ins']}, "
        f"false interruptions {m['false_interruptions']}",
        f"model: {call.model}",
    ]
    lines: list[str] = []
    for text in paragraphs:
        lines += textwrap.wrap(text, TITLE_CHARS, break_long_words=True) or [""]
    return lines[:TITLE_MAX_LINES]


def timeline_figure(call: CallRecord) -> Figure:
    """The timeline picture of ``call`` as a matplotlib Figure (Agg canvas attached)."""
    audio_s = max(call.caller_audio.size, call.heard_audio.size) / call.sample_rate
    end_s = max(call.duration_ms / 1000.0, audio_s, 1.0)
    fig = Figure(figsize=(FIG_WIDTH_IN, FIG_HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(fig)
    lanes_ax, caller_ax, heard_ax = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [2.2, 1, 1]})
    _draw_lanes(lanes_ax, call, end_s)
    _draw_wave(caller_ax, call.caller_audio, call.sample_rate, "caller sent", "tab:blue")
    _draw_wave(heard_ax, call.heard_audio, call.sample_rate, "caller heard", "tab:purple")
    heard_ax.set_xlim(0.0, end_s)
    heard_ax.set_xlabel("time from call start (s)")
    lines = title_lines(call)
    fig.suptitle("\n".join(lines), fontsize=TITLE_FONT_PT, y=0.995, va="top")
    fig.tight_layout()  # makes room for the suptitle
    return fig


def render_timeline_png(call: CallRecord) -> bytes:
    """The timeline picture of ``call`` as PNG bytes."""
    buf = io.BytesIO()
    timeline_figure(call).savefig(buf, format="png")
    return buf.getvalue()


def write_timeline_png(path: str | Path, call: CallRecord) -> Path:
    return atomic_write_bytes(path, render_timeline_png(call))
