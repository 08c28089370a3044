"""The metrics HTTP API (`python -m cachemon serve`): a Starlette app.

    GET /metrics?period=15m|1h|24h|7d&format=json|prometheus
    GET /healthz
    GET /openapi.json

One implementation with `cachemon metrics` (both call `metrics.compute`).
Responses are cached per (period, format) for five minutes, as the design
says; `Cache-Control: max-age` and `X-Data-Until` tell a client how old they
are. Ten requests per minute per client IP, the eleventh gets 429 with
Retry-After; `allow` lists addresses exempt (a Prometheus scraper). When
CACHEMON_API_TOKEN is set, every route but /healthz needs it as a bearer
token. The clock is injected.
"""

from __future__ import annotations

import hmac
import json
import math
import threading
from collections import defaultdict, deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import costs, exposition, health, metrics, store
from .clock import Period, Window, iso
from .config import Config
from .errors import CachemonError, InputError, StoreError

CACHE_FOR = timedelta(minutes=5)
RATE_LIMIT = 10  # requests per client IP per minute
MAX_QUERY = 512  # characters of query string
PARAMS = {"period", "format"}


@dataclass(frozen=True)
class ApiSettings:
    token: str | None = None  # CACHEMON_API_TOKEN; never logged
    allow: tuple[str, ...] = ()  # client IPs exempt from the rate limit
    rate_limit: int = RATE_LIMIT
    cache_for: timedelta = CACHE_FOR


class _RateLimiter:
    """Sliding one-minute window per client address."""

    def __init__(self, limit: int):
        self.limit = limit
        self.hits: dict[str, deque] = defaultdict(deque)
        self.lock = threading.Lock()  # handlers run in a thread pool

    def retry_after(self, client: str, now: datetime) -> int:
        """0 when the request may pass (and counts it), else seconds to wait."""
        with self.lock:
            return self._retry_after(client, now)

    def _retry_after(self, client: str, now: datetime) -> int:
        q = self.hits[client]
        while q and now - q[0] >= timedelta(minutes=1):
            q.popleft()
        if len(q) >= self.limit:
            return max(1, math.ceil((q[0] + timedelta(minutes=1) - now).total_seconds()))
        q.append(now)
        return 0


def create_app(cfg: Config, settings: ApiSettings, clock: Callable[[], datetime]) -> Starlette:
    cache: dict[tuple[str, str], tuple[datetime, bytes, str, str]] = {}
    limiter = _RateLimiter(settings.rate_limit)

    def guard(request: Request) -> Response | None:
        # The limit comes first, so it also slows down anyone guessing tokens.
        client = request.client.host if request.client else "unknown"
        if client not in settings.allow:
            wait = limiter.retry_after(client, clock())
            if wait:
                return _error(429, f"rate limit: {settings.rate_limit} requests per minute", {"Retry-After": str(wait)})
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
        if not hit or now - hit[0] >= settings.cache_for:
            try:
                with store.shared_reader(cfg.store.path) as con:
                    m = metrics.compute(con, Window.ending(now, period.length), period.value, latest=True)
                    state = health.health(con, m.at, cfg.alerts.evaluate_every)
                    block = costs.for_window(con, m.window, m.at, cfg)
            except StoreError as exc:
                return _error(503, str(exc))
            if fmt == "prometheus":
                body = exposition.render(m, cfg.metrics.stale_after, state, block).encode()
                media = exposition.CONTENT_TYPE
            else:
                body = json.dumps(metrics.to_json(m, cfg.metrics.stale_after, state, block)).encode()
                media = "application/json"
            hit = cache[(period.value, fmt)] = (now, body, media, iso(m.data_until) if m.data_until else "")
        left = settings.cache_for - (now - hit[0])
        return Response(hit[1], media_type=hit[2], headers={
            "Cache-Control": f"public, max-age={max(0, int(left.total_seconds()))}", "X-Data-Until": hit[3]})

    def healthz(request: Request) -> Response:
        now = clock()
        try:
            with store.shared_reader(cfg.store.path) as con:
                span = metrics.data_span(con, now)  # never negative, never hidden by future rows
        except CachemonError as exc:
            return JSONResponse({"status": "error", "store": "unreadable", "error": str(exc)}, status_code=503)
        age = int((now - span[1]).total_seconds()) if span else None
        stale = age is None or age > cfg.metrics.stale_after.total_seconds()
        return JSONResponse({"status": "stale" if stale else "ok", "store": "readable",
                             "dataUntil": iso(span[1]) if span else None, "dataAgeSeconds": age})

    def openapi(request: Request) -> Response:
        denied = guard(request)
        return denied or JSONResponse(OPENAPI)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        # Unknown paths and methods answer in JSON like every other error.
        text = {404: f"no such path {request.url.path!r}", 405: f"method {request.method} not allowed"}
        return _error(exc.status_code, text.get(exc.status_code, str(exc.detail)), dict(exc.headers or {}))

    return Starlette(routes=[
        Route("/metrics", get_metrics), Route("/healthz", healthz), Route("/openapi.json", openapi),
    ], exception_handlers={HTTPException: http_error})


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


_PERIOD = {"name": "period", "in": "query", "schema": {"type": "string", "enum": [p.value for p in Period], "default": "1h"}}
_FORMAT = {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["json", "prometheus"], "default": "json"}}
_ERROR = {"description": "error", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}}}
OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "cachemon metrics API", "version": "1"},
    "paths": {
        "/metrics": {"get": {
            "summary": "Cache metrics of a period (the seed's JSON shape, or Prometheus text 0.0.4)",
            "parameters": [_PERIOD, _FORMAT],
            "responses": {
                "200": {"description": "metrics", "content": {
                    "application/json": {"schema": {"type": "object", "required": ["timestamp", "period", "hitRates", "latency", "volume"]}},
                    "text/plain": {"schema": {"type": "string"}}}},
                "400": _ERROR, "401": _ERROR, "429": _ERROR, "503": _ERROR,
            },
        }},
        "/healthz": {"get": {"summary": "Process up, store readable, data age", "responses": {
            "200": {"description": "ok or stale", "content": {"application/json": {"schema": {"type": "object"}}}},
            "503": {"description": "store unreadable", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    },
}
