"""``SipCallerLeg``: the caller's end of a simulated call over real SIP/RTP (``--transport sip``).

A small user agent of its own (UAC) on an ephemeral loopback port places an INVITE to the
agent, then speaks RTP through ``CallMedia`` exactly as a phone would: 16 kHz caller packets are
resampled to the codec rate and paced out every 20 ms; the agent's packets are decoded and
resampled back to 16 kHz for the simulator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import numpy as np

from agent.caller_leg import LEG_RATE
from agent.resample import StreamingResampler
from agent.transport import Int16Array
from sip_bridge.errors import NoAcceptableCodec, SdpError
from sip_bridge.events import CallEnded, CallEstablished, UaEvent
from sip_bridge.media import CallMedia, MediaCallbacks, RtpSocket, open_rtp_socket
from sip_bridge.sdp import MediaPreferences, SessionDescription, build_offer, negotiated_from_answer
from sip_bridge.transaction import TransactionState
from sip_bridge.ua import UserAgent
from sip_bridge.ua_core import UaConfig
from sip_bridge.udp import SipUdpEndpoint

if TYPE_CHECKING:
    from agent.runtime import Runtime


class SipCallFailed(Exception):
    """The agent did not answer the simulated call (status code when it refused it)."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class SipCallerLeg:
    def __init__(self, target_uri: str, *, codec: str = "PCMU", local_host: str = "127.0.0.1",
                 rtp_port_min: int = 40000, rtp_port_max: int = 49999, answer_timeout_s: float = 15.0,
                 rtp_timeout_s: float = 30.0) -> None:
        self.target_uri = target_uri
        self.codec_name = codec.upper()
        self.local_host = local_host
        self.rtp_port_min, self.rtp_port_max = rtp_port_min, rtp_port_max
        self.answer_timeout_s = answer_timeout_s
        self.rtp_timeout_s = rtp_timeout_s
        self.ua = UserAgent(UaConfig(local_host=local_host, local_port=0, user="caller"))
        self.endpoint = SipUdpEndpoint(self.ua, self._on_event)
        self.media: CallMedia | None = None
        self.call_id: str | None = None
        self.end_status: int | None = None
        self._sock: RtpSocket | None = None
        self._offer = b""
        self._answered: asyncio.Future[CallEstablished] | None = None
        self._received: list[Int16Array] = []
        self._to_codec: StreamingResampler | None = None
        self._from_codec: StreamingResampler | None = None
        self._remote_hung_up = False
        self._ended = asyncio.Event()

    # --- CallerLeg ------------------------------------------------------------------------------
    async def connect(self) -> None:
        _, port = await self.endpoint.open(self.local_host, 0)
        self.ua.config.local_port = port
        self._sock = await open_rtp_socket(self.local_host, self.rtp_port_min, self.rtp_port_max)
        prefs = MediaPreferences(codecs=(self.codec_name,))
        self._offer = build_offer(local_address=self.local_host, local_port=self._sock.port,
                                  session_id=secrets.randbits(31), preferences=prefs).to_bytes()
        self._answered = asyncio.get_running_loop().create_future()
        self.call_id = self.ua.invite(self.target_uri, self._offer, self.endpoint.now)
        self.endpoint.pump()
        try:
            established = await asyncio.wait_for(asyncio.shield(self._answered), self.answer_timeout_s)
        except TimeoutError:
            await self.hang_up()
            raise SipCallFailed(f"{self.target_uri} did not answer within {self.answer_timeout_s} s") from None
        except SipCallFailed:
            await self._close()
            raise
        try:
            negotiated = negotiated_from_answer(SessionDescription.parse(self._offer),
                                                SessionDescription.parse(established.remote_sdp))
        except (SdpError, NoAcceptableCodec) as exc:
            await self.hang_up()
            raise SipCallFailed(f"unusable SDP answer: {exc}") from None
        callbacks = MediaCallbacks(self._on_audio, lambda digit, ms: None, self._on_rtp_timeout, lambda kind: None)
        self.media = CallMedia(self._sock, negotiated, callbacks, rtp_timeout_s=self.rtp_timeout_s)
        rate = self.media.transport_rate
        self._to_codec = StreamingResampler(LEG_RATE, rate)
        self._from_codec = StreamingResampler(rate, LEG_RATE)
        self.media.start()

    def send_audio(self, samples: Int16Array) -> None:
        if self.media is None or self._to_codec is None or self._ended.is_set():
            return
        pcm = np.asarray(self._to_codec.process(samples), dtype=np.int16)
        if pcm.size:
            self.media.send_pcm(pcm)

    def receive_audio(self) -> list[Int16Array]:
        out, self._received = self._received, []
        return out

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        if self.media is not None and not self._ended.is_set():
            self.media.send_dtmf(digit, duration_ms)

    async def hang_up(self) -> None:
        if self.call_id is not None and self.call_id in self.ua.calls:
            self.ua.hangup(self.call_id, self.endpoint.now)
            self.endpoint.pump()
            await self._wait_transactions(2.0)
        await self._close()

    @property
    def remote_hung_up(self) -> bool:
        return self._remote_hung_up

    @property
    def description(self) -> str:
        return f"sip {self.target_uri} ({self.codec_name})"

    async def wait_ended(self, timeout_s: float) -> bool:
        """True when the call ended (either side) within ``timeout_s``."""
        try:
            await asyncio.wait_for(self._ended.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    # --- internals ------------------------------------------------------------------------------
    def _on_audio(self, samples: Int16Array) -> None:
        if self._from_codec is not None:
            pcm = np.asarray(self._from_codec.process(samples), dtype=np.int16)
            if pcm.size:
                self._received.append(pcm)

    def _on_rtp_timeout(self) -> None:
        asyncio.get_running_loop().create_task(self.hang_up())

    def _on_event(self, ev: UaEvent) -> None:
        if isinstance(ev, CallEstablished) and ev.call_id == self.call_id:
            if self._answered is not None and not self._answered.done():
                self._answered.set_result(ev)
        elif isinstance(ev, CallEnded) and ev.call_id == self.call_id:
            self.end_status = ev.status_code
            if ev.reason.value == "remote_bye":
                self._remote_hung_up = True
            self._ended.set()
            if self._answered is not None and not self._answered.done():
                self._answered.set_exception(
                    SipCallFailed(f"call to {self.target_uri} ended: {ev.reason.value} {ev.status_code or ''}".strip(),
                                  ev.status_code))

    async def _wait_transactions(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline and any(
            t.state in (TransactionState.TRYING, TransactionState.PROCEEDING) and t.request.method == "BYE"
            for t in self.ua.transactions.clients.values()
        ):
            await asyncio.sleep(0.02)

    async def _close(self) -> None:
        self._ended.set()
        if self.media is not None:
            await self.media.close()
        elif self._sock is not None:
            self._sock.transport.close()
        self.endpoint.close()


async def start_test_gateway(runtime: Runtime, *, host: str = "127.0.0.1"
                             ) -> tuple[str, Callable[[], Awaitable[bool]]]:
    """A gateway on a free loopback port for ``simulate --transport sip``: (target URI, async stop).

    ``stop()`` hangs up what is left, closes the sockets and returns True (as the WebRTC helper does).
    """
    from agent.metrics import Metrics
    from sip_bridge.gateway import SipGateway

    sip = dataclasses.replace(runtime.settings.sip, enabled=True, listen_host=host, listen_port=0,
                              advertised_address="", trusted_sources=(f"{host}/32",), registrar="")
    gateway = SipGateway(runtime.calls, sip, Metrics(), jitter_buffer_ms=runtime.settings.audio.jitter_buffer_ms)
    await gateway.start()
    bound_host, port = gateway.local_address

    async def stop() -> bool:
        await gateway.stop()
        return True

    return f"sip:agent@{bound_host}:{port}", stop
