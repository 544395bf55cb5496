"""The engine in its own process: the model and the accelerator live there, calls live here.

Theory of operation
-------------------
``EngineProcessClient.start()`` spawns (multiprocessing "spawn" context: a fresh interpreter, no
forked torch or CUDA state) ``engine_main``, which loads the model, starts ``model.engine.Engine``
and serves it (``agent.engine_thread.ThreadEngineClient`` there) over one socket pair with the
compact frames of ``agent.engine_wire``: the ``agent.engine_api`` commands one way, its events
the other. The call process does no model work: ``EngineProcessClient`` is an ``EngineClient``
(`new_call_id`, `submit`, `next_event`) like the in-thread one. Both ends read and write the socket from their event
loop (non-blocking, ``add_reader``/``add_writer``): no thread in the call process, so the engine's
Python work never holds the GIL the RTP pacing needs.

Supervision (docs/engine-process.md): the process's sentinel and the socket's end are watched on
the event loop. When the engine process dies, every open call at once gets an
``EngineFault(engine_restarted=True)`` and the ``on_lost`` callbacks run (``CallManager`` ends every live call with the
counted reason ``ENGINE_LOST``: BYE on SIP, an "ended" data-channel event on WebRTC); new calls
are refused (``refusal()`` -> "engine_restarting": SIP 503, HTTP 503) until the restarted engine
is READY. The engine restarts by itself (backoff 0.5 s, doubling up to 10 s while it keeps dying
before READY).

Overload control: ``StepBudget`` admits a call only while the engine's measured step time (p90 of
the last 2 s, reported in STATS every 200 ms) fits the real-time budget with margin. Commands
towards the engine are bounded in time: while the socket is blocked for more than ``backlog_s``
(0.2 s) further caller audio is refused (a ``Rejected`` event) and counted
(``dropped["engine_backlog"]``); audio for an engine that is down is counted as ``engine_down``;
frames the engine's own bounded queue refused come back in STATS as ``engine_queue``. All three
are ``lfmcall_dropped_frames_total{where}`` on /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import select
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from agent import engine_wire as wire
from agent.engine_api import (
    Close,
    EngineClient,
    EngineCommand,
    EngineEvent,
    EngineFault,
    Feed,
    Open,
    Rejected,
    command_name,
)
from agent.engine_child import engine_main
from agent.engine_socket import FramedSocket
from agent.engine_thread import ThreadEngineClient
from agent.log import event

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from agent.model_choice import ModelChoice
    from config.schema import Settings
    from model.engine import Engine

log = logging.getLogger(__name__)

ENGINE_LOST = "agent: engine restarted"  # CallSummary.ended_by of a call ended by an engine death
READY_TIMEOUT_S = 600.0


class EngineHost(EngineClient, Protocol):
    """An EngineClient with what the runtime, the call manager, /healthz and /metrics need."""

    on_lost: list[Callable[[str], None]]
    model_info: dict[str, Any]

    @property
    def state(self) -> str: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def restarts(self) -> int: ...
    @property
    def steps(self) -> int: ...
    @property
    def step_seconds(self) -> list[float]: ...
    @property
    def dropped(self) -> dict[str, int]: ...
    @property
    def active_calls(self) -> int: ...

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def refusal(self, now: float | None = None) -> str | None: ...
    def health(self) -> dict[str, Any]: ...


# -- overload control -------------------------------------------------------------------------------
@dataclass
class StepBudget:
    """Admission by measured step time.

    One reply frame (80 ms of audio) costs ``steps_per_frame`` generation steps (interleaved
    output: 6 text tokens per 12 audio frames is 1.5 steps per frame), so a step must take at most
    ``frame_ms / steps_per_frame``; a new call is admitted only while the recent p90 step time
    (one batched step serves every call) stays within ``margin`` of that budget (0: no check).
    """

    frame_ms: float = 80.0
    steps_per_frame: float = 1.5
    margin: float = 0.8
    window_s: float = 2.0
    recent: deque[tuple[float, float]] = field(default_factory=deque)  # (at, step seconds)

    @property
    def budget_ms(self) -> float:
        return self.frame_ms / self.steps_per_frame * self.margin

    def observe(self, step_seconds: list[float], now: float) -> None:
        self.recent.extend((now, s) for s in step_seconds)
        while self.recent and self.recent[0][0] < now - self.window_s:
            self.recent.popleft()

    def p90_ms(self, now: float) -> float:
        times = [s for at, s in self.recent if at >= now - self.window_s]
        return float(np.percentile(times, 90)) * 1000 if times else 0.0

    def fits(self, now: float) -> bool:
        return self.margin <= 0 or self.p90_ms(now) <= self.budget_ms


# -- the call process's side ------------------------------------------------------------------------
class EngineStartError(RuntimeError):
    """The engine process died or stayed silent before it was ready."""


@dataclass
class _Link:
    generation: int
    events: asyncio.Queue[EngineEvent] = field(default_factory=asyncio.Queue)
    lost: bool = False


class EngineProcessClient:
    """An `EngineClient` whose engine runs in a spawned process it supervises.

    State: starting, running, restarting, stopped. Implements ``agent.engine_api.EngineClient``
    (`new_call_id`, `submit`, `next_event`) and what the call manager, /healthz and /metrics ask
    (`EngineHost`).
    """

    def __init__(self, settings: Settings, choice: ModelChoice, *, slots: int, threads: int = 1,
                 backlog_s: float = 0.2, budget: StepBudget | None = None, nice: int = 5,
                 ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        self.nice = nice
        self.settings = settings
        self.choice = choice
        self.slots = slots
        self.threads = threads
        self.backlog_s = backlog_s
        self.budget = budget or StepBudget()
        self.ready_timeout_s = ready_timeout_s
        self.state = "stopped"
        self.pid: int | None = None
        self.restarts = 0
        self.model_info: dict[str, Any] = {}
        self.steps = 0
        self.step_seconds: list[float] = []
        self.engine_calls = 0  # open calls, as the engine last reported them
        self.dropped: dict[str, int] = {"engine_down": 0, "engine_backlog": 0, "engine_queue": 0}
        self.rejected = 0
        self.bad_frames = 0
        self.on_lost: list[Callable[[str], None]] = []
        self._links: dict[int, _Link] = {}
        self._ids = itertools.count(1)
        self._generation = 0
        self._proc: BaseProcess | None = None
        self._wire: FramedSocket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sentinel: int | None = None
        self._ready_at = 0.0
        self._backoff_s = 0.5
        self._retry: asyncio.TimerHandle | None = None
        self._queue_dropped_before = 0  # refused by the engines that died
        self._queue_dropped = 0  # by the running engine, from its last STATS

    # -- EngineClient -------------------------------------------------------------------------------
    def new_call_id(self) -> int:
        return next(self._ids)

    def submit(self, command: EngineCommand) -> None:
        link = self._links.get(command.call)
        if isinstance(command, Open):
            if link is not None:
                raise ValueError(f"call {command.call} is already open")
            link = self._links[command.call] = _Link(self._generation)
            if not self._live(link):
                self._reject(link, command, f"engine {self.state}")
                link.lost = True
                return
        elif link is None:
            return  # closed or never opened: nobody listens
        if isinstance(command, Close):
            del self._links[command.call]
            if self._live(link):
                self._send(wire.encode(command))
            return
        if not self._live(link):
            if isinstance(command, Feed):
                self.dropped["engine_down"] += 1
            self._reject(link, command, "engine restarted" if link.lost else f"engine {self.state}")
            return
        if isinstance(command, Feed) and self._wire is not None and \
                self._wire.blocked_for(time.monotonic()) > self.backlog_s:
            self.dropped["engine_backlog"] += 1
            self._reject(link, command, f"engine backlog over {self.backlog_s * 1000:.0f} ms")
            return
        self._send(wire.encode(command))

    async def next_event(self, call: int) -> EngineEvent:
        link = self._links.get(call)
        if link is None:
            raise LookupError(f"call {call} is not open")
        return await link.events.get()

    def _live(self, link: _Link) -> bool:
        return not link.lost and link.generation == self._generation and self.state == "running" \
            and self._wire is not None

    def _send(self, data: bytes) -> None:
        if self._wire is not None:
            self._wire.send(data)

    def _reject(self, link: _Link, command: EngineCommand, reason: str) -> None:
        self.rejected += 1
        link.events.put_nowait(Rejected(command.call, command.request, command_name(command), reason))

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Spawn the engine and wait (blocking: at startup) until it is ready; raises EngineStartError."""
        self._loop = asyncio.get_running_loop()
        sock, proc = self._spawn()
        frames = wire.FrameBuffer()
        deadline = time.monotonic() + self.ready_timeout_s
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EngineStartError(f"the engine process was not ready within {self.ready_timeout_s:.0f} s")
                readable, _, _ = select.select([sock.fileno(), proc.sentinel], [], [], min(left, 1.0))
                if sock.fileno() in readable:
                    data = sock.recv(1 << 16)
                    bodies = frames.push(data) if data else []
                    if bodies:
                        if bodies[0][:1] == bytes([wire.FAILED]):
                            raise EngineStartError(wire.decode_failed(bodies[0]))
                        if bodies[0][:1] != bytes([wire.READY]):
                            raise EngineStartError(f"the engine process sent kind {bodies[0][:1]!r} before READY")
                        self._ready(bodies[0])
                        break
                    if data:
                        continue
                if proc.sentinel in readable or not proc.is_alive():
                    proc.join(1)
                    raise EngineStartError(f"the engine process exited (code {proc.exitcode}) before it was ready")
        except BaseException:
            with contextlib.suppress(Exception):
                proc.kill()
            sock.close()
            self.state = "stopped"
            raise
        self._attach(sock, proc)

    def _spawn(self) -> tuple[socket.socket, BaseProcess]:
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = socket.socketpair()
        proc = ctx.Process(target=engine_main, name="lfm-engine", daemon=True,
                           args=(theirs, self.settings, self.choice, self.slots, self.threads, self.nice))
        proc.start()
        theirs.close()
        self._generation += 1
        self._proc = proc
        self.pid = proc.pid
        self.state = "starting" if self.restarts == 0 else "restarting"
        event(log, "engine.spawned", pid=proc.pid, generation=self._generation)
        return ours, proc

    def _attach(self, sock: socket.socket, proc: BaseProcess) -> None:
        loop = self._loop
        assert loop is not None
        generation = self._generation
        self._wire = FramedSocket(sock, loop, self._on_frame, lambda why: self._lost(generation, why))
        self._sentinel = proc.sentinel
        loop.add_reader(proc.sentinel, self._lost, generation, "process exited")

    def _ready(self, body: bytes) -> None:
        self.pid, self.model_info = wire.decode_ready(body)
        self.state = "running"
        self._ready_at = time.monotonic()
        self.budget.recent.clear()
        event(log, "engine.ready", pid=self.pid, restarts=self.restarts, device=self.model_info.get("device"))

    def _lost(self, generation: int, why: str) -> None:
        """The engine process died (or its stream broke): every open call learns it now; restart."""
        if generation != self._generation or (self._wire is None and self._proc is None):
            return
        proc, self._proc = self._proc, None
        self._detach()
        exitcode = None
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            proc.join(2)
            exitcode = proc.exitcode
        message = f"engine process {self.pid} lost ({why}, exit code {exitcode})"
        event(log, "engine.died", logging.ERROR, pid=self.pid, reason=why, exitcode=exitcode, calls=len(self._links))
        for call, link in self._links.items():
            if not link.lost:
                link.lost = True
                link.events.put_nowait(EngineFault(call, None, message, engine_restarted=True))
        self._queue_dropped_before += self._queue_dropped
        self._queue_dropped = 0
        if self.state == "stopped":
            return
        self.state = "restarting"
        self.restarts += 1
        for callback in self.on_lost:
            callback(message)
        short = time.monotonic() - self._ready_at < 5.0 if self._ready_at else True
        delay = self._backoff_s if short else 0.0
        self._backoff_s = min(10.0, self._backoff_s * 2) if short else 0.5
        assert self._loop is not None
        self._retry = self._loop.call_later(delay, self._respawn)

    def _respawn(self) -> None:
        self._retry = None
        if self.state == "stopped":
            return
        assert self._loop is not None
        try:
            sock, proc = self._spawn()
        except Exception as exc:
            event(log, "engine.spawn_failed", logging.ERROR, error=repr(exc)[:200])
            self._retry = self._loop.call_later(self._backoff_s, self._respawn)
            return
        self._attach(sock, proc)
        self._loop.call_later(self.ready_timeout_s, self._ready_timeout, self._generation)

    def _ready_timeout(self, generation: int) -> None:
        if generation == self._generation and self.state == "restarting":
            self._lost(generation, f"not ready within {self.ready_timeout_s:.0f} s")

    def _detach(self) -> None:
        if self._wire is not None:
            self._wire.close()
            self._wire = None
        if self._sentinel is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sentinel)
            self._sentinel = None

    def stop(self) -> None:
        """Stop the engine process (STOP, then kill if it lingers)."""
        self.state = "stopped"
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        proc, self._proc = self._proc, None
        if self._wire is not None and not self._wire.closed:
            with contextlib.suppress(OSError):
                self._wire.sock.setblocking(True)
                self._wire.sock.settimeout(1.0)
                self._wire.sock.sendall(wire.stop())
        self._detach()
        if proc is not None:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(2)

    def kill_for_test(self) -> None:
        """SIGKILL the engine process (the supervision test and bench/sip_load.py use it)."""
        if self._proc is not None and self._proc.pid is not None:
            os.kill(self._proc.pid, signal.SIGKILL)

    # -- what the call manager, /healthz and /metrics ask ---------------------------------------------
    @property
    def active_calls(self) -> int:
        return len(self._links)

    def refusal(self, now: float | None = None) -> str | None:
        """Why a new call cannot be taken now (None: admit it)."""
        if self.state != "running":
            return "engine_restarting" if self.state in ("restarting", "starting") else "engine_stopped"
        if not self.budget.fits(time.monotonic() if now is None else now):
            return "overloaded"
        return None

    def health(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"state": self.state, "pid": self.pid, "restarts": self.restarts, "process": True,
                "step_p90_ms": round(self.budget.p90_ms(now), 2), "step_budget_ms": round(self.budget.budget_ms, 2),
                "calls": len(self._links)}

    # -- frames from the engine -----------------------------------------------------------------------
    def _on_frame(self, body: bytes) -> None:
        kind = body[0] if body else -1
        try:
            if kind == wire.READY:
                self._ready(body)
                return
            if kind == wire.FAILED:  # a restart that cannot load the model: it exits, we retry with backoff
                event(log, "engine.start_failed", logging.ERROR, message=wire.decode_failed(body)[:500])
                return
            if kind == wire.STATS:
                steps, calls, refused, times = wire.decode_stats(body)
                self.steps, self.engine_calls = steps, calls
                self.step_seconds.extend(times)
                del self.step_seconds[:-10000]
                self._queue_dropped = refused
                self.dropped["engine_queue"] = self._queue_dropped_before + refused
                self.budget.observe(times, time.monotonic())
                return
            value = wire.decode_event(body)
        except wire.WireError as exc:
            self.bad_frames += 1
            event(log, "engine.bad_frame", logging.WARNING, error=str(exc)[:200])
            return
        link = self._links.get(value.call)
        if link is not None and not link.lost:
            link.events.put_nowait(value)


class InThreadEngine(ThreadEngineClient):
    """The in-thread engine (model.engine.Engine in this process) with the supervision interface.

    Only for tests and benchmarks that hand the runtime an already loaded model; `serve` and
    `simulate` run the engine in its own process.
    """

    def __init__(self, engine: Engine, choice_description: str) -> None:
        super().__init__(engine)
        self.on_lost: list[Callable[[str], None]] = []
        loaded = engine.loaded
        self.model_info = {"description": choice_description, "device": str(loaded.device),
                           "dtype": str(loaded.dtype),
                           "decoder": loaded.decoder.name if loaded.decoder is not None else "none"}
        self.state = "running"

    @property
    def pid(self) -> int:
        return os.getpid()

    @property
    def restarts(self) -> int:
        return self.engine.restarts

    @property
    def steps(self) -> int:
        return self.engine.steps

    @property
    def step_seconds(self) -> list[float]:
        return self.engine.step_seconds

    @property
    def dropped(self) -> dict[str, int]:
        return {"engine_queue": self.dropped_frames}

    @property
    def active_calls(self) -> int:
        return self.engine.active_calls

    def start(self) -> None:
        self.engine.start()

    def stop(self) -> None:
        self.engine.stop()

    def refusal(self, now: float | None = None) -> str | None:
        return None

    def health(self) -> dict[str, Any]:
        return {"state": "running", "pid": os.getpid(), "restarts": self.engine.restarts, "process": False}
