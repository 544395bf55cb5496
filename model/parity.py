"""Parity check against a reference produced by the official implementation.

``python -m model.parity CHECKPOINT_DIR REFERENCE_DIR`` recomputes every tensor of
``REFERENCE_DIR/reference.safetensors`` from the checkpoint and ``REFERENCE_DIR/input.wav`` (the
reference file is read only to compare; the one exception is ``mimi.codes``, the fixed random
codes the Mimi check decodes, which are an input and are taken from it). One line per tensor:
name, max abs diff, tolerance, OK/FAIL; then ``N passed, M failed``; exit status 1 on failure.

Tolerances: floating tensors max|diff| <= 1e-4 x max(1, max|reference|); mel features 1e-5
absolute; integer tensors (ids, flags, lengths, token traces, codes) identical.
"""

from __future__ import annotations

import argparse
import sys
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from model.checkpoint import LoadedModel, load_model
from model.generation import Generation, GenerationMode, start_generation
from model.lfm2_audio import Modality

INTERLEAVED_SYSTEM = "Respond with interleaved text and audio."
ASR_SYSTEM = "Perform ASR."
DEFAULT_INTERLEAVED_MAX_NEW_TOKENS = 48
DEFAULT_SEQUENTIAL_MAX_NEW_TOKENS = 32
REL_TOLERANCE = 1e-4
MEL_TOLERANCE = 1e-5
INPUT_TENSORS = {"mimi.codes"}


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


def build_chat_inputs(loaded: LoadedModel, system: str, waveform: np.ndarray, sample_rate: int) -> dict[str, torch.Tensor]:
    if sample_rate != loaded.mel.config.sample_rate:
        raise ValueError(f"input audio must be {loaded.mel.config.sample_rate} Hz, got {sample_rate} Hz")
    return loaded.one_turn_chat(system, audio_16k=waveform)


def run_trace(gen: Generation, codebooks: int) -> dict[str, torch.Tensor]:
    rows: list[list[int]] = []
    kinds: list[int] = []
    margins: list[float] = []
    hidden: list[torch.Tensor] = []
    while True:
        item = gen.step()
        if gen.last_hidden is not None and len(hidden) < gen.calls:
            hidden.append(gen.last_hidden.float().cpu())
        if item is None:
            break
        rows.append(item.as_row(codebooks))
        kinds.append(int(item.modality))
        margins.append(float(gen.last_margin or 0.0))
    return {
        "tokens": torch.tensor(rows, dtype=torch.long).reshape(-1, codebooks),
        "kind": torch.tensor(kinds, dtype=torch.long),
        "margin": torch.tensor(margins, dtype=torch.float32),
        "step_hidden": torch.stack(hidden) if hidden else torch.zeros(0),
    }


@torch.no_grad()
def compute_all(loaded: LoadedModel, waveform: np.ndarray, sample_rate: int, mimi_codes: torch.Tensor | None,
                interleaved_max: int = DEFAULT_INTERLEAVED_MAX_NEW_TOKENS,
                sequential_max: int = DEFAULT_SEQUENTIAL_MAX_NEW_TOKENS) -> dict[str, torch.Tensor]:
    """Every reference tensor, recomputed. Keys follow the reference names."""
    model, dev = loaded.model, loaded.device
    out: dict[str, torch.Tensor] = {}
    wave_t = torch.from_numpy(waveform)
    out["audio.waveform"] = wave_t
    feats, valid = loaded.mel(wave_t[None].to(dev), torch.tensor([wave_t.shape[0]], device=dev))
    out["mel.features"] = feats[0]
    out["mel.valid_length"] = valid
    inputs = build_chat_inputs(loaded, INTERLEAVED_SYSTEM, waveform, sample_rate)
    out["prefill.audio_in_lens"] = inputs["audio_in_lens"]
    out["prefill.text_ids"] = inputs["text"]
    out["prefill.modality_flag"] = inputs["modality_flag"]
    adapted, enc, enc_lengths = model.encode_audio(inputs["audio_in"].to(loaded.dtype), inputs["audio_in_lens"])
    out["encoder.output"] = enc
    out["encoder.output_lengths"] = enc_lengths
    out["adapter.output"] = adapted
    embeds = model.prefill_embeddings(**inputs)
    out["prefill.input_embeds"] = embeds
    hidden = model.lfm(embeds)
    out["prefill.last_hidden_state"] = hidden
    out["prefill.text_logits_last"] = model.lfm.text_logits(hidden[0, -1])
    gen = start_generation(model, inputs, GenerationMode.INTERLEAVED, interleaved_max, keep_logits=True)
    for key, value in run_trace(gen, model.codebooks).items():
        out[f"interleaved.{key}"] = value
    audio_rows = (out["interleaved.kind"] == int(Modality.AUDIO_OUT)).nonzero()
    if len(audio_rows):
        first = int(audio_rows[0])
        x = out["interleaved.step_hidden"][first].to(device=dev, dtype=loaded.dtype)
        out["depthformer.input_embedding"] = x
        out["depthformer.depth_linear_output"] = model.depth_linear(x).view(model.codebooks, -1)
        codes, logits = model.sample_audio_frame(x, keep_logits=True)
        assert logits is not None
        out["depthformer.logits"] = logits
        out["depthformer.codes"] = codes
    asr_inputs = build_chat_inputs(loaded, ASR_SYSTEM, waveform, sample_rate)
    out["asr.text_ids"] = asr_inputs["text"]
    out["asr.modality_flag"] = asr_inputs["modality_flag"]
    gen = start_generation(model, asr_inputs, GenerationMode.SEQUENTIAL, sequential_max, keep_logits=True)
    for key, value in run_trace(gen, model.codebooks).items():
        out[f"sequential.{key}"] = value
    if mimi_codes is not None and loaded.mimi is not None:
        codes = mimi_codes.to(device=dev, dtype=torch.long)[None]
        out["mimi.codes"] = mimi_codes
        out["mimi.decode_full"] = loaded.mimi.decode(codes)
        state = loaded.mimi.new_decoder_state(1)
        pieces = [loaded.mimi.decode_step(codes[:, :, i : i + 1], state) for i in range(codes.shape[-1])]
        out["mimi.decode_streaming"] = torch.cat(pieces, dim=-1)
    return out


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


def run_parity(checkpoint: Path, reference_dir: Path, device: str = "cpu", dtype: str = "fp32",
               interleaved_max: int = DEFAULT_INTERLEAVED_MAX_NEW_TOKENS,
               sequential_max: int = DEFAULT_SEQUENTIAL_MAX_NEW_TOKENS,
               emit: Callable[[str], None] = print) -> list[Check]:
    loaded = load_model(checkpoint, device=device, dtype=dtype)
    waveform, rate = read_wav(reference_dir / "input.wav")
    ref_path = reference_dir / "reference.safetensors"
    refs = load_file(str(ref_path))
    mimi_codes = refs.get("mimi.codes")
    ours = compute_all(loaded, waveform, rate, mimi_codes, interleaved_max, sequential_max)
    checks = []
    for name in sorted(refs):
        check = compare(name, ours.get(name), refs[name])
        if name in INPUT_TENSORS and check.ok:
            check = Check(check.name, check.max_abs_diff, check.tolerance, True, "input of the Mimi check")
        checks.append(check)
        emit(check.line())
    with safe_open(str(ref_path), framework="pt") as f:
        meta = f.metadata() or {}
    tok = loaded.tokenizer
    for key, ids_name in (("interleaved_prompt_text", "prefill.text_ids"), ("asr_prompt_text", "asr.text_ids")):
        if key in meta:
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
    parser.add_argument("--interleaved-max-new-tokens", type=int, default=DEFAULT_INTERLEAVED_MAX_NEW_TOKENS)
    parser.add_argument("--sequential-max-new-tokens", type=int, default=DEFAULT_SEQUENTIAL_MAX_NEW_TOKENS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    checks = run_parity(args.checkpoint, args.reference, args.device, args.dtype,
                        args.interleaved_max_new_tokens, args.sequential_max_new_tokens)
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
