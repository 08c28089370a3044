"""The metrics HTTP API (`python -m cachemon serve`): a Starlette app.

    GET /metrics?period=15m|1h|24h|7d&format=json|prometheus
    GET /healthz
    GET /openapi.json

One implementation with `cachemon metrics` (both build the response with
`usecases.metrics_report.build`).
Responses are cached per (period, format) for five minutes, as the design
says, but never past the instant their data turns stale (`expiry`); `Age`,
`Cache-Control: max-age` and `X-Data-Until` tell a client how old they
are. Ten requests per minute per client, the eleventh gets 429 with
Retry-After; `allow` lists addresses or networks exempt (a Prometheus
scraper). When
CACHEMON_API_TOKEN is set, every route but /healthz needs it as a bearer
token. The clock is injected.

Against a hostile client: the client is the TCP peer (forwarded headers
count only from proxies the operator names), the limiter remembers a
bounded number of peers, a request must arrive within a few seconds of
its connection and the open connections are capped below the process's
file-descriptor limit (`build_server`), and no redirect is built from request
headers.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import resource
import socket
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import h11
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from cachemon import jsontext
from cachemon.clock import Period, iso
from cachemon.errors import CachemonError, InputError, StoreError
from cachemon.metrics import exposition
from cachemon.metrics import window as metrics
from cachemon.runner import selfcheck
from cachemon.settings import Config
from cachemon.store import db as store
from cachemon.store.queries import data_span
from cachemon.usecases import metrics_report

CACHE_FOR = timedelta(minutes=5)
RATE_LIMIT = 10  # requests per client IP per minute
MAX_QUERY = 512  # characters of query string
PARAMS = {"period", "format"}
MAX_PEERS = 4096  # clients the limiter remembers at once (each at most RATE_LIMIT timestamps)
HEAD_TIMEOUT = 10.0  # seconds for a request line and headers to arrive
MAX_CONNECTIONS = 512  # open connections, at most (also kept below the descriptor limit)
FD_RESERVE = 64  # descriptors kept for the store, logs and the thread pool
# Connections asyncio accepts in one go (also the listen queue). Up to about
# four such batches are open before the cap can close any, so they need room
# below the descriptor limit too: at the limit nobody gets in, /healthz neither.
BACKLOG = 128

log = logging.getLogger("cachemon.api")


@dataclass(frozen=True)
class ApiSettings:
    token: str | None = None  # CACHEMON_API_TOKEN; never logged
    allow: tuple = ()  # client addresses or networks exempt from the rate limit
    rate_limit: int = RATE_LIMIT
    cache_for: timedelta = CACHE_FOR
    max_peers: int = MAX_PEERS  # clients the rate limiter remembers


class RateLimiter:
    """Sliding one-minute window per peer, for at most `max_peers` peers.

    Peers are kept least recently seen first; one idle for a minute has
    nothing left to count and is forgotten when room is needed. When all
    `max_peers` were active within the minute, every further peer shares
    one overflow budget: memory stays bounded and a flood of addresses is
    limited, not let through (evicting live peers would reset their counts).
    """

    def __init__(self, limit: int, max_peers: int = MAX_PEERS):
        self.limit = limit
        self.max_peers = max_peers
        self.hits: OrderedDict[str, deque] = OrderedDict()
        self.overflow: deque = deque()
        self.warned_at: datetime | None = None
        self.lock = threading.Lock()  # handlers run in a thread pool

    def __len__(self) -> int:
        return len(self.hits)

    def retry_after(self, client: str, now: datetime) -> int:
        """0 when the request may pass (and counts it), else seconds to wait."""
        with self.lock:
            return self._count(self._queue(peer_key(client), now), now)

    def _queue(self, peer: str, now: datetime) -> deque:
        q = self.hits.get(peer)
        if q is not None:
            self.hits.move_to_end(peer)
            return q
        self._forget_idle(now)
        if len(self.hits) >= self.max_peers:
            if self.warned_at is None or now - self.warned_at >= timedelta(minutes=1):
                self.warned_at = now  # said once a minute, not once a request
                log.warning(
                    "rate limiter: %d clients active within a minute; further clients share one budget",
                    len(self.hits),
                )
            return self.overflow
        q = self.hits[peer] = deque()
        return q

    def _forget_idle(self, now: datetime) -> None:
        while self.hits:
            peer, q = next(iter(self.hits.items()))
            if q and now - q[-1] < timedelta(minutes=1):
                return  # the least recently seen peer is active: so are all others
            del self.hits[peer]

    def _count(self, q: deque, now: datetime) -> int:
        while q and now - q[0] >= timedelta(minutes=1):
            q.popleft()
        if len(q) >= self.limit:
            return max(1, math.ceil((q[0] + timedelta(minutes=1) - now).total_seconds()))
        q.append(now)
        return 0


def peer_key(host: str) -> str:
    """The limiter's key of a client address: the address, or its /64 for
    IPv6 (one host commonly holds a whole /64, so addresses are free there)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.version == 6:
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def create_app(cfg: Config, settings: ApiSettings, clock: Callable[[], datetime]) -> Starlette:
    # (period, format) -> (computed at, body, media type, X-Data-Until, expires at)
    cache: dict[tuple[str, str], tuple[datetime, bytes, str, str, datetime]] = {}
    limiter = RateLimiter(settings.rate_limit, settings.max_peers)
    allow = networks(settings.allow, "--allow")

    def guard(request: Request) -> Response | None:
        # The limit comes first, so it also slows down anyone guessing tokens.
        client = request.client.host if request.client else "unknown"
        if not member(client, allow):
            wait = limiter.retry_after(client, clock())
            if wait:
                return _error(
                    429,
                    f"rate limit: {settings.rate_limit} requests per minute",
                    {"Retry-After": str(wait)},
                )
        if settings.token:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {settings.token}".encode()):
                return _error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        return None

    # Plain `def` handlers: Starlette runs them in its thread pool, so a
    # store query never blocks the event loop.
    def get_metrics(request: Request) -> Response:
        denied = guard(request)
        if denied:
            return denied
        try:
            period, fmt = _parse_query(request)
        except InputError as exc:
            return _error(400, str(exc))
        now = clock()
        hit = cache.get((period.value, fmt))
        if not hit or now >= hit[4]:
            try:
                with store.shared_reader(cfg.store.path) as con:
                    report = metrics_report.build(con, cfg, period, now)
            except StoreError as exc:
                return _error(503, str(exc))
            m = report.metrics
            if fmt == "prometheus":
                body, media = report.to_prometheus().encode(), exposition.CONTENT_TYPE
            else:
                body, media = jsontext.dumps(report.to_json()).encode(), "application/json"
            hit = cache[(period.value, fmt)] = (
                now,
                body,
                media,
                iso(m.data_until) if m.data_until else "",
                expiry(now, settings.cache_for, m, cfg.metrics.stale_after),
            )
        # The body is as of its computation (`timestamp`, `dataAgeSeconds`):
        # Age says how long ago, max-age how long it may still be kept.
        left = hit[4] - now
        return Response(
            hit[1],
            media_type=hit[2],
            headers={
                "Cache-Control": f"public, max-age={max(0, int(left.total_seconds()))}",
                "X-Data-Until": hit[3],
                "Age": str(max(0, int((now - hit[0]).total_seconds()))),
            },
        )

    def healthz(request: Request) -> Response:
        now = clock()
        try:
            with store.shared_reader(cfg.store.path) as con:
                span = data_span(con, now)  # never negative, never hidden by future rows
                runner = selfcheck.check(con, cfg, now)
        except CachemonError as exc:
            return JSONResponse(
                {"status": "error", "store": "unreadable", "error": str(exc)}, status_code=503
            )
        return JSONResponse(health_body(span, runner, now, cfg.metrics.stale_after))

    def openapi(request: Request) -> Response:
        denied = guard(request)
        return denied or JSONResponse(OPENAPI)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        # Unknown paths and methods answer in JSON like every other error.
        text = {
            404: f"no such path {request.url.path!r}",
            405: f"method {request.method} not allowed",
        }
        return _error(
            exc.status_code, text.get(exc.status_code, str(exc.detail)), dict(exc.headers or {})
        )

    app = Starlette(
        routes=[
            Route("/metrics", get_metrics),
            Route("/healthz", healthz),
            Route("/openapi.json", openapi),
        ],
        exception_handlers={HTTPException: http_error},
    )
    # Starlette would answer /metrics/ with a redirect built from the Host
    # header (an open redirect): a path either exists or is a 404.
    app.router.redirect_slashes = False
    app.state.limiter = limiter  # for tests and introspection: its size is bounded
    return app


def expiry(
    computed: datetime, keep: timedelta, m: metrics.Metrics, stale_after: timedelta
) -> datetime:
    """When a cached answer computed at `computed` must be recomputed:
    after `keep`, and, when it says the data is fresh, no later than the
    instant the data is `stale_after` old, so a cached body never says
    `stale: false` (or `cachemon_data_stale 0`) about data stale by then.
    (`stale` is judged at the minute; between that instant and the next
    minute every request recomputes, max-age 0.)"""
    until = computed + keep
    if m.data_until is not None and not metrics.is_stale(m, stale_after):
        until = min(until, m.data_until + stale_after)
    return until


def health_body(
    span: tuple[datetime, datetime] | None,
    runner: selfcheck.RunnerCheck,
    now: datetime,
    stale_after: timedelta,
) -> dict:
    """/healthz's answer: `degraded` when the runner stalled or a job's last
    run failed (even while the data still looks fresh), else `stale` when the
    data is older than `stale_after`, else `ok`."""
    age = int((now - span[1]).total_seconds()) if span else None
    stale = age is None or age > stale_after.total_seconds()
    problems = runner.problems()
    if stale:
        problems.append(
            "no request data in the store"
            if span is None
            else f"the newest data is {selfcheck.rough_age(now - span[1])} old (until {iso(span[1])})"
        )
    status = "degraded" if not runner.healthy else "stale" if stale else "ok"
    return {
        "status": status,
        "store": "readable",
        "dataUntil": iso(span[1]) if span else None,
        "dataAgeSeconds": age,
        "runner": runner.to_json(),
        "problems": problems,
    }


@dataclass(frozen=True)
class ServeOptions:
    """How `cachemon serve` listens."""

    host: str = "127.0.0.1"
    port: int = 8787
    trust_proxy: tuple = ()  # proxies (addresses or networks) whose X-Forwarded-For names the client; none by default
    head_timeout: float = HEAD_TIMEOUT
    max_connections: int = MAX_CONNECTIONS


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(values, flag: str) -> tuple[Network, ...]:
    """Addresses and networks (`10.0.0.5`, `10.0.0.0/8`, `::1`, `fd00::/8`)
    parsed, so a client matches by membership whatever way it is spelled;
    anything else (`*`, a host name, garbage) is an error naming `flag`:
    silently ignored, it would leave a scraper rate-limited or a proxy's
    clients merged into one."""
    out = []
    for v in values:
        if isinstance(v, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            out.append(v)
            continue
        try:
            out.append(_unmapped(ipaddress.ip_network(str(v).strip(), strict=False)))
        except ValueError:
            raise InputError(
                f"{flag} {str(v)[:60]!r} is not an IP address or network "
                "(like 10.0.0.5, 10.0.0.0/24 or fd00::/8)"
            ) from None
    return tuple(out)


def _unmapped(net: Network) -> Network:
    """An IPv4-mapped IPv6 network (::ffff:10.0.0.0/104) as the IPv4 one:
    clients are matched in that form (see `address`)."""
    mapped = net.network_address.ipv4_mapped if net.version == 6 and net.prefixlen >= 96 else None
    return ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}") if mapped else net


def check_proxies(values: tuple[str, ...]) -> tuple[Network, ...]:
    """Trusted proxies must be addresses or networks: `*` or a name would let
    any client pick its own address."""
    return networks(values, "--trust-proxy")


def address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`text` as an IP address (an IPv4-mapped IPv6 one as IPv4; a
    `host:port` or `[v6]:port` as its host), or None when it is none."""
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip


def member(host: str, nets: tuple[Network, ...]) -> bool:
    ip = address(host) if host else None
    return ip is not None and any(ip in n for n in nets)


class ForwardedFor:
    """The client behind trusted proxies, from X-Forwarded-For (uvicorn's
    own handling takes any text there as the client, so each garbage value
    would be a new client for the limiter). The header is read from the
    right: trusted proxies are skipped, the first other hop is the client;
    a hop that is not an IP address ends the walk and the last trusted
    proxy stands for the client. A peer that is no trusted proxy keeps its
    own address whatever it sends."""

    def __init__(self, app, trusted: tuple[Network, ...]):
        self.app, self.trusted = app, trusted

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and scope.get("client"):
            scope["client"] = self.client(scope["client"], scope.get("headers") or [])
        return await self.app(scope, receive, send)

    def client(self, peer: tuple, headers) -> tuple:
        if not member(peer[0], self.trusted):
            return peer
        hops = [
            h
            for name, value in headers
            if name.lower() == b"x-forwarded-for"
            for h in value.decode("latin-1").split(",")
        ]
        current = peer
        for hop in reversed(hops):
            ip = address(hop)
            if ip is None:
                break  # not an address: no new identity, the proxy answers for it
            current = (str(ip), 0)
            if not any(ip in n for n in self.trusted):
                break
        return current


def serve(app: Starlette, options: ServeOptions) -> None:
    """Run `app` under uvicorn until SIGTERM/SIGINT."""
    server, socks = build_server(app, options)
    server.run(sockets=socks)


def build_server(app: Starlette, options: ServeOptions):
    """A uvicorn server for `app` and its bound sockets (`server.run(sockets=socks)`)."""
    import uvicorn

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


def exposure_warning(host: str, token: str | None) -> str | None:
    """A warning when the API would serve anyone who can reach it."""
    if token or _is_loopback(host):
        return None
    return (
        f"listening on {host}, which is not a loopback address, without CACHEMON_API_TOKEN: "
        "anyone who can reach this port reads the metrics"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: assume it is reachable


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


def _parse_query(request: Request) -> tuple[Period, str]:
    """period and format from the query string; anything else is an error."""
    raw = request.url.query
    if len(raw) > MAX_QUERY:
        raise InputError(f"query string too long ({len(raw)} characters, at most {MAX_QUERY})")
    items = request.query_params.multi_items()
    names = [k for k, _ in items]
    for name in names:
        if name not in PARAMS:
            raise InputError(f"unknown parameter {name[:40]!r}: use period and format")
        if names.count(name) > 1:
            raise InputError(f"parameter {name!r} given more than once")
    q = dict(items)
    fmt = q.get("format", "json")
    if fmt not in ("json", "prometheus"):
        raise InputError(f"unknown format {fmt[:40]!r}: use json or prometheus")
    return Period.parse(q.get("period", "1h")[:40]), fmt


def _error(status: int, message: str, headers: dict | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


_PERIOD = {
    "name": "period",
    "in": "query",
    "schema": {"type": "string", "enum": [p.value for p in Period], "default": "1h"},
}
_FORMAT = {
    "name": "format",
    "in": "query",
    "schema": {"type": "string", "enum": ["json", "prometheus"], "default": "json"},
}
_ERROR = {
    "description": "error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}},
                "required": ["error"],
            }
        }
    },
}
OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "cachemon metrics API", "version": "1"},
    "paths": {
        "/metrics": {
            "get": {
                "summary": "Cache metrics of a period (the seed's JSON shape, or Prometheus text 0.0.4)",
                "parameters": [_PERIOD, _FORMAT],
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": [
                                        "timestamp",
                                        "period",
                                        "hitRates",
                                        "latency",
                                        "volume",
                                    ],
                                }
                            },
                            "text/plain": {"schema": {"type": "string"}},
                        },
                    },
                    "400": _ERROR,
                    "401": _ERROR,
                    "429": _ERROR,
                    "503": _ERROR,
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Process up, store readable, data age, job runner state",
                "responses": {
                    "200": {
                        "description": "ok, stale or degraded (see problems)",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "503": {
                        "description": "store unreadable",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                },
            }
        },
    },
}
