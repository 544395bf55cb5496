"""``SipGateway``: answers (and places) SIP calls and hands each one to the CallManager.

Theory of operation
-------------------
One ``UserAgent`` (sans-IO) on one UDP socket (``udp.py``). For each ``IncomingCall`` from an
allowed source (the UA itself answers 403/401 otherwise):

1. admission — ``calls.reserve("sip")`` takes a slot of the one capacity authority
   (agent/capacity.py) at the INVITE; refused → 503 (counted in ``calls_refused{transport="sip"}``);
   the slot is committed when the 200 OK goes out and released on every end;
2. SDP — ``negotiate_answer`` with our codec preferences; nothing acceptable → 488;
3. an RTP socket on a free even port of the range, then 200 OK with our answer;
4. on the ACK (``CallEstablished``) the media starts and ``calls.run_call(SipCallTransport)``
   runs in its own task, so one call's failure cannot touch another.

Remote BYE, CANCEL and RTP timeout end the transport with ``HungUp``; the agent's ``hang_up``
(or a session that ends by itself) sends BYE. A re-INVITE is answered by the UA and updates the
media (hold, unhold, codec). ``dial`` places an outbound call the same way round.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from agent.calls import CallManager
from agent.capacity import CallRefused, Reservation
from agent.log import call_context, event
from agent.metrics import Metrics
from agent.session import CallSummary
from config.schema import SipSettings
from sip_bridge.allowlist import AddressAllowlist
from sip_bridge.errors import NoAcceptableCodec, SdpError, SipBridgeError
from sip_bridge.events import (
    CallCancelled,
    CallEnded,
    CallEstablished,
    DtmfInfo,
    EndReason,
    IncomingCall,
    RegistrationFailed,
    RegistrationSucceeded,
    ReInvite,
    UaEvent,
)
from sip_bridge.media import CallMedia, MediaCallbacks, RtpSocket, g722_available, open_rtp_socket
from sip_bridge.sdp import (
    MediaPreferences,
    NegotiatedMedia,
    SessionDescription,
    build_offer,
    negotiate_answer,
    negotiated_from_answer,
)
from sip_bridge.transport import SipCallTransport
from sip_bridge.ua import UserAgent
from sip_bridge.ua_core import CallState, Credentials, UaConfig
from sip_bridge.udp import SipUdpEndpoint

log = logging.getLogger(__name__)

TRANSPORT_LABEL = "sip"


@dataclass
class _GatewayCall:
    call_id: str  # SIP Call-ID
    agent_call_id: str
    outbound: bool
    sock: RtpSocket | None = None
    offer: bytes = b""  # outbound: our offer
    media: CallMedia | None = None
    transport: SipCallTransport | None = None
    task: asyncio.Task[None] | None = None
    reservation: Reservation | None = None  # its capacity slot, from the INVITE (or dial) to the end
    done: asyncio.Future[CallSummary | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def media_preferences(settings: SipSettings) -> MediaPreferences:
    """The configured codecs we can actually run (G.722 needs the ``g722`` package)."""
    names = tuple(c.upper() for c in settings.codecs)
    if not g722_available():
        names = tuple(c for c in names if c != "G722")
    names = tuple(c for c in names if c in ("G722", "PCMU", "PCMA"))
    if not names:
        raise ValueError(f"sip.codecs {list(settings.codecs)} names no codec this build supports (G722, PCMU, PCMA)")
    return MediaPreferences(codecs=names)


class SipGateway:
    def __init__(self, calls: CallManager, settings: SipSettings, metrics: Metrics | None = None, *,
                 answer_delay_s: float = 0.0, jitter_buffer_ms: int = 60) -> None:
        """``answer_delay_s``: ring (180) this long before answering; 0 answers at once.
        ``jitter_buffer_ms``: the calls' receive jitter buffer (``audio.jitter_buffer_ms``)."""
        self.jitter_buffer_ms = jitter_buffer_ms
        self.calls = calls
        self.answer_delay_s = answer_delay_s
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.preferences = media_preferences(settings)
        self.ua: UserAgent | None = None
        self.endpoint: SipUdpEndpoint | None = None
        self._calls: dict[str, _GatewayCall] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stats_seen: dict[str, int] = {}
        self.registered: bool | None = None
        self.rtp_bad_packets = 0

    # --- lifecycle ------------------------------------------------------------------------------
    @property
    def advertised_host(self) -> str:
        return self.settings.advertised_address or self.settings.listen_host

    @property
    def local_address(self) -> tuple[str, int]:
        if self.endpoint is None or self.endpoint.local_address is None:
            raise RuntimeError("SipGateway is not started")
        return self.endpoint.local_address

    async def start(self) -> None:
        s = self.settings
        creds = Credentials(s.auth_username, s.auth_password) if s.auth_username and s.auth_password else None
        config = UaConfig(
            local_host=self.advertised_host,
            local_port=s.listen_port,
            is_allowed=AddressAllowlist(s.trusted_sources),
            auth_users={s.auth_username: s.auth_password} if creds else {},
            credentials=creds,
            media_preferences=self.preferences,
            is_full=lambda: self.calls.free_slots <= 0,
        )
        self.ua = UserAgent(config)
        self.endpoint = SipUdpEndpoint(self.ua, self._on_event, self._count_bad, self._sync_stats)
        host, port = await self.endpoint.open(s.listen_host, s.listen_port)
        config.local_port = port
        event(log, "sip.listening", host=host, port=port, advertised=self.advertised_host,
              codecs=",".join(self.preferences.codecs))
        if s.registrar:
            self.ua.register(s.registrar, self.endpoint.now, expires_s=s.register_expires_s)
            self.endpoint.pump()

    def set_draining(self, draining: bool) -> None:
        """While draining, OPTIONS and new INVITEs are answered 503 (proxies fail over)."""
        if self.ua is not None:
            self.ua.set_draining(draining)
            if self.endpoint is not None:
                self.endpoint.pump()

    async def stop(self) -> None:
        """Close sockets; calls still up are hung up with BYE (the server drains them first)."""
        if self.ua is None or self.endpoint is None:
            return
        for call in list(self._calls.values()):
            if call.transport is not None:
                call.transport.hang_up("gateway stopping")
            self._hangup_ua(call.call_id)
        if self.ua.registrations:
            self.ua.unregister(self.endpoint.now)
            self.endpoint.pump()
        tasks = [c.task for c in self._calls.values() if c.task is not None] + list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=2.0)
            for task in pending:
                task.cancel()
        for call in list(self._calls.values()):
            await self._cleanup(call, None)
        self.endpoint.close()
        self.ua = None

    @property
    def stats(self) -> dict[str, Any]:
        ua_stats = dict(self.ua.stats) if self.ua is not None else {}
        return {
            "listening": f"{self.local_address[0]}:{self.local_address[1]}" if self.endpoint else None,
            "calls": len(self._calls),
            "running": sum(1 for c in self._calls.values() if c.task is not None),
            "draining": bool(self.ua and self.ua.draining),
            "registered": self.registered,
            "codecs": list(self.preferences.codecs),
            "rtp_bad_packets": self.rtp_bad_packets,
            "ua": ua_stats,
        }

    # --- outbound -------------------------------------------------------------------------------
    async def dial(self, uri: str) -> str:
        """Call ``uri``; returns the SIP Call-ID once the INVITE is sent (``wait_ended`` for the end).

        Raises ``CallRefused`` at capacity or while draining, ``ValueError`` for a bad URI.
        """
        if self.ua is None or self.endpoint is None:
            raise RuntimeError("SipGateway is not started")
        reservation = self.calls.reserve(TRANSPORT_LABEL)
        try:
            sock = await open_rtp_socket(self.settings.listen_host, self.settings.rtp_port_min,
                                         self.settings.rtp_port_max)
        except BaseException:
            reservation.release()
            raise
        try:
            offer = build_offer(local_address=self.advertised_host, local_port=sock.port,
                                session_id=secrets.randbits(31), preferences=self.preferences).to_bytes()
            call_id = self.ua.invite(uri, offer, self.endpoint.now)
        except (SipBridgeError, ValueError):
            sock.transport.close()
            reservation.release()
            raise
        self._calls[call_id] = _GatewayCall(call_id, self.calls.new_call_id("sip"), True, sock, offer,
                                            reservation=reservation)
        self.endpoint.pump()
        event(log, "sip.dialing", uri=uri, call_id=call_id)
        return call_id

    async def wait_ended(self, call_id: str) -> CallSummary | None:
        """The summary of a call once it ends (None if it never reached the agent)."""
        call = self._calls.get(call_id)
        if call is None:
            return None
        return await asyncio.shield(call.done)

    # --- UA events ------------------------------------------------------------------------------
    def _on_event(self, ev: UaEvent) -> None:
        if isinstance(ev, IncomingCall):
            self._incoming(ev)
        elif isinstance(ev, CallEstablished):
            self._established(ev)
        elif isinstance(ev, CallEnded):
            self._ended(ev)
        elif isinstance(ev, ReInvite):
            call = self._calls.get(ev.call_id)
            if call is not None and call.media is not None and ev.media is not None:
                call.media.update(ev.media)
        elif isinstance(ev, DtmfInfo):
            call = self._calls.get(ev.call_id)
            if call is not None and call.transport is not None:
                call.transport.dtmf_received(ev.digit, ev.duration_ms)
        elif isinstance(ev, CallCancelled):
            event(log, "sip.cancelled", call_id=ev.call_id)
        elif isinstance(ev, RegistrationSucceeded):
            self.registered = ev.expires_s > 0
            event(log, "sip.registered", aor=ev.aor, expires_s=ev.expires_s)
        elif isinstance(ev, RegistrationFailed):
            self.registered = False
            event(log, "sip.registration_failed", logging.WARNING, aor=ev.aor, status=ev.status_code, reason=ev.reason)

    def _incoming(self, ev: IncomingCall) -> None:
        assert self.ua is not None and self.endpoint is not None
        now = self.endpoint.now
        try:
            reservation = self.calls.reserve(TRANSPORT_LABEL)  # the slot is held from the INVITE on
        except CallRefused as exc:
            self.metrics.calls_refused.labels(TRANSPORT_LABEL, exc.reason).inc()
            self.ua.reject(ev.call_id, 503, now, reason=f"Service Unavailable - {exc.reason}")
            event(log, "sip.refused", call_id=ev.call_id, reason=exc.reason)
            return
        try:
            if ev.offer:
                self._negotiate(ev.offer, 0)  # fail fast (488) before binding a port
        except (NoAcceptableCodec, SdpError) as exc:
            reservation.release()
            self.metrics.bad_input.labels("sdp").inc()
            self.ua.reject(ev.call_id, 488, now, reason="Not Acceptable Here")
            event(log, "sip.not_acceptable", call_id=ev.call_id, error=str(exc)[:120])
            return
        call = _GatewayCall(ev.call_id, self.calls.new_call_id("sip"), False, reservation=reservation)
        self._calls[ev.call_id] = call
        event(log, "sip.incoming", call_id=ev.call_id, source=f"{ev.remote_addr[0]}:{ev.remote_addr[1]}",
              from_uri=ev.from_uri)
        self._spawn(self._answer(call, ev.offer))

    def _negotiate(self, offer: bytes, port: int) -> tuple[SessionDescription, NegotiatedMedia]:
        return negotiate_answer(SessionDescription.parse(offer), local_address=self.advertised_host,
                                local_port=port, session_id=secrets.randbits(31), preferences=self.preferences)

    async def _answer(self, call: _GatewayCall, offer: bytes) -> None:
        if self.ua is None or self.endpoint is None:  # the gateway stopped first
            return
        if self.answer_delay_s > 0:
            self.ua.ring(call.call_id, self.endpoint.now)
            self.endpoint.pump()
            await asyncio.sleep(self.answer_delay_s)
            if self.ua is None or call.call_id not in self.ua.calls:  # cancelled while ringing
                await self._cleanup(call, None)
                return
        try:
            call.sock = await open_rtp_socket(self.settings.listen_host, self.settings.rtp_port_min,
                                              self.settings.rtp_port_max)
        except OSError as exc:
            event(log, "sip.no_rtp_port", logging.ERROR, error=str(exc))
            self._reject_if_incoming(call, 503)
            await self._cleanup(call, None)
            return
        if self.ua is None:  # the gateway stopped while the RTP socket was being opened
            await self._cleanup(call, None)
            return
        ua_call = self.ua.calls.get(call.call_id)
        if ua_call is None or ua_call.state is not CallState.INCOMING:  # cancelled meanwhile
            await self._cleanup(call, None)
            return
        if offer:
            answer, negotiated = self._negotiate(offer, call.sock.port)
            self._make_media(call, negotiated)
            sdp = answer.to_bytes()
        else:  # delayed offer (RFC 3261 §13.2.1): our offer goes in the 200, the answer in the ACK
            call.offer = sdp = build_offer(local_address=self.advertised_host, local_port=call.sock.port,
                                           session_id=secrets.randbits(31), preferences=self.preferences).to_bytes()
        if call.reservation is not None:
            call.reservation.commit()  # the 200 OK goes out now: from here on the call is never refused
        self.ua.answer(call.call_id, sdp, self.endpoint.now)
        self.endpoint.pump()

    def _reject_if_incoming(self, call: _GatewayCall, status: int) -> None:
        assert self.ua is not None and self.endpoint is not None
        ua_call = self.ua.calls.get(call.call_id)
        if ua_call is not None and ua_call.state is CallState.INCOMING:
            self.ua.reject(call.call_id, status, self.endpoint.now)
            self.endpoint.pump()

    def _make_media(self, call: _GatewayCall, negotiated: NegotiatedMedia) -> None:
        assert call.sock is not None
        transport: list[SipCallTransport] = []

        def on_audio(samples: Any) -> None:
            transport[0].audio_received(samples)

        def on_dtmf(digit: str, duration_ms: int) -> None:
            transport[0].dtmf_received(digit, duration_ms)

        callbacks = MediaCallbacks(on_audio, on_dtmf, lambda: self._rtp_timeout(call.call_id), self._count_rtp_bad)
        call.media = CallMedia(call.sock, negotiated, callbacks, rtp_timeout_s=self.settings.rtp_timeout_s,
                               jitter_buffer_ms=self.jitter_buffer_ms)
        call.transport = SipCallTransport(call.agent_call_id, call.media, self._agent_hung_up)
        transport.append(call.transport)

    def _established(self, ev: CallEstablished) -> None:
        call = self._calls.get(ev.call_id)
        if call is None:
            return
        if call.media is None:  # outbound, or inbound with a delayed offer: the peer answered our offer
            try:
                negotiated = negotiated_from_answer(SessionDescription.parse(call.offer),
                                                    SessionDescription.parse(ev.remote_sdp))
            except (NoAcceptableCodec, SdpError) as exc:
                self.metrics.bad_input.labels("sdp").inc()
                event(log, "sip.bad_answer", logging.WARNING, call_id=ev.call_id, error=str(exc)[:120])
                self._hangup_ua(ev.call_id)
                return
            self._make_media(call, negotiated)
        assert call.media is not None and call.transport is not None
        call.media.start()
        call.task = asyncio.get_running_loop().create_task(self._run(call), name=f"sip-call-{call.agent_call_id}")

    async def _run(self, call: _GatewayCall) -> None:
        assert call.transport is not None and call.media is not None
        summary: CallSummary | None = None
        gauge = self.metrics.calls_active.labels(TRANSPORT_LABEL)
        gauge.inc()
        try:
            with call_context(call.agent_call_id):
                event(log, "sip.call_running", sip_call_id=call.call_id, codec=call.media.negotiated.codec.name,
                      remote=str(call.media.remote_address))
                summary = await self.calls.run_call(call.transport, call_id=call.agent_call_id,
                                                    external_id=call.call_id, reservation=call.reservation)
            self.metrics.observe_call(summary, TRANSPORT_LABEL)
        except CallRefused as exc:
            self.metrics.calls_refused.labels(TRANSPORT_LABEL, exc.reason).inc()
        except Exception as exc:
            event(log, "sip.call_failed", logging.ERROR, call_id=call.call_id, error=repr(exc)[:200])
        finally:
            gauge.dec()
            if call.transport.dropped_audio:
                self.metrics.dropped_frames.labels("sip_inbound").inc(call.transport.dropped_audio)
            if not call.transport.ended:
                call.transport.remote_ended("session ended")
            self._hangup_ua(call.call_id)
            await self._cleanup(call, summary)

    def _ended(self, ev: CallEnded) -> None:
        call = self._calls.get(ev.call_id)
        if call is None:
            return
        reason = {EndReason.REMOTE_BYE: "bye", EndReason.CANCELLED: "cancel"}.get(ev.reason, ev.reason.value)
        event(log, "sip.call_ended", call_id=ev.call_id, reason=ev.reason.value, status=ev.status_code)
        if call.transport is not None:
            call.transport.remote_ended(reason)
        if call.task is None:
            self._spawn(self._cleanup(call, None))

    def _agent_hung_up(self, agent_call_id: str, reason: str) -> None:
        call = next((c for c in self._calls.values() if c.agent_call_id == agent_call_id), None)
        if call is not None:
            event(log, "sip.agent_hangup", call_id=call.call_id, reason=reason)
            self._hangup_ua(call.call_id)

    def _rtp_timeout(self, call_id: str) -> None:
        call = self._calls.get(call_id)
        if call is not None and call.transport is not None:
            call.transport.remote_ended("rtp timeout")
        self._hangup_ua(call_id)

    def _hangup_ua(self, call_id: str) -> None:
        if self.ua is None or self.endpoint is None or call_id not in self.ua.calls:
            return
        try:
            self.ua.hangup(call_id, self.endpoint.now)
        except SipBridgeError as exc:
            event(log, "sip.hangup_failed", logging.WARNING, call_id=call_id, error=str(exc))
        self.endpoint.pump()

    async def _cleanup(self, call: _GatewayCall, summary: CallSummary | None) -> None:
        if call.reservation is not None:
            call.reservation.release()
        if self._calls.get(call.call_id) is call:
            del self._calls[call.call_id]
        if call.media is not None:
            await call.media.close()
        elif call.sock is not None:
            call.sock.transport.close()
        if not call.done.done():
            call.done.set_result(summary)

    # --- helpers --------------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _count_bad(self, kind: str) -> None:
        self.metrics.bad_input.labels(kind).inc()

    def _count_rtp_bad(self, kind: str) -> None:
        self.rtp_bad_packets += 1
        self.metrics.bad_input.labels(kind).inc()

    def _sync_stats(self) -> None:
        """Mirror the UA's counters of bad SIP input into the metrics (bad_input{kind="sip"})."""
        if self.ua is None:
            return
        for key, kind in (("parse_errors", "sip"), ("responses_dropped", "sip_response")):
            value = self.ua.stats.get(key, 0)
            seen = self._stats_seen.get(key, 0)
            if value > seen:
                self.metrics.bad_input.labels(kind).inc(value - seen)
                self._stats_seen[key] = value
        refused = self.ua.stats.get("invites_refused", 0)
        if refused > self._stats_seen.get("invites_refused", 0):
            self.metrics.calls_refused.labels(TRANSPORT_LABEL, "draining").inc(
                refused - self._stats_seen.get("invites_refused", 0))
            self._stats_seen["invites_refused"] = refused
