"""Make a parity fixture with the OFFICIAL LFM2-Audio implementation (liquid-audio 1.3.0).

Runs in the scratch environment of ``tools/official/setup_env.sh`` (never in lfm-call's own):

    .official-venv/bin/python tools/official/make_reference.py SPEC.json OUT_DIR

SPEC.json says what to build (``tests/fixtures/*/spec.json`` are the specs of the committed fixtures):

* ``kind``: ``"lfm2-audio"`` (the main model, optionally with ``audio_detokenizer/``),
  ``"detokenizer"`` (an LFM2.5 detokenizer alone) or ``"mimi"`` (the real-size Mimi codec);
* ``seed`` and the weight rules (``model.seeded``): every weight comes from (seed, tensor name), so
  the same values can be rebuilt by anyone; ``store_weights: false`` writes only ``seeded.json``
  (for full-size fixtures too large to commit), ``weights_dtype`` the dtype of the stored file;
* ``config`` (the checkpoint's ``config.json``), ``detokenizer`` (its ``config.json`` and cases),
  the input sentence (espeak-ng), the tokenizer and Mimi files to copy, generation lengths;
* ``branch_rows``: rows whose scale the generator may raise so that the short greedy runs visit the
  control-flow branches (end of audio, ``<|text_end|>``, ``<|audio_start|>``, ``<|im_end|>``).
  The scales chosen are recorded in ``seeded.json`` / ``reference.json`` (``row_scales``).

Outputs: ``OUT_DIR/checkpoint/`` in the official on-disk layout and ``OUT_DIR/reference/``
(``input.wav``, ``reference.safetensors``, ``reference.json``), with the tensor names documented in
``tests/fixtures/lfm2-audio-tiny/reference/README.md`` plus ``tts.*`` (sequential TTS run),
``T{n}.*`` (detokenizer cases) and ``mimi.*``. Everything runs on CPU, float32 compute, greedy
decoding, one torch thread.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import wave
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from model.seeded import (  # noqa: E402  (the project's seeded weights, shared with the tests)
    AudioRuleSettings,
    detokenizer_rule,
    lfm2_audio_rule,
    materialize,
    mimi_rule,
    row_mask,
    uniform,
)

MIMI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"
EOA = 2048
TEXT_END, AUDIO_START, IM_END = 130, 128, 7


# -- weights -------------------------------------------------------------------------------------------


def save_state(module: torch.nn.Module, path: Path, dtype: torch.dtype) -> None:
    state = {}
    for name, t in module.state_dict(keep_vars=False).items():
        t = t.detach().clone().contiguous()
        state[name] = t.to(dtype) if t.is_floating_point() else t
    save_file(state, str(path), metadata={"format": "pt"})


def dtype_of(name: str) -> torch.dtype:
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[name]


# -- input audio -----------------------------------------------------------------------------------------


def espeak_wav(text: str, voice: str, speed: int, path: Path) -> np.ndarray:
    """espeak-ng speech as 16 kHz mono int16 (sox, no dither), leading silence trimmed."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True)
        subprocess.run(["sox", str(raw), "-D", "-r", "16000", "-c", "1", "-b", "16", str(path),
                        "silence", "1", "0.01", "0.5%"], check=True)
    with wave.open(str(path), "rb") as f:
        return np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").copy()


# -- tracing the official generators -----------------------------------------------------------------


class Tracer:
    """Observes the official model's backbone outputs and greedy logits (changes nothing)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.hidden: list[torch.Tensor] = []
        self.text_logits: list[torch.Tensor] = []
        self.depth_logits: list[torch.Tensor] = []
        self._handles: list[Any] = []
        self._originals: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> Tracer:
        def on_lfm(_module: Any, _inputs: Any, output: Any) -> None:
            self.hidden.append(output.last_hidden_state[0, -1].detach().clone())

        self._handles.append(self.model.lfm.register_forward_hook(on_lfm))
        original_text = self.model._sample_text_token

        def sample_text(logits: torch.Tensor, **kw: Any) -> torch.Tensor:
            self.text_logits.append(logits.detach().clone())
            return original_text(logits, **kw)

        self._patch(self.model, "_sample_text_token", sample_text)
        for emb in self.model.depth_embeddings:
            original = emb.get_logits

            def get_logits(x: torch.Tensor, _orig: Any = original) -> torch.Tensor:
                out = _orig(x)
                self.depth_logits.append(out.detach().clone())
                return out

            self._patch(emb, "get_logits", get_logits)
        return self

    def _patch(self, obj: Any, name: str, value: Any) -> None:
        self._originals.append((obj, name, obj.__dict__.get(name)))
        setattr(obj, name, value)

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        for obj, name, old in reversed(self._originals):
            if old is None:
                delattr(obj, name)
            else:
                setattr(obj, name, old)


def top2(logits: torch.Tensor) -> torch.Tensor:
    top = torch.topk(logits.float(), 2, dim=-1).values
    return top[..., 0] - top[..., 1]


def run_generator(model: Any, chat: Any, mode: str, max_new_tokens: int, codebooks: int) -> dict[str, torch.Tensor]:
    """Every yielded item, its greedy margin and the backbone output of every generator call."""
    gen = model.generate_interleaved if mode == "interleaved" else model.generate_sequential
    rows, kinds, margins = [], [], []
    with Tracer(model) as tr:
        for item in gen(**chat, max_new_tokens=max_new_tokens):
            item = item.reshape(-1).cpu()
            if item.numel() == 1:
                rows.append([int(item[0])] + [-1] * (codebooks - 1))
                kinds.append(1)
                margins.append(float(top2(tr.text_logits[-1])))
            else:
                rows.append([int(x) for x in item])
                kinds.append(3)
                margins.append(float(torch.stack([top2(x) for x in tr.depth_logits[-codebooks:]]).min()))
        extra = float(top2(tr.text_logits[-1])) if len(tr.hidden) > len(rows) and tr.text_logits else None
    return {
        "tokens": torch.tensor(rows, dtype=torch.long).reshape(-1, codebooks),
        "kind": torch.tensor(kinds, dtype=torch.long),
        "margin": torch.tensor(margins, dtype=torch.float32),
        "step_hidden": torch.stack(tr.hidden).float(),
        "_unyielded_margin": torch.tensor([] if extra is None else [extra]),
    }


def trace_string(trace: dict[str, torch.Tensor]) -> str:
    out = []
    for row, kind in zip(trace["tokens"].tolist(), trace["kind"].tolist(), strict=True):
        out.append(f"T{row[0]}" if kind == 1 else ("EOA" if row[0] == EOA else "A"))
    return " ".join(out)


# -- the main model ----------------------------------------------------------------------------------------


def official_model(config: dict[str, Any]) -> Any:
    from liquid_audio.model.conformer.encoder import ConformerEncoderConfig
    from liquid_audio.model.lfm2_audio import DepthformerConfig, LFM2AudioConfig, LFM2AudioModel
    from liquid_audio.processor import PreprocessorConfig
    from transformers import Lfm2Config

    cfg = json.loads(json.dumps(config))
    conf = LFM2AudioConfig(
        lfm=Lfm2Config(**cfg.pop("lfm")),
        encoder=ConformerEncoderConfig(**cfg.pop("encoder")),
        depthformer=DepthformerConfig(**cfg.pop("depthformer")),
        preprocessor=PreprocessorConfig(**cfg.pop("preprocessor")),
        **cfg,
    )
    return LFM2AudioModel(conf).eval()


def rule_settings(spec: dict[str, Any]) -> AudioRuleSettings:
    cfg = spec["config"]
    return AudioRuleSettings(codebooks=cfg["codebooks"], depth_tied=cfg["depthformer"]["tie"],
                             **spec.get("weights", {}))


def seeded_model(spec: dict[str, Any], row_scales: list[dict[str, Any]]) -> Any:
    model = official_model(spec["config"])
    dtype = dtype_of(spec.get("weights_dtype", "float32"))
    unfilled = materialize(model, spec["seed"], lfm2_audio_rule(rule_settings(spec)), dtype, row_scales)
    unfilled = [n for n in unfilled if n != "audio_loss_weights"]
    assert not unfilled, f"tensors the rule left out: {unfilled}"
    return model


def build_chat(processor: Any, system: str, wave16k: torch.Tensor | None, text: str | None) -> Any:
    from liquid_audio import ChatState

    chat = ChatState(processor, dtype=torch.float32)
    chat.new_turn("system")
    chat.add_text(system)
    chat.end_turn()
    chat.new_turn("user")
    if wave16k is not None:
        chat.add_audio(wave16k[None], 16000)
    if text is not None:
        chat.add_text(text)
    chat.end_turn()
    chat.new_turn("assistant")
    return chat


def coverage(traces: dict[str, str]) -> int:
    """How well the three traces visit the control flow: the interleaved run must speak (a full audio
    block and text after it) before anything else counts; then end-of-audio, <|text_end|>, an ended
    interleaved run, and <|audio_start|> / end-of-audio / <|im_end|> in the sequential runs."""
    inter, asr, tts = traces["interleaved"].split(), traces["sequential"].split(), traces["tts"].split()
    first_audio = inter.index("A") if "A" in inter else len(inter)
    audio = sum(1 for t in inter if t == "A")
    text_after = any(t.startswith("T") for t in inter[first_audio:])
    hard = (audio >= 12) + text_after
    soft = ("EOA" in inter) + (f"T{TEXT_END}" in inter) + (len(inter) > 0 and inter[-1] != "A")
    soft += (f"T{AUDIO_START}" in asr) + ("EOA" in asr) + (len(asr) > 0 and asr[-1] == f"T{IM_END}")
    soft += (f"T{AUDIO_START}" in tts) + ("EOA" in tts)
    return 10 * hard + soft


def generate_all(model: Any, processor: Any, spec: dict[str, Any], wave16k: torch.Tensor) -> dict[str, Any]:
    gen = spec["generation"]
    k = spec["config"]["codebooks"]
    return {
        "interleaved": run_generator(model, build_chat(processor, "Respond with interleaved text and audio.", wave16k, None),
                                     "interleaved", gen["interleaved_max_new_tokens"], k),
        "sequential": run_generator(model, build_chat(processor, "Perform ASR.", wave16k, None),
                                    "sequential", gen["sequential_max_new_tokens"], k),
        "tts": run_generator(model, build_chat(processor, gen["tts_system"], None, gen["tts_text"]),
                             "sequential", gen["tts_max_new_tokens"], k),
    }


def search_row_scales(spec: dict[str, Any], processor: Any, wave16k: torch.Tensor) -> list[dict[str, Any]]:
    """For each branch row in turn, the scale (or none) that gives the best coverage (deterministic)."""
    chosen: list[dict[str, Any]] = []
    model = seeded_model(spec, chosen)
    best = coverage({k: trace_string(v) for k, v in generate_all(model, processor, spec, wave16k).items()})
    print(f"coverage without edits: {best}", flush=True)
    for row in spec.get("branch_rows", []):
        pick = None
        for scale in row["scales"]:
            trial = [*chosen, {"tensor": row["tensor"], "row": row["row"], "scale": scale}]
            model = seeded_model(spec, trial)
            traces = {k: trace_string(v) for k, v in generate_all(model, processor, spec, wave16k).items()}
            score = coverage(traces)
            print(f"  {row['tensor']}[{row['row']}] x{scale}: coverage {score}", flush=True)
            if score > best:
                best, pick = score, trial
        if pick is not None:
            chosen = pick
    print(f"coverage {best} (max 28) with row scales {chosen}", flush=True)
    return chosen


def make_lfm2_audio(spec: dict[str, Any], out: Path) -> None:
    from liquid_audio import LFM2AudioModel, LFM2AudioProcessor

    ckpt, ref = out / "checkpoint", out / "reference"
    ckpt.mkdir(parents=True, exist_ok=True)
    ref.mkdir(parents=True, exist_ok=True)
    (ckpt / "config.json").write_text(json.dumps(spec["config"], indent=2) + "\n")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(REPO / spec["tokenizer_from"] / name, ckpt / name)
    if spec.get("mimi_from"):
        for name in (MIMI_FILE, "mimi_config.json"):
            shutil.copy(REPO / spec["mimi_from"] / name, ckpt / name)
    inp = spec["input"]
    pcm = espeak_wav(inp["text"], inp["voice"], inp["speed"], ref / "input.wav")
    wave16k = torch.from_numpy(pcm.astype(np.float32) / 32768.0)
    processor = LFM2AudioProcessor.from_pretrained(ckpt, device="cpu").eval()

    row_scales = search_row_scales(spec, processor, wave16k)
    model = seeded_model(spec, row_scales)
    weights_dtype = dtype_of(spec.get("weights_dtype", "float32"))
    weights_dir = ckpt if spec.get("store_weights", True) else Path(tempfile.mkdtemp(prefix="lfm-ref-"))
    if weights_dir != ckpt:
        for f in ckpt.iterdir():
            shutil.copy(f, weights_dir / f.name) if f.is_file() else None
    save_state(model, weights_dir / "model.safetensors", weights_dtype)
    seeded = {"seed": spec["seed"], "weights_dtype": spec.get("weights_dtype", "float32"),
              "weights": asdict(rule_settings(spec)), "row_scales": row_scales}
    (ckpt / "seeded.json").write_text(json.dumps(seeded, indent=2) + "\n")
    del model

    # the reference itself: the official loader on the written checkpoint
    model = LFM2AudioModel.from_pretrained(weights_dir, dtype=torch.float32, device="cpu").eval()
    tensors: dict[str, torch.Tensor] = {"audio.waveform": wave16k}
    mel, valid = processor.audio(wave16k[None], torch.tensor([wave16k.shape[0]]))
    tensors["mel.features"] = mel[0]
    tensors["mel.valid_length"] = valid.reshape(1).long()
    chat = build_chat(processor, "Respond with interleaved text and audio.", wave16k, None)
    tensors["prefill.audio_in_lens"] = chat.audio_in_lens.clone()
    tensors["prefill.text_ids"] = chat.text.clone()
    tensors["prefill.modality_flag"] = chat.modality_flag.clone()
    seen: dict[str, Any] = {}
    hooks = [model.conformer.register_forward_hook(lambda m, i, o, s=seen: s.__setitem__("enc", o)),
             model.audio_adapter.register_forward_hook(lambda m, i, o, s=seen: s.__setitem__("adapter", o))]
    with torch.no_grad():
        embeds = model._prefill(text=chat.text, audio_in=chat.audio_in, audio_in_lens=chat.audio_in_lens,
                                audio_out=chat.audio_out, modality_flag=chat.modality_flag)
    for h in hooks:
        h.remove()
    tensors["encoder.output"], tensors["encoder.output_lengths"] = seen["enc"][0], seen["enc"][1].long()
    tensors["adapter.output"] = seen["adapter"]
    tensors["prefill.input_embeds"] = embeds
    with torch.no_grad():
        hidden = model.lfm(inputs_embeds=embeds, use_cache=False).last_hidden_state
    tensors["prefill.last_hidden_state"] = hidden
    tensors["prefill.text_logits_last"] = torch.nn.functional.linear(hidden[0, -1], model.lfm.embed_tokens.weight)

    runs = generate_all(model, processor, spec, wave16k)
    margins_left: dict[str, list[float]] = {}
    for prefix, trace in runs.items():
        margins_left[prefix] = trace.pop("_unyielded_margin").tolist()
        for key, value in trace.items():
            tensors[f"{prefix}.{key}"] = value
    audio_rows = (tensors["interleaved.kind"] == 3).nonzero()
    if len(audio_rows):
        x = tensors["interleaved.step_hidden"][int(audio_rows[0])]
        with torch.no_grad(), Tracer(model) as tr:
            codes = model._sample_audio_frame(x)
            tensors["depthformer.input_embedding"] = x
            tensors["depthformer.depth_linear_output"] = model.depth_linear(x).view(model.codebooks, -1)
        tensors["depthformer.logits"] = torch.stack(tr.depth_logits)
        tensors["depthformer.codes"] = codes.reshape(-1).long()
    asr = build_chat(processor, "Perform ASR.", wave16k, None)
    tensors["asr.text_ids"], tensors["asr.modality_flag"] = asr.text.clone(), asr.modality_flag.clone()
    tts = build_chat(processor, spec["generation"]["tts_system"], None, spec["generation"]["tts_text"])
    tensors["tts.text_ids"], tensors["tts.modality_flag"] = tts.text.clone(), tts.modality_flag.clone()

    meta = {
        "interleaved_prompt_text": processor.text.decode(chat.text[0]),
        "asr_prompt_text": processor.text.decode(asr.text[0]),
        "tts_prompt_text": processor.text.decode(tts.text[0]),
    }
    detok_cases = make_detokenizer_part(spec, ckpt, tensors) if spec.get("detokenizer") else None
    write_reference(ref, tensors, meta, {
        "spec": spec, "row_scales": row_scales,
        "traces": {k: trace_string({"tokens": tensors[f"{k}.tokens"], "kind": tensors[f"{k}.kind"]}) for k in runs},
        "min_margin": {k: float(tensors[f"{k}.margin"].min()) if tensors[f"{k}.margin"].numel() else None for k in runs},
        "unyielded_margin": margins_left, "detokenizer_cases": detok_cases, **meta,
    })
    if weights_dir != ckpt:
        shutil.rmtree(weights_dir)


# -- the LFM2.5 detokenizer ---------------------------------------------------------------------------------


def official_detokenizer(ckpt: Path) -> Any:
    """What ``LFM2AudioProcessor.audio_detokenizer`` does, minus its ``.cuda()`` (CPU here)."""
    from liquid_audio.detokenizer import LFM2AudioDetokenizer
    from safetensors.torch import load_file
    from transformers import Lfm2Config

    cfg = Lfm2Config.from_pretrained(ckpt / "audio_detokenizer" / "config.json")
    cfg.layer_types = ["full_attention" if t == "sliding_attention" else t for t in cfg.layer_types]
    detok = LFM2AudioDetokenizer(cfg).eval()
    detok.load_state_dict(load_file(ckpt / "audio_detokenizer" / "model.safetensors"))
    return detok.eval()


def make_detokenizer_part(spec: dict[str, Any], ckpt: Path, tensors: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    from liquid_audio.detokenizer import LFM2AudioDetokenizer
    from transformers import Lfm2Config

    d = spec["detokenizer"]
    folder = ckpt / "audio_detokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(d["config"], indent=2) + "\n")
    cfg = Lfm2Config.from_pretrained(folder / "config.json")
    cfg.layer_types = ["full_attention" if t == "sliding_attention" else t for t in cfg.layer_types]
    module = LFM2AudioDetokenizer(cfg).eval()
    dtype = dtype_of(d.get("weights_dtype", "float32"))
    rows = d.get("embedding_rows")
    materialize(module, d["seed"], detokenizer_rule(rows), dtype)
    save_state(module, folder / "model.safetensors", dtype)
    (folder / "seeded.json").write_text(json.dumps({"seed": d["seed"], "weights_dtype": d.get("weights_dtype", "float32"),
                                                    "embedding_rows": rows}, indent=2) + "\n")
    detok = official_detokenizer(ckpt)
    cases = []
    for n in d["frames"]:
        codes = detokenizer_codes(d["seed"], n, rows)
        seen: dict[str, torch.Tensor] = {}
        hooks = [
            detok.emb.register_forward_hook(lambda m, i, o, s=seen: s.__setitem__("embedded", o)),
            detok.lfm.register_forward_pre_hook(lambda m, a, kw, s=seen: s.__setitem__("upsampled", kw["inputs_embeds"]),
                                                with_kwargs=True),
            detok.lfm.register_forward_hook(lambda m, i, o, s=seen: s.__setitem__("hidden", o.last_hidden_state)),
            detok.lin.register_forward_hook(lambda m, i, o, s=seen: s.__setitem__("spectrum_params", o)),
        ]
        with torch.no_grad():
            waveform = detok(codes)
        for h in hooks:
            h.remove()
        tensors[f"T{n}.codes"] = codes
        for key in ("embedded", "upsampled", "hidden", "spectrum_params"):
            tensors[f"T{n}.{key}"] = seen[key].float()
        tensors[f"T{n}.waveform"] = waveform.float()
        cases.append({"frames": n, "samples": int(waveform.shape[-1]), "rms": float(waveform.pow(2).mean().sqrt()),
                      "peak": float(waveform.abs().max())})
        print(f"  detokenizer T={n}: {waveform.shape[-1]} samples, rms {cases[-1]['rms']:.4f}", flush=True)
    return cases


def detokenizer_codes(seed: int, frames: int, rows: int | None) -> torch.Tensor:
    """Test codes [1, 8, frames]: from the rows the sparse embedding keeps (all rows when dense)."""
    u = uniform(seed, f"codes#{frames}", 8 * frames).reshape(8, frames)
    out = np.zeros((8, frames), dtype=np.int64)
    for c in range(8):
        allowed = np.arange(2048) if rows is None else np.nonzero(
            row_mask(seed, f"emb.emb.weight#cb{c}", 2048, rows))[0]
        out[c] = allowed[(u[c] * len(allowed)).astype(np.int64)]
    return torch.from_numpy(out)[None]


def make_detokenizer(spec: dict[str, Any], out: Path) -> None:
    ckpt, ref = out / "checkpoint", out / "reference"
    ckpt.mkdir(parents=True, exist_ok=True)
    ref.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    cases = make_detokenizer_part(spec, ckpt, tensors)
    write_reference(ref, tensors, {}, {"spec": spec, "cases": cases})


# -- the real-size Mimi ----------------------------------------------------------------------------------------


def make_mimi(spec: dict[str, Any], out: Path) -> None:
    from liquid_audio.moshi.models.loaders import get_mimi

    ckpt, ref = out / "checkpoint", out / "reference"
    ckpt.mkdir(parents=True, exist_ok=True)
    ref.mkdir(parents=True, exist_ok=True)
    mimi = get_mimi(None, device="cpu")
    left = materialize(mimi, spec["seed"], mimi_rule())
    assert not left, f"Mimi tensors the rule left out: {left}"
    frames = spec["frames"]
    u = uniform(spec["seed"], "mimi.codes", 8 * frames)
    codes = torch.from_numpy((u * 2048).astype(np.int64).reshape(8, frames))
    with torch.no_grad():
        full = mimi.decode(codes[None])
        with mimi.streaming(1):
            streamed = torch.cat([mimi.decode(codes[None, :, i : i + 1]) for i in range(frames)], dim=-1)
    tensors = {"mimi.codes": codes, "mimi.decode_full": full.float(), "mimi.decode_streaming": streamed.float()}
    (ckpt / "seeded.json").write_text(json.dumps({"seed": spec["seed"], "mimi": "real-size"}, indent=2) + "\n")
    write_reference(ref, tensors, {}, {"spec": spec, "rms": float(full.pow(2).mean().sqrt()),
                                       "peak": float(full.abs().max())})
    print(f"  mimi: {frames} frames, rms {float(full.pow(2).mean().sqrt()):.4f}", flush=True)


# -- output ------------------------------------------------------------------------------------------------------


def write_reference(ref: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str], info: dict[str, Any]) -> None:
    import transformers

    clean = {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}
    clean = {k: (v.float() if v.is_floating_point() else v.long()) for k, v in clean.items()}
    save_file(clean, str(ref / "reference.safetensors"), metadata=meta or None)
    info = {**info, "official": "liquid-audio 1.3.0 (tools/official/setup_env.sh)", "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "tensors": {k: list(v.shape) for k, v in sorted(clean.items())}}
    (ref / "reference.json").write_text(json.dumps(info, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = json.loads(args.spec.read_text())
    kind = spec["kind"]
    if kind == "lfm2-audio":
        make_lfm2_audio(spec, args.out)
    elif kind == "detokenizer":
        make_detokenizer(spec, args.out)
    elif kind == "mimi":
        make_mimi(spec, args.out)
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    shutil.copy(args.spec, args.out / "reference" / "spec.json")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
