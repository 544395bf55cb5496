"""`lfm-call serve --sip` (config/sip-local.yaml) answers a SIPp call on loopback in one command:
no auth token, advertised address 127.0.0.1, the tiny model only with --allow-tiny-model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.integration.sip.helpers import free_udp_port, require_binary


def _free_tcp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_sip_answers_a_sipp_call_on_loopback(tiny_checkpoint_dir: Path, tmp_path: Path) -> None:
    sipp = require_binary("sipp")
    sip_port, http_port = free_udp_port(), _free_tcp_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LFMCALL_")}
    env.update(PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", LFM_CALL_CACHE=str(tmp_path / "cache"))
    argv = [sys.executable, "-m", "agent.cli", "serve", "--sip", "--allow-tiny-model",
            "--model", str(tiny_checkpoint_dir), "--set", f"sip.listen_port={sip_port}",
            "--set", f"http.port={http_port}", "--set", "sip.rtp_port_min=32000",
            "--set", "sip.rtp_port_max=32099", "--set", "vad.backend=energy", "--set", "logging.format=text"]
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=env, cwd=REPO_ROOT, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while "server.started" not in log.read_text(errors="replace"):
                assert server.poll() is None, f"serve --sip exited early:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"serve --sip did not start:\n{log.read_text()}"
                time.sleep(0.2)
            started = next(line for line in log.read_text().splitlines() if "server.started" in line)
            assert f"sip=sip:127.0.0.1:{sip_port}" in started, started
            # SIPp's built-in UAC: INVITE (PCMU offer), 200 OK, ACK, 3 s of call, BYE, 200 OK
            call = subprocess.run(
                [sipp, f"127.0.0.1:{sip_port}", "-sn", "uac", "-s", "agent", "-m", "1", "-d", "3000",
                 "-i", "127.0.0.1", "-p", str(free_udp_port()), "-mi", "127.0.0.1",
                 "-mp", str(free_udp_port(even=True)), "-nostdin", "-timeout", "40s", "-timeout_error",
                 "-trace_err"],
                capture_output=True, text=True, timeout=60, cwd=tmp_path)
            assert call.returncode == 0, f"sipp failed ({call.returncode}):\n{call.stdout[-3000:]}\n{call.stderr[-2000:]}"
            deadline = time.monotonic() + 20
            while "call.ended" not in log.read_text(errors="replace"):
                assert time.monotonic() < deadline, f"the call did not end on the server:\n{log.read_text()[-3000:]}"
                time.sleep(0.2)
            assert "advertised=127.0.0.1" in log.read_text()  # Contact, Via and SDP carry the loopback address
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=30) == 0, log.read_text()[-3000:]
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(5)
