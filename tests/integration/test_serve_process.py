"""`lfm-call serve` as a real process: the startup line, /healthz, SIGTERM drain to exit 0, config errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lfm_call(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent.cli", *args]


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def test_auth_on_without_token_fails_at_startup() -> None:
    proc = subprocess.run(lfm_call("serve", "--set", "http.auth=on"), capture_output=True, text=True, env=env(),
                          cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert "auth_token is empty" in proc.stderr


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("sip", [False, True])
def test_serve_starts_reports_health_and_drains_on_sigterm(tiny_checkpoint_dir: Path, tmp_path: Path,
                                                           sip: bool) -> None:
    port = free_port()
    sip_port = free_udp_port()
    profile = tmp_path / "profile.yaml"
    profile.write_text(json.dumps({
        "model": {"ref": str(tiny_checkpoint_dir), "offline_fallback": "error", "greeting": ""},
        "vad": {"backend": "energy"}, "http": {"host": "127.0.0.1", "port": port},
        "sip": {"enabled": sip, "listen_host": "127.0.0.1", "listen_port": sip_port},
        "server": {"max_calls": 3, "drain_timeout_s": 5}}))
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(lfm_call("serve", "--config", str(profile), "--allow-tiny-model"), stdout=sink, stderr=subprocess.STDOUT,
                                env=env(), cwd=REPO)
        try:
            deadline = time.monotonic() + 60
            while "server.started" not in log.read_text():
                assert proc.poll() is None, f"serve exited early:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"serve did not start:\n{log.read_text()}"
                time.sleep(0.2)
            started = next(line for line in log.read_text().splitlines() if "server.started" in line)
            assert "lfm2-audio-tiny" in started and f"http://127.0.0.1:{port}" in started
            assert (f"sip=sip:127.0.0.1:{sip_port}" in started) if sip else ("sip=off" in started)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                health = json.load(resp)
            assert health["ready"] is True and health["capacity"] == 3 and health["draining"] is False
            assert health["sip"] is sip
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    text = log.read_text()
    assert "server.draining" in text and "server.stopped" in text and "drained=True" in text
