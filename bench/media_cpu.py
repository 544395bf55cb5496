"""Media path CPU per SIP call, and how many concurrent G.711 calls one core carries.

The agent side (this process, pinned to one core) runs a real ``SipGateway`` on loopback; a caller
process (pinned to another core, so that its cost is not counted) places N G.711 u-law calls with
``SipCallerLeg`` and speaks on each: 2 s of speech every 6 s. Per step of N, over a steady window:

* CPU: this process's user + system seconds / (N x window minutes) = core-seconds per call-minute;
* RTP send jitter: per call, the intervals between the agent's consecutive RTP packets
  (``CallMedia.send_times_s``) minus 20 ms, p99 over every call in ms.

N grows until the p99 exceeds 2 ms; the largest N that kept it is what one core carries.

Two agents are measured the same way: the full call path (``CallManager`` with CallSession, Silero
VAD, echo gate, playout and the tiny demo model's engine, same core), and the **baseline**
``LoopbackBaselineCalls``: a test double in place of the CallManager that sends the caller's audio
straight back, resampled both ways as the session does (8 kHz -> 16 kHz in; 16 kHz -> 24 kHz ->
8 kHz packets out), so that it measures the SIP bridge alone (RTP, jitter buffer, G.711, pacing,
resampling). It lives here, in bench/, and is never reachable from the CLI's call path.

The caller process is this module: ``python -m bench.media_cpu --callers URI --calls N ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.audio import PcmFrame
from agent.framer import Packetizer
from agent.resample import StreamingResampler
from agent.session import CallSummary
from agent.transport import AudioReceived, CallTransport, HungUp
from bench.results import Metric, Section, ratio

PACKET_S = 0.02
JITTER_LIMIT_MS = 2.0
SPEECH_S = 2.0
CYCLE_S = 6.0
LOOPBACK_STEPS = (10, 25, 50, 75, 100, 150)
LOOPBACK_STEPS_QUICK = (10, 50)
MODEL_STEPS = (2, 4, 8, 12, 16, 24)
MODEL_STEPS_QUICK = (2, 6)


# -- the baseline: a loopback in place of the CallManager ------------------------------------------


@dataclasses.dataclass
class _Counters:
    started: int = 0
    completed: int = 0
    refused_full: int = 0
    refused_draining: int = 0


class LoopbackBaselineCalls:
    """Benchmark baseline (test double for ``agent.calls.CallManager``): echoes caller audio back.

    Duck-types what ``SipGateway`` uses of a CallManager. Each call resamples the caller's packets
    to 16 kHz and then to 24 kHz (the model's output rate), and packetises them back to the call's
    rate, as CallSession and Playout would for the model's audio. No VAD, no model, no ticker.
    """

    def __init__(self, max_calls: int = 10_000) -> None:
        from agent.capacity import Capacity

        self.max_calls = max_calls
        self.draining = False
        self.capacity = Capacity(max_calls)
        self.active: dict[str, CallTransport] = {}
        self.counters = _Counters()
        self.transports: list[Any] = []
        self._ids = 0

    @property
    def free_slots(self) -> int:
        return self.capacity.free_slots

    def check_admission(self) -> None:
        from agent.capacity import CallRefused

        try:
            self.capacity.check()
        except CallRefused:
            self.counters.refused_full += 1
            raise

    def reserve(self, transport: str) -> Any:
        self.check_admission()
        return self.capacity.reserve(transport)

    def new_call_id(self, prefix: str = "c") -> str:
        self._ids += 1
        return f"{prefix}-loop-{self._ids}"

    async def run_call(self, transport: CallTransport, call_id: str | None = None,
                       external_id: str = "", reservation: Any = None) -> CallSummary:
        call_id = call_id or self.new_call_id()
        if reservation is None:
            reservation = self.reserve("inproc")
        reservation.commit()
        self.active[call_id] = transport
        self.transports.append(transport)
        self.counters.started += 1
        rate = transport.sample_rate
        to_16k = StreamingResampler(rate, 16000)
        to_24k = StreamingResampler(16000, 24000)
        packetizer = Packetizer(24000, out_rate=rate, packet_ms=20)
        position = 0
        try:
            while True:
                ev = await transport.receive()
                if isinstance(ev, HungUp):
                    return CallSummary(call_id, time.time(), ended_by=f"caller: {ev.reason}")
                if isinstance(ev, AudioReceived):
                    pcm = to_24k.process(to_16k.process(ev.samples))
                    if pcm.size:
                        for packet in packetizer.push(PcmFrame(pcm, 24000, position)):
                            transport.send(packet.samples)
                        position += pcm.size
        finally:
            del self.active[call_id]
            self.counters.completed += 1
            reservation.release()


class TransportRecorder:
    """Wraps a CallManager and remembers each call's transport (to read its RTP send times)."""

    def __init__(self, calls: Any) -> None:
        self._calls = calls
        self.transports: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._calls, name)

    async def run_call(self, transport: Any, call_id: str | None = None, external_id: str = "",
                       reservation: Any = None) -> Any:
        self.transports.append(transport)
        return await self._calls.run_call(transport, call_id=call_id, external_id=external_id,
                                          reservation=reservation)


# -- measuring -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Point:
    calls: int
    connected: int
    window_s: float
    cpu_s: float
    jitter_p99_ms: float
    jitter_max_ms: float
    packets: int

    @property
    def core_s_per_call_minute(self) -> float:
        return self.cpu_s / (self.connected * self.window_s / 60.0) if self.connected else float("nan")

    @property
    def ok(self) -> bool:
        return self.connected == self.calls and self.jitter_p99_ms <= JITTER_LIMIT_MS


def send_jitter_ms(times: list[list[float]]) -> tuple[float, float, int]:
    """(p99, max) of |interval - 20 ms| over every call's consecutive send times, and the packets."""
    devs = [np.abs(np.diff(np.asarray(t)) - PACKET_S) * 1000 for t in times if len(t) > 1]
    if not devs:
        return float("nan"), float("nan"), 0
    all_devs = np.concatenate(devs)
    return float(np.percentile(all_devs, 99)), float(all_devs.max()), int(all_devs.size + len(devs))


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def measure_point(calls: Any, recorder: Any, n: int, window_s: float, warm_s: float, callers_cpu: int | None,
                        ) -> Point:
    from agent.metrics import Metrics
    from config.loader import load_settings
    from sip_bridge.gateway import SipGateway

    sip = dataclasses.replace(load_settings(environ={}).sip, enabled=True, listen_host="127.0.0.1", listen_port=0,
                              advertised_address="", trusted_sources=("127.0.0.1/32",), registrar="",
                              codecs=("PCMU",))
    gateway = SipGateway(recorder, sip, Metrics())
    await gateway.start()
    host, port = gateway.local_address
    recorder.transports.clear()
    args = [sys.executable, "-m", "bench.media_cpu", "--callers", f"sip:agent@{host}:{port}", "--calls", str(n),
            "--seconds", str(warm_s + window_s + 1.0)]
    if callers_cpu is not None:
        args += ["--cpu", str(callers_cpu)]
    child = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                 cwd=str(Path(__file__).resolve().parent.parent))
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 120)
        if not line.startswith(b"READY"):
            raise RuntimeError(f"caller process did not start its calls: {line!r}")
        await asyncio.sleep(warm_s)
        medias = [t.media for t in recorder.transports]
        marks = [len(m.send_times_s) for m in medias]
        cpu0, t0 = _cpu_seconds(), time.perf_counter()
        await asyncio.sleep(window_s)
        cpu1, t1 = _cpu_seconds(), time.perf_counter()
        ends = [len(m.send_times_s) for m in medias]
        p99, worst, packets = send_jitter_ms([m.send_times_s[a:b] for m, a, b in zip(medias, marks, ends, strict=True)])
        await asyncio.wait_for(child.wait(), 60)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await gateway.stop()
    return Point(n, len(medias), t1 - t0, cpu1 - cpu0, p99, worst, packets)


async def ramp(calls: Any, steps: tuple[int, ...], window_s: float, warm_s: float, callers_cpu: int | None,
               ) -> list[Point]:
    points = []
    recorder = TransportRecorder(calls)
    for n in steps:
        point = await measure_point(calls, recorder, n, window_s, warm_s, callers_cpu)
        points.append(point)
        print(f"media_cpu: {n} calls: p99 send jitter {point.jitter_p99_ms:.2f} ms, "
              f"{point.core_s_per_call_minute:.3f} core-s per call-minute", file=sys.stderr, flush=True)
        if point.connected < n or point.cpu_s > 0.95 * point.window_s:  # beyond one core: no use going on
            break
        await asyncio.sleep(0.5)
    return points


@contextlib.contextmanager
def pinned(cpu: int | None) -> Any:
    """Pin this thread (and the threads it starts) to one CPU while inside."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def cpus() -> tuple[int | None, int | None]:
    """(agent CPU, caller CPU): two different cores when there are two, else no pinning."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    mine = sorted(os.sched_getaffinity(0))
    return (mine[0], mine[1]) if len(mine) >= 2 else (None, None)


async def measure(quick: bool, checkpoint: Path, loaded: Any, choice: Any) -> Section:
    from agent.runtime import build_runtime
    from bench.simrun import SimConfig, settings_for

    started = time.perf_counter()
    window_s, warm_s = (4.0, 2.0) if quick else (10.0, 3.0)
    agent_cpu, caller_cpu = cpus()
    results: dict[str, list[Point]] = {}
    with pinned(agent_cpu):
        results["loopback"] = await ramp(LoopbackBaselineCalls(), LOOPBACK_STEPS_QUICK if quick else LOOPBACK_STEPS,
                                         window_s, warm_s, caller_cpu)
        steps = MODEL_STEPS_QUICK if quick else MODEL_STEPS
        config = SimConfig("media", "sip", {"model": {"tiny_max_reply_ms": 1600}})
        runtime = build_runtime(settings_for(checkpoint, config, max(steps) + 2), loaded, choice)
        try:
            results["model"] = await ramp(runtime.calls, steps, window_s, warm_s, caller_cpu)
        finally:
            runtime.close()
    rows: list[list[object]] = []
    summary: dict[str, tuple[float, int]] = {}
    for kind, label in (("model", "full call path (CallSession + tiny model)"),
                        ("loopback", "baseline: loopback bridge (no model)")):
        points = results[kind]
        good = [p for p in points if p.ok]
        cost = float(np.median([p.core_s_per_call_minute for p in (good or points)]))
        carried = max((p.calls for p in good), default=0)
        summary[kind] = (cost, carried)
        for p in points:
            rows.append([label, p.calls, p.connected, p.core_s_per_call_minute, p.core_s_per_call_minute / 60 * 1000,
                         p.jitter_p99_ms, p.jitter_max_ms, "yes" if p.ok else "no"])
    model_cost, model_calls = summary["model"]
    loop_cost, loop_calls = summary["loopback"]
    rows.append(["loopback / full path (CPU per call)", "", "", ratio(loop_cost, model_cost), "", "", "", ""])
    section = Section(
        key="media_cpu", title="Media path CPU per SIP G.711 call, and concurrent calls per core",
        command="lfm-call bench" + (" --quick" if quick else "") + "   # section media_cpu",
        headers=["agent", "calls", "connected", "core-s per call-minute", "ms CPU per call-second",
                 "RTP send jitter p99 ms", "max ms", f"p99 <= {JITTER_LIMIT_MS:g} ms"],
        rows=rows,
        notes=[f"agent pinned to CPU {agent_cpu}, caller process (SipCallerLeg x N, not counted) to CPU {caller_cpu}; "
               f"{warm_s:g} s warm-up, {window_s:g} s window per step; calls speak {SPEECH_S:g} s every {CYCLE_S:g} s",
               f"one core carries: full path {model_calls} calls, loopback bridge {loop_calls} calls (largest step "
               f"with p99 send jitter <= {JITTER_LIMIT_MS:g} ms; target for the bridge alone >= 50)",
               f"by CPU alone one core would carry {60 / model_cost if model_cost else float('nan'):.0f} full-path "
               f"calls, {60 / loop_cost if loop_cost else float('nan'):.0f} bridge-only calls",
               "the full path's CPU includes the engine's worker thread (tiny model) on the same core; the machine "
               "is shared, other jobs' load adds jitter"],
    )
    section.metrics = {
        "full_core_s_per_call_minute": Metric(model_cost, "core-s/min", "lower"),
        "loopback_core_s_per_call_minute": Metric(loop_cost, "core-s/min", "lower"),
        "loopback_calls_per_core": Metric(float(loop_calls), "calls", "higher"),
        "full_calls_per_core": Metric(float(model_calls), "calls", "higher"),
    }
    section.seconds = time.perf_counter() - started
    return section


# -- the caller process --------------------------------------------------------------------------------


def caller_packets() -> list[np.ndarray]:
    """2 s of speech as 8 kHz int16 20 ms packets."""
    from bench.common import speech_clip

    speech = np.clip(speech_clip(SPEECH_S, 1).samples * 32767, -32768, 32767).astype(np.int16)
    pcm = StreamingResampler(16000, 8000).process(speech)
    return [pcm[i:i + 160] for i in range(0, pcm.size - 159, 160)]


async def run_callers(uri: str, n: int, seconds: float) -> None:
    from sip_bridge.media import MediaCallbacks
    from sip_bridge.sim_leg import SipCallerLeg

    packets = caller_packets()
    legs = [SipCallerLeg(uri, codec="PCMU", rtp_timeout_s=120.0) for _ in range(n)]
    for i in range(0, n, 10):
        await asyncio.gather(*(leg.connect() for leg in legs[i:i + 10]))
    for leg in legs:  # the agent's audio is not listened to: no decoding cost here
        assert leg.media is not None
        leg.media.callbacks = MediaCallbacks(lambda s: None, lambda d, ms: None, lambda: None, lambda k: None)
    print(f"READY {n}", flush=True)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    sent = [0] * n
    cycle_packets = int(CYCLE_S / PACKET_S)
    while loop.time() - t0 < seconds:
        due = int((loop.time() - t0) / PACKET_S) + 10  # keep ~200 ms queued in each pacer
        for i, leg in enumerate(legs):
            assert leg.media is not None
            phase = i * 37
            while sent[i] < due:
                k = (sent[i] + phase) % cycle_packets
                if k < len(packets):
                    leg.media.send_pcm(packets[k])
                sent[i] += 1
        await asyncio.sleep(0.2)
    await asyncio.gather(*(leg.hang_up() for leg in legs), return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.media_cpu", description="caller process for media_cpu")
    parser.add_argument("--callers", required=True, help="SIP URI of the agent")
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to this CPU")
    args = parser.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(run_callers(args.callers, args.calls, args.seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
