"""The watermark: embedding per chunk, barge-in truncation, detection through the real codec paths,
the false-positive bound on unmarked audio, payload decoding, the streaming detector."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.audio import AudioError
from agent.caller_voice import render_say
from agent.watermark import (
    BLOCK_CHUNKS,
    CHUNK_SAMPLES,
    CallWatermark,
    PayloadFields,
    WatermarkKey,
    encode_block,
    mark_signal,
)
from agent.watermark_detect import (
    PERIOD,
    StreamingDetector,
    analyse,
    decode_payload,
    false_positive_bound,
    threshold_for,
)
from bench import watermark_channels as wc

# (marked unit by its folder; the tests that need espeak-ng speech are marked integration)

TEXT = ("Thank you for calling. Your table for two is booked at seven tonight, and we will send you a "
        "confirmation by text message. Is there anything else I can help you with?")


@pytest.fixture(scope="module")
def key() -> WatermarkKey:
    return WatermarkKey.for_secret("unit-test key")


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return render_say(TEXT, "en-gb+f3", 165, 0.0, 24000)


@pytest.fixture(scope="module")
def marked(speech: np.ndarray, key: WatermarkKey) -> np.ndarray:
    return mark_signal(speech, key, node=321, call_id="call-7")


@pytest.mark.integration  # espeak-ng speech: runs with the peers, not under -m unit
def test_mark_is_small_and_only_where_speech_is(speech: np.ndarray, marked: np.ndarray) -> None:
    diff = marked.astype(np.float64) - speech
    ratio_db = 10 * math.log10(float(diff @ diff) / float(speech.astype(np.float64) @ speech))
    assert -24.0 < ratio_db < -12.0
    silence = np.zeros(CHUNK_SAMPLES * 3, np.int16)
    assert np.array_equal(mark_signal(silence, WatermarkKey.for_secret("x")), silence)


@pytest.mark.integration  # espeak-ng speech: runs with the peers, not under -m unit
def test_chunk_by_chunk_equals_whole_signal_and_is_deterministic(speech: np.ndarray, key: WatermarkKey) -> None:
    a = mark_signal(speech, key, 1, "c")
    b = mark_signal(speech, key, 1, "c")
    assert np.array_equal(a, b)
    other = mark_signal(speech, WatermarkKey.for_secret("another key"), 1, "c")
    assert not np.array_equal(a, other)


def test_embed_rejects_bad_chunks(key: WatermarkKey) -> None:
    mark = CallWatermark.for_call(key, 0, "c")
    with pytest.raises(AudioError):
        mark.embed(np.zeros(100, np.int16), 1, 0)
    with pytest.raises(AudioError):
        mark.embed(np.zeros(CHUNK_SAMPLES, np.float32), 1, 0)  # type: ignore[arg-type]


def test_truncate_on_barge_in_keeps_only_what_was_heard(key: WatermarkKey) -> None:
    mark = CallWatermark.for_call(key, 0, "c")
    chunk = np.full(CHUNK_SAMPLES, 1000, np.int16)
    for i in range(30):
        mark.embed(chunk, 1, i)
    mark.truncate(1, 12)  # the caller heard 12 chunks of reply 1
    assert mark.chunks == 12 and mark.utterances[0].chunks == 12
    for i in range(BLOCK_CHUNKS):
        mark.embed(chunk, 3, i)
    assert mark.utterances[1].first_chunk == 12
    assert mark.utterances[1].blocks == [0, 1]  # chunks 12..36: blocks 0 and 1, no skipped counter
    mark.truncate(3, 100)  # nothing to cut
    assert mark.chunks == 12 + BLOCK_CHUNKS


def test_payload_fields_are_checked() -> None:
    with pytest.raises(ValueError):
        PayloadFields(70000, 0, 0)
    symbols = encode_block(PayloadFields(1, 2, 3))
    assert symbols.shape == (125,) and set(np.unique(symbols)) == {-1.0, 1.0}


def test_threshold_and_bound_agree() -> None:
    t = threshold_for(1e-4)
    assert false_positive_bound(t) == pytest.approx(1e-4, rel=1e-6)
    assert 6.0 < t < 6.6
    with pytest.raises(ValueError):
        threshold_for(0.0)


@pytest.mark.parametrize("channel", ["G.711 µ-law", "G.711 A-law", "G.722", "Opus 24 kbit/s",
                                     "3 % loss (PLC), 16 kHz", "line noise 20 dB SNR, 8 kHz",
                                     "resample 24->8->16->48 kHz"])
@pytest.mark.integration  # espeak-ng speech: runs with the peers, not under -m unit
def test_detected_in_every_window_after_the_channel(channel: str, marked: np.ndarray, speech: np.ndarray,
                                                    key: WatermarkKey) -> None:
    stages = wc.standard_channels()[channel]
    y, rate = wc.run_chain(marked, stages)
    result = analyse(y, rate, key)
    assert result.windows and len(result.detected) == len(result.windows), [w.statistic for w in result.windows]
    clean, rate0 = wc.run_chain(speech, stages)
    assert not analyse(clean, rate0, key).present


@pytest.mark.integration  # espeak-ng speech: runs with the peers, not under -m unit
def test_payload_decodes_node_call_and_counters(marked: np.ndarray, key: WatermarkKey) -> None:
    y, rate = wc.run_chain(marked, wc.standard_channels()["G.711 µ-law"])
    result = analyse(y, rate, key)
    payload = max((s.payload for s in result.segments if s.payload), key=lambda p: p.blocks)
    assert payload.node.value == 321
    assert payload.call.value == key.call_tag("call-7")
    assert payload.counter.value == 0
    assert payload.as_dict()["counters"][:3] == [0, 1, 2]


def test_decode_of_nothing_is_nothing() -> None:
    assert decode_payload({}).blocks == 0


@pytest.mark.integration  # espeak-ng speech: runs with the peers, not under -m unit
def test_polarity_inversion_is_still_detected(marked: np.ndarray, key: WatermarkKey) -> None:
    inverted = (-marked.astype(np.int32)).clip(-32768, 32767).astype(np.int16)
    result = analyse(inverted, 24000, key)
    assert result.present and result.segments[0].polarity == -1


@pytest.mark.integration  # espeak-ng speech: runs with the peers, not under -m unit
def test_unmarked_audio_stays_below_threshold(speech: np.ndarray, key: WatermarkKey) -> None:
    rng = np.random.default_rng(3)
    t = np.arange(16000 * 12) / 16000
    tones = sum(np.sin(2 * np.pi * f * t * (1 + 0.003 * np.sin(2 * np.pi * 5 * t))) for f in (220, 330, 440, 660))
    signals = {
        "white noise": rng.normal(0, 3000, 16000 * 12),
        "chord with vibrato": 4000 * tones,
        "other key's mark": mark_signal(speech, WatermarkKey.for_secret("someone else"), 1, "x"),
    }
    for name, x in signals.items():
        rate = 24000 if name == "other key's mark" else 16000
        result = analyse(x, rate, key)
        assert result.max_statistic < result.threshold, name


@pytest.mark.integration  # espeak-ng speech: runs with the peers, not under -m unit
def test_streaming_detector_decides_within_3_s_on_webrtc_frames(marked: np.ndarray, key: WatermarkKey) -> None:
    y, rate = wc.run_chain(np.concatenate([np.zeros(24000, np.int16), marked]), [wc.opus(24000)])
    assert rate == 48000
    detector = StreamingDetector(key, 48000)
    from av import AudioFrame

    first_hit = None
    for i in range(0, y.size - 959, 960):  # 20 ms frames as aiortc delivers them (packed stereo)
        frame = AudioFrame.from_ndarray(np.repeat(y[i : i + 960], 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = 48000
        for decision in detector.push_frame(frame):
            if decision.present and first_hit is None:
                first_hit = decision.at_s
    assert first_hit is not None and first_hit <= 1.0 + 3.0 + 0.5  # 1 s of silence, then speech
    assert detector.present and detector.best is not None and detector.best.lag < PERIOD


@pytest.mark.integration  # espeak-ng speech: runs with the peers, not under -m unit
def test_streaming_detector_on_rtp_g711_payloads(marked: np.ndarray, key: WatermarkKey) -> None:
    from agent.g711 import ulaw_decode, ulaw_encode
    from agent.resample import resample_offline

    narrow = resample_offline(marked, 24000, 8000)
    detector = StreamingDetector(key, 8000)
    hits = []
    for i in range(0, narrow.size - 159, 160):  # one PCMU payload per 20 ms RTP packet
        hits += [d for d in detector.push(ulaw_decode(ulaw_encode(narrow[i : i + 160]))) if d.present]
    assert hits and hits[0].at_s <= 3.5
    with pytest.raises(AudioError):
        detector.push(np.zeros((10, 2), np.int16))
    with pytest.raises(AudioError):
        StreamingDetector(key, 4000)
