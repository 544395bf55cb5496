"""Scale-out on loopback: Kamailio's dispatcher in front of two `lfm-call serve` nodes, SIPp as the PBX.

One test walks the whole life of a small pool, because starting the pool is most of its cost:

1. load: 20 calls at 5/s through Kamailio all succeed and both nodes answered some
   (`lfmcall_calls_total{transport="sip"}` on each node's /metrics);
2. failover: one node is SIGKILLed; the next 10 calls still all succeed — INVITEs sent to the dead
   node time out (tm fr_timer), the node is marked inactive and the call goes to the other one;
3. recovery: the node is restarted and OPTIONS probing puts it back in the rotation;
4. capacity: 2 x max_calls long calls fill both nodes (a node that is full answers 503 and Kamailio
   tries the other one); one call more is refused with 503, counted as `reason="full"`;
5. drain: SIGTERM to the node holding an active call — that call's BYE (after its pause) succeeds,
   new calls go to the other node, and the drained node exits 0 within server.drain_timeout_s.

The nodes run `config/sip-gateway.yaml` (the production profile) with addresses moved to 127.0.0.1;
Kamailio runs `deploy/kamailio/kamailio.cfg` with a rendered `kamailio-local.cfg` and dispatcher list
in a temp dir. Every process has a timeout and is killed at teardown. A missing peer fails the test
with the install line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KAMAILIO_DIR = REPO / "deploy" / "kamailio"
SCENARIO = KAMAILIO_DIR / "sipp" / "uac_via_proxy.xml"
PROFILE = REPO / "config" / "sip-gateway.yaml"
APT_LINE = ("apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
            "kamailio sip-tester")
AUTH_TOKEN = "test-token-not-a-secret"
DRAIN_TIMEOUT_S = 20.0
MAX_CALLS = 6
PING_INTERVAL_S = 1
FR_TIMER_MS = 1500
COMPLETED = ("lfmcall_calls_total", {"transport": "sip", "result": "completed"})
REFUSED_FULL = ("lfmcall_calls_refused_total", {"transport": "sip", "reason": "full"})
SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$", re.M)


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; install the scale-out test peers with: {APT_LINE}")
    return path


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_even_udp_port() -> int:
    for _ in range(100):
        port = free_port(socket.SOCK_DGRAM)
        if port % 2 == 0 and port < 65535:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free even UDP port pair")


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, detail: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{detail()}")
        time.sleep(0.1)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError:
        return 0, ""


@dataclass
class Node:
    """One `lfm-call serve` subprocess (its own session, so signals reach only it)."""

    name: str
    checkpoint: Path
    workdir: Path
    sip_port: int = field(default_factory=lambda: free_port(socket.SOCK_DGRAM))
    http_port: int = field(default_factory=lambda: free_port(socket.SOCK_STREAM))
    rtp_port_min: int = 33000
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("LFMCALL_")}
        env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", LFMCALL_HTTP__AUTH_TOKEN=AUTH_TOKEN)
        sets = {
            "model.ref": str(self.checkpoint), "model.greeting": "", "vad.backend": "energy",
            "sip.listen_host": "127.0.0.1", "sip.listen_port": str(self.sip_port),
            "sip.trusted_sources": "[127.0.0.1/32]",
            "sip.rtp_port_min": str(self.rtp_port_min), "sip.rtp_port_max": str(self.rtp_port_min + 99),
            "http.host": "127.0.0.1", "http.port": str(self.http_port),
            "server.max_calls": str(MAX_CALLS), "server.drain_timeout_s": str(DRAIN_TIMEOUT_S), "logging.format": "text",
        }
        argv = [sys.executable, "-m", "agent.cli", "serve", "--config", str(PROFILE), "--allow-tiny-model"]
        for key, value in sets.items():
            argv += ["--set", f"{key}={value}"]
        with self.log_path.open("wb") as sink:
            self.proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=REPO, start_new_session=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def health(self) -> tuple[int, dict[str, object]]:
        status, body = http_get(self.url("/healthz"))
        return status, (json.loads(body) if body.startswith("{") else {})

    def counter(self, series: tuple[str, dict[str, str]]) -> int:
        """The value of one labelled series from /metrics (0 when not yet present)."""
        status, body = http_get(self.url("/metrics"))
        assert status == 200, f"{self.name}: /metrics answered {status}"
        name, labels = series
        for metric, label_text, value in SAMPLE.findall(body):
            if metric == name and dict(re.findall(r'(\w+)="([^"]*)"', label_text)) == labels:
                return int(float(value))
        return 0

    def completed_calls(self) -> int:
        return self.counter(COMPLETED)

    def active_calls(self) -> int:
        _, health = self.health()
        value = health.get("active_calls", 0)
        return value if isinstance(value, int) else 0

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            return self.health()[0] == 200

        wait_for(f"{self.name} /healthz", ready, timeout_s, self.log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Kamailio:
    workdir: Path
    nodes: list[Node]
    sip_port: int = field(default_factory=lambda: free_port(socket.SOCK_DGRAM))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def ctl(self) -> str:
        return f"unix:{self.workdir / 'kamailio_ctl'}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "kamailio.log"

    def render(self) -> Path:
        """kamailio.cfg unchanged, plus the overrides and the dispatcher list beside it."""
        cfg = self.workdir / "kamailio.cfg"
        shutil.copy(KAMAILIO_DIR / "kamailio.cfg", cfg)
        template = (KAMAILIO_DIR / "dispatcher.list").read_text()
        entries = [line for line in template.splitlines() if line.strip() and not line.startswith("#")]
        assert entries, "deploy/kamailio/dispatcher.list has no example entry"
        setid = entries[0].split()[0]
        lines = [f"{setid} sip:127.0.0.1:{n.sip_port} 0 0 duid={n.name};maxload=8" for n in self.nodes]
        (self.workdir / "dispatcher.list").write_text("\n".join(lines) + "\n")
        (self.workdir / "kamailio-local.cfg").write_text(
            f"#!define SIP_LISTEN udp:127.0.0.1:{self.sip_port}\n"
            f'#!define DISPATCHER_LIST "{self.workdir / "dispatcher.list"}"\n'
            f'#!define CTL_SOCKET "{self.ctl}"\n'
            f"#!define DS_PING_INTERVAL_S {PING_INTERVAL_S}\n"
            f"#!define FR_TIMER_MS {FR_TIMER_MS}\n"
            "#!define PROCESSES 2\n")
        return cfg

    def start(self) -> None:
        kamailio = require_binary("kamailio")
        cfg = self.render()
        check = subprocess.run([kamailio, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, f"kamailio -c rejected the config:\n{check.stderr[-3000:]}"
        (self.workdir / "run").mkdir(exist_ok=True)
        with self.log_path.open("wb") as sink:
            self.proc = subprocess.Popen(
                [kamailio, "-f", str(cfg), "-DD", "-E", "-m", "64", "-M", "8", "-Y", str(self.workdir / "run")],
                stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def destinations(self) -> dict[str, str]:
        """duid -> dispatcher state letter: "A" active, "I" inactive (flags like AX, IP: P = probing)."""
        out = subprocess.run([require_binary("kamcmd"), "-s", self.ctl, "dispatcher.list"],
                             capture_output=True, text=True, timeout=10).stdout
        states = {}
        for block in out.split("DEST:")[1:]:
            flags, duid = re.search(r"FLAGS:\s*(\w+)", block), re.search(r"DUID:\s*(\S+)", block)
            if flags and duid:
                states[duid.group(1)] = flags.group(1)[0]
        return states

    def wait_states(self, want: dict[str, str], timeout_s: float) -> None:
        """Wait until the states hold for a whole probe timeout: a probe sent while a node was still
        down times out later (FR_TIMER_MS) and would mark it inactive again."""
        stable_s = FR_TIMER_MS / 1000 + PING_INTERVAL_S
        since: list[float] = []

        def settled() -> bool:
            if not all(self.destinations().get(k) == v for k, v in want.items()):
                since.clear()
                return False
            since.append(time.monotonic())
            return since[-1] - since[0] >= stable_s

        wait_for(f"dispatcher states {want}", settled, timeout_s, lambda: f"now {self.destinations()}\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the workers go with it
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def sipp_argv(kamailio: Kamailio, *, calls: int, rate: float, hold_ms: int, timeout_s: int = 60) -> list[str]:
    return [require_binary("sipp"), f"127.0.0.1:{kamailio.sip_port}", "-sf", str(SCENARIO), "-s", "agent",
            "-i", "127.0.0.1", "-p", str(free_port(socket.SOCK_DGRAM)),
            "-mi", "127.0.0.1", "-mp", str(free_even_udp_port()),
            "-m", str(calls), "-r", str(rate), "-l", str(calls), "-d", str(hold_ms),
            "-nostdin", "-trace_err", "-timeout", f"{timeout_s}s", "-timeout_error"]


def run_sipp(argv: list[str], cwd: Path, timeout_s: float = 90) -> tuple[int, str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=cwd,
                          stdin=subprocess.DEVNULL)
    return proc.returncode, (proc.stdout + proc.stderr)[-3000:]


@pytest.fixture
def pool(tiny_checkpoint_dir: Path, tmp_path: Path) -> Iterator[tuple[Kamailio, Node, Node]]:
    for binary in ("kamailio", "kamcmd", "sipp"):
        require_binary(binary)
    node_a = Node("node-a", tiny_checkpoint_dir, tmp_path, rtp_port_min=33000)
    node_b = Node("node-b", tiny_checkpoint_dir, tmp_path, rtp_port_min=33200)
    kamailio = Kamailio(tmp_path, [node_a, node_b])
    try:
        node_a.start()
        node_b.start()
        node_a.wait_ready()
        node_b.wait_ready()
        kamailio.start()
        kamailio.wait_states({"node-a": "A", "node-b": "A"}, timeout_s=15)
        yield kamailio, node_a, node_b
    finally:
        for node in (node_a, node_b):
            node.stop()
        kamailio.stop()


def test_kamailio_spreads_fails_over_and_drains(pool: tuple[Kamailio, Node, Node], tmp_path: Path) -> None:
    kamailio, node_a, node_b = pool
    began = time.monotonic()

    # 1. load: 20 calls at 5/s, every one answered, both nodes used
    rc, out = run_sipp(sipp_argv(kamailio, calls=20, rate=5, hold_ms=1000), tmp_path)
    assert rc == 0, f"sipp load through kamailio failed ({rc}):\n{out}\n{kamailio.log()}"
    wait_for("20 completed calls on the nodes", lambda: node_a.completed_calls() + node_b.completed_calls() == 20,
             15, lambda: f"a={node_a.completed_calls()} b={node_b.completed_calls()}")
    split = (node_a.completed_calls(), node_b.completed_calls())
    assert min(split) >= 1, f"one node answered every call: {split}"
    print(f"\nload: 20 calls split {split[0]}/{split[1]} over two nodes")

    # 2. failover: node B dies; new INVITEs that still reach it time out and go to node A
    node_b.proc.kill()  # type: ignore[union-attr]
    node_b.proc.wait(10)  # type: ignore[union-attr]
    before_a = node_a.completed_calls()
    t_kill = time.monotonic()
    rc, out = run_sipp(sipp_argv(kamailio, calls=10, rate=5, hold_ms=500), tmp_path)
    assert rc == 0, f"calls after a node died failed ({rc}):\n{out}\n{kamailio.log()}"
    wait_for("10 more completed calls on node A", lambda: node_a.completed_calls() == before_a + 10, 15,
             lambda: f"a={node_a.completed_calls()} (was {before_a})")
    assert kamailio.destinations().get("node-b") == "I", kamailio.destinations()
    assert "failover: " in kamailio.log_path.read_text(errors="replace"), "no INVITE failed over"
    print(f"failover: 10/10 calls answered by node A within {time.monotonic() - t_kill:.1f} s of the kill")

    # 3. recovery: node B comes back and probing returns it to the rotation
    node_b.start()
    node_b.wait_ready()
    kamailio.wait_states({"node-b": "A"}, timeout_s=15)

    # 4. capacity: fill both nodes, then one call too many
    filling = subprocess.Popen(sipp_argv(kamailio, calls=2 * MAX_CALLS, rate=20, hold_ms=6000), cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for("both nodes full", lambda: node_a.active_calls() + node_b.active_calls() == 2 * MAX_CALLS, 15,
                 lambda: f"a={node_a.health()} b={node_b.health()}")
        assert all(node.health()[1].get("accepting") is False for node in (node_a, node_b))
        refused_before = node_a.counter(REFUSED_FULL) + node_b.counter(REFUSED_FULL)
        rc, out = run_sipp(sipp_argv(kamailio, calls=1, rate=1, hold_ms=500), tmp_path)
        assert rc != 0, "a call was answered although every node was full"
        errors = "".join(p.read_text(errors="replace") for p in tmp_path.glob("uac_via_proxy_*_errors.log"))
        assert "SIP/2.0 503 Service Unavailable - no agent node" in errors, f"{out}\n{errors[-2000:]}"
        # full nodes answer the dispatcher's OPTIONS probes with 503: either Kamailio already took them
        # out of rotation, or it tried one and the node refused the INVITE itself
        states = kamailio.destinations()
        refused = node_a.counter(REFUSED_FULL) + node_b.counter(REFUSED_FULL) > refused_before
        assert refused or set(states.values()) <= {"I", "P"}, (states, refused)
        out_fill, _ = filling.communicate(timeout=40)
        assert filling.returncode == 0, f"filling the nodes failed:\n{out_fill.decode()[-3000:]}"
    finally:
        if filling.poll() is None:
            filling.kill()
            filling.wait(5)
    kamailio.wait_states({"node-a": "A", "node-b": "A"}, timeout_s=15)  # full nodes answered 503: back now
    print(f"capacity: {2 * MAX_CALLS} calls filled both nodes, the next one got 503")

    # 5. drain: SIGTERM on the node holding an active call
    long_call = subprocess.Popen(sipp_argv(kamailio, calls=1, rate=1, hold_ms=6000), cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for("the long call to be up on a node", lambda: node_a.active_calls() + node_b.active_calls() == 1, 15)
        drained, other = (node_a, node_b) if node_a.active_calls() == 1 else (node_b, node_a)
        drained_before, other_before = drained.completed_calls(), other.completed_calls()
        assert drained.proc is not None
        drained.proc.send_signal(signal.SIGTERM)
        t_term = time.monotonic()
        wait_for(f"{drained.name} /healthz 503", lambda: drained.health()[0] == 503, 5)
        rc, out = run_sipp(sipp_argv(kamailio, calls=5, rate=5, hold_ms=500), tmp_path)
        assert rc == 0, f"calls while {drained.name} drains failed ({rc}):\n{out}\n{kamailio.log()}"
        wait_for(f"5 new calls on {other.name}", lambda: other.completed_calls() == other_before + 5, 15)
        assert drained.completed_calls() == drained_before, "a new call reached the draining node"
        assert drained.proc.poll() is None, f"{drained.name} exited before its active call ended"
        out_long, _ = long_call.communicate(timeout=30)
        assert long_call.returncode == 0, f"the active call did not finish cleanly:\n{out_long.decode()[-3000:]}"
        code = drained.proc.wait(timeout=DRAIN_TIMEOUT_S)
        drain_s = time.monotonic() - t_term
    finally:
        if long_call.poll() is None:
            long_call.kill()
            long_call.wait(5)
    assert code == 0, f"{drained.name} exited {code} after draining:\n{drained.log()}"
    assert drain_s < DRAIN_TIMEOUT_S
    assert "drained=True" in drained.log(), drained.log()
    print(f"drain: {drained.name} finished its call and exited 0 {drain_s:.1f} s after SIGTERM; "
          f"whole scenario {time.monotonic() - began:.0f} s")
