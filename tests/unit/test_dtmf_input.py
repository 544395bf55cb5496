"""DtmfInput: keys gathered into one input, ended by "#" or by a pause (time injected)."""

from __future__ import annotations

import pytest

from agent.dtmf_input import DtmfInput


def test_hash_ends_the_input_at_once_and_is_part_of_it() -> None:
    keys = DtmfInput(1500)
    assert keys.key("1", 0) is None and keys.key("2", 300) is None
    assert keys.key("#", 600) == "12#"
    assert keys.digits == "" and keys.last_ms == 600
    assert keys.due(10_000) is None  # nothing left to finish


def test_a_pause_ends_the_input_measured_from_the_last_key() -> None:
    keys = DtmfInput(1500)
    keys.key("4", 1000)
    keys.key("2", 2000)
    assert keys.due(3499) is None
    assert keys.due(3500) == "42"
    assert keys.due(3520) is None
    keys.key("7", 4000)
    assert keys.due(5500) == "7"


def test_the_end_of_input_must_be_positive() -> None:
    with pytest.raises(ValueError):
        DtmfInput(0)
