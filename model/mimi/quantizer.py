"""Mimi's split residual vector quantizer (moshi/quantization/vq.py and core_vq.py, inference only).

Codebook k of frame t is a row of `embedding_sum / max(cluster_usage, 1e-5)` (EMA statistics stored
as buffers, as in the published weights). `rvq_first` holds the semantic codebook(s), `rvq_rest`
the acoustic ones; each projects the latent in and out with 1x1 convolutions of its own. Decoding
sums the codebook vectors of each part, projects each sum out and adds the two parts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.mimi.config import QuantizerConfig

CODEBOOK_EPSILON = 1e-5


class EuclideanCodebook(nn.Module):
    _initialized: Tensor
    cluster_usage: Tensor
    embedding_sum: Tensor

    def __init__(self, dim: int, codebook_size: int) -> None:
        super().__init__()
        self.register_buffer("_initialized", torch.zeros(1))
        self.register_buffer("cluster_usage", torch.ones(codebook_size))
        self.register_buffer("embedding_sum", torch.zeros(codebook_size, dim))
        # Derived codebook, cached outside the state dict. It is rebuilt when a buffer is replaced
        # (`.to()`, loading with assign) or edited in place (which bumps the tensor's `_version`);
        # holding the source tensors keeps their identities unique while they are compared.
        self._cache_sources: tuple[Tensor, Tensor] | None = None
        self._cache_versions: tuple[int, int] = (-1, -1)
        self._cache: Tensor | None = None

    @property
    def embedding(self) -> Tensor:
        usage, total = self.cluster_usage, self.embedding_sum
        versions = (usage._version, total._version)
        sources = self._cache_sources
        fresh = sources is not None and sources[0] is usage and sources[1] is total
        if self._cache is None or not fresh or versions != self._cache_versions:
            self._cache = total / usage.clamp(min=CODEBOOK_EPSILON)[:, None]
            self._cache_sources = (usage, total)
            self._cache_versions = versions
        return self._cache

    def encode(self, x: Tensor) -> Tensor:
        """x [N, D] -> index of the nearest codebook vector [N]."""
        return torch.cdist(x[None], self.embedding[None], p=2)[0].argmin(dim=-1)


class VectorQuantization(nn.Module):
    """Holds one codebook under the name `_codebook` (key path of the published weights)."""

    def __init__(self, dim: int, codebook_size: int) -> None:
        super().__init__()
        self._codebook = EuclideanCodebook(dim, codebook_size)


class ResidualVectorQuantization(nn.Module):
    def __init__(self, dim: int, codebook_size: int, num_quantizers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([VectorQuantization(dim, codebook_size) for _ in range(num_quantizers)])


class ResidualVectorQuantizer(nn.Module):
    def __init__(self, cfg: QuantizerConfig, n_q: int) -> None:
        super().__init__()
        self.input_proj = nn.Conv1d(cfg.input_dimension, cfg.dimension, 1, bias=False)
        self.output_proj = nn.Conv1d(cfg.dimension, cfg.output_dimension, 1, bias=False)
        self.vq = ResidualVectorQuantization(cfg.dimension, cfg.bins, n_q)

    def codebooks(self) -> list[EuclideanCodebook]:
        books = []
        for layer in self.vq.layers:
            assert isinstance(layer, VectorQuantization)
            books.append(layer._codebook)
        return books

    def decode(self, codes: Tensor) -> Tensor:
        """codes [B, K, T] -> latent [B, output_dimension, T]."""
        quantized: Tensor | None = None
        for index, codebook in enumerate(self.codebooks()[: codes.shape[1]]):
            vectors = F.embedding(codes[:, index], codebook.embedding).transpose(1, 2)  # [B, D, T]
            quantized = vectors if quantized is None else quantized + vectors
        assert quantized is not None
        out: Tensor = self.output_proj(quantized)
        return out

    def encode(self, latent: Tensor, n_q: int) -> Tensor:
        """latent [B, input_dimension, T] -> codes [B, n_q, T]."""
        residual = self.input_proj(latent).transpose(1, 2)  # [B, T, D]
        batch, steps, dim = residual.shape
        codes = []
        for codebook in self.codebooks()[:n_q]:
            flat = codebook.encode(residual.reshape(-1, dim)).view(batch, steps)
            residual = residual - F.embedding(flat, codebook.embedding)
            codes.append(flat)
        return torch.stack(codes, dim=1)


class SplitResidualVectorQuantizer(nn.Module):
    def __init__(self, cfg: QuantizerConfig) -> None:
        super().__init__()
        self.n_q_semantic = cfg.n_q_semantic
        self.total_codebooks = cfg.n_q
        self.bins = cfg.bins
        self.rvq_first = ResidualVectorQuantizer(cfg, cfg.n_q_semantic)
        self.rvq_rest = ResidualVectorQuantizer(cfg, cfg.n_q - cfg.n_q_semantic)

    def decode(self, codes: Tensor) -> Tensor:
        """codes [B, K, T] (K >= n_q_semantic) -> latent [B, dimension, T]."""
        latent = self.rvq_first.decode(codes[:, : self.n_q_semantic])
        if codes.shape[1] > self.n_q_semantic:
            latent = latent + self.rvq_rest.decode(codes[:, self.n_q_semantic :])
        return latent

    def encode(self, latent: Tensor, n_q: int) -> Tensor:
        codes = self.rvq_first.encode(latent, self.n_q_semantic)
        if n_q > self.n_q_semantic:
            codes = torch.cat([codes, self.rvq_rest.encode(latent, n_q - self.n_q_semantic)], dim=1)
        return codes
