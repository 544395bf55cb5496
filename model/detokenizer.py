"""LFM2.5-Audio's audio detokenizer: 8 codebooks at 12.5 Hz -> 24 kHz audio, whole-sequence and streaming.

The official ``LFM2AudioDetokenizer`` (liquid-audio 1.3.0, ``audio_detokenizer/`` of a checkpoint):

1. ``emb.emb``: codebook c's code x indexes row c*2048 + x of one table; the 8 rows are AVERAGED;
2. each 80 ms frame is repeated 6 times (nearest upsampling, 12.5 Hz -> 75 Hz);
3. an LFM2 stack (transformers' ``Lfm2Model``, names ``lfm.*``): gated short convolutions and
   attention layers. The official code passes every attention layer (``sliding_attention`` or
   ``full_attention`` in ``config.json``) the same causal sliding-window mask: a position sees
   itself and the ``sliding_window - 1`` before it. Positions (RoPE) count from 0 at the start of
   the decoded sequence. ``lfm.embed_tokens`` is stored but unused (not even allocated here);
4. ``lin`` (hidden -> 2 * 641): log-magnitudes and phases of a 1280-point spectrum per 75 Hz frame;
5. an inverse STFT, n_fft = win = 1280, hop 320, Hann window, "same" padding: irfft, times the
   window, overlap-add, trim 480 samples at each end, divide by the overlap-added squared window.
   320 samples per 75 Hz frame, 1920 per code frame.

Everything before the ISTFT is causal. The ISTFT's overlap-add needs 480 samples (20 ms) of the
next code frame. ``DetokenizerStreams`` therefore decodes 80 ms of codes into 1920 samples of a
stream that is the official whole-sequence output DELAYED by 480 samples (its first 480 samples
are zeros), and ``flush`` returns the last 480 samples when a sequence ends. Per stream it keeps
the conv inputs of each conv layer, a ring of the last ``sliding_window - 1`` keys/values of
each attention layer (RoPE already applied), the position, and the 960 samples of pending
overlap-add. Streams live in slots of one batched state, so one step decodes many calls at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.backbone import Lfm2DecoderLayer, RMSNorm, rope_cos_sin
from model.config import LfmConfig, read_config_file
from model.errors import ConfigError
from model.slots import SlotPool
from model.weights_file import copy_weights

DETOKENIZER_DIR = "audio_detokenizer"
CODEBOOKS = 8                # hard-coded in the official FusedEmbedding
CODES_PER_BOOK = 2048        # no end-of-audio entry: 2048 must never reach the detokenizer
UPSAMPLE = 6                 # 12.5 Hz -> 75 Hz
N_FFT = WIN_LENGTH = 1280
HOP = 320
PAD = (WIN_LENGTH - HOP) // 2            # 480 samples trimmed at each end ("same" padding)
FRAME_SAMPLES = UPSAMPLE * HOP           # 1920 samples (80 ms at 24 kHz) per code frame
LOOKAHEAD_SAMPLES = PAD                  # the streamed output lags the official one by 20 ms
SAMPLE_RATE = 24000
DEFAULT_SLIDING_WINDOW = 30              # the official getattr default


@dataclass(frozen=True)
class DetokenizerConfig:
    lfm: LfmConfig           # layer types normalised to conv / full_attention
    sliding_window: int

    @classmethod
    def from_dict(cls, raw: object, where: str = "audio_detokenizer/config.json") -> DetokenizerConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: top level must be an object")
        d = dict(raw)
        types = d.get("layer_types")
        if isinstance(types, list):  # the official files spell windowed attention "sliding_attention"
            d["layer_types"] = ["full_attention" if t == "sliding_attention" else t for t in types]
        window = d.pop("sliding_window", DEFAULT_SLIDING_WINDOW)
        for key in ("sliding_window_pattern", "use_sliding_window"):
            d.pop(key, None)
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ConfigError(f"{where}.sliding_window: expected a positive int, got {window!r}")
        lfm = LfmConfig.from_dict(d, where)
        if "full_attention" not in lfm.layer_types:
            raise ConfigError(f"{where}: no attention layer in layer_types {list(lfm.layer_types)}")
        return cls(lfm=lfm, sliding_window=window)

    @classmethod
    def from_file(cls, path: Path) -> DetokenizerConfig:
        return read_config_file(path, cls.from_dict)


class _Stack(nn.Module):
    """``lfm.*`` without ``embed_tokens``: the decoder layers and the final ``embedding_norm``."""

    def __init__(self, config: LfmConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Lfm2DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.embedding_norm = RMSNorm(config.hidden_size, config.norm_eps)


class _FusedEmbedding(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(CODEBOOKS * CODES_PER_BOOK, dim)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [..., 8, T] -> mean of the 8 rows [..., T, dim]."""
        offsets = torch.arange(CODEBOOKS, device=codes.device)[:, None] * CODES_PER_BOOK
        return self.emb(codes + offsets).mean(-3)


def check_codes(codes: torch.Tensor) -> None:
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise ValueError("detokenizer codes must be an integer tensor")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= CODES_PER_BOOK):
        raise ValueError(f"detokenizer codes must be in [0, {CODES_PER_BOOK}): filter out end-of-audio frames "
                         "and clamp codes first (model.audio_decoder.decoder_codes)")


class Detokenizer(nn.Module):
    """State-dict names as the official module: ``emb.emb``, ``lfm.layers.*``, ``lfm.embedding_norm``,
    ``lin``, ``istft.window``."""

    def __init__(self, config: DetokenizerConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.lfm.hidden_size
        self.emb = _FusedEmbedding(hidden)
        self.lfm = _Stack(config.lfm)
        self.lin = nn.Linear(hidden, N_FFT + 2)
        self.istft = nn.Module()
        self.istft.register_buffer("window", torch.hann_window(WIN_LENGTH))

    @property
    def window(self) -> torch.Tensor:
        window: torch.Tensor = self.istft.window
        return window

    # -- the pieces, shared by the whole-sequence and the streaming paths ---------------------------
    def _attend_window(self, layer: Lfm2DecoderLayer, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                       past: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
                       positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Windowed attention of x [B, N, D] at ``positions`` [B, N] over ``past`` (ring keys, values
        [B, Hkv, R, hd] and their positions [B, R], -1 = empty) and itself. Returns (out, k, v)."""
        attn = layer.self_attn
        b, n, _ = x.shape
        q, k, v = attn.qkv(x, rope)
        keys, values, key_pos = k, v, positions
        if past is not None:
            keys = torch.cat((past[0], k), dim=2)
            values = torch.cat((past[1], v), dim=2)
            key_pos = torch.cat((past[2], positions), dim=1)
        delta = positions[:, :, None] - key_pos[:, None, :]  # [B, N, K]
        mask = (delta >= 0) & (delta < self.config.sliding_window) & (key_pos[:, None, :] >= 0)
        n_rep = q.shape[1] // keys.shape[1]
        if n_rep > 1:
            keys, values = keys.repeat_interleave(n_rep, dim=1), values.repeat_interleave(n_rep, dim=1)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[:, None])
        return attn.out_proj(out.transpose(1, 2).reshape(b, n, -1)), k, v

    @staticmethod
    def _conv(layer: Lfm2DecoderLayer, x: torch.Tensor, past: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Gated short conv of x [B, N, D] after ``past`` conv inputs [B, D, L-1]; returns (out, new past)."""
        conv = layer.conv
        n = x.shape[1]
        b_gate, c_gate, h = conv.in_proj(x).transpose(-1, -2).chunk(3, dim=-2)
        bx = b_gate * h
        width = conv.L_cache - 1
        if past is None:
            past = bx.new_zeros(bx.shape[0], bx.shape[1], width)
        full = torch.cat((past, bx), dim=-1)
        out = F.conv1d(full, conv.conv.weight, conv.conv.bias, groups=full.shape[1])[..., -n:]
        y = (c_gate * out).transpose(-1, -2).contiguous()
        return conv.out_proj(y), full[..., full.shape[-1] - width :]

    @staticmethod
    def spectrum(params: torch.Tensor) -> torch.Tensor:
        """``lin`` output [B, N, 1282] (float32) -> complex spectrum [B, 641, N]."""
        log_abs, angle = torch.chunk(params.mT.contiguous(), 2, 1)
        return torch.polar(log_abs.exp(), angle)

    def frames(self, spec: torch.Tensor) -> torch.Tensor:
        """Complex spectrum [B, 641, N] -> windowed time frames [B, 1280, N] (before overlap-add)."""
        return torch.fft.irfft(spec, N_FFT, dim=1, norm="backward") * self.window[None, :, None]

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, 8, T] -> 75 Hz inputs [B, 6T, hidden]."""
        return self.emb(codes).repeat_interleave(UPSAMPLE, dim=1)

    # -- whole sequence ----------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, codes: torch.Tensor, keep: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """codes [B, 8, T] in [0, 2048) -> waveform [B, 1920 T] (the official decode). ``keep`` receives
        the intermediates (embedded, upsampled, hidden, spectrum_params) when given."""
        check_codes(codes)
        codes = codes.to(self.lin.weight.device)
        embedded = self.emb(codes)
        x = embedded.repeat_interleave(UPSAMPLE, dim=1).to(self.lin.weight.dtype)
        b, n, _ = x.shape
        positions = torch.arange(n, device=x.device)
        rope = rope_cos_sin(positions, self.config.lfm.head_dim, self.config.lfm.rope_theta, x.dtype)
        pos = positions[None].expand(b, n)
        h = x
        for layer in self.lfm.layers:
            assert isinstance(layer, Lfm2DecoderLayer)
            y = layer.operator_norm(h)
            y = self._attend_window(layer, y, rope, None, pos)[0] if layer.is_attention else self._conv(layer, y, None)[0]
            y = y + h
            h = y + layer.feed_forward(layer.ffn_norm(y))
        hidden = self.lfm.embedding_norm(h)
        params = self.lin(hidden)
        wave = self._istft_same(self.frames(self.spectrum(params.float())))
        if keep is not None:
            keep.update(embedded=embedded, upsampled=x, hidden=hidden, spectrum_params=params)
        return wave

    @staticmethod
    def _overlap_add(frames: torch.Tensor) -> torch.Tensor:
        n = frames.shape[-1]
        size = (n - 1) * HOP + WIN_LENGTH
        return F.fold(frames, output_size=(1, size), kernel_size=(1, WIN_LENGTH), stride=(1, HOP))[:, 0, 0]

    def _istft_same(self, frames: torch.Tensor) -> torch.Tensor:
        n = frames.shape[-1]
        y = self._overlap_add(frames)[:, PAD:-PAD]
        envelope = self._overlap_add(self.window.square()[None, :, None].expand(1, -1, n))[0, PAD:-PAD]
        return y / envelope

    def envelopes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Overlap-added squared window for the first 1920 untrimmed samples of a stream, for any later
        1920, and for the 960 samples after the last frame (computed like the whole-sequence path)."""
        n = 3 * UPSAMPLE
        env = self._overlap_add(self.window.square()[None, :, None].expand(1, -1, n))[0]
        first, steady, tail = env[:FRAME_SAMPLES], env[FRAME_SAMPLES : 2 * FRAME_SAMPLES], env[n * HOP :]
        return first.clone(), steady.clone(), tail.clone()


class DetokenizerStreams(SlotPool):
    """Streaming decode of many sequences at once, one slot per stream (batched across calls).

    ``open()`` takes a free slot; ``step(slots, codes)`` decodes one 80 ms code frame for each given
    slot (codes [n, 8]) into 1920 samples each; ``flush(slots)`` returns each stream's last 480
    samples (after its final frame); ``close(slot)`` frees a slot. A stream's concatenated output
    equals the whole-sequence decode delayed by ``LOOKAHEAD_SAMPLES`` (its first 480 samples are 0).
    """

    def __init__(self, detok: Detokenizer, capacity: int = 4) -> None:
        super().__init__()
        self.detok = detok
        cfg = detok.config.lfm
        self.ring = max(1, detok.config.sliding_window - 1)
        w = detok.lin.weight
        self.device, self.dtype = w.device, w.dtype
        first, steady, tail = detok.envelopes()
        # the first PAD samples of a stream are trimmed (zeros), where the envelope may be 0
        first = first.clone()
        first[:PAD] = 1.0
        self._env_first, self._env_steady, self._env_tail = first, steady, tail
        self._kv_heads, self._head_dim = cfg.num_key_value_heads, cfg.head_dim
        self._conv_width = cfg.conv_L_cache - 1
        self.conv: dict[int, torch.Tensor] = {}
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.key_pos = torch.empty(0, self.ring, dtype=torch.long, device=self.device)
        self.position = torch.empty(0, dtype=torch.long, device=self.device)
        self.ola = torch.empty(0, WIN_LENGTH - HOP, dtype=torch.float32, device=self.device)
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        if capacity <= old:
            return
        extra = capacity - old
        hidden = self.detok.config.lfm.hidden_size
        for i, layer in enumerate(self.detok.lfm.layers):
            assert isinstance(layer, Lfm2DecoderLayer)
            if layer.is_attention:
                kv = torch.zeros(extra, self._kv_heads, self.ring, self._head_dim, device=self.device, dtype=self.dtype)
                self.keys[i] = torch.cat((self.keys[i], kv)) if i in self.keys else kv
                self.values[i] = torch.cat((self.values[i], kv.clone())) if i in self.values else kv.clone()
            else:
                cv = torch.zeros(extra, hidden, self._conv_width, device=self.device, dtype=self.dtype)
                self.conv[i] = torch.cat((self.conv[i], cv)) if i in self.conv else cv
        self.key_pos = torch.cat((self.key_pos, torch.full((extra, self.ring), -1, dtype=torch.long, device=self.device)))
        self.position = torch.cat((self.position, torch.zeros(extra, dtype=torch.long, device=self.device)))
        self.ola = torch.cat((self.ola, torch.zeros(extra, WIN_LENGTH - HOP, device=self.device)))
        super()._grow(capacity)

    def reset(self, slots: list[int]) -> None:
        """Start new sequences in ``slots`` (e.g. a new reply, or after a barge-in)."""
        idx = torch.tensor(slots, dtype=torch.long, device=self.device)
        for t in (*self.conv.values(), *self.keys.values(), *self.values.values(), self.ola):
            t[idx] = 0
        self.key_pos[idx] = -1
        self.position[idx] = 0

    @torch.no_grad()
    def step(self, slots: list[int], codes: torch.Tensor) -> torch.Tensor:
        """One code frame per slot: codes [n, 8] -> audio [n, 1920] (float32)."""
        check_codes(codes)
        if codes.dim() != 2 or codes.shape[1] != CODEBOOKS or codes.shape[0] != len(slots):
            raise ValueError(f"codes must be [{len(slots)}, {CODEBOOKS}], got {list(codes.shape)}")
        detok = self.detok
        idx = torch.tensor(slots, dtype=torch.long, device=self.device)
        x = detok.embed(codes.to(self.device)[:, :, None]).to(self.dtype)  # [n, 6, hidden]
        start = self.position[idx]
        positions = start[:, None] + torch.arange(UPSAMPLE, device=self.device)[None]  # [n, 6]
        cfg = detok.config.lfm
        cos, sin = rope_cos_sin(positions.reshape(-1), cfg.head_dim, cfg.rope_theta, x.dtype)
        rope = (cos.view(len(slots), 1, UPSAMPLE, -1), sin.view(len(slots), 1, UPSAMPLE, -1))
        h = x
        ring_slots = positions[:, -min(UPSAMPLE, self.ring):] % self.ring  # where the newest keys go
        for i, layer in enumerate(detok.lfm.layers):
            assert isinstance(layer, Lfm2DecoderLayer)
            y = layer.operator_norm(h)
            if layer.is_attention:
                past = (self.keys[i][idx], self.values[i][idx], self.key_pos[idx])
                y, k, v = detok._attend_window(layer, y, rope, past, positions)
                keep = ring_slots.shape[1]
                keys, values = self.keys[i][idx], self.values[i][idx]
                keys.scatter_(2, ring_slots[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3]), k[:, :, -keep:])
                values.scatter_(2, ring_slots[:, None, :, None].expand(-1, v.shape[1], -1, v.shape[3]), v[:, :, -keep:])
                self.keys[i][idx], self.values[i][idx] = keys, values
            else:
                y, new_past = detok._conv(layer, y, self.conv[i][idx])
                self.conv[i][idx] = new_past
            y = y + h
            h = y + layer.feed_forward(layer.ffn_norm(y))
        key_pos = self.key_pos[idx]
        key_pos.scatter_(1, ring_slots, positions[:, -ring_slots.shape[1]:])
        self.key_pos[idx] = key_pos
        params = detok.lin(detok.lfm.embedding_norm(h))
        frames = detok.frames(detok.spectrum(params.float()))  # [n, 1280, 6]
        buf = torch.zeros(len(slots), FRAME_SAMPLES + WIN_LENGTH - HOP, device=self.device)
        buf[:, : WIN_LENGTH - HOP] = self.ola[idx]
        for t in range(UPSAMPLE):
            buf[:, t * HOP : t * HOP + WIN_LENGTH] += frames[:, :, t]
        self.ola[idx] = buf[:, FRAME_SAMPLES:]
        first = (start == 0)[:, None]
        env = torch.where(first, self._env_first[None], self._env_steady[None])
        out = buf[:, :FRAME_SAMPLES] / env
        out[:, :PAD] = torch.where(first, torch.zeros_like(out[:, :PAD]), out[:, :PAD])
        self.position[idx] = start + UPSAMPLE
        return out

    def flush(self, slots: list[int]) -> torch.Tensor:
        """The last ``LOOKAHEAD_SAMPLES`` of each stream [n, 480] (zeros for a stream with no frame)."""
        idx = torch.tensor(slots, dtype=torch.long, device=self.device)
        started = (self.position[idx] > 0)[:, None]
        tail = self.ola[idx][:, :PAD] / self._env_tail[None, :PAD]
        return torch.where(started, tail, torch.zeros_like(tail))


def load_detokenizer(folder: Path, device: torch.device, dtype: torch.dtype) -> Detokenizer:
    """``folder/config.json`` + ``folder/model.safetensors`` (bf16 or fp32; ``lfm.embed_tokens`` ignored)."""
    config = DetokenizerConfig.from_file(folder / "config.json")
    with torch.device("meta"):
        detok = Detokenizer(config)
    detok = detok.to_empty(device=device).to(dtype=dtype)
    detok.istft.window.copy_(torch.hann_window(WIN_LENGTH))  # unless the file carries its own
    copy_weights(folder / "model.safetensors", dict(detok.state_dict(keep_vars=True)), what="detokenizer weights",
                 optional=lambda k: k == "istft.window", ignored=lambda k: k.startswith("lfm.embed_tokens."))
    with torch.no_grad():  # the window enters the ISTFT in float32, like the official buffer
        detok.istft.window = detok.istft.window.float()
    return detok.eval()


def tiny_detokenizer_config() -> dict[str, Any]:
    """A small detokenizer in the official ``config.json`` spelling (hidden 512, as the official code fixes)."""
    return {
        "architectures": ["Lfm2Model"], "model_type": "lfm2", "hidden_size": 512, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4,
        "layer_types": ["conv", "sliding_attention"], "sliding_window": DEFAULT_SLIDING_WINDOW, "norm_eps": 1e-05,
        "rope_theta": 1000000.0, "conv_L_cache": 3, "conv_bias": False, "vocab_size": 16,
        "max_position_embeddings": 128000, "block_auto_adjust_ff_dim": False, "block_multiple_of": 256,
        "block_ffn_dim_multiplier": 1.0, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 7,
        "pad_token_id": 0,
    }


def write_detokenizer(detok: Detokenizer, raw_config: dict[str, Any], folder: Path) -> None:
    """``folder/config.json`` and ``folder/model.safetensors`` as the official loader reads them (its strict
    load wants ``lfm.embed_tokens`` too: written as zeros, it is never used)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone().contiguous() for k, v in detok.state_dict().items()}
    cfg = detok.config.lfm
    state["lfm.embed_tokens.weight"] = torch.zeros(cfg.vocab_size, cfg.hidden_size)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(raw_config, indent=2) + "\n", encoding="utf-8")
