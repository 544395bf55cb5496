"""What `lfm-call simulate` prints: one line per finished scenario (a progress bar beneath them on a
terminal), then a summary table and where the artifacts are.

Log lines do not come here: they go to ``<out>/log.jsonl`` (``--verbose`` puts them on the console).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from agent.report import CallRecord

BAR_WIDTH = 24


def _ms(values: Sequence[float]) -> str:
    return "-" if not values else f"{max(values):.0f}"


def _latency(values: Sequence[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    median = ordered[len(ordered) // 2] if len(ordered) % 2 else (ordered[len(ordered) // 2 - 1]
                                                                   + ordered[len(ordered) // 2]) / 2
    return f"{median:.0f}/{max(values):.0f}"


def verdict(call: CallRecord) -> str:
    return "PASS" if call.passed else ("ERROR" if call.error else "FAIL")


def failure_detail(call: CallRecord) -> str:
    """Why a call failed: its error and the expectations that did not hold ('' when it passed)."""
    parts = [call.error] if call.error else []
    parts += [f"{e.name} {e.bound} (got {e.actual})" for e in call.expectations if not e.ok]
    return "; ".join(parts)


def scenario_line(index: int, total: int, call: CallRecord) -> str:
    """``[ 3/12] PASS late_barge_in  21.1 s  latency 1260 ms  stop 120 ms``, and why when it failed."""
    m = call.metrics()
    width = len(str(total))
    text = f"[{index:>{width}}/{total}] {verdict(call):<5} {call.scenario:<20} {call.duration_ms / 1000:5.1f} s"
    if m["response_latency_ms"]:
        text += f"  latency {_ms(m['response_latency_ms'])} ms"
    if m["barge_in_stop_ms"]:
        text += f"  stop {_ms(m['barge_in_stop_ms'])} ms"
    if m["false_interruptions"]:
        text += f"  false interruptions {m['false_interruptions']}"
    detail = failure_detail(call)
    return text + (f"  -- {detail}" if detail else "")


def summary_table(calls: Sequence[CallRecord]) -> str:
    """Per scenario: result, response latency (p50/max), barge-in stop time (max), false
    interruptions and the watermark found at the ear, then the totals."""
    header = ("scenario", "result", "latency ms p50/max", "barge-in stop ms", "false int.", "mark")
    rows = [header]
    for call in calls:
        m = call.metrics()
        mark = call.watermark
        rows.append((
            call.scenario, verdict(call), _latency(m["response_latency_ms"]), _ms(m["barge_in_stop_ms"]),
            str(m["false_interruptions"]),
            f"{mark['detected']}/{mark['windows']}" if mark.get("windows") else "-",
        ))
    latencies = [v for c in calls for v in c.metrics()["response_latency_ms"]]
    stops = [v for c in calls for v in c.metrics()["barge_in_stop_ms"]]
    passed = sum(1 for c in calls if c.passed)
    rows.append(("all", f"{passed}/{len(calls)}", _latency(latencies), _ms(stops),
                 str(sum(len(c.false_interruptions) for c in calls)), ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(rows[0]), rule, *(line(r) for r in rows[1:-1]), rule, line(rows[-1])]
    return "\n".join(out)


def artifacts_lines(out_dir: Path, calls: Sequence[CallRecord], log_file: Path | None,
                    warnings: int = 0, errors: int = 0) -> list[str]:
    lines = [f"report:    {out_dir / 'report.json'}",
             f"per call:  {out_dir}/<call>/ call.wav (left caller, right heard), transcript.txt, "
             "transcript.json, timeline.png"]
    failed = [c for c in calls if not c.passed]
    for call in failed:
        lines.append(f"failed:    {out_dir / call.call_id / 'timeline.png'}")
    if log_file is not None:
        counted = f" ({warnings} warnings, {errors} errors)" if warnings or errors else ""
        lines.append(f"log:       {log_file}{counted}  (--verbose prints it here)")
    return lines


class SimConsole:
    """One line per finished scenario; on a terminal a progress bar line under them, redrawn."""

    def __init__(self, total: int, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.done = 0
        self.running: dict[int, str] = {}
        self._bar_shown = False

    def started(self, index: int, name: str) -> None:
        self.running[index] = name
        self._draw_bar()

    def finished(self, index: int, call: CallRecord) -> None:
        self.running.pop(index, None)
        self.done += 1
        self._clear_bar()
        self.stream.write(scenario_line(index + 1, self.total, call) + "\n")
        self._draw_bar()
        self.stream.flush()

    def close(self) -> None:
        self._clear_bar()
        self.stream.flush()

    def bar(self, columns: int = 100) -> str:
        filled = BAR_WIDTH * self.done // max(1, self.total)
        text = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.done}/{self.total}"
        if self.running:
            text += " running: " + ", ".join(self.running[i] for i in sorted(self.running))
        return text if len(text) < columns else text[: columns - 2] + "…"

    def _draw_bar(self) -> None:
        if not self.tty or self.done >= self.total:
            return
        columns = shutil.get_terminal_size((100, 24)).columns
        self.stream.write("\r\x1b[K" + self.bar(columns))
        self.stream.flush()
        self._bar_shown = True

    def _clear_bar(self) -> None:
        if self._bar_shown:
            self.stream.write("\r\x1b[K")
            self._bar_shown = False
