"""The asyncio adapter for the sans-IO ``UserAgent``: one UDP socket, one re-armed timer.

Every datagram and every timer expiry is handed to the UA with ``loop.time()``; after each call
the UA's datagrams are sent and its events passed to ``on_event``. The timer is re-armed with
``loop.call_at`` to ``ua.get_timer()``. An exception from the UA or from ``on_event`` is logged
and counted (``on_error``) and the socket keeps serving: a remote party's bad input must never
take the process down.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable

from agent.log import event
from sip_bridge.events import UaEvent
from sip_bridge.message import Addr
from sip_bridge.ua import UserAgent

log = logging.getLogger(__name__)

MAX_DATAGRAM_BYTES = 65535


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class _SipProtocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: SipUdpEndpoint) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.endpoint.datagram_received(data, (str(addr[0]), int(str(addr[1]))))

    def error_received(self, exc: Exception) -> None:
        self.endpoint.ua.stats["socket_errors"] += 1


class SipUdpEndpoint:
    """Drives ``ua`` from a UDP socket; construct, then ``await open(host, port)``."""

    def __init__(self, ua: UserAgent, on_event: Callable[[UaEvent], None],
                 on_error: Callable[[str], None] | None = None,
                 on_pumped: Callable[[], None] | None = None) -> None:
        self.ua = ua
        self.on_pumped = on_pumped
        self.on_event = on_event
        self.on_error = on_error or (lambda kind: None)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.local_address: Addr | None = None

    async def open(self, host: str, port: int) -> Addr:
        """Bind (port 0 picks a free one); returns the bound address."""
        self._loop = asyncio.get_running_loop()
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _SipProtocol(self), local_addr=(host, port)
        )
        self._transport = transport
        sockname = transport.get_extra_info("sockname")
        self.local_address = (str(sockname[0]), int(sockname[1]))
        return self.local_address

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    @property
    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    # --- input --------------------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: Addr) -> None:
        try:
            self.ua.receive_datagram(data[:MAX_DATAGRAM_BYTES], addr, self.now)
        except Exception as exc:  # a parser gap must not take the socket down
            self.ua.stats["internal_errors"] += 1
            self.on_error("sip_internal")
            event(log, "sip.internal_error", logging.ERROR, error=repr(exc)[:200], source=f"{addr[0]}:{addr[1]}")
        self.pump()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self.ua.handle_timer(self.now)
        except Exception as exc:
            self.ua.stats["internal_errors"] += 1
            self.on_error("sip_internal")
            event(log, "sip.timer_error", logging.ERROR, error=repr(exc)[:200])
        self.pump()

    # --- output -------------------------------------------------------------------------------
    def pump(self) -> None:
        """Send what the UA has to send, deliver its events, re-arm the timer (after every command)."""
        for _ in range(100):  # events may issue commands that produce more output and events
            self._flush_datagrams()
            ua_event = self.ua.next_event()
            if ua_event is None:
                break
            try:
                self.on_event(ua_event)
            except Exception as exc:
                self.on_error("sip_event_handler")
                event(log, "sip.event_handler_error", logging.ERROR, event_type=type(ua_event).__name__,
                      error=repr(exc)[:200])
        self._flush_datagrams()
        self._arm_timer()
        if self.on_pumped is not None:
            self.on_pumped()

    def _flush_datagrams(self) -> None:
        for data, addr in self.ua.datagrams_to_send():
            if self._transport is None:
                return
            if not _is_ip_literal(addr[0]):
                self.ua.stats["unresolved_targets"] += 1  # no DNS lookups on the event loop
                continue
            try:
                self._transport.sendto(data, addr)
            except (OSError, ValueError) as exc:  # unresolvable host in a Via, closed socket
                self.ua.stats["send_errors"] += 1
                event(log, "sip.send_error", logging.WARNING, error=repr(exc)[:200], target=str(addr)[:80])

    def _arm_timer(self) -> None:
        deadline = self.ua.get_timer()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None and self._loop is not None and self._transport is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)
