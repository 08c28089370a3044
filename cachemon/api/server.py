"""The HTTP server under the API: uvicorn on sockets bound up front, with
its h11 protocol guarded against half-open connections.

Against a hostile client: a request must arrive within a few seconds of its
connection and the open connections are capped below the process's
file-descriptor limit (`build_server`); forwarded headers are read by
`access.ForwardedFor`, never by uvicorn.
"""

from __future__ import annotations

import logging
import resource
import socket
from collections import OrderedDict
from dataclasses import dataclass

import h11
import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol

from cachemon.api.access import ForwardedFor, networks
from cachemon.errors import InputError
from cachemon.settings import API_HOST, API_PORT

HEAD_TIMEOUT = 10.0  # seconds for a request line and headers to arrive
MAX_CONNECTIONS = 512  # open connections, at most (also kept below the descriptor limit)
FD_RESERVE = 64  # descriptors kept for the store, logs and the thread pool
# Connections asyncio accepts in one go (also the listen queue). Up to about
# four such batches are open before the cap can close any, so they need room
# below the descriptor limit too: at the limit nobody gets in, /healthz neither.
BACKLOG = 128

log = logging.getLogger("cachemon.api")


@dataclass(frozen=True)
class ServeOptions:
    """How `cachemon serve` listens."""

    host: str = API_HOST
    port: int = API_PORT
    trust_proxy: tuple = ()  # proxies (addresses or networks) whose X-Forwarded-For names the client; none by default
    head_timeout: float = HEAD_TIMEOUT
    max_connections: int = MAX_CONNECTIONS


def serve(app: Starlette, options: ServeOptions) -> None:
    """Run `app` under uvicorn until SIGTERM/SIGINT."""
    server, socks = build_server(app, options)
    server.run(sockets=socks)


def build_server(app: Starlette, options: ServeOptions):
    """A uvicorn server for `app` and its bound sockets (`server.run(sockets=socks)`)."""
    cap = connection_cap(options.max_connections)
    socks = listen_sockets(options.host, options.port)
    if options.trust_proxy:
        app = ForwardedFor(app, networks(options.trust_proxy, "--trust-proxy"))
    config = uvicorn.Config(
        app,
        log_level="info",
        http=guarded_protocol(options.head_timeout, cap),
        # No WebSocket routes: an upgrade would hand the connection to another
        # protocol behind the guard's back (and out of its count).
        ws="none",
        # uvicorn trusts X-Forwarded-For from 127.0.0.1 by default: a local
        # client could then pick its own address for the limiter and the log.
        # Forwarded headers are read by ForwardedFor below, never by uvicorn.
        proxy_headers=False,
        # No limit_concurrency: uvicorn counts half-open connections in it and
        # would answer /healthz 503; the protocol's own cap makes room instead.
        backlog=BACKLOG,
    )
    # uvicorn configured its loggers above; ours writes where they do.
    log.handlers, log.propagate = logging.getLogger("uvicorn").handlers, False
    log.setLevel(logging.INFO)
    log.info("cachemon serving on %s:%d (at most %d connections)", options.host, options.port, cap)
    return uvicorn.Server(config), socks


def listen_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound sockets for every address `host` resolves to (as uvicorn would:
    `localhost` is 127.0.0.1 and ::1), so a bad address or a port in use is
    one clear error before the server starts (uvicorn would log and exit 1)."""
    if not 1 <= port <= 65535:  # getaddrinfo would wrap 70000 to 4464
        raise InputError(f"--port must be 1 to 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, OverflowError) as exc:
        raise InputError(
            f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    socks: list[socket.socket] = []
    try:
        for family, type_, proto, _, addr in dict.fromkeys(infos):
            sock = socket.socket(family, type_, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio does
            sock.bind(addr)
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return socks


def connection_cap(wanted: int) -> int:
    """`wanted` connections, kept FD_RESERVE below the soft descriptor
    limit: at the limit the server could accept no one, /healthz included."""
    if wanted < 1:
        raise InputError(f"--max-connections must be 1 or more, got {wanted}")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    room = soft - FD_RESERVE - 4 * BACKLOG
    if room < 1:
        raise InputError(
            f"the file-descriptor limit ({soft}) leaves no room for connections; raise `ulimit -n`"
        )
    return min(wanted, room)


def guarded_protocol(head_timeout: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with two guards against half-open connections
    (slowloris), which uvicorn lacks: a connection waiting for a request
    (line and headers) is closed after `head_timeout` seconds, and past
    `max_connections` open connections the one that has waited longest for
    its request is closed to make room, so a new client always gets in."""
    waiting: OrderedDict[H11Protocol, None] = OrderedDict()  # oldest first
    open_: set[H11Protocol] = set()

    class Guarded(H11Protocol):
        _head_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            open_.add(self)
            self._await_request()
            if len(open_) > max_connections:
                next((c for c in waiting if c is not self), self)._drop()

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:
                self._request_arrived()

        def on_response_complete(self) -> None:
            if not self.transport.is_closing():
                self._await_request()  # the next request on this connection
            super().on_response_complete()

        def connection_lost(self, exc) -> None:
            open_.discard(self)
            self._request_arrived()
            super().connection_lost(exc)

        def _await_request(self) -> None:
            self._request_arrived()
            waiting[self] = None
            self._head_timer = self.loop.call_later(head_timeout, self._head_timed_out)

        def _request_arrived(self) -> None:
            waiting.pop(self, None)
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self in waiting:
                self._drop()

        def _drop(self) -> None:
            open_.discard(self)
            self._request_arrived()
            self.transport.close()

    return Guarded
