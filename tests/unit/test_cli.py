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
