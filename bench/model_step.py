"""Model step timings: backbone step, depthformer frame, Mimi frame decode, audio prefill.

    python -m bench.model_step [--checkpoint DIR] [--full-size CONFIG.json] [--device cpu|cuda] [--dtype ...]

With ``--full-size`` the network is built from the config with random weights (no download);
otherwise a checkpoint is loaded (default: a freshly made tiny one). Figures are medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from model.checkpoint import build_model, load_model, parse_device, parse_dtype
from model.config import LFM2AudioConfig
from model.lfm2_audio import LFM2AudioModel
from model.mel import MelFrontend


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


@torch.no_grad()
def run(model: LFM2AudioModel, config: LFM2AudioConfig, mimi: object | None, device: torch.device,
        dtype: torch.dtype, seconds: float, context: int, repeats: int) -> list[tuple[str, float]]:
    lfm = model.lfm
    hidden = config.lfm.hidden_size
    rows: list[tuple[str, float]] = []
    state = lfm.new_state(1, kv_capacity=context + repeats + 8)
    lfm(torch.randn(1, context, hidden, device=device, dtype=dtype), state)
    mark = state.save()
    step_in = torch.randn(1, 1, hidden, device=device, dtype=dtype)

    def backbone_step() -> None:
        lfm(step_in, state)
        state.truncate(mark)

    rows.append((f"backbone step (1 position, context {context})", median_ms(backbone_step, device, repeats)))
    vec = torch.randn(hidden, device=device, dtype=dtype)
    rows.append(("depthformer frame (8 codes, greedy)",
                 median_ms(lambda: model.sample_audio_frame(vec), device, repeats)))
    if mimi is not None:
        mstate = mimi.new_decoder_state(1)  # type: ignore[attr-defined]
        codes = torch.randint(0, 2048, (1, 8, 1), device=device)
        rows.append(("mimi frame decode (80 ms, streaming)",
                     median_ms(lambda: mimi.decode_step(codes, mstate), device, repeats)))  # type: ignore[attr-defined]
    mel = MelFrontend(config.preprocessor).to(device)
    samples = int(seconds * config.preprocessor.sample_rate)
    wave = torch.randn(1, samples, device=device) * 0.1

    def prefill() -> None:
        feats, _ = mel(wave, torch.tensor([samples], device=device))
        frames = feats.shape[-1]
        adapted, _, _ = model.encode_audio(feats[0].to(dtype), torch.tensor([frames], device=device))
        lfm(adapted[None], lfm.new_state(1, kv_capacity=adapted.shape[0] + 1))

    rows.append((f"prefill {seconds:g} s audio (mel+encoder+adapter+backbone)", median_ms(prefill, device, max(3, repeats // 4))))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model_step", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--full-size", type=Path, default=None, help="config.json to build with random weights")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--seconds", type=float, default=4.0, help="audio length for the prefill timing")
    parser.add_argument("--context", type=int, default=256, help="positions already in the state for the step timing")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = parse_device(args.device)
    dtype = parse_dtype(args.dtype, device)
    if args.full_size is not None:
        config = LFM2AudioConfig.from_file(args.full_size)
        model = build_model(config, device=device, dtype=dtype)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.02)
        mimi = None
        try:
            from model.mimi import Mimi, MimiConfig

            mimi = Mimi(MimiConfig.default()).to(device).eval()
        except Exception as exc:  # Mimi timing is optional
            print(f"(no Mimi timing: {exc})")
        label = f"full-size {args.full_size.name} (random weights)"
    else:
        path = args.checkpoint
        if path is None:
            from model.tiny import make_tiny_checkpoint

            path = make_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="lfm-tiny-")))
        loaded = load_model(path, device=device, dtype=dtype)
        model, config, mimi = loaded.model, loaded.config, loaded.mimi
        label = str(path)
    print(f"model: {label}; device {device}; dtype {str(dtype).removeprefix('torch.')}; threads {args.threads}")
    for name, ms in run(model, config, mimi, device, dtype, args.seconds, args.context, args.repeats):
        print(f"  {name:58s} {ms:9.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
