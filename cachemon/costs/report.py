"""The daily cost optimisation report: built from the store for one UTC day,
rendered (text + HTML, Jinja2), stored, and sent through the outbox.

Re-running a day replaces its stored report; it is sent once per day
unless `resend` is asked for.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta

import duckdb

from cachemon import jsontext
from cachemon.alerts import health
from cachemon.clock import DAY, Window, iso, parse_instant
from cachemon.costs import optimize
from cachemon.costs import usage as costs_usage
from cachemon.costs.basis import Basis, Kind, span
from cachemon.notify import outbox as notify_outbox
from cachemon.notify.format import HTML, TEXT, header_safe
from cachemon.notify.transports import Transports
from cachemon.pricing import COMPONENTS, DEFAULT
from cachemon.settings import Config
from cachemon.store.connection import transaction
from cachemon.store.queries import CLASSES, KeyClass, data_span

SAVE = "INSERT OR REPLACE INTO cost_reports VALUES (?, ?, ?, ?)"
SENT = "SELECT sent FROM cost_reports WHERE day = ?"
MARK_SENT = "UPDATE cost_reports SET sent = true WHERE day = ?"
RECENT = "SELECT day, created_at, payload, sent FROM cost_reports ORDER BY day DESC LIMIT ?"


@dataclass(frozen=True)
class Report:
    day: date
    generated_at: datetime
    has_data: bool
    classes: tuple[tuple[KeyClass, int], ...]  # (class, entries), in CLASSES order
    lines: tuple[
        tuple[str, str, float, float, float], ...
    ]  # (component, unit, units, list, billed)
    list_total: float
    billed_total: float
    forecast_list: float | None
    forecast_billed: float | None
    recommendations: tuple[optimize.Recommendation, ...]
    health: str
    pricing_version: str
    # What the figures are: the day's usage as measured (and the part of the
    # day with data), the forecast's month to date and rate, and the days of
    # per-key rates the savings come from. None in reports stored before.
    basis: Basis | None = None
    forecast_basis: Basis | None = None
    saving_days: float | None = None

    @property
    def entries(self) -> int:
        return sum(n for _, n in self.classes)

    @property
    def saving_per_day(self) -> float:
        return sum(r.saving_per_day for r in self.recommendations)

    def to_json(self) -> dict:
        """The stored payload (what the analysts' `v1.cost_day` view reads)."""
        d = asdict(self)
        d["day"], d["generated_at"] = self.day.isoformat(), iso(self.generated_at)
        for name in ("basis", "forecast_basis"):
            b = getattr(self, name)
            d[name] = b.to_json() if b is not None else None
        return d

    @classmethod
    def from_json(cls, d: dict) -> Report:
        """A report read back from its stored payload (`to_json`)."""
        return cls(
            date.fromisoformat(d["day"]),
            parse_instant(d["generated_at"]),
            bool(d["has_data"]),
            tuple((KeyClass(c), int(n)) for c, n in d["classes"]),
            tuple((c, u, units, lst, b) for c, u, units, lst, b in d["lines"]),
            d["list_total"],
            d["billed_total"],
            d["forecast_list"],
            d["forecast_billed"],
            tuple(optimize.Recommendation.from_json(r) for r in d["recommendations"]),
            d["health"],
            d["pricing_version"],
            Basis.from_json(d["basis"]) if d.get("basis") else None,
            Basis.from_json(d["forecast_basis"]) if d.get("forecast_basis") else None,
            d.get("saving_days"),
        )


def build(con: duckdb.DuckDBPyConnection, cfg: Config, day: date, now: datetime) -> Report:
    """The report of UTC `day` (costs of that day; key classes over the
    class window ending with it; forecast as of its end)."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    window = Window(start, start + DAY)
    span = data_span(con)
    has_data = bool(span and span[0] < window.end and span[1] > window.start)
    breakdown = costs_usage.price(costs_usage.measure(con, window, cfg), cfg.pricing)
    classes, recs, fc, saving_days = (), (), None, None
    if has_data:
        counts, saving_days, found = optimize.recommend(
            con, cfg, window.end, Window(window.end - cfg.costs.class_window, window.end)
        )
        classes = tuple((c, int(counts.get(c, 0))) for c in CLASSES)
        recs = tuple(sorted(found, key=lambda r: -r.saving_per_day))
        fc = costs_usage.forecast(con, min(window.end, span[1]), cfg, cfg.pricing)
    status = health.health(con, window.end, cfg.alerts.evaluate_every).status
    return Report(
        day,
        now,
        has_data,
        classes,
        tuple(
            (ln.component, DEFAULT[ln.component].unit, ln.units, ln.list_cost, ln.billed)
            for ln in breakdown.lines
        ),
        breakdown.list_total,
        breakdown.billed_total,
        fc.list_total if fc else None,
        fc.billed_total if fc else None,
        recs,
        status,
        breakdown.pricing_version,
        breakdown.basis,
        fc.basis if fc else None,
        saving_days,
    )


def _bases(r: Report) -> dict:
    """What each figure of the email is, in words (`costs.basis`)."""
    start = datetime(r.day.year, r.day.month, r.day.day, tzinfo=UTC)
    # A report stored before bases were kept: its day, as measured.
    day = r.basis or Basis(Kind.MEASURED, Window(start, start + DAY), Window(start, start + DAY))
    fc = r.forecast_basis
    return {
        "basis": day.text(None),
        "basis_short": day.short(None),
        "forecast_basis": fc.text(None) if fc else None,
        "saving_basis": saving_basis(r),
    }


def saving_basis(r: Report) -> str:
    """What a recommendation's saving is, in words (the email and the dashboard)."""
    if r.saving_days:
        return f"list prices, per day at the keys' rates over {span(r.saving_days * DAY)} of data"
    return "list prices, per day at the keys' rates over the class window"


def _view(r: Report, dashboard_url: str) -> dict:
    entries = r.entries
    share = (lambda n: 100.0 * n / entries) if entries else (lambda n: 0.0)
    return {
        "r": r,
        "day": r.day.isoformat(),
        "entries": entries,
        "classes": [(c, n, share(n)) for c, n in r.classes],
        "lines": [
            (DEFAULT[c].label, u, units, costs_usage.money(lst), costs_usage.money(b))
            for c, u, units, lst, b in r.lines
            if c in COMPONENTS
        ],
        "total": costs_usage.money(r.list_total),
        "billed": costs_usage.money(r.billed_total),
        "forecast": costs_usage.money(r.forecast_list) if r.forecast_list is not None else None,
        "forecast_billed": costs_usage.money(r.forecast_billed)
        if r.forecast_billed is not None
        else None,
        "recs": [(x, costs_usage.money(x.saving_per_day)) for x in r.recommendations],
        "saving": costs_usage.money(r.saving_per_day),
        "saving_share": 100.0 * r.saving_per_day / r.list_total if r.list_total else 0.0,
        "link": dashboard_url.rstrip("/") + "/costs",
        "timestamp": iso(r.generated_at),
        **_bases(r),
    }


def render(r: Report, prefix: str, dashboard_url: str) -> tuple[str, str, str]:
    """(subject, text, html) of the report email."""
    view = _view(r, dashboard_url)
    subject = header_safe(f"{prefix} Daily Cost Optimization Report ({r.day.isoformat()})")
    return (
        subject,
        TEXT.get_template("report_email.txt.j2").render(view),
        HTML.get_template("report_email.html.j2").render(view),
    )


def save(con: duckdb.DuckDBPyConnection, r: Report) -> bool:
    """Store (or replace) the day's report; True if it was already sent."""
    prior = con.execute(SENT, [r.day]).fetchall()
    sent = bool(prior and prior[0][0])
    con.execute(SAVE, [r.day, r.generated_at, jsontext.dumps(r.to_json()), sent])
    return sent


def queue(
    con: duckdb.DuckDBPyConnection,
    r: Report,
    cfg: Config,
    transports: Transports,
    resend: bool = False,
) -> list[str]:
    """Store the report and, unless it was sent before (and not `resend`),
    put it in the outbox for every configured channel. Returns the channels."""
    with transaction(con):
        sent = save(con, r)
        channels = [] if sent and not resend else list(transports.channels(cfg.notify))
        url = transports.dashboard_url or cfg.notify.dashboard_url
        subject, text, html = render(r, cfg.notify.subject_prefix, url)
        for ch in channels:
            notify_outbox.enqueue(
                con,
                notify_outbox.report_row(
                    ch, r.generated_at, subject, text, html, cfg.notify, transports
                ),
            )
        if channels:
            con.execute(MARK_SENT, [r.day])
    return channels


@dataclass(frozen=True)
class Sent:
    """A report queued and delivered: its channels and the delivery round."""

    channels: tuple[str, ...]
    flush: notify_outbox.Flush


def send(
    con: duckdb.DuckDBPyConnection,
    r: Report,
    cfg: Config,
    transports: Transports,
    now: datetime,
    resend: bool = False,
) -> Sent:
    """Queue the report (`queue`) and deliver the outbox at `now`: what the
    report job and `cachemon report` do, in one call."""
    with notify_outbox.delivery_round(con, cfg.notify, transports, now) as sent:
        channels = queue(con, r, cfg, transports, resend)
    return Sent(tuple(channels), sent.flush)


@dataclass(frozen=True)
class StoredReport:
    """One stored daily report, read back typed."""

    day: date
    created_at: datetime  # when it was stored (the latest re-run of its day)
    report: Report
    sent: bool  # queued for delivery once (a re-run does not send again)


def recent(con: duckdb.DuckDBPyConnection, limit: int = 30) -> list[StoredReport]:
    """Stored reports, newest first, parsed once (the dashboard reads
    attributes, never JSON keys)."""
    return [
        StoredReport(d, c, Report.from_json(json.loads(p)), bool(s))
        for d, c, p, s in con.execute(RECENT, [limit]).fetchall()
    ]


def report_day(now: datetime) -> date:
    """The day a report run at `now` covers: yesterday (UTC)."""
    return (now - timedelta(days=1)).date()
