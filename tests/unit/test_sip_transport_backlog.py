"""SipCallTransport bounds the caller audio waiting for the session to 200 ms, and counts the rest."""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from agent.transport import AudioReceived
from sip_bridge.transport import MAX_BACKLOG_MS, SipCallTransport


class MediaDouble:
    transport_rate = 8000


async def test_inbound_audio_beyond_200_ms_is_dropped_and_counted() -> None:
    transport = SipCallTransport("c-1", cast(Any, MediaDouble()), lambda call, reason: None)
    packet = np.zeros(160, np.int16)  # 20 ms at 8 kHz
    for _ in range(15):
        transport.audio_received(packet)
    kept = MAX_BACKLOG_MS // 20
    assert transport.dropped_audio == 15 - kept
    for _ in range(kept):
        assert isinstance(await transport.receive(), AudioReceived)
    transport.audio_received(packet)  # the session caught up: audio is queued again
    assert transport.dropped_audio == 15 - kept
    assert isinstance(await transport.receive(), AudioReceived)
