"""The aiohttp application: the call page, WebRTC signaling, health, metrics, outbound SIP calls.

Routes
------
``GET /``            the call page (agent/static/index.html; app.js and style.css under /static/)
``POST /offer``      JSON ``{"sdp", "type": "offer"}`` -> the answer ``{"sdp", "type": "answer",
                     "call_id"}``. Non-trickle: the answer carries every server candidate. The call runs
                     in its own task: ``runtime.calls.run_call(WebRtcTransport(...))``.
``GET /healthz``     JSON readiness, draining, active calls, capacity, model, engine (state, pid, restarts,
                     step p90 against its budget); 200, or 503 when not accepting calls
``GET /metrics``     Prometheus text
``POST /calls``      JSON ``{"uri": "sip:..."}`` -> 202 ``{"call_id"}``: outbound SIP call via the gateway

Every refusal is a JSON ``{"error": ...}`` with a precise status: 400 bad JSON/SDP, 401 missing or
wrong bearer token, 404 SIP off, 413 body over ``http.max_body_bytes``, 415 not application/json,
503 full or draining (with ``reason``). Bad input is counted in ``bad_input_total{kind}``. CORS
headers are sent only for origins listed in ``http.cors_origins``. The token is never logged.

Live events for the page go over the WebRTC data channel the page opens (label "events"): the
CallSession publishes no events, so a poller diffs the session's `CallSummary` every 200 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from aiortc import RTCSessionDescription

from agent.capacity import CallRefused, Reservation
from agent.log import event, set_call_id
from agent.metrics import Metrics
from agent.session import CallSummary
from agent.webrtc import WebRtcTransport, peer_connection
from agent.webrtc_receive import low_latency_receive
from config.loader import ConfigError
from config.schema import HttpSettings

if TYPE_CHECKING:
    from agent.runtime import Runtime

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
EVENT_POLL_S = 0.2
NEGOTIATION_TIMEOUT_S = 10.0
MAX_SIP_URI_CHARS = 256
PAGE_CSP = ("default-src 'self'; connect-src 'self'; media-src 'self' blob: mediastream:; "
            "img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; "
            "frame-ancestors 'none'")


class Dialer(Protocol):
    """What the HTTP app needs from the SIP gateway."""

    async def dial(self, uri: str) -> str: ...


class HttpProblem(Exception):
    """A request answered with an error status and a JSON body (counted when `kind` is given)."""

    def __init__(self, status: int, message: str, kind: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.extra = extra


def auth_required(http: HttpSettings) -> bool:
    """Whether POST /offer and /calls need the bearer token; auth on with no token is a config error."""
    if http.auth == "on":
        required = True
    elif http.auth == "off":
        required = False
    else:
        required = not is_loopback_host(http.host)
    if required and not http.auth_token:
        raise ConfigError(f"http.auth is on (http.auth={http.auth!r}, http.host={http.host!r}) "
                          "but http.auth_token is empty: set a token or http.auth=off")
    return required


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_offer_sdp(sdp: str) -> None:
    """Cheap checks before aiortc sees an offer; raises ValueError with what is wrong."""
    lines = [line.strip() for line in sdp.splitlines() if line.strip()]
    if not lines or lines[0] != "v=0":
        raise ValueError("offer SDP does not start with v=0")
    audio = [line for line in lines if line.startswith("m=audio ")]
    if not audio:
        raise ValueError("offer has no audio (no m=audio line)")
    if all(line.split()[1:2] == ["0"] for line in audio):
        raise ValueError("offer's audio is rejected (port 0)")


def check_answer_audio(sdp: str) -> None:
    """Our answer must carry a live audio stream (a codec in common, a direction other than inactive)."""
    sections = sdp.split("\nm=")[1:]
    audio = [sec for sec in sections if sec.startswith("audio ")]
    if not audio:
        raise ValueError("answer has no audio section")
    sec = audio[0]
    if sec.split()[1] == "0" or "a=rtpmap:" not in sec:
        raise ValueError("no audio codec in common with the offer")
    if "a=inactive" in sec or "a=sendonly" in sec:
        raise ValueError("offer's audio does not send to us (recvonly/inactive)")


class SummaryDiffer:
    """Turns successive snapshots of a CallSummary into page events (pure; call `diff` repeatedly)."""

    def __init__(self) -> None:
        self._vad = 0
        self._eot = 0
        self._barge = 0
        self._dtmf = ""
        self._turns: dict[int, tuple[int | None, str, bool]] = {}

    def diff(self, summary: CallSummary) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for start_ms, end_ms in summary.vad_segments[self._vad:]:
            out.append({"type": "caller_speech", "start_ms": start_ms, "end_ms": end_ms})
        self._vad = len(summary.vad_segments)
        for at_ms in summary.end_of_turns[self._eot:]:
            out.append({"type": "end_of_turn", "at_ms": at_ms})
        self._eot = len(summary.end_of_turns)
        for turn in summary.turns:
            # live: the text generated so far (once its audio has started: an answer held until the end
            # of turn is not shown); once the reply is over, what the caller heard
            live = turn.text_generated if turn.first_audio_sent_ms is not None else ""
            now = (turn.first_audio_sent_ms, turn.text_heard or live, turn.interrupted)
            before = self._turns.get(turn.epoch)
            if before is None:
                out.append({"type": "agent_turn", "epoch": turn.epoch, "end_of_turn_ms": turn.end_of_turn_ms})
                before = (None, "", False)
            if now[0] is not None and before[0] is None:
                out.append({"type": "latency", "epoch": turn.epoch, "first_audio_ms": now[0],
                            "latency_ms": turn.response_latency_ms})
            if now[1] != before[1] or now[2] != before[2]:
                out.append({"type": "agent_text", "epoch": turn.epoch, "text": now[1],
                            "interrupted": turn.interrupted})
            self._turns[turn.epoch] = now
        current = {turn.epoch for turn in summary.turns}
        for epoch in [e for e in self._turns if e not in current]:  # an early answer withdrawn
            out.append({"type": "agent_withdrawn", "epoch": epoch})
            del self._turns[epoch]
        for b in summary.barge_ins[self._barge:]:
            out.append({"type": "barge_in", "speech_started_ms": b.speech_started_ms, "at_ms": b.detected_ms,
                        "stopped_ms": b.stopped_ms, "played_frames": b.played_frames})
        self._barge = len(summary.barge_ins)
        if summary.dtmf != self._dtmf:
            out.append({"type": "dtmf", "digits": summary.dtmf})
            self._dtmf = summary.dtmf
        return out


class HttpApp:
    """Owns the aiohttp Application and every WebRTC call task it started."""

    def __init__(self, runtime: Runtime, metrics: Metrics, gateway: Dialer | None = None, *,
                 http: HttpSettings | None = None, ice_timeout_s: float = 15.0,
                 media_timeout_s: float = 10.0) -> None:
        self.runtime = runtime
        self.calls = runtime.calls
        self.metrics = metrics
        self.gateway = gateway
        self.http = http or runtime.settings.http
        self.auth = auth_required(self.http)
        self.ice_timeout_s = ice_timeout_s
        self.media_timeout_s = media_timeout_s
        self.ready = False
        self.transports: dict[str, WebRtcTransport] = {}
        self.call_tasks: set[asyncio.Task[None]] = set()
        self._differs: dict[str, SummaryDiffer] = {}
        self.app = web.Application(client_max_size=self.http.max_body_bytes,
                                   middlewares=[self._problems, self._cors])
        r = self.app.router
        r.add_get("/", self._page)
        r.add_static("/static/", STATIC_DIR, show_index=False, append_version=False)
        r.add_post("/offer", self._offer)
        r.add_post("/calls", self._dial)
        r.add_get("/healthz", self._healthz)
        r.add_get("/metrics", self._metrics)
        r.add_route("OPTIONS", "/offer", self._preflight)
        r.add_route("OPTIONS", "/calls", self._preflight)

    # -- lifecycle -------------------------------------------------------------------------------------------
    @property
    def draining(self) -> bool:
        return self.calls.draining

    async def wait_calls(self, timeout_s: float) -> bool:
        """Wait for every call task to end (at most timeout_s); True if none is left."""
        tasks = set(self.call_tasks)
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        return not pending

    async def close(self) -> None:
        """Hang up every WebRTC call now and wait for its task."""
        for transport in list(self.transports.values()):
            transport.hang_up("server stopping")
        if not await self.wait_calls(5.0):
            for task in list(self.call_tasks):
                task.cancel()
            await asyncio.gather(*self.call_tasks, return_exceptions=True)
        for transport in list(self.transports.values()):  # a task cancelled before it ever ran
            await transport.close()
        self.transports.clear()

    # -- middlewares ------------------------------------------------------------------------------------------
    @web.middleware
    async def _problems(self, request: web.Request,
                        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            response = await handler(request)
        except HttpProblem as p:
            if p.kind:
                self.metrics.bad_input.labels(p.kind).inc()
            event(log, "http.refused", logging.INFO if p.status == 503 else logging.WARNING,
                  path=request.path, status=p.status, error=p.message)
            response = web.json_response({"error": p.message, **p.extra}, status=p.status)
        if request.path in ("/offer", "/calls", "/healthz", "/metrics"):
            response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @web.middleware
    async def _cors(self, request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        response = await handler(request)
        origin = request.headers.get("Origin")
        if origin and origin in self.http.cors_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    async def _preflight(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin")
        if not origin or origin not in self.http.cors_origins:
            raise HttpProblem(403, "origin not allowed", "http_cors")
        return web.Response(status=204, headers={
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": "600",
        })

    # -- request helpers ---------------------------------------------------------------------------------------
    def _check_auth(self, request: web.Request) -> None:
        if not self.auth:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 self.http.auth_token.encode()):
            raise HttpProblem(401, "missing or wrong bearer token", "http_auth")

    async def _read_json(self, request: web.Request) -> dict[str, Any]:
        if request.content_type != "application/json":
            raise HttpProblem(415, f"content type must be application/json, got {request.content_type!r}",
                              "http_content_type")
        length = request.content_length
        if length is not None and length > self.http.max_body_bytes:
            raise HttpProblem(413, f"body of {length} bytes exceeds {self.http.max_body_bytes}", "http_too_large")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise HttpProblem(413, f"body exceeds {self.http.max_body_bytes} bytes", "http_too_large") from None
        except ConnectionResetError:  # the client went away mid-body: counted, nothing was reserved yet
            raise HttpProblem(400, "the client disconnected before the body was complete", "http_aborted") from None
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HttpProblem(400, f"body is not valid JSON: {exc}", "http_json") from None
        if not isinstance(obj, dict):
            raise HttpProblem(400, "body must be a JSON object", "http_json")
        return obj

    def _admit(self, transport: str) -> Reservation:
        """A capacity slot from the offer on (agent/capacity.py), or 503."""
        try:
            return self.calls.reserve(transport)
        except CallRefused as exc:
            self.metrics.calls_refused.labels(transport, exc.reason).inc()
            message = "server is draining" if exc.reason == "draining" else "server is at capacity"
            raise HttpProblem(503, message, reason=exc.reason) from None

    # -- routes -------------------------------------------------------------------------------------------------
    async def _page(self, request: web.Request) -> web.StreamResponse:
        page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
        page = page.replace("{{model}}", html.escape(self.runtime.choice.description))  # the model in use
        return web.Response(text=page, content_type="text/html", headers={"Content-Security-Policy": PAGE_CSP})

    async def _offer(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        body = await self._read_json(request)
        reservation = self._admit("webrtc")  # a draining or full node says so before looking at the offer
        try:
            return await self._answer_offer(request, body, reservation)
        except BaseException:
            reservation.release()  # every path that did not hand the call on (bad SDP, timeout, disconnect)
            raise

    async def _answer_offer(self, request: web.Request, body: dict[str, Any], reservation: Reservation) -> web.Response:
        sdp, kind = body.get("sdp"), body.get("type")
        if kind != "offer":
            raise HttpProblem(400, f"type must be 'offer', got {kind!r}", "webrtc_sdp")
        if not isinstance(sdp, str):
            raise HttpProblem(400, "sdp must be a string", "webrtc_sdp")
        try:
            check_offer_sdp(sdp)
        except ValueError as exc:
            raise HttpProblem(400, str(exc), "webrtc_sdp") from None
        pc = peer_connection()
        transport = WebRtcTransport(pc, ice_timeout_s=self.ice_timeout_s, media_timeout_s=self.media_timeout_s,
                                    on_bad_input=self._count_bad)
        started = False
        try:
            transport.attach()
            try:
                answer = await asyncio.wait_for(self._negotiate(transport, sdp), NEGOTIATION_TIMEOUT_S)
            except TimeoutError:
                raise HttpProblem(503, "negotiation timed out", "webrtc_negotiation") from None
            call_id = self.calls.new_call_id("web")
            self.transports[call_id] = transport
            task = asyncio.get_running_loop().create_task(self._call(call_id, transport, reservation),
                                                          name=f"call {call_id}")
            self.call_tasks.add(task)
            task.add_done_callback(self.call_tasks.discard)
            started = True
        finally:
            if not started:
                await transport.close()
        event(log, "webrtc.answered", call_id=call_id, remote=request.remote)
        return web.json_response({"sdp": answer.sdp, "type": answer.type, "call_id": call_id})

    async def _negotiate(self, transport: WebRtcTransport, sdp: str) -> RTCSessionDescription:
        pc = transport.pc
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as exc:  # aiortc raises ValueError, KeyError, ... for malformed SDP
            raise HttpProblem(400, f"offer rejected: {type(exc).__name__}: {exc}", "webrtc_sdp") from None
        transport.receive_buffers += low_latency_receive(pc)
        try:
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)  # aiortc gathers every candidate here (non-trickle)
        except Exception as exc:
            raise HttpProblem(400, f"cannot answer the offer: {type(exc).__name__}: {exc}", "webrtc_sdp") from None
        local = pc.localDescription
        try:
            check_answer_audio(local.sdp)
        except ValueError as exc:
            raise HttpProblem(400, str(exc), "webrtc_sdp") from None
        return local

    def _count_bad(self, kind: str) -> None:
        self.metrics.bad_input.labels(kind).inc()

    async def _call(self, call_id: str, transport: WebRtcTransport, reservation: Reservation) -> None:
        set_call_id(call_id)
        self.metrics.calls_active.labels("webrtc").set(len(self.transports))
        poller: asyncio.Task[None] | None = None
        try:
            # The session starts when media can flow, so that its first audio (a greeting) is heard;
            # the slot stays reserved meanwhile (released below if it never connects).
            connected = await transport.wait_connected()
            if not connected:
                event(log, "webrtc.not_connected", logging.WARNING, reason=transport.hangup_reason)
                return
            poller = asyncio.get_running_loop().create_task(self._poll_events(call_id, transport))
            summary = await self.calls.run_call(transport, call_id, reservation=reservation)
            self.metrics.observe_call(summary, "webrtc")
            poller.cancel()
            for ev in self._differs.pop(call_id, SummaryDiffer()).diff(summary):
                transport.send_event(ev)
            transport.send_event({"type": "ended", "reason": summary.ended_by, "error": summary.error})
        except CallRefused as exc:
            self.metrics.calls_refused.labels("webrtc", exc.reason).inc()
            transport.hang_up(exc.reason)
        except Exception as exc:
            event(log, "webrtc.call_failed", logging.ERROR, error=repr(exc))
        finally:
            reservation.release()
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            self._differs.pop(call_id, None)
            await transport.close()
            self.transports.pop(call_id, None)
            self.metrics.calls_active.labels("webrtc").set(len(self.transports))

    async def _poll_events(self, call_id: str, transport: WebRtcTransport) -> None:
        differ = self._differs.setdefault(call_id, SummaryDiffer())
        sent_hello = False
        while True:
            await asyncio.sleep(EVENT_POLL_S)
            if not sent_hello:
                sent_hello = transport.send_event({"type": "call", "call_id": call_id,
                                                   "model": self.runtime.choice.description})
            session = self.calls.active.get(call_id)
            if session is None or transport.channel is None or transport.channel.readyState != "open":
                continue
            for ev in differ.diff(session.summary):
                transport.send_event(ev)

    async def _healthz(self, request: web.Request) -> web.Response:
        draining = self.calls.draining
        engine = self.runtime.engine.health()
        ok = self.ready and not draining and self.runtime.engine.refusal() is None
        body = {
            "ready": self.ready,
            "draining": draining,
            "accepting": ok and self.calls.free_slots > 0,
            "active_calls": len(self.calls.active),
            "capacity": self.calls.max_calls,
            "free_slots": self.calls.free_slots,
            "reserved": self.calls.capacity.reserved,
            "by_transport": self.calls.capacity.by_transport(),
            "model": self.runtime.choice.description,
            "sip": self.gateway is not None,
            "auth": self.auth,
            "engine": engine,
        }
        # 503 when not taking calls (draining, full, engine restarting or overloaded): load balancers
        # send calls elsewhere
        return web.json_response(body, status=200 if body["accepting"] else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        engine = self.runtime.engine
        self.metrics.observe_engine_steps(engine.step_seconds, engine.steps)
        self.metrics.observe_dropped(engine.dropped)
        recordings = self.runtime.calls.recordings
        if recordings is not None:
            self.metrics.observe_recordings(recordings.counts)
        self.metrics.engine_restarts.set(engine.restarts)
        self.metrics.engine_up.set(1 if engine.state == "running" else 0)
        self.metrics.calls_active.labels("webrtc").set(len(self.transports))
        return web.Response(body=self.metrics.render(), content_type="text/plain",
                            headers={"X-Prometheus-Format": "0.0.4"})

    async def _dial(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        body = await self._read_json(request)
        if self.gateway is None:
            raise HttpProblem(404, "SIP is not enabled on this server (sip.enabled)")
        uri = body.get("uri")
        if not isinstance(uri, str) or not uri.startswith(("sip:", "sips:")) or len(uri) > MAX_SIP_URI_CHARS \
                or any(c.isspace() for c in uri):
            raise HttpProblem(400, "uri must be a sip: or sips: URI without spaces", "http_sip_uri")
        self._admit("sip")
        try:
            call_id = await self.gateway.dial(uri)
        except CallRefused as exc:
            raise HttpProblem(503, f"call refused: {exc.reason}", reason=exc.reason) from None
        except ValueError as exc:
            raise HttpProblem(400, str(exc), "http_sip_uri") from None
        except Exception as exc:
            event(log, "http.dial_failed", logging.WARNING, error=repr(exc))
            raise HttpProblem(502, f"dial failed: {type(exc).__name__}") from None
        return web.json_response({"call_id": call_id}, status=202)
