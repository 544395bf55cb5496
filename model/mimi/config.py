"""Mimi configuration: the moshi-format `mimi_config.json` dict, validated into frozen dataclasses.

The dict has four scalar keys (`sample_rate`, `channels`, `frame_rate`) and three sections
(`seanet`, `quantizer`, `transformer`) whose keys are exactly the constructor arguments moshi's
`get_mimi` passes on (moshi/models/loaders.py `_mimi_config`). Every key of the default config is
required; a key this module does not know, or a value it does not implement (e.g. weight norm, a
non-causal transformer), raises `MimiError` naming the key.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from model.errors import ModelError


class MimiError(ModelError, ValueError):
    """Bad Mimi config, weights file, codes or streaming state; the message names the culprit."""


@dataclass(frozen=True)
class SeanetConfig:
    channels: int
    dimension: int
    causal: bool
    n_filters: int
    n_residual_layers: int
    activation: str
    compress: int
    dilation_base: int
    disable_norm_outer_blocks: int
    kernel_size: int
    residual_kernel_size: int
    last_kernel_size: int
    norm: str
    pad_mode: str
    ratios: tuple[int, ...]
    true_skip: bool

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)


@dataclass(frozen=True)
class QuantizerConfig:
    dimension: int
    n_q: int
    bins: int
    input_dimension: int
    output_dimension: int
    n_q_semantic: int = 1


@dataclass(frozen=True)
class TransformerConfig:
    d_model: int
    num_heads: int
    num_layers: int
    causal: bool
    layer_scale: float | None
    context: int
    conv_layout: bool
    max_period: float
    gating: str
    norm: str
    positional_embedding: str
    dim_feedforward: int
    input_dimension: int
    output_dimensions: tuple[int, ...]


# Values this implementation supports where moshi offers alternatives (key -> allowed values).
_SUPPORTED: dict[str, tuple[Any, ...]] = {
    "seanet.causal": (True,),
    "seanet.activation": ("ELU",),
    "seanet.norm": ("none",),
    "seanet.pad_mode": ("constant",),
    "transformer.causal": (True,),
    "transformer.conv_layout": (True,),
    "transformer.gating": ("none",),
    "transformer.norm": ("layer_norm",),
    "transformer.positional_embedding": ("rope",),
}
_OPTIONAL_KEYS = {"quantizer.n_q_semantic"}


def _check_type(key: str, value: Any, kind: str) -> Any:
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise MimiError(f"mimi config: {key} must be an integer, got {value!r}")
        return value
    if kind == "pos_int":
        _check_type(key, value, "int")
        if value <= 0:
            raise MimiError(f"mimi config: {key} must be positive, got {value!r}")
        return value
    if kind == "nonneg_int":
        _check_type(key, value, "int")
        if value < 0:
            raise MimiError(f"mimi config: {key} must be >= 0, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise MimiError(f"mimi config: {key} must be a finite number, got {value!r}")
        return float(value)
    if kind == "opt_float":
        return None if value is None else _check_type(key, value, "float")
    if kind == "bool":
        if not isinstance(value, bool):
            raise MimiError(f"mimi config: {key} must be true or false, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise MimiError(f"mimi config: {key} must be a string, got {value!r}")
        return value
    if kind == "int_list":
        if not isinstance(value, (list, tuple)) or not value:
            raise MimiError(f"mimi config: {key} must be a non-empty list of integers, got {value!r}")
        return tuple(_check_type(f"{key}[{i}]", v, "pos_int") for i, v in enumerate(value))
    raise AssertionError(kind)


_SEANET_FIELDS = {
    "channels": "pos_int",
    "dimension": "pos_int",
    "causal": "bool",
    "n_filters": "pos_int",
    "n_residual_layers": "nonneg_int",
    "activation": "str",
    "compress": "pos_int",
    "dilation_base": "pos_int",
    "disable_norm_outer_blocks": "nonneg_int",
    "kernel_size": "pos_int",
    "residual_kernel_size": "pos_int",
    "last_kernel_size": "pos_int",
    "norm": "str",
    "pad_mode": "str",
    "ratios": "int_list",
    "true_skip": "bool",
}
_QUANTIZER_FIELDS = {
    "dimension": "pos_int",
    "n_q": "pos_int",
    "bins": "pos_int",
    "input_dimension": "pos_int",
    "output_dimension": "pos_int",
    "n_q_semantic": "pos_int",
}
_TRANSFORMER_FIELDS = {
    "d_model": "pos_int",
    "num_heads": "pos_int",
    "num_layers": "nonneg_int",
    "causal": "bool",
    "layer_scale": "opt_float",
    "context": "pos_int",
    "conv_layout": "bool",
    "max_period": "float",
    "gating": "str",
    "norm": "str",
    "positional_embedding": "str",
    "dim_feedforward": "pos_int",
    "input_dimension": "pos_int",
    "output_dimensions": "int_list",
}


def _parse_section(name: str, raw: Any, fields: dict[str, str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise MimiError(f"mimi config: section {name} must be an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise MimiError(f"mimi config: unknown key {name}.{unknown[0]} (unknown: {', '.join(unknown)})")
    out: dict[str, Any] = {}
    for key, kind in fields.items():
        full = f"{name}.{key}"
        if key not in raw:
            if full in _OPTIONAL_KEYS:
                continue
            raise MimiError(f"mimi config: missing key {full}")
        value = _check_type(full, raw[key], kind)
        allowed = _SUPPORTED.get(full)
        if allowed is not None and value not in allowed:
            raise MimiError(
                f"mimi config: unsupported value {value!r} for {full} (supported: {list(allowed)})"
            )
        out[key] = value
    return out


@dataclass(frozen=True)
class MimiConfig:
    """A whole Mimi codec; `default()` is the real one shipped with LFM2-Audio."""

    sample_rate: int
    channels: int
    frame_rate: float
    seanet: SeanetConfig
    quantizer: QuantizerConfig
    transformer: TransformerConfig

    @property
    def frame_size(self) -> int:
        """Samples per code frame (1920 at 24 kHz / 12.5 Hz)."""
        return round(self.sample_rate / self.frame_rate)

    @property
    def encoder_frame_rate(self) -> float:
        """Rate of the SEANet latent (25 Hz for the real Mimi)."""
        return self.sample_rate / self.seanet.hop_length

    @property
    def resample_stride(self) -> int:
        """Ratio between the SEANet latent rate and the code frame rate (2 for the real Mimi)."""
        return round(self.encoder_frame_rate / self.frame_rate)

    @classmethod
    def default(cls) -> MimiConfig:
        return cls.from_dict(DEFAULT_MIMI_CONFIG)

    @classmethod
    def from_json(cls, path: Path) -> MimiConfig:
        """Read a moshi-format mimi_config.json."""
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MimiError(f"cannot read mimi config {path}: {exc}") from exc
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> MimiConfig:
        if not isinstance(raw, dict):
            raise MimiError(f"mimi config must be an object, got {type(raw).__name__}")
        top = {"sample_rate": "pos_int", "channels": "pos_int", "frame_rate": "float"}
        sections = ("seanet", "quantizer", "transformer")
        unknown = sorted(set(raw) - set(top) - set(sections))
        if unknown:
            raise MimiError(f"mimi config: unknown key {unknown[0]} (unknown: {', '.join(unknown)})")
        values: dict[str, Any] = {}
        for key, kind in top.items():
            if key not in raw:
                raise MimiError(f"mimi config: missing key {key}")
            values[key] = _check_type(key, raw[key], kind)
        for key in sections:
            if key not in raw:
                raise MimiError(f"mimi config: missing key {key}")
        seanet = SeanetConfig(**_parse_section("seanet", raw["seanet"], _SEANET_FIELDS))
        quantizer = QuantizerConfig(**_parse_section("quantizer", raw["quantizer"], _QUANTIZER_FIELDS))
        transformer = TransformerConfig(
            **_parse_section("transformer", raw["transformer"], _TRANSFORMER_FIELDS)
        )
        config = cls(seanet=seanet, quantizer=quantizer, transformer=transformer, **values)
        config._validate()
        return config

    def _validate(self) -> None:
        if self.frame_rate <= 0:
            raise MimiError(f"mimi config: frame_rate must be positive, got {self.frame_rate}")
        if self.seanet.channels != self.channels:
            raise MimiError(
                f"mimi config: seanet.channels ({self.seanet.channels}) differs from channels ({self.channels})"
            )
        if not math.isclose(self.sample_rate / self.frame_rate, self.frame_size):
            raise MimiError(
                f"mimi config: sample_rate / frame_rate = {self.sample_rate / self.frame_rate} is not an integer"
            )
        ratio = self.encoder_frame_rate / self.frame_rate
        if ratio < 1 or not math.isclose(ratio, round(ratio)):
            raise MimiError(
                f"mimi config: frame_rate {self.frame_rate} must divide the SEANet rate "
                f"{self.encoder_frame_rate} (sample_rate / prod(seanet.ratios))"
            )
        if self.seanet.disable_norm_outer_blocks > len(self.seanet.ratios) + 2:
            raise MimiError("mimi config: seanet.disable_norm_outer_blocks exceeds the number of blocks")
        q = self.quantizer
        if q.n_q <= q.n_q_semantic:
            raise MimiError(
                f"mimi config: quantizer.n_q ({q.n_q}) must exceed n_q_semantic ({q.n_q_semantic})"
            )
        if q.input_dimension != self.seanet.dimension or q.output_dimension != self.seanet.dimension:
            raise MimiError(
                "mimi config: quantizer.input_dimension/output_dimension must equal seanet.dimension"
            )
        t = self.transformer
        if t.d_model % t.num_heads or (t.d_model // t.num_heads) % 2:
            raise MimiError(
                f"mimi config: transformer.num_heads ({t.num_heads}) must split d_model ({t.d_model}) "
                "into heads of even size"
            )
        if t.input_dimension != self.seanet.dimension or t.output_dimensions != (self.seanet.dimension,):
            raise MimiError(
                "mimi config: transformer.input_dimension and output_dimensions must be seanet.dimension "
                f"({self.seanet.dimension}) and [seanet.dimension]"
            )

    def to_dict(self) -> dict[str, Any]:
        """The moshi-format dict (lists, not tuples), as written in mimi_config.json."""
        out = asdict(self)
        out["seanet"]["ratios"] = list(self.seanet.ratios)
        out["transformer"]["output_dimensions"] = list(self.transformer.output_dimensions)
        if self.quantizer.n_q_semantic == 1:
            del out["quantizer"]["n_q_semantic"]
        return out


# moshi 0.2.13 moshi/models/loaders.py `_mimi_config`: the real Mimi (the LFM2-Audio checkpoint has
# no mimi_config.json, the official code always builds this one).
DEFAULT_MIMI_CONFIG: dict[str, Any] = {
    "sample_rate": 24000,
    "channels": 1,
    "frame_rate": 12.5,
    "seanet": {
        "channels": 1,
        "dimension": 512,
        "causal": True,
        "n_filters": 64,
        "n_residual_layers": 1,
        "activation": "ELU",
        "compress": 2,
        "dilation_base": 2,
        "disable_norm_outer_blocks": 0,
        "kernel_size": 7,
        "residual_kernel_size": 3,
        "last_kernel_size": 3,
        "norm": "none",
        "pad_mode": "constant",
        "ratios": [8, 6, 5, 4],
        "true_skip": True,
    },
    "quantizer": {"dimension": 256, "n_q": 32, "bins": 2048, "input_dimension": 512, "output_dimension": 512},
    "transformer": {
        "d_model": 512,
        "num_heads": 8,
        "num_layers": 8,
        "causal": True,
        "layer_scale": 0.01,
        "context": 250,
        "conv_layout": True,
        "max_period": 10000,
        "gating": "none",
        "norm": "layer_norm",
        "positional_embedding": "rope",
        "dim_feedforward": 2048,
        "input_dimension": 512,
        "output_dimensions": [512],
    },
}


def tiny_mimi_config() -> MimiConfig:
    """A tiny Mimi with the real rates, ratios and codebooks (the shape of the parity fixture's)."""
    raw = json.loads(json.dumps(DEFAULT_MIMI_CONFIG))
    raw["seanet"].update(dimension=32, n_filters=4)
    raw["quantizer"].update(dimension=4, input_dimension=32, output_dimension=32)
    raw["transformer"].update(
        d_model=32, num_heads=2, num_layers=1, dim_feedforward=64, input_dimension=32, output_dimensions=[32]
    )
    return MimiConfig.from_dict(raw)
