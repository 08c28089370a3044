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

Against a hostile client: the client is the TCP peer and the limiter's
memory is bounded (`cachemon.api.access`), connections are guarded by the
server (`cachemon.api.server`), and no redirect is built from request
headers.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cachemon import jsontext
from cachemon.api.access import MAX_PEERS, RATE_LIMIT, RateLimiter, member, networks
from cachemon.api.openapi import OPENAPI
from cachemon.clock import Period, iso
from cachemon.errors import CachemonError, InputError, StoreError
from cachemon.metrics import exposition
from cachemon.metrics import window as metrics_window
from cachemon.metrics.memo import SnapshotMemo
from cachemon.runner import selfcheck
from cachemon.settings import Config
from cachemon.store import db as store_db
from cachemon.store.queries import data_span
from cachemon.store.snapshots import snapshot_version
from cachemon.usecases import metrics_report

CACHE_FOR = timedelta(minutes=5)
MAX_QUERY = 512  # characters of query string
PARAMS = {"period", "format"}


@dataclass(frozen=True)
class ApiSettings:
    token: str | None = None  # CACHEMON_API_TOKEN; never logged
    allow: tuple = ()  # client addresses or networks exempt from the rate limit
    rate_limit: int = RATE_LIMIT
    cache_for: timedelta = CACHE_FOR
    max_peers: int = MAX_PEERS  # clients the rate limiter remembers


def create_app(cfg: Config, settings: ApiSettings, clock: Callable[[], datetime]) -> Starlette:
    # (period, format) -> (computed at, body, media type, X-Data-Until, expires at)
    cache: dict[tuple[str, str], tuple[datetime, bytes, str, str, datetime]] = {}
    limiter = RateLimiter(settings.rate_limit, settings.max_peers)
    memos = Memos(cfg.store.path)
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
                with memos.reading() as (con, memo):
                    report = metrics_report.build(con, cfg, period, now, memo=memo)
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
            with store_db.shared_reader(cfg.store.path) as con:
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
    app.state.memos = memos  # for tests: what is kept, and for which snapshot
    return app


class Memos:
    """The current snapshot's memo (`metrics.memo`): a report's window
    figures are computed once per published snapshot version, so an
    uncached response costs only what depends on its instant. A new
    version gets a new memo; a connection whose version is in doubt (a
    publish while it was opened) gets none."""

    def __init__(self, path):
        self.path = path
        self.current: SnapshotMemo | None = None
        self._lock = threading.Lock()

    @contextmanager
    def reading(self) -> Iterator[tuple[duckdb.DuckDBPyConnection, SnapshotMemo | None]]:
        """A shared reader's connection and the memo of the snapshot it
        reads (None when a publish raced the opening)."""
        before = snapshot_version(self.path)
        with store_db.shared_reader(self.path) as con:
            # The version named before and after the reader was opened is
            # the one it opened (versions never come back).
            if not before or snapshot_version(self.path) != before:
                yield con, None
                return
            with self._lock:
                if self.current is None or self.current.version != before:
                    self.current = SnapshotMemo(before)
                memo = self.current
            yield con, memo


def expiry(
    computed: datetime, keep: timedelta, m: metrics_window.Metrics, stale_after: timedelta
) -> datetime:
    """When a cached answer computed at `computed` must be recomputed:
    after `keep`, and, when it says the data is fresh, no later than the
    instant the data is `stale_after` old, so a cached body never says
    `stale: false` (or `cachemon_data_stale 0`) about data stale by then.
    (`stale` is judged at the minute; between that instant and the next
    minute every request recomputes, max-age 0.)"""
    until = computed + keep
    if m.data_until is not None and not metrics_window.is_stale(m, stale_after):
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
