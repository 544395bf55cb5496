"""SIP load: N simultaneous SIPp callers speaking to the full agent; the agent's RTP send timing.

    python -m bench.sip_load --calls 4 10 20 40            # the engine in its own process (default)
    python -m bench.sip_load --calls 20 --engine thread    # the old in-thread engine, for comparison

The agent runs in this process: a real ``SipGateway`` on loopback over the runtime that ``serve``
builds (CallManager, CallSession with Silero VAD, echo gate, playout, the tiny fixture model;
``--engine process`` puts the engine in its own spawned process). For each N, one SIPp (Debian
``sip-tester``) places N calls at ``--rate`` calls/s; each caller sends espeak-ng speech as PCMU,
listens, then hangs up (tests/integration/sip/uac_speech.xml). Measured per N:

* completed: calls that ended by the caller's BYE without error; heard: calls whose reply audio
  was sent; refused: 503s (capacity, engine restarting, overload);
* |gap - 20 ms| over every agent RTP packet of every call (``CallMedia.send_times_s``, taken when
  the pacer sends): p50, p99, max;
* the engine's p90 step time while the calls ran, and the machine's 1-minute load average (the
  VM is shared: note it with the figures).

Prints one line per N as soon as it is measured, and the table at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPO_ROOT, TINY_CHECKPOINT, format_table


class TransportRecorder:
    """Wraps a CallManager and remembers each call's transport (to read its RTP send times)."""

    def __init__(self, calls: Any) -> None:
        self._calls = calls
        self.transports: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._calls, name)

    async def run_call(self, transport: Any, *args: Any, **kwargs: Any) -> Any:
        self.transports.append(transport)
        return await self._calls.run_call(transport, *args, **kwargs)

SCENARIO = REPO_ROOT / "tests" / "integration" / "sip" / "uac_speech.xml"
SPEECH = "Hello there. Can you tell me what the weather is like today?"


@dataclasses.dataclass(frozen=True)
class LoadPoint:
    calls: int
    completed: int
    heard: int
    refused: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    over_5ms: float  # share of gaps more than 5 ms off
    packets: int
    step_p90_ms: float
    load_1m: float

    def row(self) -> list[object]:
        return [self.calls, f"{self.completed}/{self.calls}", self.heard, self.refused, f"{self.p50_ms:.2f}",
                f"{self.p99_ms:.2f}", f"{self.max_ms:.1f}", f"{self.over_5ms:.2%}", self.packets, f"{self.step_p90_ms:.1f}",
                f"{self.load_1m:.2f}"]


HEADERS = ["calls", "completed", "heard", "refused", "p50 ms", "p99 ms", "max ms", "> 5 ms", "packets", "step p90 ms",
           "load 1m"]


def gap_deviations_ms(times: list[list[float]]) -> np.ndarray:
    devs = [np.abs(np.diff(np.asarray(t)) * 1000 - 20.0) for t in times if len(t) > 10]
    return np.concatenate(devs) if devs else np.zeros(0)


def _free_udp_port(even: bool = False) -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not even:
            return port
        if port % 2 == 0:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s2:
                try:
                    s2.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free UDP port")


def write_caller_audio(folder: Path, text: str) -> tuple[Path, float]:
    from agent.caller_voice import render_say
    from agent.g711 import ulaw_encode

    speech = render_say(text, sample_rate=8000)
    pcm = np.concatenate([np.zeros(2400, np.int16), speech, np.zeros(8000 * 3, np.int16)])
    path = folder / "caller.ul"
    path.write_bytes(ulaw_encode(pcm))
    return path, pcm.size / 8000


def scenario(folder: Path, audio: Path, listen_ms: int) -> Path:
    text = SCENARIO.read_text().replace("@AUDIO@", str(audio)).replace("@LISTEN_MS@", str(listen_ms))
    path = folder / "uac_speech.xml"
    path.write_text(text)
    return path


async def run_sipp(target: tuple[str, int], path: Path, calls: int, rate: float, cwd: Path) -> tuple[int, str]:
    sipp = shutil.which("sipp")
    if sipp is None:
        raise SystemExit("sipp is not installed: apt-get install -y sip-tester")
    argv = [sipp, f"{target[0]}:{target[1]}", "-sf", str(path), "-i", "127.0.0.1", "-p", str(_free_udp_port()),
            "-mi", "127.0.0.1", "-mp", str(_free_udp_port(even=True)), "-m", str(calls), "-r", str(rate),
            "-l", str(calls), "-nostdin", "-timeout", "90s", "-timeout_error"]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                                                cwd=cwd)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        return -9, out.decode("utf-8", "replace")
    return int(proc.returncode or 0), out.decode("utf-8", "replace")


async def measure(runtime: Any, gateway: Any, recorder: TransportRecorder, calls: int, rate: float,
                  folder: Path, listen_ms: int, audio: Path) -> LoadPoint:
    recorder.transports.clear()
    before = len(runtime.calls.summaries)
    refused_before = sum(getattr(runtime.calls.counters, k) for k in ("refused_full", "refused_draining",
                                                                      "refused_engine"))
    steps_before = len(runtime.engine.step_seconds)
    rc, out = await run_sipp(gateway.local_address, scenario(folder, audio, listen_ms), calls, rate, folder)
    deadline = time.monotonic() + 30
    while (runtime.calls.active or len(runtime.calls.summaries) - before < calls) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        if not runtime.calls.active and rc != 0:
            break
    summaries = runtime.calls.summaries[before:]
    refused = sum(getattr(runtime.calls.counters, k) for k in ("refused_full", "refused_draining",
                                                               "refused_engine")) - refused_before
    devs = gap_deviations_ms([t.media.send_times_s for t in recorder.transports])
    steps = runtime.engine.step_seconds[steps_before:]
    if rc != 0:
        print(f"  sipp exited {rc}:\n{out[-1500:]}", file=sys.stderr)
    p50, p99, worst = (np.percentile(devs, [50, 99, 100]) if devs.size else (float("nan"),) * 3)
    return LoadPoint(calls,
                     sum(1 for s in summaries if s.error is None and s.ended_by == "caller: bye"),
                     sum(1 for s in summaries if any(t.first_audio_sent_ms is not None for t in s.turns)),
                     refused, float(p50), float(p99), float(worst),
                     float(np.mean(devs > 5.0)) if devs.size else float("nan"), int(devs.size),
                     float(np.percentile(steps, 90) * 1000) if steps else float("nan"), os.getloadavg()[0])


async def main_async(args: argparse.Namespace) -> list[LoadPoint]:
    from agent.metrics import Metrics
    from agent.runtime import build_runtime
    from config.loader import load_settings
    from sip_bridge.gateway import SipGateway

    slots = max(args.calls) + 4
    settings = load_settings(environ={}, overrides=[{
        "model": {"ref": str(args.checkpoint), "offline_fallback": "error", "greeting": ""},
        "vad": {"backend": "silero"},
        "server": {"max_calls": slots, "admission_step_margin": args.margin},
        "logging": {"level": "WARNING"},
    }])
    sip = dataclasses.replace(settings.sip, enabled=True, listen_host="127.0.0.1", listen_port=0,
                              rtp_port_min=32000, rtp_port_max=32999)
    settings = dataclasses.replace(settings, sip=sip)
    if args.engine == "thread":
        from agent.commands import load_for_settings

        loaded, choice = load_for_settings(settings.model)
        runtime = build_runtime(settings, loaded, choice)
    else:
        runtime = build_runtime(settings)
    recorder = TransportRecorder(runtime.calls)
    gateway = SipGateway(recorder, settings.sip, Metrics())  # type: ignore[arg-type]
    await gateway.start()
    points: list[LoadPoint] = []
    folder = Path(args.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    audio, caller_s = write_caller_audio(folder, args.speech)
    listen_ms = int(max(args.call_s, caller_s + 2.0) * 1000)  # SIPp's pause starts with the audio
    print(f"sip_load: engine {args.engine}; model {runtime.choice.description}; calls {args.calls} at {args.rate}/s; "
          f"{os.cpu_count()} cpus; load {os.getloadavg()}", flush=True)
    try:
        for n in args.calls:
            point = await measure(runtime, gateway, recorder, n, args.rate, folder, listen_ms, audio)
            points.append(point)
            print("  " + "  ".join(f"{h}={v}" for h, v in zip(HEADERS, point.row(), strict=True)), flush=True)
            await asyncio.sleep(2.0)
    finally:
        await gateway.stop()
        runtime.close()
    return points


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, nargs="+", default=[4, 10, 20, 40])
    p.add_argument("--rate", type=float, default=10.0, help="new calls per second")
    p.add_argument("--call-s", type=float, default=10.0, help="length of each call (speech + listening), s")
    p.add_argument("--speech", default=SPEECH)
    p.add_argument("--engine", choices=("process", "thread"), default="process")
    p.add_argument("--margin", type=float, default=0.8, help="server.admission_step_margin (0: admit all)")
    p.add_argument("--checkpoint", type=Path, default=TINY_CHECKPOINT)
    p.add_argument("--workdir", default=f"/tmp/lfm-sip-load-{os.getpid()}")
    args = p.parse_args(argv)
    points = asyncio.run(main_async(args))
    print(format_table(HEADERS, [pt.row() for pt in points]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
