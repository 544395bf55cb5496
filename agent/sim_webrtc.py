"""The simulator's WebRTC caller: an aiortc client peer that calls a server's POST /offer.

`WebRtcCallerLeg` implements `CallerLeg` (16 kHz, 20 ms packets at the leg) and resamples to and
from WebRTC's 48 kHz inside. Its outgoing track is paced by absolute deadlines like the server's;
DTMF goes as a data-channel message ``{"type": "dtmf", "digit": "1", "duration_ms": 100}`` and
hanging up sends ``{"type": "hangup"}`` before closing the peer connection.

`start_test_server(runtime)` serves the HTTP app on 127.0.0.1 (a free port, auth off) for
``lfm-call simulate --transport webrtc`` and returns its base URL and an async stop function.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCDataChannel, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from agent.caller_leg import LEG_PACKET_SAMPLES, LEG_RATE, Int16Array
from agent.resample import StreamingResampler
from agent.webrtc import WEBRTC_RATE, PacedAudioTrack, frame_to_mono, peer_connection
from agent.webrtc_receive import low_latency_receive

if TYPE_CHECKING:
    from agent.metrics import Metrics
    from agent.runtime import Runtime

CONNECT_TIMEOUT_S = 15.0


class WebRtcCallError(Exception):
    """The WebRTC call could not be placed (HTTP refusal, negotiation or ICE failure)."""


class WebRtcCallerLeg:
    """A CallerLeg over WebRTC to `base_url` (e.g. http://127.0.0.1:8080)."""

    def __init__(self, base_url: str, token: str | None = None, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.connect_timeout_s = connect_timeout_s
        self.call_id: str | None = None
        self.pc = peer_connection()
        self.track = PacedAudioTrack(WEBRTC_RATE)
        self.channel: RTCDataChannel | None = None
        self.events: list[dict[str, object]] = []  # JSON events the server sent on the data channel
        self._up = StreamingResampler(LEG_RATE, WEBRTC_RATE)
        self._down = StreamingResampler(WEBRTC_RATE, LEG_RATE)
        self._heard = np.zeros(0, np.int16)
        self._received: list[Int16Array] = []
        self._pump: asyncio.Task[None] | None = None
        self._remote_hung_up = False
        self._closed = False

    @property
    def description(self) -> str:
        return f"webrtc {self.base_url}"

    @property
    def remote_hung_up(self) -> bool:
        return self._remote_hung_up

    async def connect(self) -> None:
        try:
            await asyncio.wait_for(self._connect(), self.connect_timeout_s)
        except TimeoutError:
            await self.hang_up()
            raise WebRtcCallError(f"call to {self.base_url} not connected within {self.connect_timeout_s} s") from None
        except BaseException:
            await self.hang_up()
            raise

    async def _connect(self) -> None:
        pc = self.pc
        channel = pc.createDataChannel("events")
        self.channel = channel
        opened = asyncio.Event()
        connected = asyncio.Event()
        channel.on("open", opened.set)
        channel.on("message", self._on_message)
        pc.addTrack(self.track)
        low_latency_receive(pc)  # a packet is heard when it arrives, as a browser does on a clean line
        pc.on("track", self._on_track)

        @pc.on("connectionstatechange")
        def _state() -> None:
            if pc.connectionState == "connected":
                connected.set()
            elif pc.connectionState in ("failed", "closed"):
                self._remote_hung_up = True
                connected.set()

        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)  # gathers every candidate (non-trickle)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        body = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
        async with aiohttp.ClientSession() as http, http.post(f"{self.base_url}/offer", json=body,
                                                              headers=headers) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise WebRtcCallError(f"POST /offer answered {resp.status}: {text[:200]}")
            answer = json.loads(text)
        self.call_id = answer.get("call_id")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        await connected.wait()
        if pc.connectionState != "connected":
            raise WebRtcCallError(f"peer connection {pc.connectionState}")
        await opened.wait()

    def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            return
        with contextlib.suppress(ValueError):
            obj = json.loads(message)
            if isinstance(obj, dict):
                self.events.append(obj)
                if obj.get("type") in ("hangup", "ended"):
                    self._remote_hung_up = True

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._pump is None and not self._closed:
            self._pump = asyncio.get_running_loop().create_task(self._pump_audio(track), name="webrtc-leg-inbound")

    async def _pump_audio(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                self._remote_hung_up = True
                return
            if not isinstance(frame, av.AudioFrame) or frame.sample_rate != WEBRTC_RATE:
                continue
            pcm = self._down.process(frame_to_mono(frame))
            buf = np.concatenate([self._heard, pcm])
            whole = buf.size // LEG_PACKET_SAMPLES
            for i in range(whole):
                self._received.append(buf[i * LEG_PACKET_SAMPLES:(i + 1) * LEG_PACKET_SAMPLES])
            self._heard = buf[whole * LEG_PACKET_SAMPLES:]

    def send_audio(self, samples: Int16Array) -> None:
        if not self._closed:
            self.track.push(self._up.process(np.asarray(samples, np.int16)))

    def receive_audio(self) -> list[Int16Array]:
        out, self._received = self._received, []
        return out

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        self._send({"type": "dtmf", "digit": digit, "duration_ms": int(duration_ms)})

    def _send(self, obj: dict[str, object]) -> None:
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            channel.send(json.dumps(obj))

    async def hang_up(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._send({"type": "hangup"})
        await asyncio.sleep(0.05)  # let the hangup message leave before the transport closes
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
        self.track.stop()
        await self.pc.close()


async def start_test_server(runtime: Runtime, metrics: Metrics | None = None, **timeouts: float,
                            ) -> tuple[str, Callable[[], Awaitable[bool]]]:
    """Serve the HTTP app for `runtime` on 127.0.0.1 (free port, auth off); returns (base_url, stop)."""
    from agent.server import AgentServer

    http = dataclasses.replace(runtime.settings.http, host="127.0.0.1", port=0, auth="off", enabled=True)
    sip = dataclasses.replace(runtime.settings.sip, enabled=False)
    settings = dataclasses.replace(runtime.settings, http=http, sip=sip)
    server = AgentServer(settings, runtime, metrics, **timeouts)
    await server.start()

    async def stop() -> bool:
        return await server.stop(drain_timeout_s=5.0)

    return server.http_url, stop
