"""`lfm-call verify`: is there agent speech in this recording, and is this call record genuine?

``lfm-call verify FILE.wav`` reads any common WAV (8-48 kHz and beyond, integer PCM, float,
G.711; mono or stereo, each channel on its own), runs the watermark detector over 3 s windows and
prints, per channel, whether the agent's mark is present, the best statistic, the threshold and
its false-positive bound, and the payload of each marked stretch. Exit 0: a mark was found in some
channel; 1: none; 2: bad input.

``lfm-call verify --record FILE.provenance.json`` checks a signed provenance record offline
(``agent.provenance``): trusted key, valid signature, the recording's hash; then, when the record's
watermark key is the configured one, that the mark in the agent channel does not contradict it.
Exit 0: accepted; 1: rejected; 2: not a readable record.

``lfm-call verify --node-key`` prints this node's public key (PEM), to hand to whoever verifies.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from agent.audio import AudioError
from agent.provenance import (
    NodeSigner,
    ProvenanceError,
    load_public_key,
    public_pem,
    verify_record,
)
from agent.watermark import WatermarkKey
from agent.watermark_detect import (
    DEFAULT_ALPHA,
    Analysis,
    analyse,
    false_positive_bound,
    log10_false_positive_bound,
)
from agent.wavio import read_wav_channels
from config.schema import Settings

EXIT_FOUND = 0
EXIT_NOT_FOUND = 1
EXIT_BAD_INPUT = 2
MIN_RATE = 8000
MAX_RATE = 192000


def _err(text: str) -> None:
    print(f"lfm-call verify: {text}", file=sys.stderr)


def _channel_name(i: int, n: int) -> str:
    if n == 1:
        return "mono"
    return {0: "channel 1 (left)", 1: "channel 2 (right)"}.get(i, f"channel {i + 1}")


def _p_text(statistic: float) -> str:
    bound = false_positive_bound(statistic)
    if bound >= 1e-300:
        return f"{bound:.2g}"
    return f"1e{log10_false_positive_bound(statistic):.0f}"


def describe(analysis: Analysis, name: str) -> list[str]:
    lines = []
    if analysis.present:
        lines.append(f"{name}: AGENT SPEECH PRESENT (AI-generated): mark in {len(analysis.detected)} of "
                     f"{len(analysis.windows)} windows of 3 s; max statistic {analysis.max_statistic:.2f} "
                     f"(threshold {analysis.threshold:.2f}); false-positive probability <= "
                     f"{_p_text(analysis.max_statistic)} for that window, <= {analysis.alpha:g} per window "
                     "at the threshold")
        for seg in analysis.segments:
            payload = seg.payload.as_dict() if seg.payload is not None else {}
            fields = []
            for key in ("node", "call", "counter"):
                value = payload.get(key)
                fields.append(f"{key}={'?' if value is None else value}")
            counters = payload.get("counters")
            span = f" counters {counters[0]}..{counters[-1]}" if isinstance(counters, list) and counters else ""
            lines.append(f"  {seg.start_s:7.1f}-{seg.end_s:7.1f} s: statistic {seg.statistic:.2f}, "
                         f"payload {' '.join(fields)}{span} (over {payload.get('blocks', 0)} blocks of 2 s)")
    else:
        lines.append(f"{name}: no agent speech mark: max statistic {analysis.max_statistic:.2f} over "
                     f"{len(analysis.windows)} windows of 3 s (threshold {analysis.threshold:.2f}, "
                     f"false-positive probability <= {analysis.alpha:g} per window)")
    return lines


def analysis_json(analysis: Analysis, name: str) -> dict[str, Any]:
    return {
        "channel": name, "present": analysis.present, "windows": len(analysis.windows),
        "detected_windows": len(analysis.detected), "max_statistic": round(analysis.max_statistic, 3),
        "threshold": round(analysis.threshold, 3), "false_positive_per_window": analysis.alpha,
        "max_statistic_false_positive_bound": false_positive_bound(analysis.max_statistic),
        "segments": [{"start_s": round(s.start_s, 2), "end_s": round(s.end_s, 2), "statistic": round(s.statistic, 2),
                      "lag": s.lag, "polarity": s.polarity,
                      "payload": s.payload.as_dict() if s.payload is not None else None} for s in analysis.segments],
    }


def analyse_file(path: Path, key: WatermarkKey, alpha: float) -> tuple[list[tuple[str, Analysis]], int, float]:
    """Per channel analyses of a WAV file; raises AudioError on bad input."""
    x, rate = read_wav_channels(path)
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"{path}: sample rate {rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz")
    if x.shape[0] < rate:
        raise AudioError(f"{path}: {x.shape[0] / rate:.2f} s of audio; the detector needs at least 1 s")
    n = x.shape[1]
    out = []
    for i in range(n):
        channel = x[:, i] * 32768.0
        if not np.any(channel):
            out.append((_channel_name(i, n), Analysis(x.shape[0] / rate, 0.0, alpha)))
            continue
        out.append((_channel_name(i, n), analyse(channel, rate, key, alpha)))
    return out, rate, x.shape[0] / rate


def run_verify_wav(settings: Settings, path: Path, alpha: float = DEFAULT_ALPHA, as_json: bool = False) -> int:
    key = WatermarkKey.for_secret(settings.watermark.secret)
    try:
        channels, rate, duration = analyse_file(path, key, alpha)
    except (AudioError, ValueError) as exc:
        _err(str(exc))
        return EXIT_BAD_INPUT
    present = any(a.present for _, a in channels)
    if as_json:
        print(json.dumps({"file": str(path), "sample_rate": rate, "duration_s": round(duration, 3),
                          "watermark_key_id": key.key_id, "present": present,
                          "channels": [analysis_json(a, name) for name, a in channels]}, indent=2))
    else:
        print(f"{path}: {rate} Hz, {len(channels)} channel(s), {duration:.1f} s; watermark key {key.key_id}")
        for name, analysis in channels:
            for line in describe(analysis, name):
                print(line)
    return EXIT_FOUND if present else EXIT_NOT_FOUND


def trusted_keys(settings: Settings, given: list[str]) -> list[Any]:
    """Keys given on the command line if any; else this node's own and provenance.trusted_public_keys."""
    if given:
        return [load_public_key(spec) for spec in given]
    keys = [load_public_key(spec) for spec in settings.provenance.trusted_public_keys]
    with contextlib.suppress(ProvenanceError):  # no key on this node: only the configured ones count
        keys.append(NodeSigner.from_settings(settings.provenance, create=False).public_key)
    return keys


def _mark_check(settings: Settings, record: dict[str, Any], recording: Path) -> tuple[list[str], list[str]]:
    """(notes, problems) from the watermark in the agent channel, compared with the record."""
    key = WatermarkKey.for_secret(settings.watermark.secret)
    raw = record.get("watermark")
    mark: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if mark.get("key_id") != key.key_id:
        return [f"mark not checked: the record's watermark key {mark.get('key_id')} is not the configured one "
                f"({key.key_id})"], []
    channels, _, _ = analyse_file(recording, key, DEFAULT_ALPHA)
    try:
        index = int(record["recording"].get("agent_channel", 2)) - 1
    except (TypeError, ValueError):
        return [], ["the record's agent_channel is not a number"]
    if not 0 <= index < len(channels):
        return [], [f"the recording has no channel {index + 1} (the agent's)"]
    name, analysis = channels[index]
    notes = [f"mark in {name}: {len(analysis.detected)} of {len(analysis.windows)} windows, "
             f"max statistic {analysis.max_statistic:.2f}"]
    problems = []
    for seg in analysis.segments:
        payload = seg.payload
        if payload is None:
            continue
        for field_name, expected in (("node", mark.get("node")), ("call", mark.get("call"))):
            got = getattr(payload, field_name).value
            if got is not None and expected is not None and got != expected:
                problems.append(f"the mark at {seg.start_s:.1f} s carries {field_name} {got}, the record says "
                                f"{expected}")
    return notes, problems


def run_verify_record(settings: Settings, path: Path, public_keys: list[str], check_mark: bool = True) -> int:
    try:
        keys = trusted_keys(settings, public_keys)
        check = verify_record(path, keys)
        notes: list[str] = []
        if check.ok and check_mark and check.recording is not None:
            notes, problems = _mark_check(settings, check.record, check.recording)
            check.problems.extend(problems)
            check.ok = not check.problems
    except (ProvenanceError, AudioError) as exc:
        _err(str(exc))
        return EXIT_BAD_INPUT
    rec = check.record
    utterances = rec.get("utterances", [])
    print(f"{path}: call {rec.get('call_id')} on node {rec.get('node', {}).get('name')} "
          f"(model {rec.get('model')}), {len(utterances)} agent utterance(s), signed by key {check.key_id}")
    for note in notes:
        print(f"  {note}")
    if check.ok:
        print("  ACCEPTED: trusted key, valid signature, recording matches its hash")
        return EXIT_FOUND
    for problem in check.problems:
        print(f"  REJECTED: {problem}")
    return EXIT_NOT_FOUND


def run_node_key(settings: Settings) -> int:
    try:
        signer = NodeSigner.from_settings(settings.provenance)
    except ProvenanceError as exc:
        _err(str(exc))
        return EXIT_BAD_INPUT
    print(f"# key id {signer.key_id} ({signer.source})")
    print(public_pem(signer.public_key), end="")
    return EXIT_FOUND
