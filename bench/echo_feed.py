"""Echo-cleaned audio to the engine: what the engine hears during a barge-in, and barge-in detection,
with the echo gate's output fed (the default) or the raw line, and with the gate off.

    .venv/bin/python -m bench.echo_feed [--calls 20] [--out DIR]

Sans-IO (``agent.session_core.SessionCore``, no model): the agent speaks a voiced signal from the
start of the call; the line carries its echo back (delay, gain) plus, from a seeded cut-in time on,
the caller's own voice (another pitch) and a little noise. Measured per run:

* echo in the engine's input: ``10 log10(|fed - caller|^2 / |caller|^2)`` over every frame fed to
  the engine (fed = the Feed commands; caller = the caller's true voice at the same samples), dB,
  lower is better: the agent's own voice the engine would hear with the caller's words;
* barge-in detection: cut-in onset -> BargeIn decision (ms), and barge-ins on echo-only calls
  (the caller never speaks: every barge-in is false).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from agent.engine_api import AudioChunk, Feed, Greet, Interrupt, ReplyEnded
from agent.session_core import SendAudio, SessionCore, SessionOptions, ToEngine
from agent.vad import EnergyVad

RATE = 16000
PACKET = 320
ECHO_LINES = ((60, -6.0), (120, -12.0), (250, -20.0))
CALL_MS = 5000


def voice(seconds: float, f0: float, rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    voiced = sum(np.sin(2 * np.pi * f0 * k * t + rng.random()) / k for k in range(1, 8))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * (3 + rng.random()) * t)
    return (0.25 * voiced * envelope).astype(np.float32)


def run_call(options: SessionOptions, delay_ms: int, gain_db: float, cut_in_ms: int | None, seed: int) -> dict[str, Any]:
    core = SessionCore("bench", 1, RATE, EnergyVad(), options, started_at=0.0)
    agent = voice(CALL_MS / 1000 + 1, 130.0, 24000, seed)  # the agent's reply, 24 kHz
    caller = np.zeros(int(CALL_MS * RATE / 1000), np.float32)
    onset = None
    if cut_in_ms is not None:
        onset = cut_in_ms * RATE // 1000
        speech = voice(CALL_MS / 1000, 210.0, RATE, seed + 1000)
        caller[onset:] = speech[: caller.size - onset]
    rng = np.random.default_rng(seed + 7)
    line_out = np.zeros(caller.size + RATE, np.float32)  # what the agent sent, at 16 kHz, on the line timeline
    gain = 10 ** (gain_db / 20)
    delay = delay_ms * RATE // 1000
    fed: list[np.ndarray] = []
    reply: int | None = None
    chunk = 0
    barge_ms: int | None = None
    sent = 0

    def act(actions: list[Any], now: int) -> None:
        nonlocal reply, chunk, barge_ms, sent
        for a in actions:
            if isinstance(a, ToEngine):
                c = a.command
                if isinstance(c, Greet):
                    reply, chunk = c.request, 0
                elif isinstance(c, Interrupt):
                    if barge_ms is None:
                        barge_ms = now
                    if reply is not None:
                        act(core.engine(ReplyEnded(1, reply, "", c.played_frames, True, chunk), now), now)
                    reply = None
                elif isinstance(c, Feed):
                    fed.append(c.pcm)
            elif isinstance(a, SendAudio):
                n = a.samples.size
                line_out[sent : sent + n] = a.samples[: line_out.size - sent].astype(np.float32) / 32768
                sent += n

    act(core.start(0), 0)
    ticks = CALL_MS // 20
    for k in range(1, ticks + 1):
        now = k * 20
        if reply is not None and chunk * 80 < now + 160 and (chunk + 1) * 1920 <= agent.size:  # engine ahead
            pcm = agent[chunk * 1920 : (chunk + 1) * 1920]
            act(core.engine(AudioChunk(1, reply, chunk, pcm), now), now)
            chunk += 1
        a = (k - 1) * PACKET
        echo_start = a - delay
        echo = line_out[max(0, echo_start) : max(0, echo_start) + PACKET] if echo_start >= 0 else np.zeros(PACKET)
        echo = np.pad(echo, (0, PACKET - echo.size))
        y = caller[a : a + PACKET] + gain * echo + 0.001 * rng.standard_normal(PACKET)
        act(core.caller_audio(np.clip(y * 32768, -32768, 32767).astype(np.int16), now), now)
        act(core.tick(now), now)
    out: dict[str, Any] = {"barge_ins": len(core.summary.barge_ins)}
    if onset is not None:
        out["detect_ms"] = None if barge_ms is None else barge_ms - cut_in_ms  # type: ignore[operator]
    if fed:
        feed = np.concatenate(fed)
        # where the feed starts on the line timeline: the raw feed is the line itself (found exactly)
        out["fed_samples"] = int(feed.size)
        out["feed"] = feed
    return out


def echo_ratio_db(feed: np.ndarray, start: int, caller: np.ndarray) -> float:
    truth = caller[start : start + feed.size]
    err = feed[: truth.size] - truth
    return float(10 * np.log10((np.sum(err**2) + 1e-12) / (np.sum(truth**2) + 1e-12)))


def measure(calls: int) -> dict[str, Any]:
    base = SessionOptions(greeting="Hello")
    modes = {"gate on, cleaned audio fed": base, "gate on, raw audio fed": replace(base, feed_cleaned_audio=False),
             "gate off": replace(base, echo_gate=False)}
    results: dict[str, Any] = {m: {"echo_db": [], "detect_ms": [], "missed": 0, "false_barge_ins": 0, "runs": 0}
                               for m in modes}
    rng = np.random.default_rng(0)
    for i in range(calls):
        delay_ms, gain_db = ECHO_LINES[i % len(ECHO_LINES)]
        cut_in = int(rng.integers(1500, 3000))
        raw = run_call(modes["gate on, raw audio fed"], delay_ms, gain_db, cut_in, i)
        start = None
        if "feed" in raw:
            line = _line(delay_ms, gain_db, cut_in, i, modes["gate on, raw audio fed"])
            start = _find(raw["feed"], line)
        for name, opts in modes.items():
            r = raw if name == "gate on, raw audio fed" else run_call(opts, delay_ms, gain_db, cut_in, i)
            res = results[name]
            res["runs"] += 1
            if r.get("detect_ms") is None:
                res["missed"] += 1
            else:
                res["detect_ms"].append(r["detect_ms"])
            if "feed" in r and start is not None:
                res["echo_db"].append(echo_ratio_db(r["feed"], start, _caller(cut_in, i)))
            quiet = run_call(opts, delay_ms, gain_db, None, i)
            res["false_barge_ins"] += quiet["barge_ins"]
    summary = {}
    for name, res in results.items():
        e, d = np.asarray(res["echo_db"]), np.asarray(res["detect_ms"])
        summary[name] = {"runs": res["runs"], "echo_in_engine_input_db_median": float(np.median(e)) if e.size else None,
                         "detect_p50_ms": float(np.percentile(d, 50)) if d.size else None,
                         "detect_p95_ms": float(np.percentile(d, 95)) if d.size else None,
                         "missed_barge_ins": res["missed"], "false_barge_ins_echo_only": res["false_barge_ins"]}
        print(f"{name}: {summary[name]}", file=sys.stderr, flush=True)
    return summary


def _caller(cut_in_ms: int, seed: int) -> np.ndarray:
    caller = np.zeros(int(CALL_MS * RATE / 1000), np.float32)
    onset = cut_in_ms * RATE // 1000
    caller[onset:] = voice(CALL_MS / 1000, 210.0, RATE, seed + 1000)[: caller.size - onset]
    return caller


def _line(delay_ms: int, gain_db: float, cut_in_ms: int, seed: int, options: SessionOptions) -> np.ndarray:
    """The line as the raw-fed run saw it (recomputed: the run is deterministic)."""
    lines: list[np.ndarray] = []
    original = SessionCore.caller_audio

    def spy(self: SessionCore, samples: np.ndarray, now_ms: int) -> list[Any]:
        lines.append(samples.astype(np.float32) / 32768)
        return original(self, samples, now_ms)

    SessionCore.caller_audio = spy  # type: ignore[method-assign]
    try:
        run_call(options, delay_ms, gain_db, cut_in_ms, seed)
    finally:
        SessionCore.caller_audio = original  # type: ignore[method-assign]
    return np.concatenate(lines)


def _find(feed: np.ndarray, line: np.ndarray) -> int | None:
    head = feed[:320]
    for s in range(0, line.size - head.size):
        if np.max(np.abs(line[s : s + head.size] - head)) < 1e-4:
            return s
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args(argv)
    from bench.barge_in_transports import _write

    summary = measure(args.calls)
    _write(args.out / "echo_feed.json", summary)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
