"""A tiny random LFM2-Audio checkpoint in the official on-disk layout (tests and the offline demo).

``make_tiny_checkpoint(out_dir, seed)`` writes ``config.json`` (tiny sizes, every switch as in the
real model), ``model.safetensors`` (float32, with the tied aliases and buffers), a stand-in
byte-level BPE tokenizer with the LFM2 special tokens at their real ids 0..133, and a tiny Mimi
(``mimi_config.json`` + weights) and a small LFM2.5 detokenizer (``audio_detokenizer/``). Weights follow the parity fixture's recipe (non-trivial norms,
the final norm x6 and the depth norms x30 so greedy decisions have margins); then ``<|im_end|>``'s
row is nudged until a probe interleaved chat emits audio frames and ends, so demos terminate.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from model.chat import AUDIO_START as AUDIO_START_ID
from model.chat import IM_END as IM_END_ID
from model.chat import ChatState, TextTokenizer
from model.checkpoint import MIMI_CONFIG_FILE, MIMI_FILE
from model.config import LFM2AudioConfig
from model.detokenizer import (
    DETOKENIZER_DIR,
    Detokenizer,
    DetokenizerConfig,
    tiny_detokenizer_config,
    write_detokenizer,
)
from model.generation import GenerationMode, start_generation
from model.lfm2_audio import END_OF_AUDIO, LFM2AudioModel, Modality
from model.mel import MelFrontend
from model.seeded import detokenizer_rule, materialize

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {0: "<|pad|>", 1: "<|startoftext|>", 2: "<|endoftext|>", 6: "<|im_start|>", 7: "<|im_end|>",
                  128: "<|audio_start|>", 129: "<|text_start|>", 130: "<|text_end|>"}
NUM_SPECIAL = 134
TRAINING_TEXT = [
    "Please book a table for two at seven tonight.",
    "Hello, how can I help you today?",
    "Respond with interleaved text and audio.",
    "Perform ASR.", "Perform TTS.",
    "The quick brown fox jumps over the lazy dog.",
    "Thank you for calling, have a nice day!",
    "system user assistant",
]
PROBE_MAX_NEW_TOKENS = 60
CALIBRATION_ATTEMPTS = 8
TTS_PROBE_FRAMES = 6
TINY_DETOKENIZER_LOG_GAIN = 2.4


def tiny_config_dict() -> dict[str, Any]:
    return {
        "architectures": ["LFM2AudioModel"],
        "codebooks": 8, "tie_audio_embeddings": False, "semantic_codebook_factor": 100, "codebook_weight": "log",
        "interleaved_n_text": 6, "interleaved_n_audio": 12,
        "preprocessor": {
            "sample_rate": 16000, "normalize": "per_feature", "window_size": 0.025, "window_stride": 0.01,
            "window": "hann", "features": 128, "n_fft": 512, "log": True, "frame_splicing": 1, "dither": 1e-05,
            "pad_to": 0, "pad_value": 0.0,
        },
        "encoder": {
            "feat_in": 128, "feat_out": -1, "n_layers": 2, "d_model": 32, "subsampling": "dw_striding",
            "subsampling_factor": 8, "subsampling_conv_channels": 16, "causal_downsampling": False,
            "reduction": None, "reduction_position": None, "reduction_factor": 1, "ff_expansion_factor": 4,
            "self_attention_model": "rel_pos", "n_heads": 4, "att_context_size": [-1, -1], "xscaling": False,
            "untie_biases": True, "pos_emb_max_len": 5000, "conv_kernel_size": 9, "conv_norm_type": "batch_norm",
            "conv_context_size": None, "dropout": 0.1, "dropout_pre_encoder": 0.1, "dropout_emb": 0.0,
            "dropout_att": 0.1,
        },
        "lfm": {
            "architectures": ["Lfm2ForCausalLM"], "block_auto_adjust_ff_dim": True, "block_ff_dim": 96,
            "block_ffn_dim_multiplier": 1.0, "block_multiple_of": 32, "block_norm_eps": 1e-05, "bos_token_id": 1,
            "conv_L_cache": 3, "conv_bias": False, "eos_token_id": 7, "hidden_size": 24, "intermediate_size": 96,
            "layer_types": ["conv", "conv", "full_attention", "conv", "full_attention", "conv"],
            "max_position_embeddings": 128000, "model_type": "lfm2", "norm_eps": 1e-05,
            "num_attention_heads": 3, "num_hidden_layers": 6, "num_key_value_heads": 1, "pad_token_id": 0,
            "rope_theta": 1000000.0, "use_cache": True, "vocab_size": 512,
        },
        "depthformer": {"layers": 2, "dim": 64, "tie": True},
    }


def build_tokenizer() -> Tokenizer:
    """Byte-level BPE: ids 0..133 special (LFM2 names, ``<|reserved_N|>`` elsewhere), 256 bytes, merges."""
    specials = [SPECIAL_TOKENS.get(i, f"<|reserved_{i}|>") for i in range(NUM_SPECIAL)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=NUM_SPECIAL + 256 + 80, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TRAINING_TEXT * 4, trainer=trainer)
    return tok


def _write_tokenizer(out_dir: Path, tok: Tokenizer) -> None:
    tok.save(str(out_dir / "tokenizer.json"))
    added = {str(i): {"content": SPECIAL_TOKENS.get(i, f"<|reserved_{i}|>"), "lstrip": False, "normalized": False,
                      "rstrip": False, "single_word": False, "special": True} for i in range(NUM_SPECIAL)}
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": added, "bos_token": "<|startoftext|>", "eos_token": "<|im_end|>",
        "pad_token": "<|pad|>", "clean_up_tokenization_spaces": False, "model_max_length": 32768,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }, indent=1))
    (out_dir / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|startoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|pad|>"}, indent=1))


@torch.no_grad()
def _randomize(model: LFM2AudioModel, gen: torch.Generator, tokenizer_size: int) -> None:
    def normal(shape: torch.Size, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std

    for name, p in model.named_parameters():
        if name.endswith("to_logits.weight") and name.startswith("depth_embeddings"):
            continue  # tied
        if name.startswith("lfm.") and p.dim() == 2 and "embed_tokens" not in name:
            p.copy_(normal(p.shape, p.shape[1] ** -0.5))
        elif name.startswith("lfm.") and name.endswith("conv.conv.weight"):
            p.copy_(normal(p.shape, 3**-0.5))
        elif name == "lfm.embed_tokens.weight":
            p.copy_(normal(p.shape, (4.0 / p.shape[1]) ** 0.5))
        elif name.endswith("pos_bias_u") or name.endswith("pos_bias_v"):
            p.copy_(normal(p.shape, 0.3))
        elif p.dim() == 1 and ("norm" in name or "adapter.model.0" in name) and name.endswith("weight"):
            p.copy_(1.0 + normal(p.shape, 0.15))
        elif p.dim() == 1 and name.endswith("bias"):
            p.copy_(normal(p.shape, 0.05))
        elif p.dim() >= 2 and "embedding" in name:
            p.copy_(normal(p.shape, 1.0))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(normal(module.running_mean.shape, 0.2))
            module.running_var.copy_(0.5 + 1.5 * torch.rand(module.running_var.shape, generator=gen))
    model.lfm.embedding_norm.weight.mul_(6.0)
    for emb in model.depth_embeddings:
        emb.embedding_norm.weight.mul_(30.0)
    model.lfm.embed_tokens.weight[tokenizer_size:].mul_(0.05)


def _probe(model: LFM2AudioModel, tokenizer: TextTokenizer, mel: MelFrontend) -> tuple[bool, list[torch.Tensor]]:
    """Greedy interleaved run of a probe chat: (emitted audio and ended on <|im_end|>, hidden states
    that decided text items after the first audio frame)."""
    chat = ChatState(tokenizer, mel)
    chat.new_turn("system")
    chat.add_text("Respond with interleaved text and audio.")
    chat.end_turn()
    chat.new_turn("user")
    chat.add_text("Hello, please book a table for two.")
    chat.end_turn()
    chat.new_turn("assistant")
    gen = start_generation(model, chat.model_inputs(), GenerationMode.INTERLEAVED, PROBE_MAX_NEW_TOKENS)
    seen_audio = False
    later_text: list[torch.Tensor] = []
    while True:
        modality = gen.modality
        item = gen.step()
        if seen_audio and modality == Modality.TEXT and gen.last_hidden is not None:
            later_text.append(gen.last_hidden.clone())
        if item is None:
            return seen_audio and gen.end_reason == "im_end", later_text
        if item.modality == Modality.AUDIO_OUT:
            seen_audio = True


@torch.no_grad()
def _calibrate_end(model: LFM2AudioModel, tokenizer: TextTokenizer, mel: MelFrontend) -> bool:
    """Nudge the (tied) <|im_end|> row until the probe chat ends after some audio."""
    row = model.lfm.embed_tokens.weight[IM_END_ID]
    for _ in range(CALIBRATION_ATTEMPTS):
        ok, later = _probe(model, tokenizer, mel)
        if ok:
            return True
        if not later:
            return False
        h = later[min(1, len(later) - 1)]
        logits = model.lfm.text_logits(h)
        gap = float(logits.max() - logits[IM_END_ID]) + 2.0
        row.add_(h * (gap / float(h.pow(2).sum())))
    return _probe(model, tokenizer, mel)[0]


def _tts_chat(tokenizer: TextTokenizer, mel: MelFrontend) -> ChatState:
    chat = ChatState(tokenizer, mel)
    chat.new_turn("system")
    chat.add_text("Perform TTS.")
    chat.end_turn()
    chat.new_turn("user")
    chat.add_text("Hello, how can I help you today?")
    chat.end_turn()
    chat.new_turn("assistant")
    return chat


@torch.no_grad()
def _calibrate_tts(model: LFM2AudioModel, tokenizer: TextTokenizer, mel: MelFrontend) -> None:
    """Make a TTS probe start audio at its 3rd text item and end it after ~6 frames.

    Row 128 (<|audio_start|>) never occurs in prompts and depth row 2048 of codebook 0 only feeds
    an end-of-audio frame, so these edits cannot change the decisions before them."""
    gen = start_generation(model, _tts_chat(tokenizer, mel).model_inputs(), GenerationMode.SEQUENTIAL, 3)
    hidden = None
    for _ in gen:
        hidden = gen.last_hidden
    if hidden is None or gen.modality == Modality.AUDIO_OUT:
        return
    logits = model.lfm.text_logits(hidden)
    gap = float(logits.max() - logits[AUDIO_START_ID]) + 2.0
    model.lfm.embed_tokens.weight[AUDIO_START_ID].add_(hidden * (gap / float(hidden.pow(2).sum())))
    gen = start_generation(model, _tts_chat(tokenizer, mel).model_inputs(), GenerationMode.SEQUENTIAL, 3 + TTS_PROBE_FRAMES)
    frames = [item for item in gen if item.codes is not None]
    if len(frames) < TTS_PROBE_FRAMES or frames[-1].is_end_of_audio or gen.last_hidden is None:
        return
    dim = model.config.depthformer.dim
    first_in = model.depth_linear(gen.last_hidden).view(model.codebooks, dim)[0]
    out = model.depthformer(first_in[None, None, :], model.depthformer.new_cache())[0, 0]
    normed = model.depth_embeddings[0].embedding_norm(out)
    logits = model.depth_embeddings[0].get_logits(out)
    gap = float(logits.max() - logits[END_OF_AUDIO]) + 2.0
    model.depth_embeddings[0].embedding.weight[END_OF_AUDIO].add_(normed * (gap / float(normed.pow(2).sum())))


def make_tiny_checkpoint(out_dir: Path, seed: int = 0, long_replies: bool = False) -> Path:
    """Write a tiny random checkpoint (official layout) into ``out_dir``; returns ``out_dir``.

    ``long_replies``: the offline demo variant, whose replies never end by themselves (``<|im_end|>``
    and the end-of-audio code never win), so that they last exactly the configured cap
    (``model.tiny_max_reply_ms``) and scripted simulations are deterministic.
    """
    from model.mimi import Mimi, randomize_for_tiny, save_mimi, tiny_mimi_config

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = tiny_config_dict()
    config = LFM2AudioConfig.from_dict(raw)
    tok = build_tokenizer()
    _write_tokenizer(out_dir, tok)
    tokenizer = TextTokenizer(tok)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LFM2AudioModel(config).eval()
        mimi = Mimi(tiny_mimi_config())
    _randomize(model, gen, tokenizer.vocab_size)
    _calibrate_tts(model, tokenizer, MelFrontend(config.preprocessor))
    if long_replies:
        with torch.no_grad():  # a zero row scores 0; some other row of a random model always beats it
            model.lfm.embed_tokens.weight[IM_END_ID].zero_()
            model.depth_embeddings[0].embedding.weight[END_OF_AUDIO].zero_()
    elif not _calibrate_end(model, tokenizer, MelFrontend(config.preprocessor)):
        log.warning("tiny checkpoint (seed %d): probe chat does not end within %d steps", seed, PROBE_MAX_NEW_TOKENS)
    (out_dir / "config.json").write_text(json.dumps(raw, indent=2))
    tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict(keep_vars=False).items()}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    randomize_for_tiny(mimi, seed)
    save_mimi(mimi, out_dir / MIMI_FILE)
    (out_dir / MIMI_CONFIG_FILE).write_text(json.dumps(tiny_mimi_config().to_dict(), indent=2))
    _write_tiny_detokenizer(out_dir / DETOKENIZER_DIR, seed)
    return out_dir


def _write_tiny_detokenizer(folder: Path, seed: int) -> None:
    """An LFM2.5 detokenizer with seeded random weights (``model.audio_decoder: auto`` picks it)."""
    raw = tiny_detokenizer_config()
    detok = Detokenizer(DetokenizerConfig.from_dict(raw)).eval()
    materialize(detok, seed, detokenizer_rule())
    with torch.no_grad():  # louder: log-magnitudes + 2.4 (x11), about -14 dBFS like a voice on a line
        detok.lin.bias[: detok.lin.out_features // 2] += TINY_DETOKENIZER_LOG_GAIN
    write_detokenizer(detok, raw, folder)
