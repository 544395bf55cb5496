"""Signed provenance records and `lfm-call verify`: accepted as written, rejected when the recording,
an utterance time or the key is wrong; WAV verification exit codes."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

from agent.caller_voice import render_say
from agent.cli import main
from agent.provenance import (
    NodeSigner,
    ProvenanceError,
    build_record,
    parse_private_key,
    public_pem,
    record_path_for,
    verify_record,
    write_record,
)
from agent.resample import resample_offline
from agent.watermark import WatermarkKey, mark_signal
from agent.wavio import write_wav

# (marked unit by its folder; the tests that need espeak-ng speech are marked integration)


def _raw_b64(signer: NodeSigner) -> str:
    raw = signer.private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                           serialization.NoEncryption())
    return base64.b64encode(raw).decode()


@pytest.fixture(scope="module")
def stereo_16k() -> np.ndarray:
    caller = render_say("I would like to book a table for tonight, please.", "en-us", 160, 0.0, 16000)
    agent24 = render_say("Of course. For how many people, and at what time would you like to come? We are open "
                         "until eleven tonight.", "en-gb", 165, 0.0, 24000)
    agent = resample_offline(mark_signal(agent24, WatermarkKey.for_secret(""), 9, "c-1"), 24000, 16000)
    n = caller.size + agent.size
    out = np.zeros((n, 2), np.int16)
    out[: caller.size, 0] = caller
    out[caller.size :, 1] = agent
    return out


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> NodeSigner:
    signer = NodeSigner.generate()
    monkeypatch.setenv("LFM_CALL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LFMCALL_PROVENANCE__SIGNING_SECRET", _raw_b64(signer))
    monkeypatch.setenv("LFMCALL_WATERMARK__NODE_ID", "9")
    return signer


def _write_call(folder: Path, stereo: np.ndarray, signer: NodeSigner) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wav = folder / "call.wav"
    write_wav(wav, stereo, 16000)
    key = WatermarkKey.for_secret("")
    body = build_record(recording=wav, call_id="c-1", model="tiny", node_name="node-a", node_id=9,
                        sample_rate=16000, agent_channel=2,
                        utterances=[{"turn": 0, "start_ms": 3100.0, "end_ms": 9400.0, "frames": 79,
                                     "counters": [0, 1, 2, 3]}],
                        watermark={"scheme": "lfm-call-ss-v1", "key_id": key.key_id, "node": 9,
                                   "call": key.call_tag("c-1")})
    return write_record(wav, body, signer)


@pytest.mark.integration  # espeak-ng speech: runs with the peers, not under -m unit
def test_record_accepted_then_each_tampering_rejected(tmp_path: Path, stereo_16k: np.ndarray, env: NodeSigner,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    record = _write_call(tmp_path / "call", stereo_16k, env)
    assert record == record_path_for(tmp_path / "call" / "call.wav")
    assert main(["verify", "--record", str(record)]) == 0
    assert "ACCEPTED" in capsys.readouterr().out

    original = record.read_text()
    data = json.loads(original)
    data["utterances"][0]["start_ms"] = 3000.0  # a changed utterance time
    record.write_text(json.dumps(data))
    assert main(["verify", "--record", str(record)]) == 1
    assert "signature does not match" in capsys.readouterr().out
    record.write_text(original)

    other = NodeSigner.generate()  # a wrong key: a record re-signed by someone else
    record.write_text(json.dumps(other.sign({k: v for k, v in json.loads(original).items() if k != "signature"})))
    assert main(["verify", "--record", str(record)]) == 1
    assert "not a trusted key" in capsys.readouterr().out
    record.write_text(original)

    key_file = tmp_path / "other.pem"
    key_file.write_text(public_pem(other.public_key))
    assert main(["verify", "--record", str(record), "--public-key", str(key_file)]) == 1  # genuine, wrong key
    capsys.readouterr()

    wav = tmp_path / "call" / "call.wav"
    blob = bytearray(wav.read_bytes())
    blob[-100] ^= 1  # one changed bit in the recording
    wav.write_bytes(bytes(blob))
    assert main(["verify", "--record", str(record)]) == 1
    assert "does not match its recorded SHA-256" in capsys.readouterr().out


@pytest.mark.integration  # espeak-ng speech: runs with the peers, not under -m unit
def test_mark_contradicting_the_record_rejects(tmp_path: Path, stereo_16k: np.ndarray, env: NodeSigner,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "call"
    folder.mkdir()
    wav = folder / "call.wav"
    write_wav(wav, stereo_16k, 16000)
    key = WatermarkKey.for_secret("")
    body = build_record(recording=wav, call_id="c-1", model="tiny", node_name="n", node_id=10, sample_rate=16000,
                        agent_channel=2, utterances=[],
                        watermark={"key_id": key.key_id, "node": 10, "call": key.call_tag("c-1")})
    record = write_record(wav, body, env)
    assert main(["verify", "--record", str(record)]) == 1
    assert "carries node 9, the record says 10" in capsys.readouterr().out
    assert main(["verify", "--record", str(record), "--no-mark"]) == 0


def test_malformed_records_exit_2(tmp_path: Path, env: NodeSigner) -> None:
    bad = tmp_path / "x.provenance.json"
    for text in ("not json", "{}", json.dumps({"format": "lfm-call-provenance/1", "recording": {}})):
        bad.write_text(text)
        assert main(["verify", "--record", str(bad)]) == 2
    assert main(["verify", "--record", str(tmp_path / "missing.json")]) == 2
    data = {"format": "lfm-call-provenance/1", "call_id": "c", "utterances": [],
            "recording": {"file": "../etc/passwd", "sha256": "0"},
            "signature": {"algorithm": "Ed25519", "public_key": base64.b64encode(b"0" * 32).decode(), "value": "AA=="}}
    bad.write_text(json.dumps(data))
    assert main(["verify", "--record", str(bad)]) == 2
    with pytest.raises(ProvenanceError):
        verify_record(bad, [])


def test_signing_keys_from_config_file_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LFM_CALL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LFMCALL_PROVENANCE__SIGNING_SECRET", raising=False)
    assert main(["verify", "--node-key"]) == 0
    default = tmp_path / "cache" / "provenance" / "node-ed25519.pem"
    assert default.is_file() and (default.stat().st_mode & 0o777) == 0o600
    out = capsys.readouterr().out
    assert "BEGIN PUBLIC KEY" in out and "PRIVATE" not in out
    assert main(["verify", "--node-key"]) == 0  # the same key again, not a new one
    assert capsys.readouterr().out == out
    with pytest.raises(ProvenanceError):
        parse_private_key("bm90IGEga2V5")
    signer = NodeSigner.generate()
    assert "key_id" in repr(signer) and _raw_b64(signer) not in repr(signer)


def test_config_output_masks_secrets(env: NodeSigner, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert _raw_b64(env) not in out and "signing_secret: '***'" in out


@pytest.mark.integration  # espeak-ng speech: runs with the peers, not under -m unit
def test_verify_wav_exit_codes_and_channels(tmp_path: Path, stereo_16k: np.ndarray, env: NodeSigner,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    stereo = tmp_path / "call.wav"
    write_wav(stereo, resample_both(stereo_16k, 48000), 48000)
    assert main(["verify", str(stereo)]) == 0
    out = capsys.readouterr().out
    assert "channel 1 (left): no agent speech mark" in out
    assert "channel 2 (right): AGENT SPEECH PRESENT" in out and "node=9" in out
    caller_only = tmp_path / "caller.wav"
    write_wav(caller_only, np.ascontiguousarray(resample_offline(stereo_16k[:, 0].copy(), 16000, 8000)), 8000)
    assert main(["verify", str(caller_only)]) == 1
    capsys.readouterr()
    assert main(["verify", str(caller_only), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["present"] is False
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    assert main(["verify", str(bad)]) == 2
    short = tmp_path / "short.wav"
    write_wav(short, np.zeros(800, np.int16), 8000)
    assert main(["verify", str(short)]) == 2
    assert main(["verify", str(caller_only), "--alpha", "2"]) == 2


def resample_both(stereo: np.ndarray, rate: int) -> np.ndarray:
    left = resample_offline(np.ascontiguousarray(stereo[:, 0]), 16000, rate)
    right = resample_offline(np.ascontiguousarray(stereo[:, 1]), 16000, rate)
    n = min(left.size, right.size)
    return np.stack([left[:n], right[:n]], axis=1)


@pytest.mark.integration  # espeak-ng speech: runs with the peers, not under -m unit
def test_ear_check_and_record_of_a_simulated_call(tmp_path: Path, stereo_16k: np.ndarray, env: NodeSigner) -> None:
    from agent.call_marks import EarMarkCheck
    from agent.report import CallRecord, Segment, TurnRecord, write_call_artifacts
    from agent.watermark import MarkOptions

    caller_end = int(np.nonzero(stereo_16k[:, 1])[0][0])
    record = CallRecord(call_id="001-test", scenario="test", model="tiny", transport="inproc", sample_rate=16000,
                        caller_audio=stereo_16k[:, 0].copy(), heard_audio=stereo_16k[:, 1].copy())
    end_ms = stereo_16k.shape[0] / 16
    record.agent_segments = [Segment(caller_end / 16, end_ms, "agent")]
    record.turns = [TurnRecord(0, caller_end / 16 - 500, None, caller_end / 16, end_ms, epoch=2)]
    key = WatermarkKey.for_secret("")
    check = EarMarkCheck(MarkOptions(key, node=9), env, "node-a")
    record.watermark = check.measure(record, [{"epoch": 2, "first_chunk": 0, "frames": 80, "counters": [0, 1, 2, 3]}],
                                     key.call_tag("c-1"))
    assert record.watermark["windows"] >= 3 and record.watermark["detection_rate"] == 1.0
    assert record.watermark["payload_matches"] is True
    folder = write_call_artifacts(tmp_path, record, timeline=False).folder
    signed = check.write_record(folder, record)
    assert signed is not None and signed.name == "call.provenance.json"
    data = json.loads(signed.read_text())
    assert data["utterances"][0]["counters"] == [0, 1, 2, 3] and data["watermark"]["node"] == 9
    assert verify_record(signed, [env.public_key]).ok
    assert main(["verify", "--record", str(signed)]) == 0
