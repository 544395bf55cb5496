"""The command line: subcommands listed, bad config is a clear error with non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main

SUBCOMMANDS = ("serve", "simulate", "dial", "asr", "tts", "make-tiny-checkpoint", "bench")


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


def test_serve_with_bad_config_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sip:\n  rtp_port_min: abc\n")
    code = main(["serve", "--config", str(bad)])
    assert code != 0
    err = capsys.readouterr().err
    assert f"{bad}: sip.rtp_port_min: expected int 1024-65535, got 'abc'" in err


def test_set_flag_overrides_and_config_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--set", "server.max_calls=3"]) == 0
    assert "max_calls: 3" in capsys.readouterr().out


@pytest.fixture
def no_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without the weights: empty Hugging Face and lfm-call caches, no network."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LFM_CALL_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """`agent.server.serve` replaced by a recorder (a test double): what serve would have run on."""
    seen: list[object] = []

    async def fake_serve(settings: object) -> int:
        seen.append(settings)
        return 0

    import agent.server

    monkeypatch.setattr(agent.server, "serve", fake_serve)
    return seen


def test_serve_without_weights_refuses_and_prints_the_download_command(
        no_weights: None, served: list[object], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--set", "model.ref=LiquidAI/LFM2.5-Audio-1.5B"])
    assert code == 1 and served == []
    err = capsys.readouterr().err
    assert "no model weights on this machine" in err
    assert "hf download LiquidAI/LFM2.5-Audio-1.5B" in err and "--allow-tiny-model" in err


def test_serve_refuses_a_tiny_checkpoint_folder_without_the_flag(
        tiny_checkpoint_dir: Path, served: list[object], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--model", str(tiny_checkpoint_dir)]) == 1
    assert served == [] and "tiny random checkpoint" in capsys.readouterr().err
    assert main(["serve", "--model", str(tiny_checkpoint_dir), "--allow-tiny-model"]) == 0
    assert len(served) == 1


def test_serve_allow_tiny_model_starts_without_weights(no_weights: None, served: list[object]) -> None:
    assert main(["serve", "--allow-tiny-model"]) == 0
    assert len(served) == 1


def test_serve_sip_is_the_loopback_profile(served: list[object], tiny_checkpoint_dir: Path) -> None:
    from agent.http_app import auth_required
    from config.schema import Settings

    assert main(["serve", "--sip", "--allow-tiny-model", "--model", str(tiny_checkpoint_dir)]) == 0
    settings = served[0]
    assert isinstance(settings, Settings)
    assert settings.sip.enabled and settings.sip.listen_host == "127.0.0.1"
    assert settings.sip.advertised_address == "127.0.0.1"
    assert list(settings.sip.trusted_sources) == ["127.0.0.1/32"]
    assert settings.http.host == "127.0.0.1" and not auth_required(settings.http)


def test_production_sip_profile_stays_strict() -> None:
    from config.loader import ConfigError, load_settings
    from tests.conftest import REPO_ROOT

    profile = REPO_ROOT / "config" / "sip-gateway.yaml"
    with pytest.raises(ConfigError, match=r"sip\.advertised_address"):
        load_settings(profile, environ={})
    settings = load_settings(profile, environ={"LFMCALL_SIP__ADVERTISED_ADDRESS": "203.0.113.10",
                                               "LFMCALL_HTTP__AUTH_TOKEN": "t"})
    assert settings.http.auth == "on" and settings.model.offline_fallback == "error"
