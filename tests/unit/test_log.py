"""Structured logging: one line per event, call id on every line, secrets masked."""

from __future__ import annotations

import io
import json

from agent.log import call_context, configure_logging, event, get_logger


def test_text_lines_carry_call_id_and_fields() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "text", stream)
    log = get_logger("agent.test")
    with call_context("c-42"):
        event(log, "call.answered", codec="PCMU", note="two words")
    event(log, "server.started", port=8080)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert " INFO agent.test call.answered call=c-42 codec=PCMU note=\"two words\"" in lines[0]
    assert "call=- port=8080" in lines[1]


def test_json_format_and_secret_masking() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream)
    with call_context("c-7"):
        event(get_logger("x"), "auth", auth_password="hunter2", user="bob")
    obj = json.loads(stream.getvalue())
    assert obj["call"] == "c-7" and obj["event"] == "auth" and obj["user"] == "bob"
    assert obj["auth_password"] == "***"


def test_level_filters() -> None:
    stream = io.StringIO()
    configure_logging("WARNING", "text", stream)
    event(get_logger("x"), "quiet")
    assert stream.getvalue() == ""
