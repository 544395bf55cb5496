"""What ``model.parity`` recomputes: every tensor a reference of the official implementation holds.

Three kinds of reference (one fixture may hold several):

* the main model (``mel.*``, ``encoder.*``, ``adapter.*``, ``prefill.*``, ``interleaved.*``,
  ``depthformer.*``, ``sequential.*`` for ASR, ``tts.*``), from the checkpoint and ``input.wav``;
* the LFM2.5 detokenizer (``T{n}.codes`` -> ``T{n}.embedded``, ``.upsampled``, ``.hidden``,
  ``.spectrum_params``, ``.waveform``), whole-sequence AND streamed frame by frame;
* Mimi (``mimi.codes`` -> ``mimi.decode_full``, ``mimi.decode_streaming``).

Generation budgets come from the reference itself: the official generators make one backbone
call per ``step_hidden`` row, so that row count is the ``max_new_tokens`` that reproduces the run
(a run that ended on ``<|im_end|>`` ends there anyway).

A checkpoint folder whose ``seeded.json`` stands in for ``model.safetensors`` (full-size fixtures
too large to commit) is rebuilt from its seed with ``model.seeded``, exactly as the reference
generator (``tools/official/make_reference.py``) built the official model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.chat import TextTokenizer
from model.checkpoint import (
    CONFIG_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    LoadedModel,
    build_model,
    load_audio_decoder,
    load_model,
    parse_device,
)
from model.config import LFM2AudioConfig
from model.detokenizer import (
    DETOKENIZER_DIR,
    LOOKAHEAD_SAMPLES,
    Detokenizer,
    DetokenizerStreams,
    load_detokenizer,
)
from model.generation import Generation, GenerationMode, start_generation
from model.lfm2_audio import Modality
from model.mel import MelFrontend
from model.seeded import AudioRuleSettings, lfm2_audio_rule, materialize, mimi_rule

INTERLEAVED_SYSTEM = "Respond with interleaved text and audio."
ASR_SYSTEM = "Perform ASR."
TTS_SYSTEM = "Perform TTS."
DEFAULT_MAX_NEW_TOKENS = {"interleaved": 48, "sequential": 32, "tts": 32}
SEEDED_FILE = "seeded.json"
_DETOK_CASE = re.compile(r"^T(\d+)\.codes$")
_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def is_seeded(folder: Path) -> bool:
    return (folder / SEEDED_FILE).is_file() and not (folder / WEIGHTS_FILE).is_file()


def load_seeded_model(folder: Path, device: str) -> LoadedModel:
    """A main-model checkpoint whose weights are rebuilt from ``seeded.json`` (fp32 compute)."""
    dev = parse_device(device)
    info = json.loads((folder / SEEDED_FILE).read_text(encoding="utf-8"))
    config = LFM2AudioConfig.from_file(folder / CONFIG_FILE)
    model = build_model(config, dev, torch.float32)
    settings = AudioRuleSettings(**info.get("weights", {}))
    materialize(model, int(info["seed"]), lfm2_audio_rule(settings), _DTYPES[info.get("weights_dtype", "float32")],
                info.get("row_scales", []))
    decoder = mimi = detok = None
    if (folder / "tokenizer-e351c8d8-checkpoint125.safetensors").is_file() or (folder / DETOKENIZER_DIR).is_dir():
        decoder, mimi, detok = load_audio_decoder(folder, "auto", dev, torch.float32)
    return LoadedModel(path=folder, config=config, model=model, tokenizer=TextTokenizer.from_file(folder / TOKENIZER_FILE),
                       mel=MelFrontend(config.preprocessor).to(dev), mimi=mimi, device=dev, dtype=torch.float32,
                       detokenizer=detok, decoder=decoder)


def load_for_parity(folder: Path, device: str, dtype: str) -> LoadedModel:
    if is_seeded(folder):
        return load_seeded_model(folder, device)
    return load_model(folder, device=device, dtype=dtype, load_codec=False)


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


def budget(refs: dict[str, torch.Tensor], prefix: str) -> int:
    rows = refs.get(f"{prefix}.step_hidden")
    return int(rows.shape[0]) if rows is not None and rows.dim() == 2 else DEFAULT_MAX_NEW_TOKENS[prefix]


def tts_prompt(info: dict[str, Any]) -> tuple[str, str] | None:
    """(system prompt, text) of the reference's TTS run, when its reference.json says."""
    gen = info.get("spec", {}).get("generation", {})
    if "tts_text" in gen:
        return str(gen.get("tts_system", TTS_SYSTEM)), str(gen["tts_text"])
    return None


@torch.no_grad()
def compute_main(loaded: LoadedModel, waveform: np.ndarray, refs: dict[str, torch.Tensor],
                 info: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every main-model reference tensor, recomputed. Keys follow the reference names."""
    model, dev = loaded.model, loaded.device
    out: dict[str, torch.Tensor] = {}
    wave_t = torch.from_numpy(waveform)
    out["audio.waveform"] = wave_t
    feats, valid = loaded.mel(wave_t[None].to(dev), torch.tensor([wave_t.shape[0]], device=dev))
    out["mel.features"] = feats[0]
    out["mel.valid_length"] = valid
    inputs = loaded.one_turn_chat(INTERLEAVED_SYSTEM, audio_16k=waveform)
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
    runs = {"interleaved": (inputs, GenerationMode.INTERLEAVED)}
    if any(k.startswith("sequential.") or k.startswith("asr.") for k in refs):
        asr = loaded.one_turn_chat(ASR_SYSTEM, audio_16k=waveform)
        out["asr.text_ids"], out["asr.modality_flag"] = asr["text"], asr["modality_flag"]
        runs["sequential"] = (asr, GenerationMode.SEQUENTIAL)
    if any(k.startswith("tts.") for k in refs):
        prompt = tts_prompt(info)
        if prompt is not None:
            tts = loaded.one_turn_chat(prompt[0], text=prompt[1])
        else:  # no prompt strings: the reference's own prompt ids are the input
            tts = {"text": refs["tts.text_ids"].to(dev), "audio_in": torch.empty(loaded.mel.config.features, 0, device=dev),
                   "audio_in_lens": torch.empty(0, dtype=torch.long, device=dev),
                   "audio_out": torch.empty(model.codebooks, 0, dtype=torch.long, device=dev),
                   "modality_flag": refs["tts.modality_flag"].to(dev)}
        out["tts.text_ids"], out["tts.modality_flag"] = tts["text"], tts["modality_flag"]
        runs["tts"] = (tts, GenerationMode.SEQUENTIAL)
    for prefix, (chat, mode) in runs.items():
        gen = start_generation(model, chat, mode, budget(refs, prefix), keep_logits=True)
        for key, value in run_trace(gen, model.codebooks).items():
            out[f"{prefix}.{key}"] = value
    audio_rows = (out["interleaved.kind"] == int(Modality.AUDIO_OUT)).nonzero()
    if len(audio_rows):
        x = out["interleaved.step_hidden"][int(audio_rows[0])].to(device=dev, dtype=loaded.dtype)
        out["depthformer.input_embedding"] = x
        out["depthformer.depth_linear_output"] = model.depth_linear(x).view(model.codebooks, -1)
        codes, logits = model.sample_audio_frame(x, keep_logits=True)
        assert logits is not None
        out["depthformer.logits"] = logits
        out["depthformer.codes"] = codes
    return out


def detokenizer_cases(refs: dict[str, torch.Tensor]) -> list[int]:
    return sorted(int(m.group(1)) for k in refs if (m := _DETOK_CASE.match(k)))


@torch.no_grad()
def compute_detokenizer(detok: Detokenizer, refs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole-sequence intermediates and waveform, and the streamed waveform (``T{n}.waveform[streamed]``:
    the stream minus its first 480 samples, plus its flushed tail)."""
    out: dict[str, torch.Tensor] = {}
    cases = detokenizer_cases(refs)
    for n in cases:
        codes = refs[f"T{n}.codes"]
        keep: dict[str, torch.Tensor] = {}
        out[f"T{n}.codes"] = codes
        out[f"T{n}.waveform"] = detok(codes, keep)
        for key, value in keep.items():
            out[f"T{n}.{key}"] = value
    streams = DetokenizerStreams(detok, capacity=len(cases))
    slots = {n: streams.open() for n in cases}
    pieces: dict[int, list[torch.Tensor]] = {n: [] for n in cases}
    for t in range(max(cases, default=0)):  # all cases decode together, one batched step per frame
        live = [n for n in cases if t < n]
        codes = torch.stack([refs[f"T{n}.codes"][0, :, t] for n in live])
        audio = streams.step([slots[n] for n in live], codes)
        for row, n in enumerate(live):
            pieces[n].append(audio[row])
            if t == n - 1:
                pieces[n].append(streams.flush([slots[n]])[0])
    for n in cases:
        stream = torch.cat(pieces[n])
        lead = stream[:LOOKAHEAD_SAMPLES]
        out[f"T{n}.waveform[streamed]"] = stream[LOOKAHEAD_SAMPLES:][None]
        out[f"T{n}.stream_lead[zeros]"] = lead
    return out


def load_parity_mimi(folder: Path, device: str) -> Any:
    """The checkpoint's Mimi: its weights file (and mimi_config.json), or the real-size Mimi with the
    seeded weights of ``seeded.json``."""
    from model.checkpoint import load_mimi_codec
    from model.mimi import Mimi, MimiConfig

    dev = parse_device(device)
    if is_seeded(folder) and json.loads((folder / SEEDED_FILE).read_text()).get("mimi") == "real-size":
        info = json.loads((folder / SEEDED_FILE).read_text())
        mimi = Mimi(MimiConfig.default()).to(dev).eval()
        materialize(mimi, int(info["seed"]), mimi_rule())
        return mimi
    return load_mimi_codec(folder, dev)


@torch.no_grad()
def compute_mimi(mimi: Any, refs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    codes = refs["mimi.codes"].to(dtype=torch.long)[None]
    out = {"mimi.codes": refs["mimi.codes"], "mimi.decode_full": mimi.decode(codes)}
    state = mimi.new_decoder_state(1)
    pieces = [mimi.decode_step(codes[:, :, i : i + 1], state) for i in range(codes.shape[-1])]
    out["mimi.decode_streaming"] = torch.cat(pieces, dim=-1)
    return out


def load_parity_detokenizer(folder: Path, device: str) -> Detokenizer:
    return load_detokenizer(folder / DETOKENIZER_DIR, parse_device(device), torch.float32)
