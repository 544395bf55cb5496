"""Typed, frozen views of an LFM2-Audio ``config.json``.

Sections and key sets follow the official loader (liquid-audio 1.0.0): the top level,
``preprocessor``, ``encoder`` and ``depthformer`` accept exactly the official keys (unknown keys
are tolerated with a warning), and ``lfm`` is read the way transformers' ``Lfm2Config`` reads it
(``block_ff_dim`` wins over ``intermediate_size``, ``full_attn_idxs`` or ``layer_types``,
``theta``/``rope_theta``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from model.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")

_MISSING = object()


def _type_name(value: object) -> str:
    return type(value).__name__


def _get(section: dict[str, Any], where: str, key: str, kind: str, default: object = _MISSING) -> Any:
    """Read ``section[key]`` checking its JSON type; ``kind`` is int/float/bool/str/int_list/str_list,
    optionally suffixed with ``?`` for "may be null"."""
    if key not in section:
        if default is _MISSING:
            raise ConfigError(f"{where}: missing required key {key!r}")
        return default
    value = section[key]
    nullable = kind.endswith("?")
    base = kind.rstrip("?")
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"{where}.{key}: expected {base}, got null")
    ok: bool
    if base == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif base == "bool":
        ok = isinstance(value, bool)
    elif base == "str":
        ok = isinstance(value, str)
    elif base == "int_list":
        ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    elif base == "str_list":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:  # pragma: no cover - programming error
        raise AssertionError(base)
    if not ok:
        raise ConfigError(f"{where}.{key}: expected {base}, got {_type_name(value)} {value!r}")
    return value


def _warn_unknown(section: dict[str, Any], where: str, known: set[str]) -> None:
    unknown = sorted(set(section) - known)
    if unknown:
        log.warning("%s: ignoring unknown config keys %s", where, unknown)


def _section(parent: dict[str, Any], where: str, key: str) -> dict[str, Any]:
    value = parent.get(key)
    if not isinstance(value, dict):
        got = "missing" if key not in parent else _type_name(value)
        raise ConfigError(f"{where}: section {key!r} must be an object, got {got}")
    return value


@dataclass(frozen=True)
class PreprocessorConfig:
    """NeMo AudioToMelSpectrogramPreprocessor settings (eval mode: dither is not applied)."""

    sample_rate: int
    normalize: str
    window_size: float
    window_stride: float
    window: str
    features: int
    n_fft: int
    log: bool
    frame_splicing: int
    dither: float
    pad_to: int
    pad_value: float

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "preprocessor") -> PreprocessorConfig:
        kinds = {
            "sample_rate": "int", "normalize": "str", "window_size": "float", "window_stride": "float",
            "window": "str", "features": "int", "n_fft": "int", "log": "bool", "frame_splicing": "int",
            "dither": "float", "pad_to": "int", "pad_value": "float",
        }
        _warn_unknown(d, where, set(kinds))
        cfg = cls(**{k: _get(d, where, k, v) for k, v in kinds.items()})
        if cfg.normalize != "per_feature" or cfg.window != "hann" or not cfg.log or cfg.frame_splicing != 1:
            raise ConfigError(
                f"{where}: only normalize='per_feature', window='hann', log=true, frame_splicing=1 are "
                f"supported, got {cfg.normalize!r}, {cfg.window!r}, {cfg.log}, {cfg.frame_splicing}"
            )
        return cfg

    @property
    def hop_length(self) -> int:
        return int(self.window_stride * self.sample_rate)

    @property
    def win_length(self) -> int:
        return int(self.window_size * self.sample_rate)


@dataclass(frozen=True)
class EncoderConfig:
    """FastConformer (NeMo ConformerEncoder) settings."""

    feat_in: int
    feat_out: int
    n_layers: int
    d_model: int
    subsampling: str
    subsampling_factor: int
    subsampling_conv_channels: int
    causal_downsampling: bool
    reduction: str | None
    reduction_position: int | None
    reduction_factor: int
    ff_expansion_factor: int
    self_attention_model: str
    n_heads: int
    att_context_size: tuple[int, ...]
    xscaling: bool
    untie_biases: bool
    pos_emb_max_len: int
    conv_kernel_size: int
    conv_norm_type: str
    conv_context_size: tuple[int, ...] | None
    dropout: float
    dropout_pre_encoder: float
    dropout_emb: float
    dropout_att: float

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "encoder") -> EncoderConfig:
        kinds = {
            "feat_in": "int", "feat_out": "int", "n_layers": "int", "d_model": "int", "subsampling": "str",
            "subsampling_factor": "int", "subsampling_conv_channels": "int", "causal_downsampling": "bool",
            "reduction": "str?", "reduction_position": "int?", "reduction_factor": "int",
            "ff_expansion_factor": "int", "self_attention_model": "str", "n_heads": "int",
            "att_context_size": "int_list", "xscaling": "bool", "untie_biases": "bool",
            "pos_emb_max_len": "int", "conv_kernel_size": "int", "conv_norm_type": "str",
            "conv_context_size": "int_list?", "dropout": "float", "dropout_pre_encoder": "float",
            "dropout_emb": "float", "dropout_att": "float",
        }
        _warn_unknown(d, where, set(kinds))
        values = {k: _get(d, where, k, v) for k, v in kinds.items()}
        values["att_context_size"] = tuple(values["att_context_size"])
        if values["conv_context_size"] is not None:
            values["conv_context_size"] = tuple(values["conv_context_size"])
        cfg = cls(**values)
        problems = []
        if cfg.subsampling != "dw_striding":
            problems.append(f"subsampling={cfg.subsampling!r} (only 'dw_striding')")
        if cfg.subsampling_factor < 2 or cfg.subsampling_factor & (cfg.subsampling_factor - 1):
            problems.append(f"subsampling_factor={cfg.subsampling_factor} (a power of 2 >= 2)")
        if cfg.causal_downsampling:
            problems.append("causal_downsampling=true")
        if cfg.reduction is not None and cfg.reduction_factor > 1:
            problems.append("reduction")
        if cfg.self_attention_model != "rel_pos":
            problems.append(f"self_attention_model={cfg.self_attention_model!r} (only 'rel_pos')")
        if tuple(cfg.att_context_size) != (-1, -1):
            problems.append(f"att_context_size={list(cfg.att_context_size)} (only [-1, -1])")
        if cfg.conv_norm_type != "batch_norm":
            problems.append(f"conv_norm_type={cfg.conv_norm_type!r} (only 'batch_norm')")
        if cfg.conv_context_size is not None:
            problems.append("conv_context_size (only null)")
        if cfg.d_model % cfg.n_heads:
            problems.append(f"d_model {cfg.d_model} not divisible by n_heads {cfg.n_heads}")
        if cfg.conv_kernel_size % 2 == 0:
            problems.append(f"conv_kernel_size={cfg.conv_kernel_size} (must be odd)")
        if problems:
            raise ConfigError(f"{where}: unsupported settings: {'; '.join(problems)}")
        return cfg

    @property
    def output_dim(self) -> int:
        return self.feat_out if self.feat_out > 0 else self.d_model


# Keys that transformers' Lfm2Config / PretrainedConfig accepts and this port does not need.
_LFM_IGNORED = {
    "architectures", "block_dim", "block_mlp_init_scale", "block_out_init_scale", "block_use_swiglu",
    "block_use_xavier_init", "conv_dim", "conv_dim_out", "conv_use_xavier_init", "initializer_range",
    "model_type", "num_heads", "use_cache", "use_pos_enc", "block_norm_eps", "tie_embedding",
    "tie_word_embeddings", "torch_dtype", "dtype", "transformers_version", "rope_scaling",
    "rope_parameters", "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
}


@dataclass(frozen=True)
class LfmConfig:
    """The LFM2 backbone (transformers' Lfm2Config semantics)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    block_auto_adjust_ff_dim: bool
    block_ffn_dim_multiplier: float | None
    block_multiple_of: int
    norm_eps: float
    conv_bias: bool
    conv_L_cache: int
    layer_types: tuple[str, ...]
    rope_theta: float
    max_position_embeddings: int
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "lfm") -> LfmConfig:
        known = {
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "intermediate_size", "block_ff_dim", "block_auto_adjust_ff_dim",
            "block_ffn_dim_multiplier", "block_multiple_of", "norm_eps", "conv_bias", "conv_L_cache",
            "layer_types", "full_attn_idxs", "rope_theta", "theta",
        }
        _warn_unknown(d, where, known | _LFM_IGNORED)
        hidden = _get(d, where, "hidden_size", "int", 2560)
        layers = _get(d, where, "num_hidden_layers", "int", 32)
        heads = _get(d, where, "num_attention_heads", "int", 32)
        kv_heads = _get(d, where, "num_key_value_heads", "int", 8)
        if heads <= 0 or kv_heads <= 0 or hidden <= 0 or layers <= 0:
            raise ConfigError(f"{where}: sizes must be positive (hidden {hidden}, layers {layers}, heads {heads})")
        if heads % kv_heads:
            raise ConfigError(f"{where}: num_attention_heads {heads} not a multiple of num_key_value_heads {kv_heads}")
        head_dim = _get(d, where, "head_dim", "int", hidden // heads)
        intermediate = _get(d, where, "intermediate_size", "int", 12288)
        intermediate = _get(d, where, "block_ff_dim", "int", intermediate)
        types = _get(d, where, "layer_types", "str_list?", None)
        if types is None:
            idxs = _get(d, where, "full_attn_idxs", "int_list?", None)
            idxs = list(range(layers)) if idxs is None else idxs
            types = ["full_attention" if i in idxs else "conv" for i in range(layers)]
        if len(types) != layers:
            raise ConfigError(f"{where}.layer_types: {len(types)} entries for num_hidden_layers={layers}")
        bad = sorted({t for t in types if t not in ("conv", "full_attention")})
        if bad:
            raise ConfigError(f"{where}.layer_types: unsupported layer types {bad}")
        theta = _get(d, where, "rope_theta", "float", 1000000.0)
        theta = _get(d, where, "theta", "float", theta)
        return cls(
            vocab_size=_get(d, where, "vocab_size", "int", 65536),
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=intermediate,
            block_auto_adjust_ff_dim=_get(d, where, "block_auto_adjust_ff_dim", "bool", True),
            block_ffn_dim_multiplier=_get(d, where, "block_ffn_dim_multiplier", "float?", 1.0),
            block_multiple_of=_get(d, where, "block_multiple_of", "int", 256),
            norm_eps=_get(d, where, "norm_eps", "float", 1e-5),
            conv_bias=_get(d, where, "conv_bias", "bool", False),
            conv_L_cache=_get(d, where, "conv_L_cache", "int", 3),
            layer_types=tuple(types),
            rope_theta=theta,
            max_position_embeddings=_get(d, where, "max_position_embeddings", "int", 128000),
            bos_token_id=_get(d, where, "bos_token_id", "int?", 1),
            eos_token_id=_get(d, where, "eos_token_id", "int?", 2),
            pad_token_id=_get(d, where, "pad_token_id", "int?", 0),
        )

    @property
    def ff_dim(self) -> int:
        """Effective SwiGLU width (transformers' Lfm2MLP rule)."""
        size = self.intermediate_size
        if self.block_auto_adjust_ff_dim:
            size = int(2 * size / 3)
            if self.block_ffn_dim_multiplier is not None:
                size = int(self.block_ffn_dim_multiplier * size)
                size = self.block_multiple_of * ((size + self.block_multiple_of - 1) // self.block_multiple_of)
        return size


@dataclass(frozen=True)
class DepthformerConfig:
    """The RQ-transformer that emits the codebooks of one audio frame."""

    layers: int
    dim: int
    tie: bool
    # Hard-coded in the official code (not part of config.json).
    n_heads: int = 32
    n_kv_heads: int = 8
    norm_eps: float = 1e-5
    rope_theta: float = 1000000.0

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "depthformer") -> DepthformerConfig:
        kinds = {"layers": "int", "dim": "int", "tie": "bool"}
        _warn_unknown(d, where, set(kinds))
        cfg = cls(**{k: _get(d, where, k, v) for k, v in kinds.items()})
        if cfg.dim % cfg.n_heads:
            raise ConfigError(f"{where}.dim {cfg.dim} must be a multiple of {cfg.n_heads} heads")
        return cfg

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ff_dim(self) -> int:
        """SwiGLU width: 4*dim*2/3 rounded up to a multiple of 256."""
        size = int(2 * (4 * self.dim) / 3)
        return 256 * ((size + 255) // 256)


@dataclass(frozen=True)
class LFM2AudioConfig:
    """The whole ``config.json``."""

    codebooks: int
    tie_audio_embeddings: bool
    semantic_codebook_factor: float
    codebook_weight: str
    interleaved_n_text: int
    interleaved_n_audio: int
    preprocessor: PreprocessorConfig
    encoder: EncoderConfig
    lfm: LfmConfig
    depthformer: DepthformerConfig
    architectures: tuple[str, ...] = ("LFM2AudioModel",)

    audio_vocab_size = 2049  # 2048 codes + end-of-audio (class constant, not a field)

    @classmethod
    def from_dict(cls, d: object, where: str = "config.json") -> LFM2AudioConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: top level must be an object, got {_type_name(d)}")
        sections = {"preprocessor", "encoder", "lfm", "depthformer"}
        kinds = {
            "codebooks": "int", "tie_audio_embeddings": "bool", "semantic_codebook_factor": "float",
            "codebook_weight": "str", "interleaved_n_text": "int", "interleaved_n_audio": "int",
        }
        _warn_unknown(d, where, set(kinds) | sections | {"architectures"})
        values = {k: _get(d, where, k, v) for k, v in kinds.items()}
        if values["codebook_weight"] not in ("log", "linear"):
            raise ConfigError(f"{where}.codebook_weight: expected 'log' or 'linear', got {values['codebook_weight']!r}")
        if values["codebooks"] <= 0 or values["interleaved_n_text"] <= 0 or values["interleaved_n_audio"] <= 0:
            raise ConfigError(f"{where}: codebooks and interleaved_n_* must be positive")
        archs = _get(d, where, "architectures", "str_list", ["LFM2AudioModel"])
        return cls(
            preprocessor=PreprocessorConfig.from_dict(_section(d, where, "preprocessor"), "preprocessor"),
            encoder=EncoderConfig.from_dict(_section(d, where, "encoder"), "encoder"),
            lfm=LfmConfig.from_dict(_section(d, where, "lfm"), "lfm"),
            depthformer=DepthformerConfig.from_dict(_section(d, where, "depthformer"), "depthformer"),
            architectures=tuple(archs),
            **values,
        )

    @classmethod
    def from_file(cls, path: Path) -> LFM2AudioConfig:
        return read_config_file(path, lambda raw: cls.from_dict(raw, where="config.json"))


def read_config_file(path: Path, parse: Callable[[object], T]) -> T:
    """``parse(json of path)``; every problem (missing, unreadable, invalid) is a ConfigError naming the file."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot parse JSON: {exc}") from exc
    try:
        return parse(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
