"""HTTP endpoints of the agent server against a fake runtime (no model): errors, auth, CORS, health, metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.calls import CallManager, CallRefused
from agent.http_app import HttpApp
from agent.metrics import Metrics
from agent.runtime import Runtime
from agent.session import SessionOptions
from agent.vad import EnergyVad
from config.schema import HttpSettings, Settings

TOKEN = "t0ken-for-tests"
OFFER = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
         "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n")


@dataclass
class FakeChoice:
    description: str = "fake model"


@dataclass
class FakeEngine:
    """A scripted engine host: its state and refusal are set by the test."""

    step_seconds: list[float] = field(default_factory=lambda: [0.004, 0.006])
    steps: int = 2
    state: str = "running"
    pid: int = 4242
    restarts: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {"engine_backlog": 3})
    on_lost: list[Any] = field(default_factory=list)

    def refusal(self, now: float | None = None) -> str | None:
        return None if self.state == "running" else "engine_restarting"

    def health(self) -> dict[str, Any]:
        return {"state": self.state, "pid": self.pid, "restarts": self.restarts}


@dataclass
class FakeRuntime:
    settings: Settings
    calls: CallManager
    choice: FakeChoice = field(default_factory=FakeChoice)
    engine: FakeEngine = field(default_factory=FakeEngine)


class FakeGateway:
    def __init__(self) -> None:
        self.dialed: list[str] = []

    async def dial(self, uri: str) -> str:
        if "busy" in uri:
            raise CallRefused("full")
        self.dialed.append(uri)
        return "sip-1-abc"


def make_app(http: HttpSettings, max_calls: int = 2, gateway: FakeGateway | None = None) -> HttpApp:
    engine = FakeEngine()
    calls = CallManager(cast(Any, engine), SessionOptions(), EnergyVad, max_calls)
    runtime = cast(Runtime, FakeRuntime(Settings(), calls, engine=engine))
    app = HttpApp(runtime, Metrics(), gateway, http=http)
    app.ready = True
    return app


@pytest.fixture
async def open_client() -> AsyncIterator[Any]:
    clients: list[TestClient[Any, Any]] = []

    async def open_(app: HttpApp) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = TestClient(TestServer(app.app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield open_
    for c in clients:
        await c.close()


def bad_input(app: HttpApp, kind: str) -> float:
    return app.metrics.bad_input.labels(kind)._value.get()  # type: ignore[no-any-return]


async def test_page_and_static_files(open_client: Any) -> None:
    client = await open_client(make_app(HttpSettings()))
    resp = await client.get("/")
    assert resp.status == 200
    html = await resp.text()
    assert '<audio id="remote"' in html and "/static/app.js" in html
    assert '<span id="model">fake model</span>' in html  # the call page names the model in use
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    js = await client.get("/static/app.js")
    assert js.status == 200 and "getUserMedia" in await js.text()
    assert (await client.get("/static/../server.py")).status in (403, 404)


async def test_offer_needs_json_content_type(open_client: Any) -> None:
    app = make_app(HttpSettings())
    client = await open_client(app)
    resp = await client.post("/offer", data="sdp", headers={"Content-Type": "text/plain"})
    assert resp.status == 415
    assert "application/json" in (await resp.json())["error"]
    assert bad_input(app, "http_content_type") == 1


async def test_huge_bodies_are_refused(open_client: Any) -> None:
    app = make_app(HttpSettings(max_body_bytes=4096))
    client = await open_client(app)
    big = b'{"sdp": "' + b"x" * 100_000 + b'", "type": "offer"}'
    resp = await client.post("/offer", data=big, headers={"Content-Type": "application/json"})
    assert resp.status == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies while reading
        for _ in range(10):
            yield b"x" * 1000

    resp = await client.post("/offer", data=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert bad_input(app, "http_too_large") == 2


@pytest.mark.parametrize(("body", "error"), [
    ("{not json", "not valid JSON"),
    ("[1]", "JSON object"),
    ('{"sdp": "v=0", "type": "answer"}', "type must be 'offer'"),
    ('{"sdp": 5, "type": "offer"}', "sdp must be a string"),
    ('{"sdp": "garbage", "type": "offer"}', "v=0"),
    ('{"sdp": "v=0\\r\\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\\r\\n", "type": "offer"}', "no audio"),
])
async def test_malformed_offers_get_400(open_client: Any, body: str, error: str) -> None:
    app = make_app(HttpSettings())
    client = await open_client(app)
    resp = await client.post("/offer", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert error in (await resp.json())["error"]
    assert bad_input(app, "http_json") + bad_input(app, "webrtc_sdp") == 1
    assert app.call_tasks == set() and app.transports == {}


async def test_bearer_token_is_required_when_auth_is_on(open_client: Any) -> None:
    app = make_app(HttpSettings(auth="on", auth_token=TOKEN))
    client = await open_client(app)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        resp = await client.post("/offer", json={"sdp": OFFER, "type": "offer"}, headers=headers)
        assert resp.status == 401
    assert bad_input(app, "http_auth") == 3
    # the right token gets past auth (and then fails on the SDP, not on auth)
    resp = await client.post("/offer", json={"sdp": "bad", "type": "offer"},
                             headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 400
    health = await (await client.get("/healthz")).json()
    assert health["auth"] is True


async def test_capacity_and_draining_answer_503(open_client: Any) -> None:
    app = make_app(HttpSettings(), max_calls=1)
    client = await open_client(app)
    busy = app.calls.reserve("sip")  # a SIP INVITE holds the one slot (the one capacity authority)
    resp = await client.post("/offer", json={"sdp": OFFER, "type": "offer"})
    assert resp.status == 503 and (await resp.json())["reason"] == "full"
    health = await client.get("/healthz")
    body = await health.json()
    assert health.status == 503 and body["accepting"] is False and body["free_slots"] == 0
    assert body["by_transport"] == {"sip": 1}
    busy.release()
    app.calls.draining = True
    resp = await client.post("/offer", json={"sdp": OFFER, "type": "offer"})
    assert resp.status == 503 and (await resp.json())["reason"] == "draining"
    health = await client.get("/healthz")
    assert health.status == 503 and (await health.json())["draining"] is True
    metrics = await (await client.get("/metrics")).text()
    assert 'lfmcall_calls_refused_total{reason="full",transport="webrtc"} 1.0' in metrics
    assert 'lfmcall_calls_refused_total{reason="draining",transport="webrtc"} 1.0' in metrics


async def test_healthz_reports_capacity_and_model(open_client: Any) -> None:
    app = make_app(HttpSettings(), max_calls=3)
    client = await open_client(app)
    resp = await client.get("/healthz")
    body = await resp.json()
    assert resp.status == 200
    assert body == {"ready": True, "draining": False, "accepting": True, "active_calls": 0, "capacity": 3,
                    "free_slots": 3, "reserved": 0, "by_transport": {}, "model": "fake model", "sip": False,
                    "auth": False, "engine": {"state": "running", "pid": 4242, "restarts": 0}}
    app.ready = False
    assert (await client.get("/healthz")).status == 503


async def test_engine_restarting_answers_503_and_healthz_shows_it(open_client: Any) -> None:
    app = make_app(HttpSettings(), max_calls=3)
    client = await open_client(app)
    engine = cast(FakeEngine, app.runtime.engine)
    engine.state, engine.pid, engine.restarts = "restarting", 4343, 1
    resp = await client.get("/healthz")
    body = await resp.json()
    assert resp.status == 503 and body["accepting"] is False
    assert body["engine"] == {"state": "restarting", "pid": 4343, "restarts": 1}
    resp = await client.post("/offer", json={"sdp": OFFER, "type": "offer"})
    assert resp.status == 503 and (await resp.json())["reason"] == "engine_restarting"
    assert app.calls.counters.refused_engine == 1
    engine.state = "running"
    assert (await client.get("/healthz")).status == 200


async def test_metrics_render_engine_steps_and_active_calls(open_client: Any) -> None:
    app = make_app(HttpSettings())
    client = await open_client(app)
    resp = await client.get("/metrics")
    text = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/plain"
    assert "lfmcall_engine_step_seconds_count 2.0" in text
    assert 'lfmcall_calls_active{transport="webrtc"} 0.0' in text
    assert 'lfmcall_dropped_frames_total{where="engine_backlog"} 3.0' in text
    cast(FakeEngine, app.runtime.engine).dropped["engine_backlog"] = 5
    text = await (await client.get("/metrics")).text()
    assert 'lfmcall_dropped_frames_total{where="engine_backlog"} 5.0' in text


async def test_cors_only_for_listed_origins(open_client: Any) -> None:
    app = make_app(HttpSettings(cors_origins=("https://ok.example",)))
    client = await open_client(app)
    ok = await client.get("/healthz", headers={"Origin": "https://ok.example"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://ok.example"
    other = await client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    pre = await client.options("/offer", headers={"Origin": "https://ok.example",
                                                  "Access-Control-Request-Method": "POST"})
    assert pre.status == 204 and "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    pre = await client.options("/offer", headers={"Origin": "https://evil.example",
                                                  "Access-Control-Request-Method": "POST"})
    assert pre.status == 403 and "Access-Control-Allow-Origin" not in pre.headers


async def test_outbound_calls(open_client: Any) -> None:
    no_sip = await open_client(make_app(HttpSettings()))
    resp = await no_sip.post("/calls", json={"uri": "sip:bob@127.0.0.1"})
    assert resp.status == 404 and "SIP is not enabled" in (await resp.json())["error"]
    gateway = FakeGateway()
    app = make_app(HttpSettings(auth="on", auth_token=TOKEN), gateway=gateway)
    client = await open_client(app)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert (await client.post("/calls", json={"uri": "sip:bob@127.0.0.1"})).status == 401
    resp = await client.post("/calls", json={"uri": "sip:bob@127.0.0.1"}, headers=auth)
    assert resp.status == 202 and (await resp.json()) == {"call_id": "sip-1-abc"}
    assert gateway.dialed == ["sip:bob@127.0.0.1"]
    for uri in ("http://x", "sip:a b", 5):
        assert (await client.post("/calls", json={"uri": uri}, headers=auth)).status == 400
    busy = await client.post("/calls", json={"uri": "sip:busy@127.0.0.1"}, headers=auth)
    assert busy.status == 503 and (await busy.json())["reason"] == "full"
    app.calls.draining = True
    assert (await client.post("/calls", json={"uri": "sip:bob@127.0.0.1"}, headers=auth)).status == 503
