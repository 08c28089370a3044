"""Who a client is and whether it may ask: the API's rate limiter, the
allow-list and trusted-proxy networks, and the client behind them.

The client is the TCP peer; X-Forwarded-For counts only from proxies the
operator names (`ForwardedFor`). The limiter remembers a bounded number of
peers (`RateLimiter`), an IPv6 client by its /64 (`peer_key`).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
from collections import OrderedDict, deque
from datetime import datetime, timedelta

from cachemon.errors import InputError

RATE_LIMIT = 10  # requests per client IP per minute
MAX_PEERS = 4096  # clients the limiter remembers at once (each at most RATE_LIMIT timestamps)

log = logging.getLogger("cachemon.api")


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
