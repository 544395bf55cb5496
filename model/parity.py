"""Parity check against a reference produced by the official implementation.

``python -m model.parity CHECKPOINT_DIR REFERENCE_DIR`` recomputes every tensor of
``REFERENCE_DIR/reference.safetensors`` (``model.parity_runs`` says what and how): the main model
from ``CHECKPOINT_DIR`` and ``REFERENCE_DIR/input.wav``; an LFM2.5 detokenizer fixture
(``CHECKPOINT_DIR/audio_detokenizer/`` with ``T{n}.*`` tensors), whole-sequence and streamed;
Mimi. The reference is read only to compare, except for the inputs it carries (``mimi.codes``,
``T{n}.codes``: fixed random codes to decode) and the generation budgets (its row counts). One
line per tensor: name, max abs diff, tolerance, OK/FAIL; then ``N passed, M failed``; exit
status 1 on failure.

Tolerances: floating tensors max|diff| <= 1e-4 x max(1, max|reference|); mel features 1e-4
absolute; integer tensors (ids, flags, lengths, token traces, codes) identical; the first 480
samples of a detokenizer stream (its 20 ms lookahead) exactly zero.
"""

from __future__ import annotations

import argparse
import json
import sys
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from model.parity_runs import (
    compute_detokenizer,
    compute_main,
    compute_mimi,
    detokenizer_cases,
    load_for_parity,
    load_parity_detokenizer,
    load_parity_mimi,
)

REL_TOLERANCE = 1e-4
# Mel features: 1e-4 absolute. They are bit-identical across runs on one CPU, but float32 FFT kernels
# differ between CPUs, and the log and the per-bin normalisation amplify that: features computed here
# in float64 differ from a float32 reference made on another CPU by up to 4.4e-5 (and our float32 by
# 5.1e-5), while the encoder output after them stays within 5e-6.
MEL_TOLERANCE = 1e-4
INPUT_TENSORS = {"mimi.codes"}
_MAIN_PREFIXES = ("mel.", "encoder.", "adapter.", "prefill.", "interleaved.", "depthformer.", "sequential.", "asr.",
                  "tts.", "audio.")


@dataclass(frozen=True)
class Check:
    name: str
    max_abs_diff: float
    tolerance: float
    ok: bool
    note: str = ""

    def line(self) -> str:
        diff = "n/a" if np.isnan(self.max_abs_diff) else f"{self.max_abs_diff:.3e}"
        tail = f"  ({self.note})" if self.note else ""
        return f"{self.name:36s} max_abs_diff={diff:>10s} tol={self.tolerance:.1e} {'OK' if self.ok else 'FAIL'}{tail}"


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """16-bit PCM WAV -> (mono float32 samples = int16 / 32768, sample rate)."""
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported (sample width {f.getsampwidth()})")
        frames = f.readframes(f.getnframes())
        channels = f.getnchannels()
        rate = f.getframerate()
    data = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1)
    return data, rate


def compare(name: str, ours: torch.Tensor | None, ref: torch.Tensor) -> Check:
    if ours is None:
        return Check(name, float("nan"), 0.0, False, "not computed")
    ours = ours.detach().cpu()
    if tuple(ours.shape) != tuple(ref.shape):
        return Check(name, float("nan"), 0.0, False, f"shape {list(ours.shape)} != reference {list(ref.shape)}")
    if not ref.is_floating_point():
        equal = torch.equal(ours.to(ref.dtype), ref)
        diff = 0.0 if equal else float((ours.long() - ref.long()).abs().max())
        return Check(name, diff, 0.0, equal)
    diff = float((ours.float() - ref.float()).abs().max()) if ref.numel() else 0.0
    tol = MEL_TOLERANCE if name.startswith("mel.") else REL_TOLERANCE * max(1.0, float(ref.abs().max()) if ref.numel() else 1.0)
    return Check(name, diff, tol, bool(diff <= tol))


def _streamed_checks(ours: dict[str, torch.Tensor], refs: dict[str, torch.Tensor]) -> list[Check]:
    checks = []
    for key in sorted(ours):
        if key.endswith("[streamed]"):
            checks.append(compare(key, ours[key], refs[key.removesuffix("[streamed]")]))
        elif key.endswith("[zeros]"):
            lead = ours[key]
            peak = float(lead.abs().max()) if lead.numel() else 0.0
            checks.append(Check(key, peak, 0.0, peak == 0.0, "the stream's 20 ms lookahead"))
    return checks


def run_parity(checkpoint: Path, reference_dir: Path, device: str = "cpu", dtype: str = "fp32",
               emit: Callable[[str], None] = print) -> list[Check]:
    ref_path = reference_dir / "reference.safetensors"
    refs = load_file(str(ref_path))
    info_path = reference_dir / "reference.json"
    info: dict[str, Any] = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    ours: dict[str, torch.Tensor] = {}
    extra: list[Check] = []
    loaded = None
    if any(k.startswith(_MAIN_PREFIXES) for k in refs):
        loaded = load_for_parity(checkpoint, device, dtype)
        waveform, rate = read_wav(reference_dir / "input.wav")
        if rate != loaded.mel.config.sample_rate:
            raise ValueError(f"input audio must be {loaded.mel.config.sample_rate} Hz, got {rate} Hz")
        ours.update(compute_main(loaded, waveform, refs, info))
    if detokenizer_cases(refs):
        detok = compute_detokenizer(load_parity_detokenizer(checkpoint, device), refs)
        ours.update({k: v for k, v in detok.items() if not k.endswith(("[streamed]", "[zeros]"))})
        extra = _streamed_checks(detok, refs)
    if "mimi.codes" in refs:
        ours.update(compute_mimi(load_parity_mimi(checkpoint, device), refs))
    checks = []
    for name in sorted(refs):
        check = compare(name, ours.get(name), refs[name])
        if name in INPUT_TENSORS and check.ok:
            check = Check(check.name, check.max_abs_diff, check.tolerance, True, "input of the Mimi check")
        checks.append(check)
        emit(check.line())
    for check in extra:
        checks.append(check)
        emit(check.line())
    with safe_open(str(ref_path), framework="pt") as f:
        meta = f.metadata() or {}
    if loaded is not None:
        tok = loaded.tokenizer
        for key, ids_name in (("interleaved_prompt_text", "prefill.text_ids"), ("asr_prompt_text", "asr.text_ids"),
                              ("tts_prompt_text", "tts.text_ids")):
            if key in meta and ids_name in ours:
                text = tok.decode([int(i) for i in ours[ids_name][0]])
                check = Check(f"{key} (string)", 0.0 if text == meta[key] else 1.0, 0.0, text == meta[key])
                checks.append(check)
                emit(check.line())
    failed = sum(not c.ok for c in checks)
    emit(f"{len(checks) - failed} passed, {failed} failed")
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.parity", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("reference", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 for reproducibility)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    checks = run_parity(args.checkpoint, args.reference, args.device, args.dtype)
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
