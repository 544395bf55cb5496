"""One pacing grid per call: the latency a packet spends waiting between the session's tick and the
SIP pacer's send deadline, with two grids in series (the session's own ticker) and with one (the
pacer's deadlines drive the session's tick).

    .venv/bin/python -m bench.pacing_grid [--calls 6] [--out DIR]

Each call asks a question over real SIP/RTP on loopback and listens to the (tiny demo model's) answer;
the wait is measured in ``CallMedia`` for every agent packet (queued -> sent on the wire). Printed
per mode and written (atomically) to ``DIR/pacing_grid.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.barge_in_transports import _write
from bench.common import SENTENCES
from bench.simrun import SimConfig, demo_checkpoint, run_calls, scenario_from_yaml, settings_for

SCENARIO = """\
name: {name}
timeout_s: 30
steps:
  - say: "{question}"
    when: {{after_silence_ms: 300}}
  - hangup: {{}}
    when: {{after_silence_ms: 1500}}
"""


async def measure(calls: int, out: Path) -> dict[str, Any]:
    from agent.commands import load_for_settings
    from agent.session import CallSession
    from sip_bridge.media import CallMedia

    checkpoint = demo_checkpoint()
    loaded, choice = load_for_settings(settings_for(checkpoint, SimConfig("default"), 4).model)
    waits: list[float] = []
    original_close = CallMedia.close

    async def close(self: CallMedia) -> None:  # collect each call's queue waits as it ends
        waits.extend(self.queue_wait_s)
        await original_close(self)

    CallMedia.close = close  # type: ignore[method-assign]
    results: dict[str, Any] = {}
    try:
        for mode, single in (("two grids (session ticker + SIP pacer)", False), ("one grid (pacer drives)", True)):
            CallSession.single_grid = single
            waits.clear()
            scenarios = [scenario_from_yaml(SCENARIO.format(name=f"grid-{i}", question=SENTENCES[i % len(SENTENCES)]),
                                            f"grid-{i}") for i in range(calls)]
            done = await run_calls(scenarios, SimConfig(f"grid-{single}", "sip", {}, 2), checkpoint, loaded, choice,
                                   None)
            ms = np.asarray(waits) * 1000
            results[mode] = {"packets": int(ms.size), "wait_mean_ms": float(ms.mean()) if ms.size else None,
                             "wait_p50_ms": float(np.percentile(ms, 50)) if ms.size else None,
                             "wait_p95_ms": float(np.percentile(ms, 95)) if ms.size else None,
                             "calls": len(done), "errors": sum(1 for c in done if c.record.error)}
            print(f"{mode}: {results[mode]}", file=sys.stderr, flush=True)
            _write(out / "pacing_grid.json", results)
    finally:
        CallMedia.close = original_close  # type: ignore[method-assign]
        CallSession.single_grid = True
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(measure(args.calls, args.out)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
