"""CallRecorder / CallRecordings (server.record_dir): packets placed at their time on their channel,
the WAV written atomically, a signed record beside it, failures counted and never raised."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from agent.call_marks import EarMarkCheck
from agent.call_recording import CallRecorder, CallRecordings
from agent.provenance import NodeSigner, record_path_for, verify_record
from agent.session_record import CallSummary, TurnMetrics
from agent.watermark import MarkOptions
from agent.wavio import read_wav_channels

pytestmark = pytest.mark.unit

RATE = 8000
PACKET = 160  # 20 ms at 8 kHz


def _packet(value: int) -> np.ndarray:
    return np.full(PACKET, value, np.int16)


def _channels(path: Path) -> tuple[np.ndarray, int]:
    x, rate = read_wav_channels(path)
    return np.rint(x * 32768).astype(np.int32), rate


def test_packets_placed_at_their_send_time_silence_elsewhere(tmp_path: Path) -> None:
    rec = CallRecorder("c-1-ab", RATE, tmp_path)
    rec.caller(_packet(100), 0)
    rec.caller(_packet(101), 20)
    rec.agent(_packet(0), None, 0)  # silence handed before the reply
    rec.agent(_packet(500), 7, 1000)  # the reply's first packet leaves at 1 s
    rec.agent(_packet(501), 8, 1000)  # a second packet in the same tick follows it, no overlap
    rec.agent(_packet(502), 9, 1500)  # after a gap of 460 ms: silence between
    wav = rec.write_wav()
    assert wav == tmp_path / "c-1-ab.wav"
    x, rate = _channels(wav)
    assert rate == RATE and x.shape == (int(1.52 * RATE), 2)
    left, right = x[:, 0], x[:, 1]
    assert np.all(left[:PACKET] == 100) and np.all(left[PACKET:2 * PACKET] == 101) and not left[2 * PACKET:].any()
    assert not right[:RATE].any()
    assert np.all(right[RATE:RATE + PACKET] == 500) and np.all(right[RATE + PACKET:RATE + 2 * PACKET] == 501)
    assert not right[RATE + 2 * PACKET:int(1.5 * RATE)].any()
    assert np.all(right[int(1.5 * RATE):] == 502)
    assert rec.agent_spans == [(1000.0, 1040.0), (1500.0, 1520.0)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c-1-ab.wav"]  # the temporary files are gone


def test_long_call_streams_to_disk_and_reads_back(tmp_path: Path) -> None:
    rec = CallRecorder("long", RATE, tmp_path)
    rng = np.random.default_rng(3)
    sent = rng.integers(-20000, 20000, (500, PACKET)).astype(np.int16)  # 10 s, flushed every second
    for k, packet in enumerate(sent):
        rec.agent(packet, k, k * 20)
        assert sum(t._pending_n for t in rec._tracks) <= RATE
    x, _ = _channels(rec.write_wav())
    assert np.array_equal(x[:, 1], sent.reshape(-1)) and not x[:, 0].any()


def test_wav_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "c-2.wav"
    target.write_bytes(b"old")
    rec = CallRecorder("c-2", RATE, tmp_path)
    rec.caller(_packet(9), 0)
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        assert target.read_bytes() == b"old"  # nothing written over the old file before the rename
        assert Path(src).parent == tmp_path and Path(src).name.startswith(".c-2.wav.")
        replaced.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    rec.write_wav()
    assert replaced and replaced[0][1] == str(target)
    x, _ = _channels(target)
    assert np.all(x[:PACKET, 0] == 9)


def _summary(call_id: str) -> CallSummary:
    summary = CallSummary(call_id=call_id, started_at=0.0)
    summary.turns = [TurnMetrics(epoch=1, speech_ended_ms=None, end_of_turn_ms=None, first_audio_sent_ms=1000),
                     TurnMetrics(epoch=2, speech_ended_ms=None, end_of_turn_ms=None, first_audio_sent_ms=None)]
    summary.mark = MarkOptions(node=7).for_call(call_id)
    return summary


def test_finish_signs_the_record_of_the_recording(tmp_path: Path) -> None:
    signer = NodeSigner.generate()
    recordings = CallRecordings(tmp_path / "rec", EarMarkCheck(MarkOptions(node=7), signer, "node-a"), "tiny")
    rec = recordings.start("c-3", RATE)
    assert rec is not None
    rec.caller(_packet(1), 0)
    for k in range(10):
        rec.agent(_packet(300), k, 1000 + 20 * k)
    summary = _summary("c-3")
    wav = recordings.finish(rec, summary)
    assert wav == tmp_path / "rec" / "c-3.wav" and recordings.counts["written"] == 1
    check = verify_record(record_path_for(wav), [signer.public_key])
    assert check.ok, check.problems
    record = check.record
    assert record["call_id"] == "c-3" and record["model"] == "tiny" and record["node"] == {"name": "node-a", "id": 7}
    assert record["recording"]["sample_rate"] == RATE and record["recording"]["agent_channel"] == 2
    assert record["watermark"]["call"] == summary.mark.call_tag and record["watermark"]["node"] == 7
    assert record["utterances"][0] == {"turn": 0, "start_ms": 1000.0, "end_ms": 1200.0, "interrupted": False}
    assert record["utterances"][1]["start_ms"] is None


def test_failures_are_counted_never_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    recordings = CallRecordings(blocker / "rec", EarMarkCheck(MarkOptions(), NodeSigner.generate()), "m")
    assert recordings.start("c-4", RATE) is None  # the folder cannot be made
    assert recordings.counts["failed"] == 1

    recordings = CallRecordings(tmp_path / "rec", EarMarkCheck(MarkOptions(), NodeSigner.generate()), "m")
    rec = recordings.start("c-5", RATE)
    assert rec is not None

    def disk_full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", disk_full)
    for k in range(60):  # 1.2 s: past the first flush
        rec.caller(_packet(1), 20 * k)  # does not raise
        rec.agent(_packet(1), k, 20 * k)
    assert rec.failed is not None and "No space left" in rec.failed
    assert recordings.finish(rec, _summary("c-5")) is None
    assert recordings.counts == {"failed": 1}
    assert list((tmp_path / "rec").iterdir()) == []  # no partial recording, no temporary files left


def test_recording_counts_reach_metrics() -> None:
    from agent.metrics import Metrics

    metrics = Metrics()
    metrics.observe_recordings({"written": 2, "failed": 1})
    metrics.observe_recordings({"written": 3, "failed": 1})  # running totals: only the growth counts
    assert metrics.recordings.labels("written")._value.get() == 3
    assert metrics.recordings.labels("failed")._value.get() == 1
    assert b'lfmcall_call_recordings_total{result="written"} 3.0' in metrics.render()


def test_an_unusable_signing_key_fails_at_start(tmp_path: Path) -> None:
    import dataclasses

    from agent.provenance import ProvenanceError
    from agent.runtime import call_recordings
    from config.loader import load_settings

    settings = load_settings(environ={}, overrides=[{"server": {"record_dir": str(tmp_path / "rec")},
                                                     "provenance": {"signing_key_file": str(tmp_path / "none.pem")}}])
    with pytest.raises(ProvenanceError, match="signing key file not found"):
        call_recordings(settings, lambda: "m")
    good = dataclasses.replace(settings, provenance=dataclasses.replace(settings.provenance, signing_key_file="",
                                                                        signing_secret=_SECRET))
    recordings = call_recordings(good, lambda: "model x")
    assert recordings.folder == tmp_path / "rec" and recordings.model == "model x"
    assert recordings.marks.signer is not None


_SECRET = "u0chLXqJXsbnX3X7ZMd3+/2QVHgbVg6MRirs6bNq91g="  # a test key (base64 of 32 raw bytes)
