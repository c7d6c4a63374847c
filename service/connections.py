"""Connections a slow or hostile client cannot hoard: a descriptor limit raised at start, a cap on open
connections with a clean 503 beyond it, and deadlines: a connection's first request headers within
``--header-timeout`` (``HeaderDeadlines``), later ones within the idle keep-alive time (aiohttp's own
timer, ``--keepalive-timeout``), and a body within ``--body-timeout`` (``api.read_json``).

Runs in the server process, in its event loop. ``GatedRunner`` is aiohttp's ``AppRunner`` whose
protocol factory (what a site hands to ``loop.create_server``) is a ``ConnectionGate``: below the cap
it makes aiohttp's own connection handler; at the cap it makes a ``RefusedConnection``, which writes
one ``503 too_many_connections`` answer, half-closes, and is gone within ``REFUSED_LINGER_S``.
An event stream is a connection like any other: it counts against the cap, and no deadline ends it
(the keep-alive timer only closes a connection that waits for a request).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Awaitable, Callable

import orjson
from aiohttp import web

from service.errors import TooManyConnections

log = logging.getLogger("snnmon.connections")

# Descriptors kept for everything but client connections: the store, worker pipes and queues, logs,
# the listening sockets, imports (2 cores run at most a handful of workers).
RESERVED_FDS = 128
# With a very high hard limit, memory (tens of KiB a connection) is the bound, not descriptors.
MAX_DEFAULT_CONNECTIONS = 8192
REFUSED_LINGER_S = 1.0  # a refused client gets this long to read its 503 before the socket closes
WARN_EVERY_S = 10.0  # at most one "cap reached" log line this often


def raise_descriptor_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (systemd's default soft limit is 1,024);
    return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft


def connection_cap(max_connections: int, descriptor_limit: int) -> int:
    """``--max-connections``, or (0) the descriptor limit less ``RESERVED_FDS``, at most ``MAX_DEFAULT_CONNECTIONS``."""
    if max_connections > 0:
        return max_connections
    return max(16, min(descriptor_limit - RESERVED_FDS, MAX_DEFAULT_CONNECTIONS))


def _refusal(cap: int) -> bytes:
    error = TooManyConnections(f"the server is at its limit of {cap} open connections; retry shortly",
                               limit=cap)
    body = orjson.dumps(error.body())
    head = (f"HTTP/1.1 {error.status} Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body


class RefusedConnection(asyncio.Protocol):
    """One connection over the cap: its 503 is written at once, whatever the client sends."""

    def __init__(self, answer: bytes):
        self._answer = answer
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # (uvloop's transports are not asyncio.Transport subclasses)
        transport.write(self._answer)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(REFUSED_LINGER_S, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass  # the request is not read: the answer is the same whatever it was

    def eof_received(self) -> bool:
        return False  # the client has read the answer and closed: close too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


class HeaderDeadlines:
    """A new connection must send its first request's headers within ``timeout_s``, else it is closed.

    The gate starts a deadline for each connection it lets in; the app's outermost middleware, which
    runs once a request's headers are parsed, clears it. A connection is held here until its deadline
    at the latest (aiohttp's handlers take no weak references)."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._pending: dict[asyncio.BaseProtocol, asyncio.TimerHandle] = {}
        self.expired = 0

    def start(self, handler: asyncio.BaseProtocol) -> None:
        timer = asyncio.get_running_loop().call_later(self.timeout_s, self._expire, handler)
        self._pending[handler] = timer

    def arrived(self, handler: object) -> None:
        timer = self._pending.pop(handler, None)  # type: ignore[call-overload]
        if timer is not None:
            timer.cancel()

    def _expire(self, handler) -> None:
        if self._pending.pop(handler, None) is not None and handler.transport is not None:
            self.expired += 1
            log.debug("closing a connection that sent no request headers within %g s", self.timeout_s)
            handler.force_close()

    def middleware(self):
        @web.middleware
        async def headers_arrived(request: web.Request,
                                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
            self.arrived(request.protocol)
            return await handler(request)

        return headers_arrived


HEADER_DEADLINES = web.AppKey("header_deadlines", HeaderDeadlines)


class ConnectionGate:
    """The protocol factory for ``loop.create_server``: aiohttp's handler below the cap, a refusal at it.

    aiohttp counts a connection once its ``connection_made`` has run, a loop turn after this factory:
    a burst accepted in one turn can pass the cap by that burst (a few dozen at most; the reserve of
    descriptors covers it)."""

    def __init__(self, server: web.Server, cap: int, deadlines: HeaderDeadlines | None = None):
        self.server = server
        self.cap = cap
        self.deadlines = deadlines
        self.refused = 0
        self._answer = _refusal(cap)
        self._warned_at = float("-inf")

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self.server.connections) < self.cap:
            handler = self.server()
            if self.deadlines is not None:
                self.deadlines.start(handler)
            return handler
        self.refused += 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning("%d connections open, the limit (--max-connections): refusing new ones with 503 "
                        "(%d refused so far)", self.cap, self.refused)
        return RefusedConnection(self._answer)


class GatedRunner(web.AppRunner):
    """An ``AppRunner`` whose sites accept connections through a ``ConnectionGate``."""

    def __init__(self, app: web.Application, *, max_connections: int, **kwargs):
        super().__init__(app, **kwargs)
        self._cap = max_connections
        self._gate: ConnectionGate | None = None

    @property
    def server(self):  # what TCPSite.start hands to loop.create_server
        real = super().server
        if real is None:
            return None
        if self._gate is None or self._gate.server is not real:
            self._gate = ConnectionGate(real, self._cap, self.app.get(HEADER_DEADLINES))
        return self._gate

    @property
    def gate(self) -> ConnectionGate | None:
        return self._gate
