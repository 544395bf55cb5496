"""`lfm-call serve`: one process, one Runtime (model + engine + CallManager), HTTP and optionally SIP.

Start: load the model (at this entry point), build the aiohttp app (call page, WebRTC signaling,
/healthz, /metrics, POST /calls) and, when ``sip.enabled``, the SIP gateway over the same
CallManager, so capacity and draining are one truth for both. One log line names the model used
and the addresses.

Stop (SIGTERM or SIGINT): drain. New calls are refused (HTTP 503 on /offer and /healthz, SIP 503),
the active ones may finish for up to ``server.drain_timeout_s``, then whatever is left is ended;
exit status 0. A second signal ends the active calls at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agent.http_app import HttpApp, auth_required
from agent.log import event
from agent.metrics import Metrics
from config.schema import Settings

if TYPE_CHECKING:
    from agent.runtime import Runtime

log = logging.getLogger(__name__)


class AgentServer:
    """The running server: `await start()`, then `await stop()` (drains first)."""

    def __init__(self, settings: Settings, runtime: Runtime, metrics: Metrics | None = None, *,
                 ice_timeout_s: float = 15.0, media_timeout_s: float = 10.0) -> None:
        auth_required(settings.http)  # auth on with an empty token fails before anything starts
        self.settings = settings
        self.runtime = runtime
        self.metrics = metrics or Metrics()
        self.gateway: Any = None
        self.http: HttpApp | None = None
        self._ice_timeout_s = ice_timeout_s
        self._media_timeout_s = media_timeout_s
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Task[bool] | None = None
        self.http_url = ""

    async def start(self) -> None:
        settings = self.settings
        if settings.sip.enabled:
            from sip_bridge.gateway import SipGateway

            self.gateway = SipGateway(self.runtime.calls, settings.sip, self.metrics,
                                      jitter_buffer_ms=settings.audio.jitter_buffer_ms)
            await self.gateway.start()
        if settings.http.enabled:
            self.http = HttpApp(self.runtime, self.metrics, self.gateway, http=settings.http,
                                ice_timeout_s=self._ice_timeout_s,
                                media_timeout_s=self._media_timeout_s)
            self._runner = web.AppRunner(self.http.app, access_log=None, handle_signals=False)
            await self._runner.setup()
            site = web.TCPSite(self._runner, settings.http.host, settings.http.port)
            await site.start()
            host, port = self._runner.addresses[0][:2]
            self.http_url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
            self.http.ready = True
        sip = f"sip:{settings.sip.listen_host}:{settings.sip.listen_port}" if settings.sip.enabled else "off"
        event(log, "server.started", model=self.runtime.choice.description, http=self.http_url or "off", sip=sip,
              max_calls=self.runtime.calls.max_calls,
              auth=self.http.auth if self.http is not None else None)

    def set_draining(self) -> None:
        """Refuse new calls everywhere (idempotent)."""
        self.runtime.calls.draining = True
        if self.gateway is not None:
            self.gateway.set_draining(True)

    def end_calls(self) -> None:
        """End every active call now."""
        for session in list(self.runtime.calls.active.values()):
            session.end("server stopping")

    async def stop(self, drain_timeout_s: float | None = None) -> bool:
        """Drain (refuse new calls, wait for active ones), then stop everything; True if all finished.

        Idempotent: a second call waits for the first one's result.
        """
        if self._stopping is None:
            timeout = self.settings.server.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
            self._stopping = asyncio.get_running_loop().create_task(self._stop(timeout), name="server stop")
        return await asyncio.shield(self._stopping)

    async def _stop(self, timeout: float) -> bool:
        self.set_draining()
        finished = await self.runtime.calls.drain(timeout)
        if self.http is not None:
            await self.http.wait_calls(5.0)
            await self.http.close()
            self.http.ready = False
        if self.gateway is not None:
            await self.gateway.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        event(log, "server.stopped", drained=finished)
        return finished


def install_stop_signals(server: AgentServer, stop: asyncio.Event) -> Callable[[], None]:
    """SIGTERM/SIGINT on the running loop: the first drains (new calls refused) and sets `stop` (the
    caller then awaits ``server.stop()``); a second ends the active calls at once. Returns the
    function that removes the handlers."""
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        event(log, "server.signal", signal=signal.Signals(signum).name, count=signals)
        if signals == 1:
            server.set_draining()
            stop.set()
        else:
            server.end_calls()

    installed = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)

    def remove() -> None:
        for signum in installed:
            loop.remove_signal_handler(signum)

    return remove


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop` is set), drain, and return the exit status (0)."""
    from agent.runtime import build_runtime

    auth_required(settings.http)
    for noisy in ("aioice", "aiortc"):  # per-candidate-pair INFO lines would drown the call events
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    runtime = build_runtime(settings)
    server = AgentServer(settings, runtime)
    stop = stop or asyncio.Event()
    remove_signals = install_stop_signals(server, stop)
    try:
        try:
            await server.start()
        except BaseException:
            await server.stop(0.0)
            raise
        await stop.wait()
        await server.stop()
    finally:
        remove_signals()
        runtime.close()
    return 0
