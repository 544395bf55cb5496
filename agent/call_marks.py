"""The watermark at the caller's ear, and the signed record of each simulated call.

``EarMarkCheck.measure(record)`` runs the detector on what the caller heard (after the line model)
and counts 3 s windows (hop 1 s) inside stretches of agent speech at the ear (segments less than
500 ms apart joined): the per-call detection rate that the report shows. Stretches of 1-3 s are
tested as one shorter window each and counted apart (``short_stretches``, ``short_detected``): the
threshold is set for 3 s. The payload is decoded from the whole channel and compared with the node
and the call the session marked.

``EarMarkCheck.write_record(folder, record)`` writes the signed provenance record beside the call's
stereo recording (``call.wav``: caller left, what the caller heard right); ``sign_recording``
signs the record of any stereo call recording (also the live calls of ``agent.call_recording``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.provenance import NodeSigner, build_record, write_record
from agent.report import CallRecord
from agent.watermark import BLOCK_CHUNKS, SCHEME, MarkOptions
from agent.watermark_detect import (
    DEFAULT_ALPHA,
    DETECT_RATE,
    WINDOW_SAMPLES,
    analyse,
    to_detect_rate,
    whiten,
    window_statistic,
)
from config.schema import Settings

MIN_WINDOW_S = 1.0
MERGE_GAP_MS = 500.0
STEP_S = 1.0


@dataclass
class EarMarkCheck:
    mark: MarkOptions
    signer: NodeSigner | None
    node_name: str = ""
    alpha: float = DEFAULT_ALPHA

    @classmethod
    def from_settings(cls, settings: Settings) -> EarMarkCheck:
        signer = NodeSigner.from_settings(settings.provenance) if settings.provenance.enabled else None
        return cls(MarkOptions.from_settings(settings), signer, settings.provenance.node_name)

    def measure(self, record: CallRecord, session_marks: list[dict[str, Any]] | None = None,
                call_tag: int | None = None) -> dict[str, Any]:
        """Detection at the caller's ear (stored as ``record.watermark``); ``call_tag`` is what the
        agent's session marked (its payload's call field)."""
        key = self.mark.key
        heard = record.heard_audio
        result: dict[str, Any] = {"scheme": SCHEME, "key_id": key.key_id, "enabled": self.mark.enabled,
                                  "node": self.mark.node, "call_tag": call_tag}
        if heard.size < MIN_WINDOW_S * record.sample_rate:
            result.update(windows=0, detected=0, detection_rate=None)
            return result
        x16 = to_detect_rate(heard, record.sample_rate)
        z = whiten(x16)
        analysis = analyse(x16, DETECT_RATE, key, self.alpha)
        stats: list[float] = []
        short: list[float] = []
        for a_ms, b_ms in _stretches(record):
            a = int(a_ms * DETECT_RATE / 1000)
            b = min(z.size, int(b_ms * DETECT_RATE / 1000))
            if b - a < MIN_WINDOW_S * DETECT_RATE:
                continue
            if b - a < WINDOW_SAMPLES:
                short.append(window_statistic(z[a:b], a, key)[0])
                continue
            for s in range(a, b - WINDOW_SAMPLES + 1, int(STEP_S * DETECT_RATE)):
                stats.append(window_statistic(z[s : s + WINDOW_SAMPLES], s, key)[0])
        detected = sum(1 for s in stats if s >= analysis.threshold)
        result["short_stretches"] = len(short)
        result["short_detected"] = sum(1 for s in short if s >= analysis.threshold)
        payload = max((seg.payload for seg in analysis.segments if seg.payload is not None),
                      key=lambda p: p.blocks, default=None)
        decoded = payload.as_dict() if payload is not None else None
        result.update(
            windows=len(stats), detected=detected, threshold=round(analysis.threshold, 3),
            detection_rate=round(detected / len(stats), 4) if stats else None,
            statistic_min=round(min(stats), 2) if stats else None,
            statistic_median=round(float(np.median(stats)), 2) if stats else None,
            payload=decoded,
            payload_matches=None if decoded is None or decoded.get("node") is None or call_tag is None else
            bool(decoded.get("node") == self.mark.node and decoded.get("call") == call_tag),
        )
        if session_marks is not None:
            result["utterances"] = session_marks
        return result

    def write_record(self, folder: Path, record: CallRecord) -> Path | None:
        """Sign and write ``folder/call.provenance.json`` for ``folder/call.wav`` (None: no signer)."""
        utterances = [{"turn": turn.index, "start_ms": turn.agent_start_ms, "end_ms": turn.agent_end_ms,
                       "interrupted": turn.interrupted, "epoch": turn.epoch} for turn in record.turns]
        at_ear = {k: record.watermark.get(k) for k in ("windows", "detected", "detection_rate")}
        return self.sign_recording(folder / "call.wav", call_id=record.call_id, model=record.model,
                                   sample_rate=record.sample_rate, call_tag=record.watermark.get("call_tag"),
                                   utterances=utterances, marks=record.watermark.get("utterances", []),
                                   at_ear=at_ear)

    def sign_recording(self, recording: Path, *, call_id: str, model: str, sample_rate: int, call_tag: int | None,
                       utterances: list[dict[str, Any]], marks: list[dict[str, Any]],
                       at_ear: dict[str, Any] | None = None) -> Path | None:
        """Sign and write the provenance record beside the stereo ``recording`` (caller left, agent
        right), already written. ``utterances``: turn, start_ms, end_ms (on the recording's timeline),
        interrupted, epoch; ``marks``: ``session_marks`` of the call (frames and counters per epoch).
        None when provenance is off (no signer)."""
        if self.signer is None:
            return None
        by_epoch = {m["epoch"]: m for m in marks}
        entries = []
        for u in utterances:
            utt: dict[str, Any] = {"turn": u["turn"], "start_ms": _ms(u["start_ms"]), "end_ms": _ms(u["end_ms"]),
                                   "interrupted": u["interrupted"]}
            m = by_epoch.get(u["epoch"]) if u.get("epoch") is not None else None
            if m is not None:
                utt.update(frames=m["frames"], counters=m["counters"])
            entries.append(utt)
        watermark: dict[str, Any] = {"scheme": SCHEME, "key_id": self.mark.key.key_id, "node": self.mark.node,
                                     "call": call_tag, "block_s": BLOCK_CHUNKS * 0.08}
        if at_ear is not None:
            watermark["at_ear"] = at_ear
        body = build_record(recording=recording, call_id=call_id, model=model, node_name=self.node_name,
                            node_id=self.mark.node, sample_rate=sample_rate, agent_channel=2, utterances=entries,
                            watermark=watermark)
        return write_record(recording, body, self.signer)


def _stretches(record: CallRecord) -> list[tuple[float, float]]:
    """Agent speech at the ear, segments closer than MERGE_GAP_MS joined (pauses between words)."""
    out: list[tuple[float, float]] = []
    for seg in sorted(record.agent_segments, key=lambda s: s.start_ms):
        if out and seg.start_ms - out[-1][1] <= MERGE_GAP_MS:
            out[-1] = (out[-1][0], max(out[-1][1], seg.end_ms))
        else:
            out.append((seg.start_ms, seg.end_ms))
    return out


def _ms(value: float | None) -> float | None:
    return None if value is None else round(float(value), 1)


def session_marks(summary_mark: Any) -> list[dict[str, Any]]:
    """The session's own account of what it marked: per reply (epoch), frames heard and counters."""
    if summary_mark is None:
        return []
    return [{"epoch": u.epoch, "first_chunk": u.first_chunk, "frames": u.chunks, "counters": u.blocks}
            for u in summary_mark.utterances]
