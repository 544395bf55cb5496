"""Shared pieces of the SIP integration tests: an in-process gateway on free ports, peers, audio checks.

The gateway runs in the pytest process on a Runtime built from the tiny fixture checkpoint (Silero
VAD, no greeting), bound to 127.0.0.1. External peers (SIPp, baresip, tshark) run with timeouts and
are killed at teardown. A missing peer fails the test with the install line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import socket
import struct
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from agent.g711 import ulaw_decode, ulaw_encode
from agent.metrics import Metrics
from agent.runtime import Runtime, build_runtime
from config.loader import load_settings
from sip_bridge.gateway import SipGateway

APT_PEERS = ("apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
             "sip-tester baresip-core tshark espeak-ng sox")
SIPP_SHARE = Path("/usr/share/sip-tester")
SCENARIO_DIR = Path(__file__).resolve().parent


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; install the SIP test peers with: {APT_PEERS}")
    return path


def free_udp_port(host: str = "127.0.0.1", *, even: bool = False) -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if not even or port % 2 == 0:
            if not even:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s2:  # the RTCP neighbour too
                try:
                    s2.bind((host, port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free UDP port")


def tiny_settings(checkpoint: Path, **sip: Any) -> Any:
    settings = load_settings(environ={}, overrides=[{
        "model": {"ref": str(checkpoint), "offline_fallback": "error", "greeting": ""},
        "vad": {"backend": "silero"},
        # no step-time admission: on the shared test VM the tiny model's steps can exceed the real-time
        # budget, and these tests are about SIP, not overload (tests/unit/test_engine_process.py is)
        "server": {"max_calls": 24, "admission_step_margin": 0.0},
    }])
    sip_settings = dataclasses.replace(settings.sip, enabled=True, listen_host="127.0.0.1", listen_port=0,
                                       rtp_port_min=31000, rtp_port_max=31999, **sip)
    return dataclasses.replace(settings, sip=sip_settings)


@contextlib.asynccontextmanager
async def running_gateway(checkpoint: Path, **sip: Any) -> AsyncIterator[tuple[SipGateway, Runtime, Metrics]]:
    settings = tiny_settings(checkpoint, **sip)
    runtime = build_runtime(settings)
    metrics = Metrics()
    gateway = SipGateway(runtime.calls, settings.sip, metrics)
    await gateway.start()
    try:
        yield gateway, runtime, metrics
    finally:
        await gateway.stop()
        runtime.close()


async def run_process(argv: Sequence[str], timeout_s: float, cwd: Path | None = None) -> tuple[int, str]:
    """Run a peer to completion with a hard timeout (killed on expiry); returns (rc, output)."""
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                                                cwd=cwd)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        return -9, out.decode("utf-8", "replace")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return int(proc.returncode or 0), out.decode("utf-8", "replace")


# --- audio ----------------------------------------------------------------------------------------
def speech_8k(text: str) -> np.ndarray:
    from agent.caller_voice import render_say

    require_binary("espeak-ng")
    return render_say(text, sample_rate=8000)


def write_ul(path: Path, samples_8k: np.ndarray, *, lead_silence_ms: int = 300, tail_silence_ms: int = 3000) -> Path:
    """Raw µ-law for SIPp's ``rtp_stream`` (which does not skip WAV headers)."""
    lead, tail = np.zeros(8 * lead_silence_ms, np.int16), np.zeros(8 * tail_silence_ms, np.int16)
    pcm = np.concatenate([lead, samples_8k.astype(np.int16), tail])
    path.write_bytes(ulaw_encode(pcm))
    return path


def write_pcmu_pcap(path: Path, ulaw: bytes, *, src_port: int = 6000, dst_port: int = 6002,
                    packet_ms: int = 20, first_sequence: int = 4000, first_timestamp: int = 80000) -> Path:
    """A classic pcap of Ethernet/IPv4/UDP/RTP packets, 20 ms of PCMU each, for ``play_pcap_audio``."""
    step = 8 * packet_ms
    records = []
    for k in range(len(ulaw) // step):
        rtp = struct.pack("!BBHII", 0x80, 0x80 if k == 0 else 0, (first_sequence + k) & 0xFFFF,
                          (first_timestamp + k * step) & 0xFFFFFFFF, 0x1234ABCD)
        payload = rtp + ulaw[k * step:(k + 1) * step]
        udp = struct.pack("!HHHH", src_port, dst_port, 8 + len(payload), 0) + payload
        ip_header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), k & 0xFFFF, 0, 64, 17, 0,
                                bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
        checksum = _ip_checksum(ip_header)
        ip_header = ip_header[:10] + struct.pack("!H", checksum) + ip_header[12:]
        frame = b"\x00" * 12 + b"\x08\x00" + ip_header + udp
        t_us = k * packet_ms * 1000
        records.append(struct.pack("<IIII", t_us // 1_000_000, t_us % 1_000_000, len(frame), len(frame)) + frame)
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    path.write_bytes(header + b"".join(records))
    return path


def _ip_checksum(header: bytes) -> int:
    total = int(sum(struct.unpack("!10H", header)))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame_rms(samples: np.ndarray, frame: int) -> np.ndarray:
    n = samples.size // frame
    if n == 0:
        return np.zeros(0)
    x = samples[: n * frame].astype(np.float64).reshape(n, frame)
    rms: np.ndarray = np.sqrt((x * x).mean(axis=1))
    return rms


def ulaw_payloads_to_pcm(payloads: list[bytes]) -> np.ndarray:
    if not payloads:
        return np.zeros(0, np.int16)
    return ulaw_decode(b"".join(payloads))


class CapturedRtp(NamedTuple):
    time_s: float
    payload: bytes
    timestamp: int


def rtp_streams_from_capture(pcap: Path, *, src_ports: tuple[int, int]) -> dict[int, list[CapturedRtp]]:
    """RTP packets sent from ports in ``src_ports`` (inclusive), by source port, in capture order."""
    tshark = require_binary("tshark")
    lo, hi = src_ports
    decode = ["-d", f"udp.port=={lo},rtp"] if lo == hi else ["-o", "rtp.heuristic_rtp:TRUE"]
    out = subprocess.run([tshark, "-r", str(pcap), *decode,
                          "-Y", f"udp.srcport >= {lo} && udp.srcport <= {hi} && rtp",
                          "-T", "fields", "-e", "udp.srcport", "-e", "frame.time_epoch", "-e", "rtp.payload",
                          "-e", "rtp.timestamp"],
                         capture_output=True, text=True, timeout=120, check=False)
    streams: dict[int, list[CapturedRtp]] = {}
    for line in out.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and parts[2]:
            streams.setdefault(int(parts[0]), []).append(
                CapturedRtp(float(parts[1]), bytes.fromhex(parts[2].replace(":", "")), int(parts[3])))
    return streams


# --- raw SIP over UDP -------------------------------------------------------------------------------
OFFER_PCMU = ("v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
              "m=audio {port} RTP/AVP {formats}\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n")


def invite_text(target: tuple[str, int], source: tuple[str, int], *, call_id: str, branch: str,
                sdp: str | None = None, extra: str = "", cseq: int = 1, method: str = "INVITE") -> bytes:
    host, port = source
    body = sdp if sdp is not None else OFFER_PCMU.format(host=host, port=40000, formats="0 101")
    return (f"{method} sip:agent@{target[0]}:{target[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{branch};rport\r\n"
            f"From: <sip:tester@{host}>;tag=t{branch}\r\nTo: <sip:agent@{target[0]}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:tester@{host}:{port}>\r\n"
            f"Max-Forwards: 70\r\n{extra}"
            + (f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}" if method == "INVITE"
               else "Content-Length: 0\r\n\r\n")).encode()


class RawSipClient:
    """A bare UDP socket that sends SIP text and collects the status codes answered to a Call-ID."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.address: tuple[str, int] = self.sock.getsockname()

    def send(self, data: bytes, target: tuple[str, int]) -> None:
        self.sock.sendto(data, target)

    async def responses(self, call_id: str, *, until: int = 200, timeout_s: float = 5.0) -> list[tuple[int, str]]:
        """(status, raw text) answered to ``call_id`` until a final status >= ``until`` arrives."""
        loop = asyncio.get_running_loop()
        got: list[tuple[int, str]] = []
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            text = data.decode("utf-8", "replace")
            if text.startswith("SIP/2.0 ") and f"Call-ID: {call_id}" in text:
                got.append((int(text[8:11]), text))
                if got[-1][0] >= until:
                    return got
        return got

    def close(self) -> None:
        self.sock.close()
