"""The settings loader: layering, validation messages naming the key, unknown keys rejected."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from config.loader import DEFAULT_CONFIG_PATH, ConfigError, env_layer, load_settings, parse_override
from config.schema import Settings


def write(tmp_path: Path, text: str, name: str = "profile.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_default_yaml_matches_schema_defaults_key_for_key() -> None:
    loaded = load_settings(environ={})
    assert loaded == Settings()
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    defaults = Settings()
    for section in dataclasses.fields(Settings):
        keys = {f.name for f in dataclasses.fields(getattr(defaults, section.name))}
        assert set(raw[section.name]) == keys, section.name


def test_every_default_key_has_a_comment() -> None:
    for lineno, line in enumerate(DEFAULT_CONFIG_PATH.read_text().splitlines(), 1):
        if re.match(r"^  [a-z_]+:", line):
            assert "#" in line, f"default.yaml line {lineno} has no comment: {line!r}"


def test_layers_profile_then_env_then_cli(tmp_path: Path) -> None:
    profile = write(tmp_path, "sip:\n  listen_port: 5070\n  rtp_port_min: 30000\n  rtp_port_max: 30100\n")
    s = load_settings(profile, environ={})
    assert (s.sip.listen_port, s.sip.rtp_port_min) == (5070, 30000)
    s = load_settings(profile, environ={"LFMCALL_SIP__LISTEN_PORT": "5071"})
    assert s.sip.listen_port == 5071
    s = load_settings(profile, environ={"LFMCALL_SIP__LISTEN_PORT": "5071"},
                      overrides=[parse_override("sip.listen_port=5072")])
    assert s.sip.listen_port == 5072
    assert s.sip.rtp_port_min == 30000  # untouched by later layers


def test_bad_type_names_file_key_and_expectation(tmp_path: Path) -> None:
    bad = write(tmp_path, "sip:\n  rtp_port_min: abc\n", "bad.yaml")
    with pytest.raises(ConfigError) as info:
        load_settings(bad, environ={})
    assert str(info.value) == f"{bad}: sip.rtp_port_min: expected int 1024-65535, got 'abc'"


def test_out_of_range_and_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sip.rtp_port_min: expected int 1024-65535, got 80"):
        load_settings(write(tmp_path, "sip: {rtp_port_min: 80}\n"), environ={})
    with pytest.raises(ConfigError, match=r"model.input_mode: expected one of 'chunked', 'turn'"):
        load_settings(write(tmp_path, "model: {input_mode: streaming}\n"), environ={})
    with pytest.raises(ConfigError, match=r"turn.echo_gate: expected bool, got 'yes please'"):
        load_settings(write(tmp_path, "turn: {echo_gate: yes please}\n"), environ={})


def test_unknown_keys_and_sections_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key sip.listen_prot"):
        load_settings(write(tmp_path, "sip: {listen_prot: 5060}\n"), environ={})
    with pytest.raises(ConfigError, match=r"unknown section 'sipp'"):
        load_settings(write(tmp_path, "sipp: {listen_port: 5060}\n"), environ={})
    with pytest.raises(ConfigError, match=r"environment LFMCALL_SIP__NOPE: unknown key sip.nope"):
        load_settings(environ={"LFMCALL_SIP__NOPE": "1"})


def test_env_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"LFMCALL_SERVER__MAX_CALLS": "many"})
    assert str(info.value) == ("environment LFMCALL_SERVER__MAX_CALLS: server.max_calls: "
                               "expected int 1-10000, got 'many'")


def test_env_string_fields_keep_text_and_lists_parse() -> None:
    layer = env_layer({"LFMCALL_HTTP__AUTH_TOKEN": "0123", "LFMCALL_SIP__TRUSTED_SOURCES": "[10.0.0.0/8]",
                       "OTHER": "x"})
    assert layer == {"http": {"auth_token": "0123"}, "sip": {"trusted_sources": ("10.0.0.0/8",)}}


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    bad = write(tmp_path, "sip:\n  listen_port: [1,\n")
    with pytest.raises(ConfigError, match=r"invalid YAML"):
        load_settings(bad, environ={})


def test_missing_file_and_cross_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml", environ={})
    with pytest.raises(ConfigError, match=r"rtp_port_min \(30000\) must not exceed sip.rtp_port_max"):
        load_settings(write(tmp_path, "sip: {rtp_port_min: 30000, rtp_port_max: 29000}\n"), environ={})


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        parse_override("listen_port")


def test_wildcard_sip_listen_address_needs_an_advertised_address(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sip.advertised_address: expected the address callers reach"):
        load_settings(write(tmp_path, "sip: {enabled: true, listen_host: 0.0.0.0}\n"), environ={})
    ok = load_settings(write(tmp_path, "sip: {enabled: true, listen_host: 0.0.0.0, advertised_address: 10.0.0.5}\n"),
                       environ={})
    assert ok.sip.advertised_address == "10.0.0.5"


def test_packet_ms_is_fixed_at_20() -> None:
    """Every transport paces 20 ms packets: another audio.packet_ms is refused, not silently ignored."""
    from config.loader import ConfigError, load_settings, parse_override

    assert load_settings(None, environ={}).audio.packet_ms == 20
    with pytest.raises(ConfigError, match="packet_ms"):
        load_settings(None, environ={}, overrides=[parse_override("audio.packet_ms=40")])
