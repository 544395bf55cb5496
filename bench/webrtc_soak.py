"""Soak a WebRTC call: N minutes of a WebRtcCallerLeg call against an in-process agent server.

The caller sends silence with a spoken sentence every ``--speech-every-s`` seconds (the agent
answers each). Printed at the end: outbound packet timing of both paced tracks (server -> caller and
caller -> server: last packet time minus ``first + k * 20 ms``, worst lateness, packets), the audio
the caller received versus the call's duration, the call's turns, and the process RSS growth after
the first minute. CI does not run this; run it by hand:

    .venv/bin/python -m bench.webrtc_soak --minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from agent.sim_webrtc import WebRtcCallerLeg, start_test_server
from agent.webrtc import PacingStats
from bench.common import TINY_CHECKPOINT, machine_description
from config.loader import load_settings

PACKET_S = 0.02
LEG_RATE = 16000


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def speech(rate: int) -> np.ndarray:
    try:
        from agent.caller_voice import render_say

        return render_say("Hello, I am calling about the order I placed last week.", sample_rate=rate)
    except Exception:  # no espeak-ng: a voiced-like tone burst instead
        t = np.arange(int(1.5 * rate)) / rate
        return (np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 3 * t) * 8000).astype(np.int16)


def describe(name: str, stats: PacingStats) -> str:
    return (f"{name}: {stats.packets} packets, drift {stats.drift_s * 1000:+.2f} ms "
            f"(last packet vs first + k*20 ms), worst lateness {stats.max_late_s * 1000:.1f} ms, "
            f"{stats.skipped} slots skipped after stalls")


async def soak(minutes: float, checkpoint: Path, vad: str, speech_every_s: float) -> None:
    from agent.runtime import build_runtime

    settings = load_settings(environ={}, overrides=[
        {"model": {"ref": str(checkpoint), "offline_fallback": "error", "greeting": ""}, "vad": {"backend": vad}}])
    settings = dataclasses.replace(settings, server=dataclasses.replace(settings.server, max_calls=2))
    utterance = speech(LEG_RATE)  # before the call: espeak-ng blocks
    runtime = build_runtime(settings)
    base_url, stop = await start_test_server(runtime)
    leg = WebRtcCallerLeg(base_url)
    await leg.connect()
    assert leg.call_id is not None
    server_transport = runtime.calls.active[leg.call_id].transport
    period = int(speech_every_s / PACKET_S)
    total = int(minutes * 60 / PACKET_S)
    received = 0
    rss_start = rss_after_1min = rss_mib()
    t0 = time.monotonic()
    for k in range(total):
        offset = (k % period) * 320
        chunk = utterance[offset:offset + 320] if k >= period else np.zeros(0, np.int16)
        if chunk.size < 320:
            chunk = np.concatenate([chunk, np.zeros(320 - chunk.size, np.int16)])
        leg.send_audio(chunk)
        received += len(leg.receive_audio())
        if k == int(60 / PACKET_S):
            rss_after_1min = rss_mib()
        if k % int(60 / PACKET_S) == 0 and k:
            out_now = server_transport.outbound.stats  # type: ignore[attr-defined]
            print(f"  {k * PACKET_S / 60:.0f} min: rss {rss_mib():.1f} MiB, received {received} packets, drift "
                  f"server->caller {out_now.drift_s * 1000:+.1f} ms, caller->server {leg.track.stats.drift_s * 1000:+.1f} ms",
                  flush=True)
        await asyncio.sleep(max(0.0, t0 + (k + 1) * PACKET_S - time.monotonic()))
    elapsed = time.monotonic() - t0
    summary = runtime.calls.active[leg.call_id].summary
    rss_end = rss_mib()
    out_stats = server_transport.outbound.stats  # type: ignore[attr-defined]
    in_stats = leg.track.stats
    await leg.hang_up()
    await stop()
    runtime.close()
    machine = machine_description(torch.device("cpu"))
    print(f"machine: {machine}")
    print(f"call: {elapsed:.1f} s, caller spoke every {speech_every_s:.0f} s, {len(summary.turns)} agent turns, "
          f"{len(summary.barge_ins)} barge-ins, vad={vad}")
    print(describe("server -> caller track", out_stats))
    print(describe("caller -> server track", in_stats))
    print(f"caller received {received} packets of 20 ms = {received * PACKET_S:.1f} s of {elapsed:.1f} s "
          f"(server FIFO: {server_transport.outbound.fifo.underruns} underruns, "  # type: ignore[attr-defined]
          f"{server_transport.outbound.fifo.dropped_silence_packets} silent packets dropped)")  # type: ignore[attr-defined]
    print(f"rss: {rss_start:.1f} MiB at connect, {rss_after_1min:.1f} MiB after 1 min, {rss_end:.1f} MiB at the end "
          f"(growth after the first minute {rss_end - rss_after_1min:+.1f} MiB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--checkpoint", type=Path, default=TINY_CHECKPOINT)
    p.add_argument("--vad", choices=["energy", "silero"], default="silero")
    p.add_argument("--speech-every-s", type=float, default=20.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    asyncio.run(soak(args.minutes, args.checkpoint, args.vad, args.speech_every_s))


if __name__ == "__main__":
    main()
