"""Bounded outbound HTTP: one call, a total deadline, a cap on the answer.

httpx's timeouts apply per phase and per read, so a server that answers one
byte every two seconds keeps a call alive for as long as it likes. Here the
whole call (connect, TLS, request, status, headers and body) runs under one
deadline (`asyncio.timeout`, which cancels the read in progress: no thread
is left behind), and at most `max_bytes` of the body are read. Errors never
carry the URL (a webhook's URL is its secret): they name what happened.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cachemon.errors import CachemonError

if TYPE_CHECKING:
    import ssl

    import httpx

# httpx and asyncio are imported by the calls that use them: most commands
# never call out, and importing httpx costs a tenth of a second at start-up.

# httpx logs every request's URL at INFO, and a webhook's URL is its secret.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class OutboundError(CachemonError):
    """The call gave no answer; the message says why, without the URL."""


class DeadlineExceeded(OutboundError):
    """No complete answer within the deadline."""


class Unreachable(OutboundError):
    """Connection refused, reset, or another transport failure."""


class BadRequest(OutboundError):
    """The URL or a header cannot be sent (not http(s), a line break, …)."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    complete: bool  # False: the body went past the cap and was cut there

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def call(
    method: str,
    url: str,
    *,
    limit: float,
    max_bytes: int,
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
    json=None,
    want_body: Callable[[int], bool] = lambda status: True,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Answer:
    """Send one request and read its answer within `limit` seconds in all.
    The body is read only if `want_body(status)` (a webhook's acceptance
    needs no body), and only up to `max_bytes`."""
    import asyncio
    import concurrent.futures

    bad = bad_url(url)
    if bad:
        raise BadRequest(bad)

    def run() -> Answer:
        # A fresh loop, closed without waiting for a resolver thread stuck in
        # DNS (asyncio.run would wait for it, past the deadline).
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(
                _call(method, url, limit, max_bytes, headers, content, json, want_body, transport)
            )
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _guarded(run)
    # Called from inside an event loop (an async server): run on a helper
    # thread; the deadline bounds it, so the thread ends with the call.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return _guarded(lambda: pool.submit(run).result())


def _guarded(run: Callable[[], Answer]) -> Answer:
    """`run()`, with any failure an OutboundError: the async stack can raise
    an ExceptionGroup, an OverflowError from the socket layer, or something
    new in a later httpx. The message is the exception's type name only (its
    text may hold the URL)."""
    try:
        return run()
    except OutboundError:
        raise
    except ExceptionGroup as group:  # not BaseExceptionGroup: Ctrl-C stays Ctrl-C
        first = _first_leaf(group)
        if isinstance(first, OutboundError):
            raise first from None
        raise Unreachable(type(first).__name__) from None
    except Exception as exc:
        raise Unreachable(type(exc).__name__) from None


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def bad_url(url: str) -> str:
    """Why `url` cannot be called, or ''. Never quotes the URL."""
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        return "the URL is not an http(s) URL"
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "the URL contains a line break, space or control character"
    return _url_problem(url)


def _url_problem(url: str) -> str:
    """Why a well-formed-looking http(s) URL cannot be called (a bad IPv6
    literal, no host, a port outside 1-65535), or ''. Never quotes the URL."""
    import httpx

    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except Exception:  # httpx.InvalidURL, ValueError, …: the text may hold the URL
        return "the URL is not a valid http(s) URL (host or port)"
    if not parsed.host:
        return "the URL has no host"
    if port is not None and not 0 < port < 65536:
        return "the URL's port is outside 1-65535"
    return ""


@functools.cache
def _tls() -> ssl.SSLContext:
    """httpx's default verifying context (certifi, SSL_CERT_FILE), built
    once: building it costs tens of milliseconds a call."""
    import httpx

    return httpx.create_ssl_context()


async def _call(
    method, url, limit, max_bytes, headers, content, json, want_body, transport
) -> Answer:
    import asyncio

    import httpx

    try:
        async with asyncio.timeout(limit):
            async with httpx.AsyncClient(
                timeout=limit, transport=transport, verify=_tls()
            ) as client:
                async with client.stream(
                    method, url, headers=headers, content=content, json=json
                ) as r:
                    body, complete = b"", True
                    if want_body(r.status_code):
                        body, complete = await _read(r, max_bytes)
                    return Answer(
                        r.status_code, {k.lower(): v for k, v in r.headers.items()}, body, complete
                    )
    except (TimeoutError, httpx.TimeoutException):
        raise DeadlineExceeded(f"no complete answer within {limit:g} s") from None
    except (httpx.InvalidURL, httpx.UnsupportedProtocol):
        raise BadRequest("the URL is not a valid http(s) URL") from None
    except httpx.LocalProtocolError:
        raise BadRequest(
            "a header value cannot be sent (a line break or control character?)"
        ) from None
    except httpx.HTTPError as exc:
        raise Unreachable(type(exc).__name__) from None
    except UnicodeError:
        raise BadRequest("a header value is not ASCII") from None
    except OSError as exc:
        raise Unreachable(type(exc).__name__) from None


async def _read(r: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    parts, size = [], 0
    async for chunk in r.aiter_bytes():
        parts.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            return b"".join(parts)[:max_bytes], False
    return b"".join(parts), True
