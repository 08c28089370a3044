"""The dead man's switch: with CACHEMON_HEARTBEAT_URL set, the job runner
pings that URL after each successful ingest and alert evaluation, so an
outside service (healthchecks-style ping URLs; the pattern of Prometheus's
always-firing Watchdog alert) notices when cachemon itself stops.

A ping never blocks the runner: it runs in a background thread under a
total deadline (connect, send and answer together), one at a time (a ping
due while the previous one is still out is skipped), and its failure is a
log line. The URL is a secret (its path is the check's key): it is never
logged; messages name only scheme, host and port.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from cachemon import outbound
from cachemon.errors import ConfigError

log = logging.getLogger("cachemon.heartbeat")

ENV = "CACHEMON_HEARTBEAT_URL"
DEADLINE_S = 5.0
MAX_ANSWER = 4096  # a ping's answer is not read; this only bounds a misbehaving one


@dataclass(frozen=True)
class Target:
    """Where to ping, and how long a ping may take in all."""

    url: str
    deadline_s: float = DEADLINE_S

    @classmethod
    def from_env(cls, env) -> Target | None:
        url = (env.get(ENV) or "").strip()
        if not url:
            return None
        # The same check the call makes, in full (IPv6 literal, port range),
        # so a URL that can never be pinged stops the runner at start.
        problem = outbound.bad_url(url)
        if problem:
            raise ConfigError(
                f"{ENV} is not usable: {problem} (the value is not shown: it is a secret)"
            )
        return cls(url)

    @property
    def where(self) -> str:
        """What a log line may say of the URL: scheme, host and port."""
        try:
            p = urlsplit(self.url)
            return f"{p.scheme}://{p.hostname}" + (f":{p.port}" if p.port else "")
        except ValueError:  # checked in from_env; a Target built by hand may hold anything
            return "the heartbeat URL"


class Pinger:
    """Sends pings to a Target in the background, one at a time."""

    def __init__(self, target: Target):
        self.target = target
        self._busy = threading.Lock()
        self.sent = 0  # pings answered 2xx (for tests and logs)
        self.failed = 0

    def ping(self) -> bool:
        """Start a ping unless one is still out; returns whether it started."""
        if not self._busy.acquire(blocking=False):
            log.warning(
                "heartbeat: the previous ping to %s is still out; skipped this one",
                self.target.where,
            )
            return False
        threading.Thread(target=self._run, name="heartbeat", daemon=True).start()
        return True

    def _run(self) -> None:
        try:
            self._ping_once()
        except (
            Exception
        ) as exc:  # a ping's failure of any kind is a warning, never a thread traceback
            self.failed += 1
            log.warning("heartbeat ping failed: %s", type(exc).__name__)
        finally:
            self._busy.release()

    def _ping_once(self) -> None:
        try:
            problem = _send(self.target)
        except Exception as exc:  # never a traceback: httpx's messages may hold the URL
            problem = type(exc).__name__
        if problem:
            self.failed += 1
            log.warning("heartbeat ping to %s failed: %s", self.target.where, problem)
        else:
            self.sent += 1
            log.debug("heartbeat ping to %s ok", self.target.where)

    def wait(self, timeout: float) -> None:
        """Wait for the ping in flight (tests, and a clean shutdown)."""
        if self._busy.acquire(timeout=timeout):
            self._busy.release()


def _send(target: Target) -> str | None:
    """One ping under a total deadline (the bounded call every outbound
    request uses); None when answered 2xx, else why not (never the URL)."""
    try:
        answer = outbound.call(
            "GET",
            target.url,
            limit=target.deadline_s,
            max_bytes=MAX_ANSWER,
            headers={"User-Agent": "cachemon-heartbeat"},
            want_body=lambda status: False,
        )
    except outbound.Unreachable as exc:
        return f"could not connect or send ({exc})"
    except outbound.OutboundError as exc:
        return str(exc)
    return None if 200 <= answer.status < 300 else f"HTTP {answer.status}"
