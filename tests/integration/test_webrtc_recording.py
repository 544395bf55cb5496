"""server.record_dir over WebRTC: an aiortc caller (the simulator's leg) calls the agent server (tiny
model); the call's 48 kHz stereo recording and signed record are written and verify."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

from agent.commands import load_for_settings
from agent.metrics import Metrics
from agent.provenance import NodeSigner, record_path_for
from agent.runtime import build_runtime
from agent.server import AgentServer
from agent.sim_webrtc import WebRtcCallerLeg
from agent.verify import EXIT_FOUND, run_verify_record, run_verify_wav
from agent.wavio import read_wav_channels
from tests.integration.test_serve_webrtc import make_settings, talk, tone, until


async def test_webrtc_call_is_recorded_and_its_record_verifies(tiny_checkpoint_dir: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    signer = NodeSigner.generate()
    secret = base64.b64encode(signer.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())).decode()
    settings = make_settings(tiny_checkpoint_dir)
    record_dir = tmp_path / "rec"
    settings = dataclasses.replace(
        settings, server=dataclasses.replace(settings.server, record_dir=str(record_dir)),
        model=dataclasses.replace(settings.model, tiny_max_reply_ms=8000),
        provenance=dataclasses.replace(settings.provenance, signing_secret=secret))
    runtime = build_runtime(settings, *load_for_settings(settings.model))
    metrics = Metrics()
    server = AgentServer(settings, runtime, metrics)
    await server.start()
    try:
        leg = WebRtcCallerLeg(server.http_url)
        await leg.connect()
        silence = np.zeros(320, np.int16)
        await talk(leg, [silence] * 25 + [tone(k) for k in range(75)] + [silence] * 500)
        await leg.hang_up()
        await until(lambda: not runtime.calls.active, 10.0, "the call and its recording to end")
        async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/metrics") as resp:
            text = await resp.text()
    finally:
        await server.stop(drain_timeout_s=5.0)
        runtime.close()
    summary = runtime.calls.summaries[-1]
    assert summary.turns and summary.turns[0].first_audio_sent_ms is not None, "the agent did not answer"
    assert runtime.calls.recordings is not None and runtime.calls.recordings.counts == {"written": 1}
    assert 'lfmcall_call_recordings_total{result="written"} 1.0' in text
    wav = record_dir / f"{summary.call_id}.wav"
    x, rate = read_wav_channels(wav)
    assert x.shape[1] == 2 and rate == 48000
    loud = np.flatnonzero(np.abs(x[:, 0]) > 0.1)  # the caller's tone (0.27 full scale), on the left
    assert loud.size and 0.3 < loud[0] / rate < 1.5, loud[:1] / rate

    public = base64.b64encode(signer.public_key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    capsys.readouterr()
    assert run_verify_record(settings, record_path_for(wav), [public]) == EXIT_FOUND, capsys.readouterr().out
    capsys.readouterr()
    code = run_verify_wav(settings, wav, as_json=True)
    left, right = json.loads(capsys.readouterr().out)["channels"]
    assert code == EXIT_FOUND and right["present"] and not left["present"], (left, right)
