"""Pure parts of the HTTP app: the auth decision, SDP pre-checks and the summary-to-events differ."""

from __future__ import annotations

import dataclasses

import pytest

from agent.http_app import SummaryDiffer, auth_required, check_answer_audio, check_offer_sdp, is_loopback_host
from agent.session import BargeInMetrics, CallSummary, TurnMetrics
from config.loader import ConfigError
from config.schema import HttpSettings


@pytest.mark.parametrize(("host", "auth", "token", "required"), [
    ("127.0.0.1", "auto", "", False),
    ("::1", "auto", "", False),
    ("localhost", "auto", "", False),
    ("0.0.0.0", "auto", "s3cret", True),
    ("10.1.2.3", "auto", "s3cret", True),
    ("127.0.0.1", "on", "s3cret", True),
    ("0.0.0.0", "off", "", False),
])
def test_auth_decision(host: str, auth: str, token: str, required: bool) -> None:
    assert auth_required(HttpSettings(host=host, auth=auth, auth_token=token)) is required


@pytest.mark.parametrize(("host", "auth"), [("0.0.0.0", "auto"), ("127.0.0.1", "on"), ("agent.example", "auto")])
def test_auth_on_without_token_is_a_config_error(host: str, auth: str) -> None:
    with pytest.raises(ConfigError, match="auth_token is empty"):
        auth_required(HttpSettings(host=host, auth=auth, auth_token=""))


def test_loopback_hosts() -> None:
    assert is_loopback_host("127.0.0.2") and is_loopback_host("::1")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("example.org")


OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"


def test_offer_precheck_accepts_audio() -> None:
    check_offer_sdp(OFFER)


@pytest.mark.parametrize(("sdp", "error"), [
    ("", "v=0"),
    ("hello", "v=0"),
    ("v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n", "no audio"),
    (OFFER.replace("m=audio 9", "m=audio 0"), "rejected"),
])
def test_offer_precheck_rejects(sdp: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        check_offer_sdp(sdp)


def test_answer_audio_check() -> None:
    answer = OFFER + "a=sendrecv\r\n"
    check_answer_audio(answer)
    with pytest.raises(ValueError, match="no audio section"):
        check_answer_audio("v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n")
    with pytest.raises(ValueError, match="codec in common"):
        check_answer_audio("v=0\r\nm=audio 0 UDP/TLS/RTP/SAVPF 0\r\n")
    with pytest.raises(ValueError, match="recvonly"):
        check_answer_audio(OFFER + "a=sendonly\r\n")


def test_summary_differ_reports_each_change_once() -> None:
    summary = CallSummary("c-1", 0.0)
    differ = SummaryDiffer()
    assert differ.diff(summary) == []
    summary.vad_segments.append((1000, 2400))
    summary.end_of_turns.append(3000)
    turn = TurnMetrics(epoch=1, speech_ended_ms=2400, end_of_turn_ms=3000)
    summary.turns.append(turn)
    assert [e["type"] for e in differ.diff(summary)] == ["caller_speech", "end_of_turn", "agent_turn"]
    assert differ.diff(summary) == []
    turn.first_audio_sent_ms = 3300
    events = differ.diff(summary)
    assert events == [{"type": "latency", "epoch": 1, "first_audio_ms": 3300, "latency_ms": 900}]
    turn.interrupted = True
    summary.barge_ins.append(BargeInMetrics(speech_started_ms=4000, detected_ms=4300, stopped_ms=4100,
                                            played_frames=9))
    summary.dtmf = "12"
    events = differ.diff(summary)
    assert [e["type"] for e in events] == ["agent_text", "barge_in", "dtmf"]
    assert events[0]["interrupted"] is True
    assert events[1] == {"type": "barge_in", "speech_started_ms": 4000, "at_ms": 4300, "stopped_ms": 4100,
                         "played_frames": 9}
    assert events[2]["digits"] == "12"
    turn.text_heard = "hello there"
    assert differ.diff(summary) == [{"type": "agent_text", "epoch": 1, "text": "hello there", "interrupted": True}]
    assert differ.diff(dataclasses.replace(summary)) == []


def test_summary_differ_streams_the_agent_text_as_it_is_generated() -> None:
    summary = CallSummary("c-2", 0.0)
    turn = TurnMetrics(epoch=3, speech_ended_ms=1000, end_of_turn_ms=2200)
    summary.turns.append(turn)
    differ = SummaryDiffer()
    differ.diff(summary)
    turn.text_generated = "held"  # generated while held before the end of turn: not shown yet
    assert differ.diff(summary) == []
    turn.first_audio_sent_ms = 2220
    differ.diff(summary)
    for text in ("Your table", "Your table is booked"):
        turn.text_generated = text
        assert differ.diff(summary) == [{"type": "agent_text", "epoch": 3, "text": text, "interrupted": False}]
    turn.text_heard = "Your table is booked."  # the reply finished: what was heard wins
    assert differ.diff(summary)[0]["text"] == "Your table is booked."


def test_summary_differ_withdraws_an_answer_that_was_never_heard() -> None:
    summary = CallSummary("c-3", 0.0)
    turn = TurnMetrics(epoch=2, speech_ended_ms=1000, end_of_turn_ms=None, text_generated="Sure")
    summary.turns.append(turn)
    differ = SummaryDiffer()
    assert [e["type"] for e in differ.diff(summary)] == ["agent_turn"]  # held: no text shown
    summary.turns.remove(turn)  # the caller went on talking: the session withdrew the early answer
    assert differ.diff(summary) == [{"type": "agent_withdrawn", "epoch": 2}]
    assert differ.diff(summary) == []
