"""One call's RTP media: codecs, jitter buffer, paced sending, RFC 4733 DTMF, RTP timeout.

Theory of operation
-------------------
``CallMedia`` owns one UDP socket (bound by ``open_rtp_socket`` from the configured port range
before the SDP answer is written) and speaks 20 ms int16 PCM at the call's *transport rate*
(the first negotiated codec's audio rate) towards the agent. A re-INVITE may change codec, so
audio is resampled between the transport rate and the codec rate when they differ.

Receive: every datagram is parsed (``rtp.py``); a malformed one is dropped and counted
(``on_bad_input("rtp")``). Media packets go through the ``JitterBuffer`` (order, loss), are
decoded (loss concealed with silence, RFC 3389 comfort noise taken as silence) and delivered
with ``on_audio``; telephone-events go to the ``DtmfReceiver`` (``on_dtmf``). Symmetric RTP
(RFC 4961 spirit): we send to the address the peer's packets come from once the first valid
packet arrives, which fixes NATed peers whose SDP names a private address.

Send: ``send_pcm`` encodes the packet and queues it. The process's RTP send thread
(``send_thread.py``) wakes on absolute 20 ms deadlines (``PacedSender``, on one process-wide grid)
and sends one packet per deadline: queued audio, a DTMF event packet while a digit is being sent,
or encoded silence, so the stream is continuous. After each tick the event loop reports what left
(``on_sent``) and asks the ``source`` (the session's tick) for the next packet: one packet of lead.
``flush_output`` drops the queue at once (barge-in), ``pause_output`` holds it (silence goes out).
While on hold (our direction forbids sending) nothing is sent. What the send thread touches is
guarded by the media's lock.

RTP timeout: no packet for ``rtp_timeout_s`` (not counted while the peer holds the call) calls
``on_timeout`` once; the gateway then sends BYE.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agent.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from agent.log import event
from agent.resample import StreamingResampler
from agent.transport import Int16Array
from sip_bridge.dtmf import DtmfReceiver, EventPacket, digit_packets
from sip_bridge.errors import RtpError
from sip_bridge.jitter import JitterBuffer
from sip_bridge.message import Addr
from sip_bridge.pacer import PacedSender
from sip_bridge.rtp import RtpPacket, RtpStreamWriter, TelephoneEvent, is_rtcp
from sip_bridge.sdp import Codec, Direction, NegotiatedMedia
from sip_bridge.send_thread import SEND_THREAD, grid_start

log = logging.getLogger(__name__)

PACKET_MS = 20
COMFORT_NOISE_PT = 13  # RFC 3389


class AudioCodec(Protocol):
    name: str
    sample_rate: int

    def encode(self, pcm: Int16Array) -> bytes: ...

    def decode(self, payload: bytes) -> Int16Array: ...


class G711Codec:
    def __init__(self, name: str) -> None:
        self.name = name.upper()
        self.sample_rate = 8000
        self._alaw = self.name == "PCMA"

    def encode(self, pcm: Int16Array) -> bytes:
        return alaw_encode(pcm) if self._alaw else ulaw_encode(pcm)

    def decode(self, payload: bytes) -> Int16Array:
        return alaw_decode(payload) if self._alaw else ulaw_decode(payload)


class G722Codec:
    """ITU-T G.722 at 64 kbit/s through the ``g722`` package (module ``G722``); 16 kHz audio."""

    def __init__(self) -> None:
        import G722  # C extension without stubs (mypy: ignore_missing_imports)

        self.name = "G722"
        self.sample_rate = 16000
        self._encoder = G722.G722(16000, 64000)
        self._decoder = G722.G722(16000, 64000)

    def encode(self, pcm: Int16Array) -> bytes:
        return bytes(self._encoder.encode(np.ascontiguousarray(pcm, dtype=np.int16)))

    def decode(self, payload: bytes) -> Int16Array:
        return np.asarray(self._decoder.decode(payload), dtype=np.int16)


def g722_available() -> bool:
    try:
        G722Codec()
    except ImportError:
        return False
    return True


def make_codec(codec: Codec) -> AudioCodec:
    name = codec.name.upper()
    if name in ("PCMU", "PCMA"):
        return G711Codec(name)
    if name == "G722":
        return G722Codec()
    raise ValueError(f"no audio codec implementation for {codec.name}/{codec.clock_rate}")


def open_rtp_socket_range(port_min: int, port_max: int) -> list[int]:
    """Even ports of the range, starting at a random one (RTP on even, RFC 3550 §11)."""
    first = port_min + (port_min % 2)
    ports = list(range(first, port_max + 1, 2))
    if not ports:
        raise ValueError(f"RTP port range {port_min}-{port_max} holds no even port")
    start = random.randrange(len(ports))
    return ports[start:] + ports[:start]


class _RtpProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.media: CallMedia | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if self.media is not None:
            self.media.receive_datagram(data, (str(addr[0]), int(str(addr[1]))))

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable and the like
        if self.media is not None:
            self.media.stats["socket_errors"] += 1


@dataclass
class RtpSocket:
    transport: asyncio.DatagramTransport
    protocol: _RtpProtocol
    port: int


async def open_rtp_socket(host: str, port_min: int, port_max: int) -> RtpSocket:
    """Bind a UDP socket on a free even port of the range; OSError when none is free."""
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    for port in open_rtp_socket_range(port_min, port_max)[:200]:
        try:
            transport, protocol = await loop.create_datagram_endpoint(_RtpProtocol, local_addr=(host, port))
        except OSError as exc:
            last = exc
            continue
        return RtpSocket(transport, protocol, port)
    raise OSError(f"no free RTP port in {port_min}-{port_max} on {host}: {last}")


def raw_sender(transport: asyncio.DatagramTransport) -> tuple[Callable[[bytes, Addr], None], socket.socket | None]:
    """A ``sendto`` the send thread may call: a duplicate of the transport's socket (asyncio's own
    ``sendto`` belongs to the event loop's thread); the transport itself where it has no socket."""
    sock = transport.get_extra_info("socket") if hasattr(transport, "get_extra_info") else None
    if sock is None:
        return transport.sendto, None
    raw = socket.socket(fileno=os.dup(sock.fileno()))
    raw.setblocking(False)

    def sendto(data: bytes, addr: Addr) -> None:
        raw.sendto(data, addr)

    return sendto, raw


@dataclass(frozen=True)
class MediaCallbacks:
    on_audio: Callable[[Int16Array], None]
    on_dtmf: Callable[[str, int], None]
    on_timeout: Callable[[], None]
    on_bad_input: Callable[[str], None]


class CallMedia:
    def __init__(self, sock: RtpSocket, negotiated: NegotiatedMedia, callbacks: MediaCallbacks, *,
                 rtp_timeout_s: float = 30.0, transport_rate: int | None = None,
                 clock: Callable[[], float] | None = None, jitter_buffer_ms: int = 60) -> None:
        """``jitter_buffer_ms`` (``audio.jitter_buffer_ms``): how long a packet ahead of a gap waits
        for the missing one before the gap is declared lost."""
        self.sock = sock
        self.callbacks = callbacks
        self.rtp_timeout_s = rtp_timeout_s
        self.loop = asyncio.get_running_loop()
        self._clock = clock or self.loop.time
        self._lock = threading.Lock()  # what the send thread and the loop share
        # sendto for the send thread (tests replace it to inject socket errors)
        self.send_datagram, self._raw_socket = raw_sender(sock.transport)
        self.stats: Counter[str] = Counter()
        self.jitter = JitterBuffer(max_wait_ms=jitter_buffer_ms)
        self.writer = RtpStreamWriter()
        self.negotiated = negotiated
        self.codec: AudioCodec = make_codec(negotiated.codec)
        self.transport_rate = transport_rate or self.codec.sample_rate
        self._dtmf_rx = DtmfReceiver(negotiated.codec.clock_rate)
        self._remote: Addr | None = negotiated.remote_address
        self._latched = False
        self._remote_ssrc: int | None = None
        self._set_resamplers()
        # (encoded payload, playout sequence or None, queued at): a sequence is reported to on_sent
        # once it left
        self.pacer: PacedSender[tuple[bytes, int | None, float]] = PacedSender(self._clock(), packet_ms=PACKET_MS)
        self.on_sent: Callable[[int], None] | None = None
        self._sent_pending: list[int] = []  # sequences sent by the thread, not yet reported
        # called on the loop once per send deadline, after it: the session makes its packet for the
        # next deadline (one pacing grid per call, one packet of lead)
        self.source: Callable[[], None] | None = None
        self.queue_wait_s: list[float] = []  # how long each tracked packet waited in the queue, bounded
        self.output_paused = False  # hold the queued agent audio (a suspected interruption), send silence
        self._dtmf_out: list[EventPacket] = []
        self._dtmf_timestamp = 0
        self._last_rx_s = self._clock()
        self._timed_out = False
        self._started = False
        self._closed = False
        self.send_times_s: list[float] = []  # when each packet left (for jitter measurements), bounded
        self.receive_times_s: list[float] = []  # when each media packet arrived, bounded
        sock.protocol.media = self

    # --- configuration ------------------------------------------------------------------------
    def _set_resamplers(self) -> None:
        rate = self.codec.sample_rate
        self._to_codec = None if rate == self.transport_rate else StreamingResampler(self.transport_rate, rate)
        self._from_codec = None if rate == self.transport_rate else StreamingResampler(rate, self.transport_rate)
        self._silence = np.zeros(rate * PACKET_MS // 1000, np.int16)
        # encoded once, by a codec instance of its own (G.722's encoder has state)
        self._silence_payload = make_codec(self.negotiated.codec).encode(self._silence)

    @property
    def local_port(self) -> int:
        return self.sock.port

    @property
    def remote_address(self) -> Addr | None:
        return self._remote

    @property
    def sending(self) -> bool:
        return self.negotiated.direction in (Direction.SENDRECV, Direction.SENDONLY) and self._remote is not None

    @property
    def on_hold(self) -> bool:
        return self.negotiated.direction in (Direction.RECVONLY, Direction.INACTIVE) or self._remote is None

    def update(self, negotiated: NegotiatedMedia) -> None:
        """A re-INVITE changed the media: address, direction (hold/unhold) or codec."""
        with self._lock:
            old = self.negotiated
            self.negotiated = negotiated
            if negotiated.remote_address != old.remote_address:
                self._remote = negotiated.remote_address
                self._latched = False
            if negotiated.codec.name.upper() != old.codec.name.upper():
                self.codec = make_codec(negotiated.codec)
                self._dtmf_rx = DtmfReceiver(negotiated.codec.clock_rate)
                self._set_resamplers()
                self.jitter.reset()
                self.pacer.flush()  # encoded with the old codec
        self._last_rx_s = self._clock()
        event(log, "rtp.media_updated", codec=negotiated.codec.name, direction=negotiated.direction.value,
              remote=str(self._remote))

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Begin delivering audio and sending on the 20 ms grid (at the ACK)."""
        if self._started:
            return
        self._started = True
        now = self._clock()
        with self._lock:
            self.pacer = PacedSender(grid_start(now, PACKET_MS / 1000), packet_ms=PACKET_MS)
        self._last_rx_s = now
        SEND_THREAD.add(self)

    async def close(self) -> None:
        if self._closed:
            return
        SEND_THREAD.remove(self)
        with self._lock:  # the thread is not inside send_due from here on
            self._closed = True
            if self._raw_socket is not None:
                self._raw_socket.close()
        self.sock.protocol.media = None
        self.sock.transport.close()

    # --- sending --------------------------------------------------------------------------------------
    def send_pcm(self, samples: Int16Array, sequence: int | None = None) -> None:
        """Encode and queue one 20 ms packet at the transport rate (never blocks); `sequence`, if
        given, is passed to ``on_sent`` when the packet has really been sent (not dropped, not
        replaced by DTMF)."""
        if self._closed:
            return
        pcm = self._to_codec.process(samples) if self._to_codec is not None else samples
        if pcm.size != self._silence.size:  # resampler warm-up: keep packets whole
            pcm = np.resize(np.concatenate([pcm, self._silence]), self._silence.size)
        payload = self.codec.encode(pcm)
        with self._lock:
            self.pacer.enqueue((payload, sequence, self._clock()), droppable=sequence is None and not samples.any())

    def pause_output(self) -> None:
        self.output_paused = True

    def resume_output(self) -> None:
        self.output_paused = False

    def flush_output(self) -> int:
        """Drop queued outgoing audio at once (barge-in); returns the packets dropped."""
        with self._lock:
            self.output_paused = False
            return self.pacer.flush()

    def send_dtmf(self, digit: str, duration_ms: int = 160) -> None:
        """Send one digit as RFC 4733 events (replacing audio for its duration)."""
        event_codec = self.negotiated.telephone_event
        if event_codec is None:
            raise ValueError("the peer did not negotiate telephone-event: cannot send RFC 4733 DTMF")
        packets = digit_packets(digit, duration_ms, clock_rate=event_codec.clock_rate)
        with self._lock:
            self._dtmf_out += packets

    @property
    def next_deadline_s(self) -> float:
        return self.pacer.next_deadline_s

    def send_due(self, now: float) -> bool:
        """On the send thread: one packet per deadline passed by `now`; True when any was due."""
        with self._lock:
            if self._closed:
                return False
            due = self.pacer.due(now)
            for _ in range(due):
                try:
                    self._send_tick(now)
                except Exception as exc:  # one bad tick must not end the stream
                    self.stats["send_errors"] += 1
                    if self.stats["send_errors"] <= 3 or self.stats["send_errors"] % 500 == 0:  # not 50 lines/s
                        event(log, "rtp.send_error", logging.WARNING, error=repr(exc),
                              count=self.stats["send_errors"])
            if self.pacer.skipped_last:  # RTP time follows wall time across a stall (RFC 3550 §5.1)
                self.writer.advance(self.pacer.skipped_last * self.negotiated.codec.clock_rate * PACKET_MS // 1000)
            return due > 0

    def after_send(self, now: float) -> None:
        """On the event loop after a send tick: report what left, make the next packet (the
        session's tick), look after the receive side (jitter buffer, DTMF ends, RTP timeout)."""
        with self._lock:
            sent, self._sent_pending = self._sent_pending, []
        if self._closed:
            return
        if self.on_sent is not None:
            for sequence in sent:
                self.on_sent(sequence)
        if self.source is not None:
            self.source()
        self._check_receive(self._clock())

    def _send_tick(self, now: float) -> None:
        """One deadline's packet (the lock is held)."""
        item = None if self.output_paused else self.pacer.take()
        payload, sequence, queued_s = item if item is not None else (None, None, now)
        ticks = self.negotiated.codec.clock_rate * PACKET_MS // 1000
        if not self.sending:
            self.writer.advance(ticks)
            return
        assert self._remote is not None
        if self._dtmf_out:
            event_codec = self.negotiated.telephone_event
            packet = self._dtmf_out.pop(0)
            if packet.marker:
                self._dtmf_timestamp = self.writer.timestamp
            if event_codec is not None:
                data = self.writer.packet(event_codec.payload_type, packet.payload, marker=packet.marker,
                                          timestamp=self._dtmf_timestamp)
                self._sendto(data, now)
            self.writer.advance(ticks)
            return
        data = self.writer.packet(self.negotiated.codec.payload_type,
                                  self._silence_payload if payload is None else payload,
                                  marker=self.writer.packets_sent == 0)
        self.writer.advance(ticks)
        self._sendto(data, now)
        if sequence is not None:
            if len(self.queue_wait_s) < 100_000:
                self.queue_wait_s.append(now - queued_s)
            self._sent_pending.append(sequence)

    def _sendto(self, data: bytes, now: float) -> None:
        assert self._remote is not None
        if len(self.send_times_s) < 100_000:
            self.send_times_s.append(self._clock())  # the moment it leaves, not the deadline
        self.send_datagram(data, self._remote)

    # --- receiving --------------------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: Addr) -> None:
        now = self._clock()
        try:
            self._receive(data, addr, now)
        except (RtpError, ValueError) as exc:
            self.stats["bad_packets"] += 1
            self.callbacks.on_bad_input("rtp")
            if self.stats["bad_packets"] <= 3:
                event(log, "rtp.bad_packet", logging.INFO, error=str(exc)[:120], source=f"{addr[0]}:{addr[1]}")

    def _receive(self, data: bytes, addr: Addr, now: float) -> None:
        if is_rtcp(data):
            self.stats["rtcp"] += 1  # rtcp-mux: reports are not used
            return
        packet = RtpPacket.parse(data)
        if self._latched and addr != self._remote:
            self.stats["foreign_source"] += 1
            return
        pt = packet.payload_type
        event_codec = self.negotiated.telephone_event
        is_event = event_codec is not None and pt == event_codec.payload_type
        if pt != self.negotiated.codec.payload_type and pt != COMFORT_NOISE_PT and not is_event:
            raise RtpError(f"RTP payload type {pt} was not negotiated")
        if not self._latched:
            self._latched = True
            if addr != self._remote:
                self.stats["relatched"] += 1
                with self._lock:
                    self._remote = addr  # symmetric RTP: answer where the media comes from
        if self._remote_ssrc != packet.ssrc:
            if self._remote_ssrc is not None:
                self.jitter.reset()
                self.stats["ssrc_changes"] += 1
            self._remote_ssrc = packet.ssrc
        self._last_rx_s = now
        self.stats["packets_received"] += 1
        if is_event:
            self.jitter.mark(packet.sequence_number, now)
            for digit in self._dtmf_rx.handle(packet.timestamp, TelephoneEvent.parse(packet.payload), now):
                if self._started:
                    self.callbacks.on_dtmf(digit.digit, digit.duration_ms)
        else:
            self.jitter.push(packet.sequence_number, pt, packet.payload, now)
            if len(self.receive_times_s) < 100_000:
                self.receive_times_s.append(now)
        self._deliver(now)

    def _deliver(self, now: float) -> None:
        for item in self.jitter.pop(now):
            if item.lost or item.payload_type == COMFORT_NOISE_PT:
                pcm = self._silence
            else:
                pcm = self.codec.decode(item.payload)
            if self._from_codec is not None:
                pcm = self._from_codec.process(pcm)
            if self._started and pcm.size:
                self.callbacks.on_audio(pcm)

    def _check_receive(self, now: float) -> None:
        self._deliver(now)
        for digit in self._dtmf_rx.expire(now):
            self.callbacks.on_dtmf(digit.digit, digit.duration_ms)
        if self.on_hold or self.negotiated.direction is Direction.SENDONLY:
            self._last_rx_s = now  # the peer is not expected to send (RFC 3264 §8.4 hold)
        if not self._timed_out and now - self._last_rx_s >= self.rtp_timeout_s:
            self._timed_out = True
            event(log, "rtp.timeout", timeout_s=self.rtp_timeout_s)
            self.callbacks.on_timeout()
