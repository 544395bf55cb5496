"""Watermark bench: cost, inaudibility, detection after each channel, false positives.

Run: ``python -m bench.watermark [--quick] [--json FILE]``. One core (BLAS threads 1).

Prints, for espeak-ng speech rendered at 24 kHz as stand-in agent speech (voices and texts below):

- **embed**: CPU time per 80 ms chunk of ``CallWatermark.embed`` (one call), and the ratio to
  ``agent.framer.Packetizer.push`` on the same chunk (24 -> 8 kHz, the work every chunk already costs).
- **detect**: ``watermark_detect.analyse`` CPU time per second of 16 kHz audio; the real-time factor
  (audio seconds per CPU second; above 1 is faster than real time).
- **PESQ**: ITU-T P.862.2 wideband (``pesq`` package) of marked against unmarked speech at 16 kHz, per voice.
- **detection**: the share of 3 s windows (hop 1 s) of marked speech detected after each channel of
  ``bench.watermark_channels`` (standard and held-out chains), with the smallest statistic.
- **false positives**: windows of unmarked audio (other texts and voices, the scenario callers' lines,
  white and pink noise, chords and arpeggios with vibrato) at or above the threshold, with the largest
  statistic, against the bound ``2 P exp(-t^2 / 2)`` (``agent.watermark_detect``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np

from agent.audio import PcmFrame
from agent.caller_voice import render_say
from agent.framer import Packetizer
from agent.resample import resample_offline
from agent.watermark import CHUNK_SAMPLES, CallWatermark, WatermarkKey, mark_signal
from agent.watermark_detect import DETECT_RATE, analyse, threshold_for
from bench import watermark_channels as wc

MARKED_TEXTS = (
    "Good afternoon, this is the automated assistant of the city library. Your reserved books are ready for "
    "pickup at the front desk until Saturday evening.",
    "We have two appointments left on Thursday, one at ten thirty and one at a quarter past two. Which one "
    "would suit you better?",
    "Your parcel left our warehouse this morning and should arrive within two working days. You can follow "
    "it online with the tracking number in your email.",
)
MARKED_VOICES = ("en-us", "en-gb+f3", "en-us+m3", "en-029+f4", "en-gb-x-rp+m5", "en-us+f5")
UNMARKED_TEXTS = (
    "The quarterly report shows a modest increase in revenue, driven mostly by the new subscription plans.",
    "Please hold the line while I transfer you to the billing department. It may take a minute or two.",
    "Rain is expected across the north of the country tonight, clearing by mid morning tomorrow.",
    "I moved here twelve years ago and I still get lost in the old town every single time.",
)
UNMARKED_VOICES = ("en-gb-scotland", "en-us+f2", "en-gb-x-gbclan+m2", "en-us-nyc", "en-gb+f4", "en-us+m7")


def _scenario_lines() -> list[tuple[str, str, int]]:
    from agent.scenario import SayStep, load_scenarios

    root = Path(__file__).resolve().parent.parent / "config" / "scenarios"
    out = []
    for sc in load_scenarios([str(root)]):
        for step in sc.steps:
            if isinstance(step, SayStep) and step.text:
                out.append((step.text, sc.caller.voice, sc.caller.rate_wpm))
    return out


def bench_embed(speech: np.ndarray, key: WatermarkKey, repeats: int) -> dict[str, float]:
    chunks = [speech[i : i + CHUNK_SAMPLES] for i in range(0, speech.size - CHUNK_SAMPLES + 1, CHUNK_SAMPLES)]
    best_mark = best_pack = float("inf")
    for _ in range(repeats):
        mark = CallWatermark.for_call(key, 1, "bench")
        t = time.process_time()
        for i, c in enumerate(chunks):
            mark.embed(c, 1, i)
        best_mark = min(best_mark, (time.process_time() - t) / len(chunks))
        pack = Packetizer(24000, out_rate=8000, packet_ms=20)
        t = time.process_time()
        for i, c in enumerate(chunks):
            pack.push(PcmFrame(c, 24000, i * CHUNK_SAMPLES))
        best_pack = min(best_pack, (time.process_time() - t) / len(chunks))
    return {"embed_ms_per_chunk": best_mark * 1000, "packetizer_ms_per_chunk": best_pack * 1000,
            "ratio": best_mark / best_pack}


def bench_detect(audio16: np.ndarray, key: WatermarkKey, repeats: int) -> dict[str, float]:
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        analyse(audio16, DETECT_RATE, key)
        best = min(best, time.process_time() - t)
    seconds = audio16.size / DETECT_RATE
    return {"cpu_s_per_audio_s": best / seconds, "realtime_factor": seconds / best}


def pesq_wb(ref24: np.ndarray, deg24: np.ndarray) -> float | None:
    try:
        from pesq import pesq
    except ImportError:
        return None
    return float(pesq(16000, resample_offline(ref24, 24000, 16000), resample_offline(deg24, 24000, 16000), "wb"))


def _music(seconds: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    t = np.arange(int(seconds * DETECT_RATE)) / DETECT_RATE
    vib = 1 + 0.004 * np.sin(2 * np.pi * 5.5 * t)
    chord = sum(np.sin(2 * np.pi * f * t * vib) / (1 + k) for k, f in
                enumerate((196.0, 246.9, 293.7, 392.0, 493.9, 587.3, 784.0)))
    notes = np.array([261.6, 329.6, 392.0, 523.3, 392.0, 329.6])
    step = int(0.25 * DETECT_RATE)
    arp_f = np.repeat(np.resize(notes, t.size // step + 1), step)[: t.size]
    phase = 2 * np.pi * np.cumsum(arp_f * vib) / DETECT_RATE
    arp = sum(np.sin(h * phase) / h for h in range(1, 8))
    white = rng.normal(0, 1, t.size)
    pink = np.fft.irfft(np.fft.rfft(white) / np.sqrt(np.maximum(np.fft.rfftfreq(t.size, 1 / DETECT_RATE), 20.0)),
                        t.size)
    return {name: 6000 * x / np.max(np.abs(x)) for name, x in
            {"chord": chord, "arpeggio": arp, "white noise": white, "pink noise": pink}.items()}


def run(quick: bool) -> dict[str, Any]:
    key = WatermarkKey.for_secret("bench key")
    voices = MARKED_VOICES[:3] if quick else MARKED_VOICES
    results: dict[str, Any] = {"threshold": threshold_for(1e-4)}
    marked: list[tuple[str, np.ndarray, np.ndarray]] = []
    for v in voices:
        x = np.concatenate([render_say(t, v, 165, 0.0, 24000) for t in MARKED_TEXTS])
        marked.append((v, x, mark_signal(x, key, 17, f"call-{v}")))
    results["embed"] = bench_embed(marked[0][1], key, 2 if quick else 5)
    results["detect"] = bench_detect(resample_offline(marked[0][2], 24000, 16000).astype(np.float64), key,
                                     1 if quick else 3)
    results["pesq"] = {v: pesq_wb(x, y) for v, x, y in marked}
    channels = {**wc.standard_channels(), **wc.held_out_channels()}
    detection: dict[str, Any] = {}
    for name, stages in channels.items():
        hit = total = 0
        low = float("inf")
        for _, _, y in marked:
            out, rate = wc.run_chain(y, stages)
            a = analyse(out, rate, key)
            hit += len(a.detected)
            total += len(a.windows)
            low = min(low, min(w.statistic for w in a.windows))
        detection[name] = {"windows": total, "detected": hit, "rate": hit / total, "min_statistic": low}
    results["detection"] = detection
    rng = np.random.default_rng(11)
    unmarked: dict[str, list[np.ndarray]] = {"espeak voices": [], "scenario callers": [], "noise and music": []}
    for v in UNMARKED_VOICES[:2] if quick else UNMARKED_VOICES:
        unmarked["espeak voices"].append(np.concatenate([render_say(t, v, 160, 0.0, 16000) for t in UNMARKED_TEXTS]))
    lines = _scenario_lines()
    for text, voice, wpm in lines[:6] if quick else lines:
        unmarked["scenario callers"].append(render_say(text, voice, wpm, 0.0, 16000))
    unmarked["scenario callers"] = [np.concatenate(unmarked["scenario callers"])]
    for signal in _music(30.0 if quick else 300.0, rng).values():
        unmarked["noise and music"].append(signal)
    fp: dict[str, Any] = {}
    for name, signals in unmarked.items():
        windows = over = 0
        high = 0.0
        for s in signals:
            for variant in ([s] if quick else [s, wc.run_chain(s.astype(np.int16), [wc.g711("u")], 16000)[0]]):
                a = analyse(variant, 16000 if variant is s else 8000, key, step_s=0.5)
                windows += len(a.windows)
                over += len(a.detected)
                high = max(high, a.max_statistic)
        fp[name] = {"windows": windows, "false_positives": over, "max_statistic": high}
    results["false_positives"] = fp
    return results


def print_results(r: dict[str, Any]) -> None:
    e, d = r["embed"], r["detect"]
    print(f"embed: {e['embed_ms_per_chunk']:.3f} ms CPU per 80 ms chunk per call "
          f"(Packetizer on the same chunk: {e['packetizer_ms_per_chunk']:.3f} ms, ratio {e['ratio']:.2f})")
    print(f"detect: {d['cpu_s_per_audio_s'] * 1000:.1f} ms CPU per second of audio, "
          f"{d['realtime_factor']:.1f}x faster than real time on one core")
    pesqs = [p for p in r["pesq"].values() if p is not None]
    print("PESQ (P.862.2 wideband, marked vs unmarked): " + ", ".join(
        f"{v} {p:.3f}" if p is not None else f"{v} n/a (pip install pesq)" for v, p in r["pesq"].items())
        + (f"; min {min(pesqs):.3f}" if pesqs else ""))
    print(f"\n| channel | 3 s windows | detected | rate | min statistic (threshold {r['threshold']:.2f}) |")
    print("|---|---:|---:|---:|---:|")
    for name, v in r["detection"].items():
        print(f"| {name} | {v['windows']} | {v['detected']} | {100 * v['rate']:.1f} % | {v['min_statistic']:.1f} |")
    print("\n| unmarked audio | 3 s windows (hop 0.5 s) | false positives | max statistic |")
    print("|---|---:|---:|---:|")
    for name, v in r["false_positives"].items():
        print(f"| {name} | {v['windows']} | {v['false_positives']} | {v['max_statistic']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.watermark", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 voices, fewer unmarked windows")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    results = run(args.quick)
    print_results(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
