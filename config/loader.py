"""The one settings loader: default.yaml -> profile file -> environment -> CLI overrides.

Each layer is a partial mapping {section: {key: value}}. Every layer is validated against the
schema as it is merged, so an error names the layer it came from (file path, environment variable
or command-line flag), the dotted key and what was expected::

    bad.yaml: sip.rtp_port_min: expected int 1024-65535, got 'abc'

Unknown sections and keys are errors, not silently ignored. Environment overrides are spelled
``LFMCALL_SECTION__KEY=value`` (value parsed as a YAML scalar or flow list).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from config.schema import Settings

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default.yaml")
ENV_PREFIX = "LFMCALL_"


class ConfigError(ValueError):
    """A settings file, variable or flag is invalid; the message names source, key and expectation."""


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Settings)
    return {f.name: hints[f.name] for f in dataclasses.fields(Settings)}


def _describe(tp: Any, meta: Mapping[str, Any]) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    name = getattr(tp, "__name__", str(tp))
    if typing.get_origin(tp) is tuple:
        name = f"list of {typing.get_args(tp)[0].__name__}"
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        return f"{name} {_fmt(lo)}-{_fmt(hi)}"
    if lo is not None:
        return f"{name} >= {_fmt(lo)}"
    return name


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _coerce(value: Any, tp: Any, meta: Mapping[str, Any]) -> Any:
    """Return value converted to tp, or raise ValueError (message filled in by the caller)."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError
        result: Any = value
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError
        result = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ValueError
        result = value
    elif typing.get_origin(tp) is tuple:
        item_tp = typing.get_args(tp)[0]
        if not isinstance(value, (list, tuple)):
            raise ValueError
        return tuple(_coerce(v, item_tp, {}) for v in value)
    else:  # pragma: no cover - schema uses only the types above
        raise TypeError(f"unsupported settings type {tp!r}")
    lo, hi, choices = meta.get("min"), meta.get("max"), meta.get("choices")
    if lo is not None and result < lo:
        raise ValueError
    if hi is not None and result > hi:
        raise ValueError
    if choices and result not in choices:
        raise ValueError
    return result


def _validate_layer(layer: Any, source: str) -> dict[str, dict[str, Any]]:
    """Check one partial layer against the schema; return it with values coerced."""
    if layer is None:
        return {}
    if not isinstance(layer, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(layer).__name__}")
    sections = _section_types()
    out: dict[str, dict[str, Any]] = {}
    for section, values in layer.items():
        if section not in sections:
            raise ConfigError(
                f"{source}: unknown section {section!r} (known: {', '.join(sorted(sections))})"
            )
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: {section}: expected a mapping, got {values!r}")
        cls = sections[section]
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        coerced: dict[str, Any] = {}
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(
                    f"{source}: unknown key {section}.{key} (known: {', '.join(sorted(fields))})"
                )
            meta = fields[key].metadata
            try:
                coerced[key] = _coerce(value, hints[key], meta)
            except ValueError:
                raise ConfigError(
                    f"{source}: {section}.{key}: expected {_describe(hints[key], meta)}, got {value!r}"
                ) from None
        out[section] = coerced
    return out


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None


def env_layer(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Collect ``LFMCALL_SECTION__KEY=value`` overrides, each validated with its variable named."""
    merged: dict[str, dict[str, Any]] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX):]
        if "__" not in rest:
            raise ConfigError(f"environment {name}: expected LFMCALL_SECTION__KEY")
        section, key = (part.lower() for part in rest.split("__", 1))
        raw = environ[name]
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (int, float, bool)) and _is_str_field(section, key):
            value = raw  # "0123" stays a string where a string is expected
        layer = _validate_layer({section: {key: value}}, f"environment {name}")
        merged.setdefault(section, {}).update(layer.get(section, {}))
    return merged


def _is_str_field(section: str, key: str) -> bool:
    cls = _section_types().get(section)
    if cls is None:
        return False
    return typing.get_type_hints(cls).get(key) is str


def parse_override(text: str) -> dict[str, dict[str, Any]]:
    """Parse one ``section.key=value`` command-line override into a layer (not yet validated)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    dotted, raw = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (int, float, bool)) and _is_str_field(section, key):
        value = raw
    return {section: {key: value}}


def _merge(base: dict[str, dict[str, Any]], layer: Mapping[str, Mapping[str, Any]]) -> None:
    for section, values in layer.items():
        base.setdefault(section, {}).update(values)


def _build(merged: Mapping[str, Mapping[str, Any]], sources: str) -> Settings:
    kwargs = {}
    for section, cls in _section_types().items():
        kwargs[section] = cls(**merged.get(section, {}))
    settings = Settings(**kwargs)
    _check_cross_field(settings, sources)
    return settings


def _check_cross_field(s: Settings, sources: str) -> None:
    if s.sip.rtp_port_min > s.sip.rtp_port_max:
        raise ConfigError(
            f"{sources}: sip.rtp_port_min ({s.sip.rtp_port_min}) must not exceed "
            f"sip.rtp_port_max ({s.sip.rtp_port_max})"
        )
    if s.turn.early_response_silence_ms >= s.turn.end_of_turn_silence_ms:
        raise ConfigError(
            f"{sources}: turn.early_response_silence_ms ({s.turn.early_response_silence_ms}) must be below "
            f"turn.end_of_turn_silence_ms ({s.turn.end_of_turn_silence_ms})"
        )
    if s.turn.false_interruption_timeout_ms <= s.turn.barge_in_min_speech_ms:
        raise ConfigError(
            f"{sources}: turn.false_interruption_timeout_ms ({s.turn.false_interruption_timeout_ms}) must "
            f"exceed turn.barge_in_min_speech_ms ({s.turn.barge_in_min_speech_ms})"
        )
    if s.sip.enabled and s.sip.listen_host in ("0.0.0.0", "::") and not s.sip.advertised_address:
        raise ConfigError(
            f"{sources}: sip.advertised_address: expected the address callers reach this node at "
            f"(sip.listen_host is {s.sip.listen_host!r}, which cannot go into Contact, Via and SDP)"
        )
    if s.vad.stop_threshold > s.vad.start_threshold:
        raise ConfigError(
            f"{sources}: vad.stop_threshold ({s.vad.stop_threshold}) must not exceed "
            f"vad.start_threshold ({s.vad.start_threshold})"
        )


def load_settings(
    profile: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: list[dict[str, dict[str, Any]]] | None = None,
    default_path: Path = DEFAULT_CONFIG_PATH,
) -> Settings:
    """Load settings: default file, then the profile file, then environment, then CLI overrides."""
    merged: dict[str, dict[str, Any]] = {}
    _merge(merged, _validate_layer(_read_yaml(default_path), str(default_path)))
    sources = [str(default_path)]
    if profile is not None:
        path = Path(profile)
        _merge(merged, _validate_layer(_read_yaml(path), str(path)))
        sources.append(str(path))
    _merge(merged, env_layer(os.environ if environ is None else environ))
    for layer in overrides or []:
        _merge(merged, _validate_layer(layer, "command line"))
    return _build(merged, sources[-1])


def settings_as_dict(settings: Settings) -> dict[str, Any]:
    return dataclasses.asdict(settings)
