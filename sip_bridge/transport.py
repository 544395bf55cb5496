"""``SipCallTransport``: one established SIP call as agent/transport.py's ``CallTransport``.

Caller audio decoded by ``CallMedia`` and DTMF (RFC 4733 or SIP INFO) are queued as transport
events; the call's end (remote BYE, CANCEL, RTP timeout, our own hang-up) queues ``HungUp``,
always the last event. ``send`` queues agent audio in the media pacer (``send_tracked``: and reports each packet
that really left as ``PacketsPlayed``, the session's truth of what was heard); ``pause_output``
holds what is queued (a suspected interruption), ``flush`` drops it (barge-in); ``hang_up`` asks
the gateway to send BYE.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agent.transport import AudioReceived, DtmfReceived, HungUp, Int16Array, PacketsPlayed, TransportEvent
from sip_bridge.media import CallMedia

MAX_BACKLOG_MS = 200  # caller audio waiting for the session: beyond it new packets are dropped (counted)


class SipCallTransport:
    def __init__(self, call_id: str, media: CallMedia, on_hang_up: Callable[[str, str], None]) -> None:
        self.call_id = call_id
        self.media = media
        self._on_hang_up = on_hang_up
        self._rate = media.transport_rate
        self._events: asyncio.Queue[TransportEvent] = asyncio.Queue()
        self._ended = False
        self.dropped_audio = 0  # caller packets dropped because the session fell MAX_BACKLOG_MS behind
        self._queued_samples = 0
        self.hangup_reason: str | None = None

    @property
    def sample_rate(self) -> int:
        return self._rate

    @property
    def ended(self) -> bool:
        return self._ended

    async def receive(self) -> TransportEvent:
        ev = await self._events.get()
        if isinstance(ev, AudioReceived):
            self._queued_samples -= len(ev.samples)
        return ev

    def send(self, samples: Int16Array) -> None:
        if not self._ended:
            self.media.send_pcm(samples)

    def send_tracked(self, samples: Int16Array, sequence: int | None) -> None:
        """Queue a packet; `PacketsPlayed(sequence)` follows once it was really sent on the wire."""
        if not self._ended:
            self.media.on_sent = self._sent
            self.media.send_pcm(samples, sequence)

    def set_source(self, source: Callable[[], None] | None) -> None:
        """Let the media's send deadlines drive the session's outbound tick (one pacing grid)."""
        self.media.source = source

    def pause_output(self) -> None:
        """Hold the queued agent audio (sending silence meanwhile); nothing is dropped."""
        self.media.pause_output()

    def resume_output(self) -> None:
        self.media.resume_output()

    def flush(self) -> int:
        """Drop queued agent audio at once (barge-in); returns the packets dropped."""
        return self.media.flush_output()

    def hang_up(self, reason: str) -> None:
        if self._ended:
            return
        self.remote_ended(f"agent: {reason}")
        self._on_hang_up(self.call_id, reason)

    # --- fed by the media and the gateway --------------------------------------------------------
    def audio_received(self, samples: Int16Array) -> None:
        if self._ended:
            return
        if (self._queued_samples + len(samples)) * 1000 > MAX_BACKLOG_MS * self._rate:
            self.dropped_audio += 1
            return
        self._queued_samples += len(samples)
        self._events.put_nowait(AudioReceived(samples))

    def dtmf_received(self, digit: str, duration_ms: int) -> None:
        if not self._ended:
            self._events.put_nowait(DtmfReceived(digit, duration_ms))

    def _sent(self, sequence: int) -> None:
        if not self._ended:
            self._events.put_nowait(PacketsPlayed(sequence))

    def remote_ended(self, reason: str) -> None:
        """The call is over (BYE, CANCEL, RTP timeout, our hang-up): HungUp is the last event."""
        if self._ended:
            return
        self._ended = True
        self.hangup_reason = reason
        self._events.put_nowait(HungUp(reason))
