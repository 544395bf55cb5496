"""Hostile caller audio (silence, clipping, DC offset, full-scale noise, empty packets) never breaks a call."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from agent.inproc import InprocLeg
from agent.runtime import build_runtime
from config.loader import load_settings


def signals() -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    t = np.arange(320) / 16000
    square = np.where(np.sin(2 * np.pi * 300 * t) >= 0, 32767, -32768).astype(np.int16)
    return {
        "silence": [np.zeros(320, np.int16)] * 125,
        "clipping": [square] * 125,
        "dc_offset": [np.full(320, 16000, np.int16)] * 125,
        "noise": [rng.integers(-32768, 32767, 320).astype(np.int16) for _ in range(125)],
        "odd_sizes": [np.zeros(n, np.int16) for n in (0, 1, 7, 333, 960, 0, 2)] * 18,
    }


def test_hostile_audio_ends_every_call_cleanly(tiny_checkpoint_dir: Path) -> None:
    settings = load_settings(environ={}, overrides=[{"model": {"ref": str(tiny_checkpoint_dir),
                                                               "offline_fallback": "error", "greeting": ""}}])

    async def main() -> dict[str, object]:
        runtime = build_runtime(settings)
        try:
            async def call(packets: list[np.ndarray]) -> object:
                leg = InprocLeg(runtime.calls)
                await leg.connect()
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                for k, packet in enumerate(packets):
                    await asyncio.sleep(max(0.0, t0 + k * 0.02 - loop.time()))
                    leg.send_audio(packet)
                    leg.receive_audio()
                await leg.hang_up()
                return leg.summary

            names = list(signals())
            results = await asyncio.gather(*(call(p) for p in signals().values()))
            return dict(zip(names, results, strict=True))
        finally:
            runtime.close()

    summaries = asyncio.run(main())
    for name, summary in summaries.items():
        assert summary is not None, name
        assert summary.error is None, f"{name}: {summary.error}"  # type: ignore[attr-defined]
        assert summary.ended_by.startswith("caller"), name  # type: ignore[attr-defined]
