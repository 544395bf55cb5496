"""Frames of ``agent.engine_wire`` over a non-blocking stream socket, read and written from an event loop.

Both ends of the engine process's socket pair use it (``agent.engine_process`` in the call process,
``agent.engine_child`` in the engine process). Reads go through ``add_reader``; a write that does
not fit the socket's buffer is queued and finished through ``add_writer``, and ``blocked_for``
says how long writes have been queuing (the call process refuses caller audio past a bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import Callable

from agent import engine_wire as wire


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
