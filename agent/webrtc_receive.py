"""Receive side of an aiortc audio track, made for a live call: no waiting on packets that are not missing.

aiortc's `RTCRtpReceiver` passes every RTP packet to a jitter buffer whose ``add()`` returns at most
one encoded frame, and its audio buffer releases a frame only when the packet after it has arrived
(and, by default, 4 packets later). That is 20-80 ms on everything the caller says, and one lost
packet is worse: nothing leaves until the buffer's 16 slots overflow (320 ms), and since each
arrival then releases one frame, the backlog stays for the rest of the call.

`AudioJitterBuffer` takes the buffer's place with the project's own sequence logic
(`sip_bridge.jitter.JitterBuffer`, RFC 3550 arithmetic) run with no wait: the packet that is due
leaves at once; a packet ahead of a gap leaves at once too and the gap is counted lost (the
transport conceals it with silence from the frame timestamps, as the SIP leg does); a packet
behind the playout point (reordered past its turn, or a repeat) is dropped and counted late. Every call
of ``add()`` hands out at most the packet it was given, so no backlog can build up.

`low_latency_receive(pc)` installs it in every audio receiver of a peer connection.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from fractions import Fraction
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer as AiortcJitterBuffer
from aiortc.jitterbuffer import JitterFrame

from agent.log import event
from sip_bridge.jitter import JitterBuffer as SequenceBuffer

log = logging.getLogger(__name__)

RECEIVER_BUFFER_ATTR = "_RTCRtpReceiver__jitter_buffer"  # where aiortc keeps a receiver's buffer
MAX_JUMP_PACKETS = 100  # a larger sequence jump is a restarted source: resynchronise, not "100 lost"


class AudioJitterBuffer:
    """Drop-in for aiortc's audio jitter buffer (``add(packet) -> (pli, frame)``) that never waits."""

    def __init__(self) -> None:
        self._sequence = SequenceBuffer(max_wait_ms=0, max_held=1, max_jump=MAX_JUMP_PACKETS, max_conceal=0)

    @property
    def stats(self) -> Counter[str]:
        """received, lost (sequence numbers skipped), late (behind the playout point, repeats too), resyncs."""
        return self._sequence.stats

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        """`packet`: an aiortc RtpPacket whose payload the receiver has depayloaded into ``_data``."""
        now = time.monotonic()  # no wait is configured: the time only orders arrivals
        self._sequence.push(packet.sequence_number, packet.payload_type, b"", now)
        if not any(not item.lost for item in self._sequence.pop(now)):  # late
            return False, None
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)


def low_latency_receive(pc: RTCPeerConnection) -> list[AudioJitterBuffer]:
    """Give every audio receiver of `pc` an `AudioJitterBuffer`; returns the buffers installed now.

    aiortc has no setting for this, so the receiver's buffer is replaced; do it before media flows
    (after ``setRemoteDescription`` on the answering side, after ``addTrack`` on the offering one).
    A receiver that already has one keeps it (calling this twice changes nothing). A receiver whose
    buffer is not where aiortc keeps it (another aiortc version) keeps its own, and that is logged.
    """
    installed: list[AudioJitterBuffer] = []
    for transceiver in pc.getTransceivers():
        if transceiver.kind != "audio":
            continue
        receiver = transceiver.receiver
        current = getattr(receiver, RECEIVER_BUFFER_ATTR, None)
        if isinstance(current, AudioJitterBuffer):
            continue
        if not isinstance(current, AiortcJitterBuffer):
            event(log, "webrtc.receive_buffer_unchanged", logging.INFO, reason="aiortc keeps no jitter buffer where expected")
            continue
        buffer = AudioJitterBuffer()
        setattr(receiver, RECEIVER_BUFFER_ATTR, buffer)
        installed.append(buffer)
    return installed


MAX_CONCEAL_S = Fraction(1, 5)  # the longest gap filled with silence (10 packets, like the SIP leg)


class TimestampGaps:
    """Finds the audio missing before each decoded frame from the frames' timestamps (pure).

    A gap (lost packets, or a peer's discontinuous transmission) up to `MAX_CONCEAL_S` is to be
    filled with that much silence, so that the call's timeline keeps the caller's real pauses; a
    longer one, or a jump backwards (a restarted source), fills nothing and starts afresh.
    """

    def __init__(self, max_conceal_s: Fraction = MAX_CONCEAL_S) -> None:
        self.max_conceal_s = max_conceal_s
        self._next_s: Fraction | None = None
        self.concealed_s = Fraction(0)
        self.skipped = 0  # gaps too long (or backwards) to fill

    def missing_before(self, start_s: Fraction, duration_s: Fraction) -> Fraction:
        """Seconds of silence due before a frame that starts at `start_s` and lasts `duration_s`."""
        expected, self._next_s = self._next_s, start_s + duration_s
        if expected is None or start_s == expected:
            return Fraction(0)
        gap = start_s - expected
        if gap < 0 or gap > self.max_conceal_s:
            self.skipped += 1
            return Fraction(0)
        self.concealed_s += gap
        return gap
