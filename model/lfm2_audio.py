"""The LFM2-Audio network: official state-dict names, prefill assembly and frame sampling.

Top-level modules (names as in liquid-audio's ``LFM2AudioModel``): ``lfm`` (backbone),
``conformer`` (encoder), ``audio_adapter`` (LayerNorm -> Linear -> GELU -> Linear),
``audio_embedding`` (codebook i's code c at row i*2049 + c; the 8 rows are summed),
``depthformer``, ``depth_linear`` and ``depth_embeddings`` (one ``SharedEmbedding`` per codebook),
plus the buffers ``codebook_offsets`` and ``audio_loss_weights`` (training only).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import torch
from torch import nn

from model.backbone import Lfm2Backbone
from model.config import LFM2AudioConfig
from model.conformer import ConformerEncoder
from model.depthformer import Depthformer, SharedEmbedding

AUDIO_VOCAB_SIZE = 2049
END_OF_AUDIO = 2048


class Modality(IntEnum):
    """Modality flags (liquid-audio's LFMModality)."""

    TEXT = 1
    AUDIO_IN = 2
    AUDIO_OUT = 3


@dataclass(frozen=True)
class Sampling:
    """Greedy when temperature is None/<= 0 or top_k == 1 (the official rule)."""

    temperature: float | None = None
    top_k: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature is None or self.temperature <= 0 or self.top_k == 1


GREEDY = Sampling()


def sample_rows(logits: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
    """One id per row of logits [B, V] with ONE setting for all rows, as pure tensor work (no host sync):
    argmax when greedy, else Gumbel-max over the temperature-scaled top k (a draw from the softmax)."""
    if temperature <= 0 or top_k == 1:
        return logits.argmax(-1)
    scaled = logits.float() / temperature
    if 0 < top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    u = torch.rand_like(scaled).clamp_(min=1e-20, max=1.0 - 1e-7)
    return (scaled - torch.log(-torch.log(u))).argmax(-1)


def sample_from_logits(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> int:
    """One id from 1-D logits (greedy argmax, or temperature / top-k multinomial)."""
    if sampling.greedy:
        return int(logits.argmax())
    assert sampling.temperature is not None
    scaled = logits.float() / sampling.temperature
    if sampling.top_k is not None and sampling.top_k > 0:
        k = min(sampling.top_k, scaled.shape[-1])
        threshold = torch.topk(scaled, k).values[-1]
        scaled = scaled.masked_fill(scaled < threshold, float("-inf"))
    probs = scaled.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


class AudioAdapter(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LFM2AudioModel(nn.Module):
    def __init__(self, config: LFM2AudioConfig) -> None:
        super().__init__()
        self.config = config
        self.codebooks = config.codebooks
        hidden = config.lfm.hidden_size
        self.lfm = Lfm2Backbone(config.lfm)
        self.conformer = ConformerEncoder(config.encoder)
        self.audio_adapter = AudioAdapter(config.encoder.output_dim, hidden)
        self.audio_embedding = SharedEmbedding(hidden, AUDIO_VOCAB_SIZE * config.codebooks, config.tie_audio_embeddings)
        self.register_buffer("codebook_offsets", torch.arange(config.codebooks) * AUDIO_VOCAB_SIZE)
        if config.codebook_weight == "log":
            weights = (torch.linspace(1, 0, config.codebooks) * math.log(config.semantic_codebook_factor)).exp()
        else:
            weights = torch.ones(config.codebooks)
            weights[0] *= config.semantic_codebook_factor
        self.register_buffer("audio_loss_weights", weights)
        self.depthformer = Depthformer(config.depthformer)
        self.depth_linear = nn.Linear(hidden, config.depthformer.dim * config.codebooks)
        self.depth_embeddings = nn.ModuleList(
            SharedEmbedding(config.depthformer.dim, AUDIO_VOCAB_SIZE, config.depthformer.tie)
            for _ in range(config.codebooks)
        )

    # -- embeddings -------------------------------------------------------------------------
    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lfm.embed_tokens(ids)

    def embed_audio_frames(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [..., codebooks] -> summed embeddings [..., hidden]."""
        return self.audio_embedding(codes + self.codebook_offsets).sum(-2)

    def encode_audio(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Concatenated mel [n_mels, sum(lengths)] -> (adapter output [n_positions, hidden],
        encoder output [B, d, T'], encoder lengths [B])."""
        chunks = features.mT.split([int(n) for n in lengths.tolist()])
        padded = nn.utils.rnn.pad_sequence(list(chunks), batch_first=True)
        enc, enc_lengths = self.conformer(padded.mT, lengths)
        valid = torch.arange(enc.shape[-1], device=enc.device)[None, :] < enc_lengths[:, None]
        return self.audio_adapter(enc.mT[valid]), enc, enc_lengths

    def prefill_embeddings(self, text: torch.Tensor, audio_in: torch.Tensor, audio_in_lens: torch.Tensor,
                           audio_out: torch.Tensor, modality_flag: torch.Tensor) -> torch.Tensor:
        """Assemble the backbone input [1, L, hidden] of a chat (liquid-audio's ``_prefill``)."""
        if text.dim() != 2 or text.shape[0] != 1 or modality_flag.dim() != 2 or modality_flag.shape[0] != 1:
            raise ValueError("text and modality_flag must be [1, L]")
        flags = modality_flag[0]
        text_mask = flags == Modality.TEXT
        in_mask = flags == Modality.AUDIO_IN
        out_mask = flags == Modality.AUDIO_OUT
        if int(text_mask.sum()) != text.shape[1]:
            raise ValueError(f"{int(text_mask.sum())} TEXT flags for {text.shape[1]} text ids")
        if int(out_mask.sum()) != audio_out.shape[1]:
            raise ValueError(f"{int(out_mask.sum())} AUDIO_OUT flags for {audio_out.shape[1]} audio frames")
        emb = self.embed_text(text[0]).new_zeros(flags.shape[0], self.config.lfm.hidden_size)
        emb[text_mask] = self.embed_text(text[0])
        if int(in_mask.sum()) > 0 or audio_in_lens.numel() > 0:
            if audio_in.shape[1] != int(audio_in_lens.sum()):
                raise ValueError(f"audio_in has {audio_in.shape[1]} frames, lengths sum to {int(audio_in_lens.sum())}")
            adapted, _, _ = self.encode_audio(audio_in.to(emb.dtype), audio_in_lens)
            if adapted.shape[0] != int(in_mask.sum()):
                raise ValueError(f"{int(in_mask.sum())} AUDIO_IN flags for {adapted.shape[0]} encoder frames")
            emb[in_mask] = adapted
        if audio_out.shape[1] > 0:
            emb[out_mask] = self.embed_audio_frames(audio_out[: self.codebooks].T)
        return emb[None]

    # -- audio frames ------------------------------------------------------------------------
    def sample_audio_frame(self, hidden: torch.Tensor, sampling: Sampling = Sampling(),
                           generator: torch.Generator | None = None,
                           keep_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One backbone output vector [hidden] -> (codes [codebooks] int64, logits [codebooks, 2049] or None)."""
        codes, logits = self.sample_audio_frames(hidden[None], [sampling], [generator], keep_logits)
        return codes[0], (logits[0] if logits is not None else None)

    def sample_audio_frames(self, hidden: torch.Tensor, samplings: list[Sampling],
                            generators: list[torch.Generator | None] | None = None,
                            keep_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``depth_frames`` with each row's own sampling (and generator): hidden [B, hidden] -> (codes
        [B, codebooks] int64, logits [B, codebooks, 2049] or None)."""
        gens = generators or [None] * hidden.shape[0]

        def pick(logits: torch.Tensor) -> torch.Tensor:
            if all(s.greedy for s in samplings):
                return logits.argmax(-1)
            return torch.tensor([sample_from_logits(logits[b], samplings[b], gens[b]) for b in range(logits.shape[0])],
                                dtype=torch.long, device=logits.device)

        codes, logits = self.depth_frames(hidden, pick)
        return codes, (logits if keep_logits else None)

    def depth_frames(self, hidden: torch.Tensor,
                     pick: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The depthformer for B frames at once: hidden [B, hidden] -> (codes [B, codebooks] int64, logits
        [B, codebooks, 2049]); ``pick`` turns a codebook's logits [B, 2049] into codes [B]. Codebook i's input
        is depth_linear's row i plus the raw embedding of codebook i-1's code; the KV cache is fresh per
        frame and grows over the codebooks."""
        bsz, dim = hidden.shape[0], self.config.depthformer.dim
        depth_in = self.depth_linear(hidden).view(bsz, self.codebooks, dim)
        token_emb = torch.zeros_like(depth_in[:, 0])
        cache = self.depthformer.new_cache()
        codes, kept = [], []
        for i in range(self.codebooks):
            out = self.depthformer((depth_in[:, i] + token_emb)[:, None, :], cache)
            logits = self.depth_embeddings[i].get_logits(out[:, 0])  # [B, 2049]
            code = pick(logits)
            codes.append(code)
            kept.append(logits)
            token_emb = self.depth_embeddings[i].embedding.weight[code]
        return torch.stack(codes, dim=1), torch.stack(kept, dim=1)
