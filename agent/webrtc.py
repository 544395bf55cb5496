"""aiortc adapters: a WebRTC peer connection presented as a `CallTransport` (48 kHz mono, 20 ms).

Inbound: the remote audio track's decoded frames (Opus: s16 stereo packed, 48 kHz, 960 samples)
are mixed down to mono (and resampled when a peer negotiated another codec rate) and queued as
`AudioReceived`. Data-channel messages ``{"type": "dtmf", "digit": "1"}`` become `DtmfReceived`,
``{"type": "hangup"}`` and the peer connection closing, failing or never connecting (ICE timeout)
or its media stopping (media timeout) become `HungUp`, which is the transport's last event.

Outbound: `PacedAudioTrack` is a `MediaStreamTrack` whose `recv()` returns one 20 ms frame per
absolute deadline ``start + k * 20 ms`` (never a chain of sleeps, so it does not drift), taken from a
sample FIFO filled by `send()`, or silence when the FIFO runs dry. When the FIFO grows past a high
watermark, leading silent packets are dropped, so that a pacing hiccup cannot turn into a permanent
extra delay; past the hard limit the oldest audio is dropped and counted.

The owner (the HTTP app, or the simulator's client leg) creates the peer connection, wires it with
`WebRtcTransport.attach()` before `setRemoteDescription`, and calls `await close()` at the end of the
call: that cancels the transport's only task (the inbound pump) and its timers and closes the peer
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack, RTCConfiguration, RTCDataChannel, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from agent.log import event
from agent.resample import StreamingResampler
from agent.transport import AudioReceived, DtmfReceived, HungUp, Int16Array, PacketsPlayed, TransportEvent
from agent.webrtc_receive import AudioJitterBuffer, TimestampGaps

log = logging.getLogger(__name__)

WEBRTC_RATE = 48000
PACKET_MS = 20
PACKET_SAMPLES = WEBRTC_RATE * PACKET_MS // 1000  # 960
UNDERRUN_GRACE_S = 0.012  # how long a due packet may wait for the producer before silence goes out
DTMF_DIGITS = frozenset("0123456789*#ABCD")
MAX_DATA_MESSAGE_BYTES = 4096


def peer_connection() -> RTCPeerConnection:
    """A peer connection with no STUN/TURN servers: aiortc's default would query a public STUN server."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


# ---------------------------------------------------------------------------------------------
# pure helpers


def frame_to_mono(frame: av.AudioFrame) -> Int16Array:
    """Mono int16 samples of a decoded audio frame (s16 or s16p, any channel count; mean of channels)."""
    channels = len(frame.layout.channels)
    if frame.format.name not in ("s16", "s16p"):
        raise ValueError(f"audio frame format {frame.format.name!r} is not s16/s16p")
    data = frame.to_ndarray()
    planes = data.reshape(channels, -1) if frame.format.is_planar else data.reshape(-1, channels).T
    if channels == 1:
        mono: Int16Array = np.ascontiguousarray(planes[0], dtype=np.int16)
        return mono
    mixed: Int16Array = (planes.astype(np.int32).sum(axis=0) // channels).astype(np.int16)
    return mixed


def mono_frame(samples: Int16Array, sample_rate: int, pts: int) -> av.AudioFrame:
    """An s16 mono av.AudioFrame holding `samples`, stamped pts (in 1/sample_rate units)."""
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, dtype=np.int16).reshape(1, -1),
                                       format="s16", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = pts
    frame.time_base = Fraction(1, sample_rate)
    return frame


def parse_data_message(message: str | bytes) -> DtmfReceived | HungUp:
    """A caller's data-channel message; raises ValueError for anything malformed or unknown."""
    if isinstance(message, bytes):
        raise ValueError("data channel message is binary, expected JSON text")
    if len(message) > MAX_DATA_MESSAGE_BYTES:
        raise ValueError(f"data channel message of {len(message)} bytes exceeds {MAX_DATA_MESSAGE_BYTES}")
    try:
        obj = json.loads(message)
    except json.JSONDecodeError as exc:
        raise ValueError(f"data channel message is not JSON: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise ValueError("data channel message is not a JSON object")
    kind = obj.get("type")
    if kind == "dtmf":
        digit = obj.get("digit")
        if not isinstance(digit, str) or digit not in DTMF_DIGITS:
            raise ValueError(f"DTMF digit {digit!r} is not one of 0-9 * # A-D")
        duration = obj.get("duration_ms", 0)
        if not isinstance(duration, int) or not 0 <= duration <= 10000:
            raise ValueError(f"DTMF duration_ms {duration!r} is not an integer in 0..10000")
        return DtmfReceived(digit, duration)
    if kind == "hangup":
        return HungUp("caller hung up")
    raise ValueError(f"data channel message type {kind!r} is unknown")


class DeadlinePacer:
    """Absolute send deadlines ``start_s + k * period_s``; pure (the caller passes `now`)."""

    def __init__(self, start_s: float, period_s: float, max_late_s: float = 1.0) -> None:
        self.start_s = start_s
        self.period_s = period_s
        self.max_late_s = max_late_s
        self.index = 0
        self.skipped = 0

    def deadline(self) -> float:
        return self.start_s + self.index * self.period_s

    def advance(self, now: float) -> None:
        """One packet went out at `now`; after a stall longer than max_late_s, skip ahead on the grid."""
        self.index += 1
        late = now - self.deadline()
        if late > self.max_late_s:
            skip = int(late / self.period_s)
            self.index += skip
            self.skipped += skip


class SampleFifo:
    """Samples waiting to be sent, cut into fixed packets; bounded (see the module docstring)."""

    def __init__(self, packet_samples: int, high_water_packets: int = 3, max_packets: int = 50) -> None:
        self.packet_samples = packet_samples
        self.high_water = high_water_packets * packet_samples
        self.limit = max_packets * packet_samples
        self._buf = np.zeros(0, np.int16)
        # one label per whole packet buffered (the session's playout sequence, or None), in order
        self._labels: deque[int | None] = deque()
        self.dropped_silence_packets = 0
        self.dropped_audio_samples = 0
        self.underruns = 0

    def __len__(self) -> int:
        return int(self._buf.size)

    def push(self, samples: Int16Array, label: int | None = None) -> None:
        """Append samples; `label` goes with the last whole packet they complete (see ``pop_labelled``)."""
        before = self._buf.size // self.packet_samples
        self._buf = np.concatenate([self._buf, np.asarray(samples, np.int16)])
        added = self._buf.size // self.packet_samples - before
        for i in range(added):
            self._labels.append(label if i == added - 1 else None)
        excess = self._buf.size - self.limit
        if excess > 0:
            self._buf = self._buf[excess:]
            self.dropped_audio_samples += excess
            self._drop_labels(-(-excess // self.packet_samples))

    def _drop_labels(self, n: int) -> None:
        for _ in range(min(n, len(self._labels))):
            self._labels.popleft()

    def ready(self) -> bool:
        """At least one whole packet is buffered."""
        return self._buf.size >= self.packet_samples

    def pop(self) -> Int16Array | None:
        """The next packet, or None when less than one packet is buffered (an underrun)."""
        return self.pop_labelled()[0]

    def pop_labelled(self) -> tuple[Int16Array | None, int | None]:
        """The next packet and its label (None, None on an underrun)."""
        n = self.packet_samples
        while self._buf.size > self.high_water and not np.any(self._buf[:n]):
            self._buf = self._buf[n:]
            self.dropped_silence_packets += 1
            self._drop_labels(1)
        if self._buf.size < n:
            self.underruns += 1
            return None, None
        out, self._buf = self._buf[:n].copy(), self._buf[n:]
        label = self._labels.popleft() if self._labels else None
        return out, label

    def clear(self) -> None:
        self._buf = np.zeros(0, np.int16)
        self._labels.clear()


@dataclass
class PacingStats:
    packets: int = 0
    first_sent_s: float | None = None
    last_sent_s: float = 0.0
    last_index: int = 0  # grid index k of the last packet (packets + skipped - 1)
    max_late_s: float = 0.0
    skipped: int = 0  # grid slots skipped after stalls longer than a second

    @property
    def drift_s(self) -> float:
        """Time of the last packet minus where the grid puts it (first + k * 20 ms)."""
        if self.first_sent_s is None:
            return 0.0
        return self.last_sent_s - (self.first_sent_s + self.last_index * PACKET_MS / 1000)


# ---------------------------------------------------------------------------------------------
# outbound track


class PacedAudioTrack(MediaStreamTrack):
    """Outgoing audio: one 20 ms mono frame per absolute deadline, silence when nothing is queued."""

    kind = "audio"

    def __init__(self, sample_rate: int = WEBRTC_RATE, clock: Callable[[], float] = time.monotonic,
                 grace_s: float = UNDERRUN_GRACE_S) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.packet_samples = sample_rate * PACKET_MS // 1000
        self.fifo = SampleFifo(self.packet_samples)
        self.stats = PacingStats()
        self.grace_s = grace_s
        self._clock = clock
        self._pacer: DeadlinePacer | None = None
        self._silence = np.zeros(self.packet_samples, np.int16)
        self._arrived = asyncio.Event()
        self.paused = False  # hold the queued audio (a suspected interruption): silence meanwhile
        self.on_sent: Callable[[int], None] | None = None  # a labelled packet was pulled for encoding
        # called at each frame deadline before the frame is taken: the session makes its packet for this
        # very deadline (one pacing grid per call; no grace wait for a producer on its own grid)
        self.source: Callable[[], None] | None = None

    def push(self, samples: Int16Array, label: int | None = None) -> None:
        self.fifo.push(samples, label)
        self._arrived.set()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._pacer is None:
            self._pacer = DeadlinePacer(self._clock(), PACKET_MS / 1000)
        pacer = self._pacer
        delay = pacer.deadline() - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)
        if self.source is not None:
            self.source()
        elif not self.paused and not self.fifo.ready() and self.grace_s > 0:
            # The producer ticks on its own 20 ms grid; when its packet is a few ms late, wait for it
            # rather than send silence, which would leave one packet of extra delay behind.
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.grace_s):
                    while not self.fifo.ready():
                        await self._arrived.wait()
                        self._arrived.clear()
        now = self._clock()
        samples, label = (None, None) if self.paused else self.fifo.pop_labelled()
        frame = mono_frame(self._silence if samples is None else samples, self.sample_rate,
                           pacer.index * self.packet_samples)
        stats = self.stats
        if stats.first_sent_s is None:
            stats.first_sent_s = now
        stats.packets += 1
        stats.last_sent_s = now
        stats.last_index = pacer.index
        stats.max_late_s = max(stats.max_late_s, now - pacer.deadline())
        pacer.advance(now)
        stats.skipped = pacer.skipped
        if label is not None and self.on_sent is not None:  # aiortc takes this frame to encode it now
            self.on_sent(label)
        return frame


# ---------------------------------------------------------------------------------------------
# the transport


class WebRtcTransport:
    """One WebRTC call as a CallTransport (48 kHz mono int16, 20 ms packets)."""

    def __init__(self, pc: RTCPeerConnection, *, ice_timeout_s: float = 15.0, media_timeout_s: float = 10.0,
                 on_bad_input: Callable[[str], None] | None = None) -> None:
        self.pc = pc
        self.ice_timeout_s = ice_timeout_s
        self.media_timeout_s = media_timeout_s
        self.outbound = PacedAudioTrack(WEBRTC_RATE)
        self.channel: RTCDataChannel | None = None
        self.hangup_reason: str | None = None
        self.frames_received = 0
        self.dropped_inbound = 0
        self._on_bad_input = on_bad_input or (lambda kind: None)
        self._events: asyncio.Queue[TransportEvent] = asyncio.Queue(maxsize=250)
        self._pump: asyncio.Task[None] | None = None
        self._ice_timer: asyncio.TimerHandle | None = None
        self._resampler: StreamingResampler | None = None
        self.gaps = TimestampGaps()  # lost packets (or a peer's DTX) become silence on the call's timeline
        self.receive_buffers: list[AudioJitterBuffer] = []  # set by the owner (low_latency_receive)
        self._settled = asyncio.Event()  # connected, or ended before connecting
        self._closed = False
        self._played: int | None = None  # the newest playout report not yet returned by receive

    @property
    def sample_rate(self) -> int:
        return WEBRTC_RATE

    def attach(self) -> None:
        """Wire the peer connection (before setRemoteDescription) and start the ICE timer."""
        pc = self.pc
        pc.addTrack(self.outbound)
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_state)
        loop = asyncio.get_running_loop()
        self._ice_timer = loop.call_later(self.ice_timeout_s, self._ice_timeout)

    async def wait_connected(self) -> bool:
        """Wait until media can flow (ICE and DTLS done): True, or False if the call ended first."""
        await self._settled.wait()
        return self.hangup_reason is None and self.pc.connectionState == "connected"

    # -- CallTransport ---------------------------------------------------------------------------------------
    async def receive(self) -> TransportEvent:
        if self._played is not None:  # playout reports are coalesced: they never take an audio slot
            played, self._played = self._played, None
            return PacketsPlayed(played)
        if self.hangup_reason is not None and self._events.empty():
            return HungUp(self.hangup_reason)
        return await self._events.get()

    def send(self, samples: Int16Array) -> None:
        if not self._closed:
            self.outbound.push(samples)

    def send_tracked(self, samples: Int16Array, sequence: int | None) -> None:
        """Queue a packet; `PacketsPlayed(sequence)` follows once aiortc pulled it for encoding."""
        if not self._closed:
            self.outbound.on_sent = self._sent
            self.outbound.push(samples, sequence)

    def set_source(self, source: Callable[[], None] | None) -> None:
        """Let aiortc's frame deadlines drive the session's outbound tick (one pacing grid)."""
        self.outbound.source = source

    def pause_output(self) -> None:
        """Hold the queued agent audio (silence meanwhile); nothing is dropped."""
        self.outbound.paused = True

    def resume_output(self) -> None:
        self.outbound.paused = False

    def flush(self) -> int:
        """Drop agent audio queued for sending (barge-in): the caller must not hear it. Returns packets."""
        packets = len(self.outbound.fifo) // self.outbound.packet_samples
        self.outbound.fifo.clear()
        self.outbound.paused = False
        return packets

    def _sent(self, sequence: int) -> None:
        self._played = sequence if self._played is None else max(self._played, sequence)
        if self._events.empty():  # wake a waiting receive (the report itself is coalesced)
            self._put(PacketsPlayed(sequence))

    def hang_up(self, reason: str) -> None:
        self.send_event({"type": "hangup", "reason": reason})
        self._finish(f"agent: {reason}")

    # -- events to the page -----------------------------------------------------------------------------------
    def send_event(self, obj: dict[str, Any]) -> bool:
        """Send one JSON event on the data channel if it is open; False otherwise."""
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return False
        try:
            channel.send(json.dumps(obj))
        except Exception:  # a channel closing under us: the event is simply not delivered
            return False
        return True

    # -- teardown ----------------------------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop the pump and timers and close the peer connection (idempotent)."""
        self._finish("closed")
        self._closed = True
        if self._ice_timer is not None:
            self._ice_timer.cancel()
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
        self.outbound.stop()
        if self.frames_received:
            event(log, "webrtc.receive_stats", **self.receive_stats())
        if self.channel is not None and self.channel.readyState == "open":
            await asyncio.sleep(0.05)  # let the last events (hangup, ended) leave before SCTP is torn down
        with contextlib.suppress(Exception):
            await self.pc.close()

    def receive_stats(self) -> dict[str, int]:
        """Inbound packets lost and late (from the receive buffers) and the silence that filled gaps."""
        totals: dict[str, int] = {"frames": self.frames_received}
        for buffer in self.receive_buffers:
            for key, value in buffer.stats.items():
                totals[key] = totals.get(key, 0) + value
        totals["concealed_ms"] = round(self.gaps.concealed_s * 1000)
        totals["gaps_skipped"] = self.gaps.skipped
        return totals

    # -- internals -----------------------------------------------------------------------------------------------
    def _finish(self, reason: str) -> None:
        if self.hangup_reason is not None:
            return
        self.hangup_reason = reason
        self._settled.set()
        if self._ice_timer is not None:
            self._ice_timer.cancel()
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(HungUp(reason))

    def _put(self, ev: TransportEvent) -> None:
        if self.hangup_reason is not None:
            return
        try:
            self._events.put_nowait(ev)
        except asyncio.QueueFull:
            self.dropped_inbound += 1

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio" or self._pump is not None or self._closed:
            return
        self._pump = asyncio.get_running_loop().create_task(self._pump_audio(track), name="webrtc-inbound")

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if self.channel is None:
            self.channel = channel
        channel.on("message", self._on_message)

    def _on_message(self, message: str | bytes) -> None:
        try:
            ev = parse_data_message(message)
        except ValueError as exc:
            self._on_bad_input("webrtc_datachannel")
            event(log, "webrtc.bad_message", logging.WARNING, error=str(exc))
            return
        if isinstance(ev, HungUp):
            self._finish(ev.reason)
        else:
            self._put(ev)

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            if self._ice_timer is not None:
                self._ice_timer.cancel()
            self._settled.set()
        elif state in ("failed", "closed"):
            self._finish(f"peer connection {state}")

    def _ice_timeout(self) -> None:
        if self.pc.connectionState != "connected":
            self._on_bad_input("webrtc_ice_timeout")
            event(log, "webrtc.ice_timeout", logging.WARNING, timeout_s=self.ice_timeout_s)
            self._finish("ice timeout")

    async def _pump_audio(self, track: MediaStreamTrack) -> None:
        while self.hangup_reason is None:
            try:
                frame = await asyncio.wait_for(track.recv(), self.media_timeout_s)
            except MediaStreamError:
                self._finish("remote track ended")
                return
            except TimeoutError:
                event(log, "webrtc.media_timeout", logging.WARNING, timeout_s=self.media_timeout_s)
                self._finish("media timeout")
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            try:
                samples = self._to_rate(frame)
            except ValueError as exc:
                self._on_bad_input("webrtc_audio")
                event(log, "webrtc.bad_frame", logging.WARNING, error=str(exc))
                continue
            self.frames_received += 1
            missing = self._missing_samples(frame)
            if missing:
                self._put(AudioReceived(np.zeros(missing, dtype=np.int16)))
            if samples.size:
                self._put(AudioReceived(samples))

    def _missing_samples(self, frame: av.AudioFrame) -> int:
        """Samples (at WEBRTC_RATE) of silence for the audio lost before `frame`, from its timestamp."""
        if frame.pts is None or frame.time_base is None or not frame.sample_rate:
            return 0
        gap = self.gaps.missing_before(frame.pts * Fraction(frame.time_base), Fraction(frame.samples, frame.sample_rate))
        return round(gap * WEBRTC_RATE)

    def _to_rate(self, frame: av.AudioFrame) -> Int16Array:
        mono = frame_to_mono(frame)
        if frame.sample_rate == WEBRTC_RATE:
            return mono
        if self._resampler is None or self._resampler.in_rate != frame.sample_rate:
            self._resampler = StreamingResampler(frame.sample_rate, WEBRTC_RATE)
        out: npt.NDArray[np.int16] = self._resampler.process(mono)
        return out
