"""The engine in its own process: the model and the accelerator live there, calls live here.

Theory of operation
-------------------
``EngineProcessClient.start()`` spawns (multiprocessing "spawn" context: a fresh interpreter, no
forked torch or CUDA state) ``engine_main``, which loads the model, starts ``model.engine.Engine``
and serves it over one socket pair with the compact frames of ``agent.engine_wire``. The call
process does no model work: ``open()`` returns a ``ProcessConversation`` with the methods of
``model.engine.CallConversation`` (feed, add_text, end_turn, respond, greet, request_interrupt,
interrupt, retract, close) and its ``events`` queue receives the same ``AgentAudio``,
``ReplyFinished`` and ``EngineError`` events. Both ends read and write the socket from their event
loop (non-blocking, ``add_reader``/``add_writer``): no thread in the call process, so the engine's
Python work never holds the GIL the RTP pacing needs.

Supervision (docs/engine-process.md): the process's sentinel and the socket's end are watched on
the event loop. When the engine process dies, every open conversation at once gets an
``EngineError`` and the ``on_lost`` callbacks run (``CallManager`` ends every live call with the
counted reason ``ENGINE_LOST``: BYE on SIP, an "ended" data-channel event on WebRTC); new calls
are refused (``refusal()`` -> "engine_restarting": SIP 503, HTTP 503) until the restarted engine
is READY. The engine restarts by itself (backoff 0.5 s, doubling up to 10 s while it keeps dying
before READY).

Overload control: ``StepBudget`` admits a call only while the engine's measured step time (p90 of
the last 2 s, reported in STATS every 200 ms) fits the real-time budget with margin. Commands
towards the engine are bounded in time: while the socket is blocked for more than ``backlog_s``
(0.2 s) further caller audio is dropped and counted (``dropped["engine_backlog"]``); audio for an
engine that is down is counted as ``engine_down``; frames the engine's own bounded queue refused
come back in STATS as ``engine_queue``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
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
from agent.log import event

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from agent.model_choice import ModelChoice
    from config.schema import Settings
    from model.engine import CallConversation, Engine, EngineEvent, ReplyFinished

log = logging.getLogger(__name__)

ENGINE_LOST = "agent: engine restarted"  # CallSummary.ended_by of a call ended by an engine death
STATS_INTERVAL_S = 0.2
READY_TIMEOUT_S = 600.0


class EngineConversation(Protocol):
    """One call's handle on the engine (model.engine.CallConversation, or ProcessConversation)."""

    id: int
    events: asyncio.Queue[EngineEvent]
    dropped_frames: int

    def feed(self, frame: np.ndarray) -> None: ...
    def add_text(self, text: str) -> None: ...
    def end_turn(self) -> None: ...
    def respond(self, tag: int = 0) -> None: ...
    def greet(self, text: str, tag: int = 0) -> None: ...
    def retract(self) -> None: ...
    def request_interrupt(self, played_frames: int) -> asyncio.Future[ReplyFinished | None]: ...
    async def interrupt(self, played_frames: int) -> ReplyFinished | None: ...
    def close(self) -> None: ...


class EngineHost(Protocol):
    """What the runtime, the call manager, /healthz and /metrics need from the engine."""

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
    def open(self, instructions: str | None = None) -> EngineConversation: ...


# -- overload control -------------------------------------------------------------------------------
@dataclass
class StepBudget:
    """Admission by measured step time.

    One reply frame (80 ms of audio) costs ``steps_per_frame`` generation steps (interleaved
    output: 6 text tokens per 12 audio frames is 1.5 steps per frame), so a step must take at most
    ``frame_ms / steps_per_frame``; a new call is admitted only while the recent p90 step time,
    scaled by one more call, stays within ``margin`` of that budget.
    """

    frame_ms: float = 80.0
    steps_per_frame: float = 1.5
    margin: float = 0.5
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

    def fits(self, active_calls: int, now: float) -> bool:
        p90 = self.p90_ms(now)
        scale = (active_calls + 1) / active_calls if active_calls else 1.0
        return p90 * scale <= self.budget_ms


# -- the socket, on an event loop -------------------------------------------------------------------
class FramedSocket:
    """Frames over a non-blocking stream socket, read and written from the event loop."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop, on_frame: Callable[[bytes], None],
                 on_eof: Callable[[str], None]) -> None:
        self.sock = sock
        self.loop = loop
        self._on_frame = on_frame
        self._on_eof = on_eof
        self._frames = wire.FrameBuffer()
        self._pending: deque[memoryview] = deque()
        self.blocked_since: float | None = None  # when writes started to queue up
        self.closed = False
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            data = self.sock.recv(1 << 18)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._eof(f"socket error: {exc}")
            return
        if not data:
            self._eof("socket closed")
            return
        try:
            bodies = self._frames.push(data)
        except wire.WireError as exc:
            self._eof(f"bad stream: {exc}")
            return
        for body in bodies:
            if self.closed:
                return
            self._on_frame(body)

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self._pending:
            self._pending.append(memoryview(data))
            return
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._eof(f"socket error: {exc}")
            return
        if n < len(data):
            self._pending.append(memoryview(data)[n:])
            self.blocked_since = time.monotonic()
            self.loop.add_writer(self.sock.fileno(), self._writable)

    def _writable(self) -> None:
        while self._pending:
            head = self._pending[0]
            try:
                n = self.sock.send(head)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._eof(f"socket error: {exc}")
                return
            if n < len(head):
                self._pending[0] = head[n:]
                return
            self._pending.popleft()
        self.blocked_since = None
        self.loop.remove_writer(self.sock.fileno())

    def blocked_for(self, now: float) -> float:
        return 0.0 if self.blocked_since is None else now - self.blocked_since

    def _eof(self, why: str) -> None:
        if self.closed:
            return
        self.close()
        self._on_eof(why)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.sock.fileno())
            self.loop.remove_writer(self.sock.fileno())
        self._pending.clear()
        self.sock.close()


# -- the engine process -----------------------------------------------------------------------------
def engine_main(sock: socket.socket, settings: Settings, choice: ModelChoice, slots: int, threads: int) -> None:
    """The spawned process: load the model, run the engine, serve it on `sock` until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the call process's: it drains, then stops us
    from agent.log import configure_logging

    configure_logging(settings.logging.level, settings.logging.format)
    import torch

    from agent.commands import choice_is_tiny, engine_settings, load_choice
    from model.engine import Engine

    if threads > 0:
        torch.set_num_threads(threads)
    loaded = load_choice(settings.model, choice)
    tiny = choice_is_tiny(loaded)
    engine = Engine(loaded, engine_settings(settings.model, tiny, slots=slots))
    info = {"description": choice.description, "device": str(loaded.device), "dtype": str(loaded.dtype),
            "decoder": loaded.decoder.name if loaded.decoder is not None else "none", "tiny": tiny}
    asyncio.run(_EngineHost(sock, engine, info).run())


class _EngineHost:
    """The engine process's event loop: frames in -> the engine; the engine's events -> frames out."""

    def __init__(self, sock: socket.socket, engine: Engine, info: dict[str, Any]) -> None:
        self.sock = sock
        self.engine = engine
        self.info = info
        self.convs: dict[int, CallConversation] = {}
        self.forwarders: dict[int, asyncio.Task[None]] = {}
        self.closed_dropped = 0
        self.bad_frames = 0
        self._done = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.engine.start()
        self.wire = FramedSocket(self.sock, loop, self._on_frame, lambda why: self._done.set())
        self.wire.send(wire.ready(os.getpid(), self.info))
        stats = loop.create_task(self._stats())
        try:
            await self._done.wait()
        finally:
            stats.cancel()
            for task in self.forwarders.values():
                task.cancel()
            self.wire.close()
            self.engine.stop()

    async def _stats(self) -> None:
        seen = self.engine.steps
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            steps = self.engine.steps
            new = min(steps - seen, len(self.engine.step_seconds))
            times = self.engine.step_seconds[len(self.engine.step_seconds) - new :] if new > 0 else []
            seen = steps
            dropped = self.closed_dropped + sum(c.dropped_frames for c in self.convs.values())
            self.wire.send(wire.stats(steps, len(self.convs), dropped, times))

    def _on_frame(self, body: bytes) -> None:
        try:
            msg = wire.decode(body)
        except wire.WireError as exc:
            self.bad_frames += 1
            event(log, "engine.bad_frame", logging.WARNING, error=str(exc)[:200])
            return
        if msg.kind == wire.STOP:
            self._done.set()
            return
        if msg.kind == wire.OPEN:
            conv = self.engine.open(msg.fields[0])
            self.convs[msg.conv] = conv
            self.forwarders[msg.conv] = asyncio.get_running_loop().create_task(self._forward(msg.conv, conv))
            return
        conv_or_none = self.convs.get(msg.conv)
        if conv_or_none is None:
            return
        conv = conv_or_none
        if msg.kind == wire.FEED:
            conv.feed(msg.fields[0])
        elif msg.kind == wire.TEXT:
            conv.add_text(msg.fields[0])
        elif msg.kind == wire.END_TURN:
            conv.end_turn()
        elif msg.kind == wire.RESPOND:
            conv.respond(tag=msg.fields[0])
        elif msg.kind == wire.GREET:
            conv.greet(msg.fields[0], tag=msg.fields[1])
        elif msg.kind == wire.RETRACT:
            conv.retract()
        elif msg.kind == wire.INTERRUPT:
            request, played = msg.fields
            future = conv.request_interrupt(played)
            future.add_done_callback(functools.partial(self._interrupted, msg.conv, request))
        elif msg.kind == wire.CLOSE:
            conv.close()
            self.closed_dropped += conv.dropped_frames
            del self.convs[msg.conv]
            task = self.forwarders.pop(msg.conv, None)
            if task is not None:
                task.cancel()

    def _interrupted(self, conv: int, request: int, future: asyncio.Future[ReplyFinished | None]) -> None:
        result = None if future.cancelled() else future.result()
        fields = None if result is None else (result.reply_id, result.text, result.frames, result.interrupted,
                                              result.generated_frames, result.tag)
        self.wire.send(wire.interrupt_result(conv, request, fields))

    async def _forward(self, conv_id: int, conv: CallConversation) -> None:
        from model.engine import AgentAudio, ReplyFinished

        while True:
            ev = await conv.events.get()
            if isinstance(ev, AgentAudio):
                self.wire.send(wire.audio(conv_id, ev.reply_id, ev.frame_index, ev.pcm, ev.text, ev.codes, ev.tag))
            elif isinstance(ev, ReplyFinished):
                self.wire.send(wire.finished(conv_id, ev.reply_id, ev.text, ev.frames, ev.interrupted,
                                             ev.generated_frames, ev.tag))
            else:
                self.wire.send(wire.error(conv_id, ev.reply_id, ev.message))


# -- the call process's side ------------------------------------------------------------------------
class EngineStartError(RuntimeError):
    """The engine process died or stayed silent before it was ready."""


class ProcessConversation:
    """One call's conversation in the engine process (the interface of model.engine.CallConversation)."""

    def __init__(self, client: EngineProcessClient, conv_id: int, generation: int) -> None:
        self._client = client
        self.id = conv_id
        self.generation = generation
        self.events: asyncio.Queue[EngineEvent] = asyncio.Queue()
        self.dropped_frames = 0
        self.lost = False
        self._interrupts: dict[int, asyncio.Future[ReplyFinished | None]] = {}

    def _send(self, data: bytes) -> bool:
        return not self.lost and self._client._send(self, data)

    def feed(self, frame: np.ndarray) -> None:
        """80 ms of caller audio at 16 kHz (int16, or float32 in [-1, 1))."""
        pcm = np.asarray(frame)
        if not self._client._feed_allowed(self):
            self.dropped_frames += 1
            return
        self._send(wire.feed(self.id, pcm if pcm.dtype == np.int16 else pcm.astype(np.float32, copy=False)))

    def add_text(self, text: str) -> None:
        self._send(wire.text(self.id, text))

    def end_turn(self) -> None:
        self._send(wire.simple(wire.END_TURN, self.id))

    def respond(self, tag: int = 0) -> None:
        self._send(wire.respond(self.id, tag))

    def greet(self, text: str, tag: int = 0) -> None:
        self._send(wire.greet(self.id, text, tag))

    def retract(self) -> None:
        self._send(wire.simple(wire.RETRACT, self.id))

    def request_interrupt(self, played_frames: int) -> asyncio.Future[ReplyFinished | None]:
        future: asyncio.Future[ReplyFinished | None] = asyncio.get_running_loop().create_future()
        request = next(self._client._requests)
        if self._send(wire.interrupt(self.id, request, int(played_frames))):
            self._interrupts[request] = future
        else:
            future.set_result(None)
        return future

    async def interrupt(self, played_frames: int) -> ReplyFinished | None:
        return await self.request_interrupt(played_frames)

    def close(self) -> None:
        self._send(wire.simple(wire.CLOSE, self.id))
        self._client._forget(self)
        self._fail_interrupts()

    # -- from the client --------------------------------------------------------------------------
    def _interrupt_result(self, request: int, result: ReplyFinished | None) -> None:
        future = self._interrupts.pop(request, None)
        if future is not None and not future.done():
            future.set_result(result)

    def _lose(self, message: str) -> None:
        from model.engine import EngineError

        if self.lost:
            return
        self.lost = True
        self.events.put_nowait(EngineError(None, message))
        self._fail_interrupts()

    def _fail_interrupts(self) -> None:
        for future in self._interrupts.values():
            if not future.done():
                future.set_result(None)
        self._interrupts.clear()


class EngineProcessClient:
    """Spawns, feeds and supervises the engine process. State: starting, running, restarting, stopped."""

    def __init__(self, settings: Settings, choice: ModelChoice, *, slots: int, threads: int = 1,
                 backlog_s: float = 0.2, budget: StepBudget | None = None,
                 ready_timeout_s: float = READY_TIMEOUT_S) -> None:
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
        self.engine_calls = 0  # open conversations, as the engine last reported them
        self.dropped: dict[str, int] = {"engine_down": 0, "engine_backlog": 0, "engine_queue": 0}
        self.bad_frames = 0
        self.on_lost: list[Callable[[str], None]] = []
        self._convs: dict[int, ProcessConversation] = {}
        self._ids = itertools.count(1)
        self._requests = itertools.count(1)
        self._generation = 0
        self._proc: BaseProcess | None = None
        self._wire: FramedSocket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sentinel: int | None = None
        self._ready_at = 0.0
        self._backoff_s = 0.5
        self._retry: asyncio.TimerHandle | None = None
        self._dropped_before = 0  # engine_queue drops of the engines that died
        self._engine_dropped = 0  # the running engine's, from its last STATS

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
                    if data:
                        bodies = frames.push(data)
                        if bodies:
                            msg = wire.decode(bodies[0])
                            if msg.kind != wire.READY:
                                raise EngineStartError(f"the engine process sent kind {msg.kind} before READY")
                            self._ready(msg)
                            break
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
        proc = ctx.Process(target=engine_main, args=(theirs, self.settings, self.choice, self.slots, self.threads),
                           name="lfm-engine", daemon=True)
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

    def _ready(self, msg: wire.Message) -> None:
        self.pid = msg.conv
        self.model_info = msg.fields[0]
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
        event(log, "engine.died", logging.ERROR, pid=self.pid, reason=why, exitcode=exitcode,
              calls=len(self._convs))
        stopping = self.state == "stopped"
        convs = list(self._convs.values())
        self._convs.clear()
        for conv in convs:
            conv._lose(message)
        self._dropped_before += self._engine_dropped
        self._engine_dropped = 0
        if stopping:
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
        try:
            sock, proc = self._spawn()
        except Exception as exc:
            event(log, "engine.spawn_failed", logging.ERROR, error=repr(exc)[:200])
            assert self._loop is not None
            self._retry = self._loop.call_later(self._backoff_s, self._respawn)
            return
        self._attach(sock, proc)
        assert self._loop is not None
        generation = self._generation
        self._loop.call_later(self.ready_timeout_s, self._ready_timeout, generation)

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
        proc = self._proc
        if self._wire is not None and not self._wire.closed:
            with contextlib.suppress(OSError):
                self._wire.sock.setblocking(True)
                self._wire.sock.settimeout(1.0)
                self._wire.sock.sendall(wire.simple(wire.STOP, 0))
        self._detach()
        if proc is not None:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(2)
        self._proc = None
        for conv in list(self._convs.values()):
            conv._lose("engine stopped")
        self._convs.clear()

    def kill_for_test(self) -> None:
        """SIGKILL the engine process (the supervision tests and `bench` use it)."""
        if self._proc is not None and self._proc.pid is not None:
            os.kill(self._proc.pid, signal.SIGKILL)

    # -- what the call manager asks -----------------------------------------------------------------
    @property
    def active_calls(self) -> int:
        return len(self._convs)

    def refusal(self, now: float | None = None) -> str | None:
        """Why a new call cannot be taken now (None: admit it)."""
        if self.state != "running":
            return "engine_restarting" if self.state in ("restarting", "starting") else "engine_stopped"
        if not self.budget.fits(len(self._convs), time.monotonic() if now is None else now):
            return "overloaded"
        return None

    def health(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"state": self.state, "pid": self.pid, "restarts": self.restarts, "process": True,
                "step_p90_ms": round(self.budget.p90_ms(now), 2), "step_budget_ms": round(self.budget.budget_ms, 2),
                "calls": len(self._convs)}

    def open(self, instructions: str | None = None) -> ProcessConversation:
        conv = ProcessConversation(self, next(self._ids), self._generation)
        if self.state != "running" or self._wire is None:
            conv._lose(f"engine is {self.state}")
            return conv
        self._convs[conv.id] = conv
        self._wire.send(wire.open_call(conv.id, instructions or ""))
        return conv

    # -- plumbing -----------------------------------------------------------------------------------
    def _send(self, conv: ProcessConversation, data: bytes) -> bool:
        if conv.generation != self._generation or self._wire is None or self.state != "running":
            return False
        self._wire.send(data)
        return True

    def _feed_allowed(self, conv: ProcessConversation) -> bool:
        if conv.lost or conv.generation != self._generation or self._wire is None or self.state != "running":
            self.dropped["engine_down"] += 1
            return False
        if self._wire.blocked_for(time.monotonic()) > self.backlog_s:
            self.dropped["engine_backlog"] += 1
            return False
        return True

    def _forget(self, conv: ProcessConversation) -> None:
        if self._convs.get(conv.id) is conv:
            del self._convs[conv.id]

    def _on_frame(self, body: bytes) -> None:
        from model.engine import AgentAudio, EngineError, ReplyFinished

        try:
            msg = wire.decode(body)
        except wire.WireError as exc:
            self.bad_frames += 1
            event(log, "engine.bad_frame", logging.WARNING, error=str(exc)[:200])
            return
        if msg.kind == wire.READY:
            self._ready(msg)
            return
        if msg.kind == wire.STATS:
            steps, active, dropped, times = msg.fields
            self.steps, self.engine_calls = steps, active
            self.step_seconds.extend(times)
            del self.step_seconds[:-10000]
            self._engine_dropped = dropped
            self.dropped["engine_queue"] = self._dropped_before + dropped
            self.budget.observe(times, time.monotonic())
            return
        conv = self._convs.get(msg.conv)
        if conv is None:
            return
        f = msg.fields
        if msg.kind == wire.AUDIO:
            conv.events.put_nowait(AgentAudio(f[0], f[1], f[2], f[3], f[4], f[5]))
        elif msg.kind == wire.FINISHED:
            conv.events.put_nowait(ReplyFinished(*f))
        elif msg.kind == wire.ERROR:
            conv.events.put_nowait(EngineError(f[0], f[1]))
        elif msg.kind == wire.INTERRUPT_RESULT:
            request, result = f
            conv._interrupt_result(request, None if result is None else ReplyFinished(*result))


class ThreadEngineClient:
    """The in-thread engine (model.engine.Engine in this process) behind the same interface.

    Only for tests and benchmarks that hand the runtime an already loaded model; `serve` and
    `simulate` run the engine in its own process.
    """

    def __init__(self, engine: Engine, choice_description: str) -> None:
        self.engine = engine
        self.on_lost: list[Callable[[str], None]] = []
        self.restarts = 0
        loaded = engine.loaded
        self.model_info = {"description": choice_description, "device": str(loaded.device),
                           "dtype": str(loaded.dtype),
                           "decoder": loaded.decoder.name if loaded.decoder is not None else "none"}

    @property
    def state(self) -> str:
        return "running"

    @property
    def pid(self) -> int:
        return os.getpid()

    @property
    def steps(self) -> int:
        return self.engine.steps

    @property
    def step_seconds(self) -> list[float]:
        return self.engine.step_seconds

    @property
    def dropped(self) -> dict[str, int]:
        return {}

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

    def open(self, instructions: str | None = None) -> CallConversation:
        return self.engine.open(instructions)
