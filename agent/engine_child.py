"""The engine process's side: load the model, run ``model.engine.Engine``, serve it on the socket.

``agent.engine_process.EngineProcessClient`` spawns ``engine_main`` (multiprocessing "spawn") with
one end of a socket pair. It answers READY (or FAILED with the reason) and then turns command
frames into ``agent.engine_thread.ThreadEngineClient`` calls and the engine's events into frames,
plus a STATS frame every ``STATS_INTERVAL_S``, until the socket closes or a STOP frame comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any

from agent import engine_wire as wire
from agent.engine_api import Close, Open
from agent.engine_socket import FramedSocket
from agent.log import event

if TYPE_CHECKING:
    from agent.model_choice import ModelChoice
    from config.schema import Settings
    from model.engine import Engine

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 0.2


def engine_main(sock: socket.socket, settings: Settings, choice: ModelChoice, slots: int, threads: int,
                nice: int = 0) -> None:
    """The spawned process: load the model, run the engine, serve it on `sock` until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the call process's: it drains, then stops us
    if nice > 0:  # on a contended CPU the call process's RTP pacing wins over the engine's work
        with contextlib.suppress(OSError):
            os.nice(nice)
    from agent.log import configure_child_logging

    configure_child_logging(settings.logging.level, settings.logging.format)  # the parent's console/log file
    import torch

    from agent.commands import choice_is_tiny, engine_settings, load_choice
    from agent.errors import CliError
    from model.engine import Engine
    from model.errors import CheckpointError

    if threads > 0:
        torch.set_num_threads(threads)
    # the engine's worker thread holds the GIL between tensor ops; this process's event loop (the
    # socket) must get it back quickly, or every event and command waits up to the 5 ms default
    sys.setswitchinterval(0.0005)
    try:
        loaded = load_choice(settings.model, choice)
        tiny = choice_is_tiny(loaded)
        engine = Engine(loaded, engine_settings(settings.model, tiny, slots=slots))
    except Exception as exc:  # e.g. a checkpoint error: the call process says why, no traceback here
        message = str(exc) if isinstance(exc, (CheckpointError, CliError, OSError)) else \
            f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(OSError):
            sock.sendall(wire.failed(message))
        sock.close()
        raise SystemExit(1) from None
    info = {"description": choice.description, "device": str(loaded.device), "dtype": str(loaded.dtype),
            "decoder": loaded.decoder.name if loaded.decoder is not None else "none", "tiny": tiny}
    asyncio.run(_EngineHost(sock, engine, info).run())


class _EngineHost:
    """The engine process's event loop: frames in -> ThreadEngineClient; its events -> frames out."""

    def __init__(self, sock: socket.socket, engine: Engine, info: dict[str, Any]) -> None:
        from agent.engine_thread import ThreadEngineClient

        self.sock = sock
        self.engine = engine
        self.client = ThreadEngineClient(engine)
        self.info = info
        self.forwarders: dict[int, asyncio.Task[None]] = {}
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
            steps, times = self.engine.steps, self.engine.step_seconds
            new = min(steps - seen, len(times))
            seen = steps
            self.wire.send(wire.stats(steps, len(self.forwarders), self.client.rejected,
                                      times[len(times) - new :] if new > 0 else []))

    def _on_frame(self, body: bytes) -> None:
        if body[:1] == bytes([wire.STOP]):
            self._done.set()
            return
        try:
            command = wire.decode_command(body)
        except wire.WireError as exc:
            self.bad_frames += 1
            event(log, "engine.bad_frame", logging.WARNING, error=str(exc)[:200])
            return
        call = command.call
        if isinstance(command, Open) and call in self.forwarders:
            return
        self.client.submit(command)
        if isinstance(command, Open):
            self.forwarders[call] = asyncio.get_running_loop().create_task(self._forward(call))
        elif isinstance(command, Close):
            task = self.forwarders.pop(call, None)
            if task is not None:
                task.cancel()

    async def _forward(self, call: int) -> None:
        while True:
            self.wire.send(wire.encode(await self.client.next_event(call)))
