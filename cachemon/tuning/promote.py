"""Auto-promotion of a winning TTL to Workers KV, and rollback to defaults.

The Worker reads its TTLs from the KV key `config:kv-ttls` (JSON
`{"title": s, "isbn": s, "author": s}`, seconds), as the seed does. A
promotion writes the winner's TTL for the experiment's endpoint through the
KV REST API (each call bounded by a total deadline and a cap on the answer,
error text redacted of secrets), reads it back to verify, records it (`promotions`) and sends a
notice through the outbox. When that config (or the experiment config) is
corrupt — unparseable, wrong types, TTLs out of range — the default TTLs are
written back, recorded, and a critical notice goes out.
"""

from __future__ import annotations

import html
import json
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import duckdb

from cachemon import jsontext, outbound
from cachemon.errors import CachemonError, ConfigError
from cachemon.events import ENDPOINTS
from cachemon.notify import outbox as notify_outbox
from cachemon.notify.transports import Transports
from cachemon.redact import Redactor
from cachemon.settings import Config, cf_api_base
from cachemon.tuning import analysis as tuning_analysis
from cachemon.tuning import results
from cachemon.tuning.experiments import MAX_TTL, MIN_TTL, Experiment

CONFIG_KEY = "config:kv-ttls"
RECORD = "INSERT INTO promotions VALUES (?, ?, ?, ?, ?, ?)"
HISTORY = "SELECT done_at, action, experiment, old_config, new_config, detail FROM promotions ORDER BY done_at"
MAX_VALUE = 1024 * 1024  # bytes of a KV answer read; the TTL config is a few dozen
RETRY_AFTER_429 = 1.1  # seconds: KV takes one write per second per key


class PromotionError(CachemonError):
    """Workers KV refused, failed, or did not keep what was written."""


@dataclass(frozen=True)
class KvClient:
    """The Workers KV REST API. `call` (one HTTP exchange, `outbound.call`)
    and `sleep` (the back-off of a 429) are parameters with real defaults,
    as prometheus_client's `handler=`: tests pass fakes."""

    base: str
    account: str
    namespace: str
    token: str = field(repr=False)
    timeout: float = 10.0  # seconds, the whole of one call
    redactor: Redactor = field(default=Redactor(), repr=False)
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    call: Callable[..., outbound.Answer] = field(default=outbound.call, repr=False)

    @classmethod
    def from_env(cls, env, **world) -> KvClient:
        """The client CF_API_BASE, CF_ACCOUNT_ID, CF_KV_NAMESPACE_ID and
        CF_API_TOKEN describe; `world` sets `sleep` or `call`."""
        missing = [
            v for v in ("CF_ACCOUNT_ID", "CF_API_TOKEN", "CF_KV_NAMESPACE_ID") if not env.get(v)
        ]
        if missing:
            raise ConfigError(f"Workers KV needs {', '.join(missing)} in the environment")
        return cls(
            cf_api_base(env),
            env["CF_ACCOUNT_ID"],
            env["CF_KV_NAMESPACE_ID"],
            env["CF_API_TOKEN"],
            redactor=Redactor.from_env(env),
            **world,
        )

    def _url(self, key: str) -> str:
        return (
            f"{self.base}/accounts/{self.account}/storage/kv/namespaces/{self.namespace}/values/"
            f"{urllib.parse.quote(key, safe='')}"
        )

    def _call(self, method: str, key: str, body: bytes | None = None) -> outbound.Answer:
        for attempt in range(4):
            try:
                r = self.call(
                    method,
                    self._url(key),
                    content=body,
                    limit=self.timeout,
                    max_bytes=MAX_VALUE,
                    headers={"Authorization": f"Bearer {self.token}"},
                )
            except outbound.DeadlineExceeded:
                raise PromotionError(
                    f"Workers KV {method} {key}: no complete answer within {self.timeout:g} s"
                ) from None
            except outbound.BadRequest as exc:
                raise PromotionError(
                    f"Workers KV cannot be called: {exc} (check CF_API_BASE and CF_API_TOKEN)"
                ) from None
            except outbound.OutboundError as exc:
                raise PromotionError(f"Workers KV unreachable: {exc}") from None
            if r.status == 429 and attempt < 3:  # one write per second per key
                self.sleep(RETRY_AFTER_429)
                continue
            return r
        return r

    def get(self, key: str) -> bytes | None:
        r = self._call("GET", key)
        if r.status == 404:
            return None
        if r.status != 200:
            raise PromotionError(self._failed("GET", key, r))
        if not r.complete:
            raise PromotionError(
                f"Workers KV GET {key}: the value is larger than {MAX_VALUE:,} bytes"
            )
        return r.body

    def put(self, key: str, value: bytes) -> None:
        r = self._call("PUT", key, value)
        if r.status != 200:
            raise PromotionError(self._failed("PUT", key, r))

    def _failed(self, method: str, key: str, r: outbound.Answer) -> str:
        """The failure, with the API's own words (secrets redacted, capped)."""
        said = self.redactor.plus(self.token).clip(r.body)
        return f"Workers KV {method} {key}: HTTP {r.status}{_hint(r.status)}" + (
            f": {said}" if said else ""
        )


def _hint(status: int) -> str:
    return " (the token needs Workers KV Storage Edit)" if status in (401, 403) else ""


def parse_config(raw: bytes | None) -> dict[str, int]:
    """The TTL config as the Worker reads it; ValueError naming what is wrong."""
    if raw is None:
        raise ValueError(f"{CONFIG_KEY} is missing")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{CONFIG_KEY} is not JSON") from None
    if not isinstance(data, dict) or set(data) != set(ENDPOINTS):
        raise ValueError(f"{CONFIG_KEY} must be an object with exactly {', '.join(ENDPOINTS)}")
    for k, v in data.items():
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{CONFIG_KEY}: {k} must be whole seconds, got {v!r}")
        if not MIN_TTL.total_seconds() <= v <= MAX_TTL.total_seconds():
            raise ValueError(f"{CONFIG_KEY}: {k} = {v} s is out of range (60 s to 365 d)")
    return data


def defaults(cfg: Config) -> dict[str, int]:
    ttl = dict(cfg.costs.kv_ttl)
    return {e: int(ttl.get(e, timedelta(days=1)).total_seconds()) for e in ENDPOINTS}


def _write_verified(kv: KvClient, config: dict[str, int]) -> None:
    body = jsontext.dumps(config, sort_keys=True).encode()
    kv.put(CONFIG_KEY, body)
    back = kv.get(CONFIG_KEY)
    if back is None or parse_config(back) != config:
        raise PromotionError(f"{CONFIG_KEY} read back differs from what was written")


@dataclass(frozen=True)
class Action:
    action: str  # promote | rollback | none
    experiment: str
    old: dict | None
    new: dict | None
    detail: str


def promote(kv: KvClient, cfg: Config, e: Experiment, winner: str, dry_run: bool = False) -> Action:
    """Write the winning cohort's TTL for the experiment's endpoint."""
    cohort = next(c for c in e.cohorts if c.name == winner)
    try:
        old = parse_config(kv.get(CONFIG_KEY))
    except ValueError as exc:
        return rollback(kv, cfg, f"before promoting {e.name}: {exc}", e.name, dry_run)
    new = old | {e.endpoint: int(cohort.ttl.total_seconds())}
    if new == old:
        return Action("none", e.name, old, new, f"{e.endpoint} TTL already {new[e.endpoint]} s")
    if not dry_run:
        _write_verified(kv, new)
    return Action(
        "promote",
        e.name,
        old,
        new,
        f"{e.endpoint} KV TTL {old[e.endpoint]} s → {new[e.endpoint]} s ({winner} won)",
    )


def check(kv: KvClient, cfg: Config, dry_run: bool = False) -> Action:
    """Verify the live config; roll back to defaults if it is corrupt."""
    try:
        current = parse_config(kv.get(CONFIG_KEY))
    except ValueError as exc:
        return rollback(kv, cfg, str(exc), "", dry_run)
    return Action("none", "", current, current, "config valid")


def rollback(
    kv: KvClient, cfg: Config, reason: str, experiment: str = "", dry_run: bool = False
) -> Action:
    new = defaults(cfg)
    if not dry_run:
        _write_verified(kv, new)
    return Action("rollback", experiment, None, new, f"rolled back to default TTLs: {reason}")


def record(con: duckdb.DuckDBPyConnection, a: Action, at: datetime) -> None:
    con.execute(
        RECORD, [at, a.action, a.experiment, jsontext.dumps(a.old), jsontext.dumps(a.new), a.detail]
    )


def history(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute(HISTORY).fetchall()


def announce(
    con: duckdb.DuckDBPyConnection, a: Action, cfg: Config, transports: Transports, at: datetime
) -> list[str]:
    """Queue the notice of a promotion or rollback on every configured channel."""
    prefix = cfg.notify.subject_prefix
    if a.action == "rollback":
        subject = f"{prefix} CRITICAL: config_rollback"
    else:
        subject = f"{prefix} Promotion: {a.experiment}"
    text = f"{a.detail}\n\nbefore: {jsontext.dumps(a.old)}\nafter:  {jsontext.dumps(a.new)}\n"
    body = f"<p>{html.escape(a.detail)}</p><pre>{html.escape(text)}</pre>"
    channels = list(transports.channels(cfg.notify))
    for ch in channels:
        notify_outbox.enqueue(
            con,
            notify_outbox.report_row(
                ch, at, subject, text, body, cfg.notify, transports, kind=a.action
            ),
        )
    return channels


@dataclass(frozen=True)
class Daily:
    """One daily run: the analyses, the KV actions and the delivery round of
    their notices (notify.NOTHING in a dry run)."""

    analyses: tuple[tuning_analysis.Analysis, ...]
    actions: tuple[Action, ...]
    flush: notify_outbox.Flush


def daily(
    con: duckdb.DuckDBPyConnection,
    cfg: Config,
    at: datetime,
    now: datetime,
    env,
    transports: Transports,
    dry_run: bool = False,
) -> Daily:
    """The tuning engine's daily run as of `at`: analyse every started
    experiment, check the live TTL config (rolling back a corrupt one),
    promote winners, and deliver the notices at `now` (as `report.send` and
    `alerts.run` do). With `dry_run` nothing is stored, written or sent."""
    started = [e for e in cfg.experiments if e.start <= at]
    analyses = [
        tuning_analysis.analyze(con, e, at, cfg.pricing, cfg.costs.r2_flow) for e in started
    ]
    kv = KvClient.from_env(env) if env.get("CF_KV_NAMESPACE_ID") else None
    actions = []
    if kv:
        checked = check(kv, cfg, dry_run)
        if checked.action == "rollback":
            actions.append(checked)
        for e, a in zip(started, analyses):
            winners = [
                c.treatment for c in a.comparisons if c.decision == tuning_analysis.Decision.WINNER
            ]
            if a.decision == tuning_analysis.Decision.WINNER and winners:
                actions.append(promote(kv, cfg, e, winners[0], dry_run))
    with notify_outbox.delivery_round(con, cfg.notify, transports, now, dry_run) as sent:
        if not dry_run:
            for a in analyses:
                results.save(con, a)
            for act in actions:
                if act.action != "none":
                    record(con, act, at)
                    announce(con, act, cfg, transports, at)
    return Daily(tuple(analyses), tuple(actions), sent.flush)


def on_bad_config(
    con: duckdb.DuckDBPyConnection,
    cfg: Config,
    reason: str,
    env,
    transports: Transports,
    at: datetime,
) -> Daily | None:
    """The experiment configuration cannot be read: put the default TTLs
    back in KV (when KV is configured; None otherwise), record it, raise
    the alarm and deliver it at `at`."""
    if not env.get("CF_KV_NAMESPACE_ID"):
        return None
    act = rollback(KvClient.from_env(env), cfg, f"experiment config invalid: {reason}")
    with notify_outbox.delivery_round(con, cfg.notify, transports, at) as sent:
        record(con, act, at)
        announce(con, act, cfg, transports, at)
    return Daily((), (act,), sent.flush)
