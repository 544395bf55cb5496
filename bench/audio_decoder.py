"""Streaming audio decode cost: the LFM2.5 detokenizer's 80 ms frame against a Mimi frame, same run.

    python -m bench.audio_decoder [--device cpu|cuda] [--dtype float32|bfloat16] [--batch 1 8 32]
                                  [--frames 50] [--threads N]

Both decoders are built at their real sizes (Mimi: moshi's default config, 96 M parameters; the
detokenizer: the reconstructed LFM2.5 config in tests/fixtures/lfm25-detokenizer-keys.json) with
seeded random weights (model.seeded: the cost does not depend on the values). For each batch
size, every stream decodes ``--frames`` frames (one streaming step per frame, all streams in one
batched step), after a warm-up; the figure is the median time of one step, and per stream.
Printed: ms per step for each decoder, and the ratio detokenizer / Mimi.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from bench.common import FIXTURES_DIR, machine_description
from model.audio_decoder import DecoderStreams, DetokenizerDecoder, MimiDecoder
from model.checkpoint import parse_device, parse_dtype
from model.detokenizer import Detokenizer, DetokenizerConfig
from model.mimi import Mimi, MimiConfig
from model.seeded import detokenizer_rule, materialize, mimi_rule


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def real_size_decoders(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    keys = json.loads((FIXTURES_DIR / "lfm25-detokenizer-keys.json").read_text(encoding="utf-8"))
    detok = Detokenizer(DetokenizerConfig.from_dict(keys["config_reconstructed"])).eval()
    materialize(detok, 7, detokenizer_rule())
    mimi = Mimi(MimiConfig.default()).eval()
    materialize(mimi, 7, mimi_rule())
    detok = detok.to(device=device, dtype=dtype)
    detok.istft.window = detok.istft.window.float()
    return {"mimi": MimiDecoder(mimi.to(device=device, dtype=dtype)), "detokenizer": DetokenizerDecoder(detok)}


@torch.no_grad()
def step_ms(streams: DecoderStreams, batch: int, frames: int, device: torch.device, warmup: int = 3) -> float:
    slots = [streams.open() for _ in range(batch)]
    gen = torch.Generator().manual_seed(batch)
    codes = torch.randint(0, 2048, (frames + warmup, batch, 8), generator=gen).to(device)
    times = []
    for t in range(frames + warmup):
        _sync(device)
        start = time.perf_counter()
        streams.step(slots, codes[t])
        _sync(device)
        if t >= warmup:
            times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.audio_decoder", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = parse_device(args.device)
    dtype = parse_dtype(args.dtype, device)
    decoders = real_size_decoders(device, dtype)
    print(f"# audio decode, one 80 ms streaming step, real sizes, {dtype}; {machine_description(device)}")
    print("| streams | Mimi ms/step | detokenizer ms/step | detokenizer ms/stream | ratio detokenizer/Mimi |")
    print("|---|---|---|---|---|")
    for batch in args.batch:
        ms = {name: step_ms(dec.streams(batch), batch, args.frames, device) for name, dec in decoders.items()}
        print(f"| {batch} | {ms['mimi']:.2f} | {ms['detokenizer']:.2f} | {ms['detokenizer'] / batch:.3f} | "
              f"{ms['detokenizer'] / ms['mimi']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
