"""Checkpoint resolution and loading (LiquidAI/LFM2-Audio-1.5B and LFM2.5-Audio-1.5B on-disk layouts).

A checkpoint is a folder with ``config.json``, ``model.safetensors`` (bf16 or fp32),
``tokenizer.json`` and an audio decoder: the Mimi weights
``tokenizer-e351c8d8-checkpoint125.safetensors`` (plus an optional ``mimi_config.json`` for a
non-default Mimi), the LFM2.5 detokenizer ``audio_detokenizer/`` (``config.json``,
``model.safetensors``), or both; ``model.audio_decoder`` picks one (``model.audio_decoder``
module). ``resolve_checkpoint`` accepts a local folder or a Hugging Face repo id. ``load_model`` builds the network on the meta device, checks
every key and shape of the file (missing, unexpected and mis-shaped keys are reported together),
then materialises it on the target device. Tied aliases (``depth_embeddings.{i}.to_logits.weight``)
and the registered buffers may be present or absent.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.audio_decoder import AudioDecoder, select_audio_decoder
from model.chat import ChatState, TextTokenizer
from model.config import LFM2AudioConfig
from model.detokenizer import DETOKENIZER_DIR, Detokenizer, load_detokenizer
from model.errors import CheckpointError, ConfigError
from model.lfm2_audio import AUDIO_VOCAB_SIZE, LFM2AudioModel
from model.mel import MelFrontend
from model.weights_file import copy_weights

log = logging.getLogger(__name__)

DEFAULT_REPO = "LiquidAI/LFM2.5-Audio-1.5B"
KNOWN_REPOS = ("LiquidAI/LFM2.5-Audio-1.5B", "LiquidAI/LFM2-Audio-1.5B")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
MIMI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"
MIMI_CONFIG_FILE = "mimi_config.json"
_DOWNLOAD_PATTERNS = [CONFIG_FILE, WEIGHTS_FILE, "tokenizer*.json", "special_tokens_map.json", MIMI_FILE, MIMI_CONFIG_FILE,
                      "audio_detokenizer/*"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_OPTIONAL_BUFFER = re.compile(r"(^codebook_offsets$|^audio_loss_weights$|\.running_mean$|\.running_var$|\.num_batches_tracked$)")

_DTYPES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16,
}


def parse_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Default: bfloat16 on CUDA, float32 elsewhere."""
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(_DTYPES)}") from None


def parse_device(name: str | torch.device | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def resolve_checkpoint(ref: str | Path, local_files_only: bool | None = None) -> Path:
    """A local checkpoint folder, or a Hugging Face repo id (downloaded into the HF cache)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    text = str(ref)
    if path.exists():
        raise CheckpointError(f"{path}: checkpoint must be a folder, not a file")
    if not _REPO_ID.match(text) or text.startswith((".", "/", "~")):
        raise CheckpointError(f"{text}: checkpoint folder not found (and not a Hugging Face repo id)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - dependency is declared
        raise CheckpointError(f"{text}: huggingface_hub is needed to fetch a repo id") from exc
    hint = f"download it first with `huggingface-cli download {text}` (or pass a local folder)"
    attempts = [True] if local_files_only else [True, False]
    if local_files_only is False:
        attempts = [False]
    last: Exception | None = None
    for offline in attempts:
        try:
            return Path(snapshot_download(text, allow_patterns=_DOWNLOAD_PATTERNS, local_files_only=offline))
        except Exception as exc:  # network, auth, missing cache entry: all reported the same way
            last = exc
    raise CheckpointError(f"cannot fetch Hugging Face repo {text!r} ({type(last).__name__}: {last}); {hint}")


def _optional_keys(config: LFM2AudioConfig) -> set[str]:
    keys = set()
    if config.depthformer.tie:
        keys |= {f"depth_embeddings.{i}.to_logits.weight" for i in range(config.codebooks)}
    if config.tie_audio_embeddings:
        keys.add("audio_embedding.to_logits.weight")
    return keys


def build_model(config: LFM2AudioConfig, device: str | torch.device = "meta", dtype: torch.dtype = torch.float32) -> LFM2AudioModel:
    """The network with uninitialised (``meta``: shape-only) weights on ``device``."""
    with torch.device("meta"):
        model = LFM2AudioModel(config)
    model = model.to(dtype=dtype)
    if torch.device(device).type != "meta":
        model = model.to_empty(device=device)
        _reset_buffers(model)
    for emb in [model.audio_embedding, *model.depth_embeddings]:
        emb.tie_weights()  # type: ignore[operator]
    return model.eval()


def _reset_buffers(model: LFM2AudioModel) -> None:
    """Values of buffers a checkpoint may omit."""
    cfg = model.config
    with torch.no_grad():
        model.codebook_offsets.copy_(torch.arange(cfg.codebooks) * AUDIO_VOCAB_SIZE)
        if cfg.codebook_weight == "log":
            weights = (torch.linspace(1, 0, cfg.codebooks) * math.log(cfg.semantic_codebook_factor)).exp()
        else:
            weights = torch.ones(cfg.codebooks)
            weights[0] *= cfg.semantic_codebook_factor
        model.audio_loss_weights.copy_(weights)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.reset_running_stats()


def load_weights(model: LFM2AudioModel, path: Path) -> None:
    """Copy ``path`` into ``model`` strictly (aliases and buffers optional); one error lists every problem."""
    targets = dict(model.named_parameters(remove_duplicate=False))
    targets.update(dict(model.named_buffers()))
    targets = {k: v for k, v in targets.items() if k in model.state_dict()}
    aliases = _optional_keys(model.config)
    copy_weights(path, targets, optional=lambda k: k in aliases or bool(_OPTIONAL_BUFFER.search(k)),
                 aliases=lambda k: k in aliases)


@dataclass
class LoadedModel:
    """Everything needed to run LFM2-Audio: network, tokenizer, mel front end, audio decoder."""

    path: Path
    config: LFM2AudioConfig
    model: LFM2AudioModel
    tokenizer: TextTokenizer
    mel: MelFrontend
    mimi: Any  # the Mimi codec when it is the audio decoder in use (else None)
    device: torch.device
    dtype: torch.dtype
    detokenizer: Detokenizer | None = None  # the LFM2.5 detokenizer when it is in use
    decoder: AudioDecoder | None = None  # what turns codes into audio (None: loaded without one)

    def new_chat(self) -> ChatState:
        """An empty chat (starts with ``<|startoftext|>``); mel features kept in float32."""
        return ChatState(self.tokenizer, self.mel, self.config.codebooks, self.config.encoder.subsampling_factor,
                         device=self.device, dtype=torch.float32)

    def one_turn_chat(self, system: str, *, audio_16k: np.ndarray | None = None,
                      text: str | None = None) -> dict[str, torch.Tensor]:
        """Model inputs of system prompt, one user turn (audio at 16 kHz or text), assistant header."""
        chat = self.new_chat()
        chat.new_turn("system")
        chat.add_text(system)
        chat.end_turn()
        chat.new_turn("user")
        if audio_16k is not None:
            chat.add_audio(audio_16k, self.mel.config.sample_rate)
        if text is not None:
            chat.add_text(text)
        chat.end_turn()
        chat.new_turn("assistant")
        return chat.model_inputs()


def load_mimi_codec(folder: Path, device: torch.device) -> Any:
    """The Mimi decoder from the checkpoint folder (real architecture unless mimi_config.json says otherwise)."""
    weights = folder / MIMI_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: Mimi weights file not found")
    from model.mimi import MimiConfig, load_mimi

    config_path = folder / MIMI_CONFIG_FILE
    mimi_config = None
    if config_path.is_file():
        try:
            mimi_config = MimiConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(f"{config_path}: invalid Mimi config: {exc}") from exc
    try:
        return load_mimi(weights, mimi_config, device=str(device), dtype=torch.float32)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{weights}: cannot load Mimi weights: {exc}") from exc


def has_mimi(folder: Path) -> bool:
    return (folder / MIMI_FILE).is_file()


def has_detokenizer(folder: Path) -> bool:
    return (folder / DETOKENIZER_DIR / CONFIG_FILE).is_file() and (folder / DETOKENIZER_DIR / WEIGHTS_FILE).is_file()


def load_audio_decoder(folder: Path, choice: str, device: torch.device,
                       dtype: torch.dtype) -> tuple[AudioDecoder, Any, Detokenizer | None]:
    """The decoder ``choice`` (auto | mimi | detokenizer) selects, loaded: (decoder, mimi, detokenizer)."""
    detok = mimi = None
    wants_detok = choice in ("auto", "detokenizer") and has_detokenizer(folder)
    if wants_detok:
        try:
            detok = load_detokenizer(folder / DETOKENIZER_DIR, device, torch.float32 if device.type == "cpu" else dtype)
        except ConfigError as exc:
            raise CheckpointError(str(exc)) from None
    elif choice in ("auto", "mimi") and has_mimi(folder):
        mimi = load_mimi_codec(folder, device)
    return select_audio_decoder(choice, mimi, detok, str(folder)), mimi, detok


def load_model(ref: str | Path = DEFAULT_REPO, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None, load_codec: bool = True,
               audio_decoder: str = "auto") -> LoadedModel:
    """Resolve, check and load a checkpoint onto ``device`` (cuda/bf16 default when available, else cpu/fp32).

    ``audio_decoder`` (auto | mimi | detokenizer) chooses what turns codes into audio; with
    ``load_codec=False`` none is loaded.
    """
    dev = parse_device(device)
    dt = parse_dtype(dtype, dev)
    folder = resolve_checkpoint(ref)
    config = LFM2AudioConfig.from_file(folder / CONFIG_FILE)
    tokenizer = TextTokenizer.from_file(folder / TOKENIZER_FILE)
    model = build_model(config, dev, dt)
    load_weights(model, folder / WEIGHTS_FILE)
    mel = MelFrontend(config.preprocessor).to(dev)
    decoder, mimi, detok = (None, None, None)
    if load_codec:
        decoder, mimi, detok = load_audio_decoder(folder, audio_decoder, dev, dt)
    log.info("loaded %s on %s (%s), audio decoder %s", folder, dev, dt, decoder.name if decoder else "none")
    return LoadedModel(path=folder, config=config, model=model, tokenizer=tokenizer, mel=mel, mimi=mimi,
                       device=dev, dtype=dt, detokenizer=detok, decoder=decoder)
