"""What the benchmark suite produces: sections (one Markdown table each), metrics, the regression guard.

A ``Section`` is one table as it goes into BENCHMARKS.md: a title, the command that printed it, the
machine it ran on, its rows, notes on what a figure includes, and named ``Metric`` values that the
regression guard compares with a committed baseline (``bench/baseline.json``). A metric says which
direction is better, so "slower by more than 20 %" means a lower-is-better metric grew by more than
20 % or a higher-is-better one shrank below 1 / 1.2 of its baseline.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import cpu_model, format_table

REGRESSION_THRESHOLD = 0.20
BETTER = ("lower", "higher")


@dataclass(frozen=True)
class Metric:
    value: float
    unit: str
    better: str  # "lower" or "higher"

    def __post_init__(self) -> None:
        if self.better not in BETTER:
            raise ValueError(f"metric direction must be one of {BETTER}, got {self.better!r}")


@dataclass
class Section:
    key: str  # short name: metrics are "<key>.<name>"
    title: str
    command: str
    headers: list[str]
    rows: list[list[object]]
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, Metric] = field(default_factory=dict)
    seconds: float = 0.0
    machine: str = ""

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", f"    {self.command}", "",
                 f"machine: {self.machine}; {self.seconds:.0f} s", "", format_table(self.headers, self.rows)]
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title, "command": self.command, "machine": self.machine, "seconds": round(self.seconds, 1),
            "headers": self.headers, "rows": [[_plain(v) for v in row] for row in self.rows], "notes": self.notes,
            "metrics": {name: {"value": _plain(m.value), "unit": m.unit, "better": m.better}
                        for name, m in self.metrics.items()},
        }


def _plain(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int | str | bool) or value is None:
        return value
    return str(value)


def ratio(value: float, baseline: float) -> float:
    """value / baseline, NaN when either is missing or the baseline is 0."""
    if not (math.isfinite(value) and math.isfinite(baseline)) or baseline == 0:
        return float("nan")
    return value / baseline


# -- the machine ------------------------------------------------------------------------------------


def gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except Exception:  # a broken CUDA install must not stop a CPU benchmark
        return None
    return None


def machine_line() -> str:
    """'CPU <model>, <n> cores[, GPU <name>], Python x.y, torch v' (the line under every table)."""
    import torch

    parts = [f"CPU {cpu_model()}", f"{os.cpu_count()} cores"]
    gpu = gpu_name()
    if gpu:
        parts.append(f"GPU {gpu}")
    parts += [f"Python {platform.python_version()}", f"torch {torch.__version__}"]
    return ", ".join(parts)


def load_line() -> str:
    """`uptime` (the machine is shared: the load average goes with every figure)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        one, five, fifteen = os.getloadavg()
        return f"load average: {one:.2f}, {five:.2f}, {fifteen:.2f}"


# -- output files -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Regression:
    name: str
    baseline: float
    current: float
    unit: str
    better: str

    @property
    def slowdown(self) -> float:
        """How many times worse (1.3 = 30 % slower); inf when the baseline was 0."""
        if self.better == "lower":
            return self.current / self.baseline if self.baseline else math.inf
        return self.baseline / self.current if self.current else math.inf

    def describe(self) -> str:
        change = "new (baseline 0)" if math.isinf(self.slowdown) else f"{(self.slowdown - 1) * 100:+.0f} % worse"
        return (f"{self.name}: {self.current:.4g} {self.unit} (baseline {self.baseline:.4g}, "
                f"{self.better} is better): {change}")


def all_metrics(sections: Sequence[Section]) -> dict[str, Metric]:
    return {f"{s.key}.{name}": m for s in sections for name, m in s.metrics.items()}


def compare(baseline: Mapping[str, Mapping[str, Any]], current: Mapping[str, Metric],
            threshold: float = REGRESSION_THRESHOLD) -> list[Regression]:
    """Metrics worse than their baseline by more than ``threshold``; metrics missing on either side
    are skipped (sections that were not run)."""
    out = []
    for name, metric in current.items():
        base = baseline.get(name)
        if base is None or base.get("value") is None or not math.isfinite(metric.value):
            continue
        reg = Regression(name, float(base["value"]), metric.value, metric.unit, metric.better)
        if reg.baseline == 0 and reg.current == 0:
            continue
        if (metric.better == "lower" and reg.baseline <= 0 < reg.current) or reg.slowdown > 1 + threshold:
            out.append(reg)
    return sorted(out, key=lambda r: -r.slowdown)


def load_baseline(path: Path) -> dict[str, dict[str, Any]]:
    """The ``metrics`` of a baseline file ({} when there is none)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    metrics = data.get("metrics")
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: baseline file has no 'metrics' object")
    return metrics


def baseline_document(sections: Sequence[Section], command: str, quick: bool) -> dict[str, Any]:
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": command,
        "quick": quick,
        "machine": machine_line(),
        "load": load_line(),
        "metrics": {name: {"value": _plain(m.value), "unit": m.unit, "better": m.better}
                    for name, m in sorted(all_metrics(sections).items())},
    }


def render_markdown(sections: Sequence[Section], header: Mapping[str, str], regressions: Sequence[Regression],
                    baseline_path: Path | None) -> str:
    lines = ["## Benchmark suite", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines.append("")
    text = "\n".join(lines) + "\n" + "\n".join(s.markdown() for s in sections)
    text += "\n### Regression guard\n\n"
    if baseline_path is None:
        text += "No baseline file: nothing compared.\n"
    elif regressions:
        text += (f"Slower than {baseline_path.name} by more than {REGRESSION_THRESHOLD:.0%} "
                 "(informational, not a failure):\n\n")
        text += "\n".join(f"- {r.describe()}" for r in regressions) + "\n"
    else:
        text += f"Nothing slower than {baseline_path.name} by more than {REGRESSION_THRESHOLD:.0%}.\n"
    return text


def parse_markdown_table(text: str) -> tuple[list[str], list[list[object]]]:
    """(headers, rows) of the first Markdown table in ``text`` (as ``format_table`` writes them)."""
    lines: list[str] = []
    for ln in text.splitlines():
        if ln.startswith("|"):
            lines.append(ln)
        elif lines:
            break
    if len(lines) < 2 or not re.match(r"^\|[-|]+\|$", lines[1]):
        raise ValueError("no Markdown table found")
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return cells[0], [list(row) for row in cells[2:]]
