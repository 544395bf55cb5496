"""Barge-in stop at the caller's ear, per transport (inproc, SIP, WebRTC), over >= 50 simulated barge-ins each.

    .venv/bin/python -m bench.barge_in_transports [--count 50] [--transports inproc,sip,webrtc] [--out DIR]
                                                  [--concurrency N] [--engine process|thread]

Each call asks a question, then cuts in at a random 300-3000 ms into the agent's (long) reply (the
scenarios of ``bench.barge_in``, seeded). Stop = caller cut-in onset -> agent audio stopped at the
caller's ear (the simulator's ``barge_in_stop_ms``: measured on the audio the caller's leg received
over the real transport). Figures are printed per transport as soon as it is done and written
(atomically) to ``DIR/barge_in_transports.json``. Target (issue 17): p95 <= 250 ms everywhere.

The engine runs in its own process by default, as ``lfm-call simulate`` and ``serve`` run it;
``--engine thread`` puts it in a thread of the calls' process (the old layout). There, on 2 cores,
the model's Python work shares the GIL with two aiortc stacks per WebRTC call, aiortc's sender
falls behind its 20 ms frames, and the agent's audio queues up behind it.

Calls run as many at a time as ``lfm-call simulate`` runs them by default (inproc 4, SIP 2, WebRTC
1): both ends of every call live in this one process, so more concurrent WebRTC calls measure
this process's load (six aiortc peers' DTLS, SRTP and Opus on one event loop) more than the agent.
``--concurrency N`` runs every transport N at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.barge_in import REPLY_MS, _pcts, barge_in_scenarios, stop_times
from bench.simrun import SimConfig, demo_checkpoint, run_calls, settings_for

TARGET_P95_MS = 250.0


async def measure(transports: list[str], count: int, concurrency: int | None, out: Path,
                  engine: str = "process") -> dict[str, Any]:
    """`concurrency` None: each transport at `lfm-call simulate`'s default (DEFAULT_CONCURRENCY)."""
    from agent.commands import load_for_settings
    from agent.sim_command import DEFAULT_CONCURRENCY

    checkpoint = demo_checkpoint()
    loaded, choice = (load_for_settings(settings_for(checkpoint, SimConfig("default"), 4).model) if engine == "thread"
                      else (None, None))
    results: dict[str, Any] = {}
    pairs = barge_in_scenarios(count)
    for transport in transports:
        started = time.perf_counter()
        at_once = concurrency or DEFAULT_CONCURRENCY[transport]
        config = SimConfig(f"barge-in-{transport}", transport, {"model": {"tiny_max_reply_ms": REPLY_MS}}, at_once)
        calls = await run_calls([s for s, _ in pairs], config, checkpoint, loaded, choice, None)
        stops, decisions, missed = stop_times(calls)
        p50, p95, pmax = _pcts(stops)
        results[transport] = {
            "concurrency": at_once, "barge_ins": len(stops), "stop_p50_ms": p50, "stop_p95_ms": p95, "stop_max_ms": pmax,
            "decision_p50_ms": _pcts(decisions)[0], "missed": missed,
            "errors": sum(1 for c in calls if c.record.error), "seconds": round(time.perf_counter() - started, 1),
            "met": len(stops) >= 50 and p95 <= TARGET_P95_MS,
        }
        print(f"{transport} ({at_once} at a time): {len(stops)} barge-ins, stop p50 {p50:.0f} / p95 {p95:.0f} / max {pmax:.0f} ms, "
              f"missed {missed}, errors {results[transport]['errors']}", file=sys.stderr, flush=True)
        _write(out / "barge_in_transports.json", results)
    return results


def _write(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(obj, handle, indent=2)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=None,
                        help="calls at once (default: lfm-call simulate's per transport: inproc 4, sip 2, webrtc 1)")
    parser.add_argument("--transports", default="inproc,sip,webrtc")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--engine", choices=("process", "thread"), default="process")
    args = parser.parse_args(argv)
    results = asyncio.run(measure(args.transports.split(","), args.count, args.concurrency, args.out, args.engine))
    print(json.dumps(results, indent=2))
    return 0 if all(r["met"] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
