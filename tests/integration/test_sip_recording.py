"""server.record_dir over real SIP: a SIPp caller speaks to the in-process gateway (tiny model); the
call's stereo recording and its signed provenance record are written, ``verify --record`` accepts
the record and ``verify`` finds the agent's mark on the right channel only."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from agent.metrics import Metrics
from agent.provenance import NodeSigner, record_path_for
from agent.runtime import build_runtime
from agent.verify import EXIT_FOUND, run_verify_record, run_verify_wav
from agent.wavio import read_wav_channels
from sip_bridge.gateway import SipGateway
from tests.integration.sip.helpers import require_binary, run_process, speech_8k, tiny_settings, write_ul
from tests.integration.test_sip_sipp import scenario, sipp_argv, wait_summaries


async def test_live_sip_call_is_recorded_and_its_record_verifies(tiny_checkpoint_dir: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    require_binary("sipp")
    signer = NodeSigner.generate()
    secret = base64.b64encode(signer.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())).decode()
    settings = tiny_settings(tiny_checkpoint_dir)
    record_dir = tmp_path / "recordings"
    settings = dataclasses.replace(
        settings, server=dataclasses.replace(settings.server, record_dir=str(record_dir)),
        watermark=dataclasses.replace(settings.watermark, node_id=4242),
        # a reply long enough for several 3 s detection windows (the tiny model's replies are capped)
        model=dataclasses.replace(settings.model, tiny_max_reply_ms=8000),
        provenance=dataclasses.replace(settings.provenance, signing_secret=secret, node_name="test-node"))
    runtime = build_runtime(settings)
    metrics = Metrics()
    gateway = SipGateway(runtime.calls, settings.sip, metrics)
    await gateway.start()
    try:
        speech = speech_8k("Hello there. Can you tell me what the weather is like today?")
        audio = write_ul(tmp_path / "caller.ul", speech, lead_silence_ms=300, tail_silence_ms=10000)
        listen_ms = int((0.3 + speech.size / 8000 + 10.0) * 1000)
        path = scenario(tmp_path, "uac_speech.xml", AUDIO=str(audio), LISTEN_MS=str(listen_ms))
        rc, out = await run_process(sipp_argv(gateway.local_address, path), timeout_s=60, cwd=tmp_path)
        assert rc == 0, f"sipp failed ({rc}):\n{out[-3000:]}"
        await wait_summaries(runtime, 1)
    finally:
        await gateway.stop()
        runtime.close()
    summary = runtime.calls.summaries[-1]
    assert summary.turns and summary.turns[0].first_audio_sent_ms is not None, summary
    recordings = runtime.calls.recordings
    assert recordings is not None and recordings.counts == {"written": 1}
    wav = record_dir / f"{summary.call_id}.wav"
    record = record_path_for(wav)
    assert sorted(p.name for p in record_dir.iterdir()) == sorted([wav.name, record.name])  # no temp files

    x, rate = read_wav_channels(wav)
    assert rate == 8000 and x.shape[1] == 2
    assert abs(x.shape[0] / rate * 1000 - summary.duration_ms) < 1500
    caller_s = (abs(x[:, 0]) > 0.01).nonzero()[0]
    assert caller_s.size and caller_s[0] / rate < 1.5  # the caller speaks from the start, on the left

    body = json.loads(record.read_text())
    assert body["call_id"] == summary.call_id and body["node"] == {"name": "test-node", "id": 4242}
    assert summary.mark is not None and body["watermark"]["call"] == summary.mark.call_tag
    first = body["utterances"][0]
    assert first["start_ms"] == pytest.approx(summary.turns[0].first_audio_sent_ms, abs=0.1)
    assert first["end_ms"] > first["start_ms"] and first["frames"] > 0

    public = base64.b64encode(signer.public_key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    capsys.readouterr()
    assert run_verify_record(settings, record, [public]) == EXIT_FOUND, capsys.readouterr().out
    assert "ACCEPTED" in capsys.readouterr().out

    code = run_verify_wav(settings, wav, as_json=True)
    report = json.loads(capsys.readouterr().out)
    spans = [(round(a), round(b)) for a, b in body_spans(body)]
    assert code == EXIT_FOUND, (spans, summary.turns, summary.dropped_frames, report["channels"][1])
    left, right = report["channels"]
    assert right["present"] and not left["present"], report
    assert right["max_statistic"] > right["threshold"]
    # one tiny-model reply (4 s, model.tiny_max_reply_ms) is too short to decode the payload through
    # µ-law for certain; what is decoded must name this node (verify --record checks the same)
    payloads = [s["payload"] for s in right["segments"] if s["payload"]]
    assert all(p.get("node") in (None, 4242) for p in payloads), payloads


def body_spans(body: dict[str, object]) -> list[tuple[float, float]]:
    utterances = body["utterances"]
    assert isinstance(utterances, list)
    return [(u["start_ms"], u["end_ms"]) for u in utterances if u.get("start_ms") is not None]
