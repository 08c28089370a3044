"""Rendering alert notifications: email (text + HTML), Slack and Discord payloads.

Pure functions from a decision (`lifecycle.Notice`) and plain context (the
metrics JSON of the last window) to plain data, golden-tested; the generic
parts (escaping, templates, the Email) are `cachemon.notify.format`, sending
is `cachemon.notify`.
"""

from __future__ import annotations

from cachemon import timerange
from cachemon.alerts.lifecycle import InstanceState, Notice, Reason
from cachemon.alerts.readings import AlertValues
from cachemon.alerts.rules import BUILTIN, format_value, type_units
from cachemon.clock import iso
from cachemon.notify.format import (
    HTML,
    TEXT,
    Email,
    discord_escape,
    discord_message,
    header_safe,
    slack_escape,
    slack_message,
)

# The unit of each built-in alert type, for values in messages (derived
# from the rules' metrics: one table of units).
UNITS = type_units(BUILTIN)
CAUSES = {
    "miss_rate": [
        "Edge cache purge or restart",
        "Traffic spike to new content",
        "KV entries expiring together (a TTL too short?)",
        "R2 archival too aggressive",
    ],
    "edge_hit_rate": [
        "Edge cache purge or restart",
        "Traffic moving to new content or colos",
        "Edge TTL too short for current traffic",
    ],
    "p99_latency": [
        "Origin API slowness or rate limiting",
        "More requests reaching the origin (see miss rate)",
        "R2 rehydrations",
    ],
    "error_rate": ["Origin API errors or rate limiting", "Worker exceptions"],
    "queue_depth": [
        "Warming jobs failing or throttled",
        "Bulk re-warming after a purge",
        "KV write limit (1 write per second per key)",
    ],
    "kv_storage": ["One-off searches stored with long KV TTLs", "Archival to R2 not running"],
    "data_stale": [
        "Analytics Engine API unreachable or token expired",
        "The cachemon ingest job failing (Jobs page)",
    ],
}
CAUSES["p95_latency"] = CAUSES["p99_latency"]
DEFAULT_CAUSES = [
    "Edge cache purge/restart",
    "Traffic spike to new content",
    "External API slowness/rate limiting",
    "R2 archival too aggressive",
]


def subject(notice: Notice, prefix: str) -> str:
    """The seed's subject: `[BooksTrack Cache] CRITICAL: miss_rate`."""
    if notice.firing:
        top = notice.firing[0]
        more = f" (+{len(notice.firing) - 1} more)" if len(notice.firing) > 1 else ""
        return header_safe(f"{prefix} {top.severity.upper()}: {top.type}{_where(top)}{more}")
    names = ", ".join(sorted({s.type + _where(s) for s in notice.resolved}))
    return header_safe(f"{prefix} RESOLVED: {names}")


def _where(s: InstanceState) -> str:
    return f" [{s.endpoint}]" if s.endpoint else ""


def chart_link(dashboard_url: str, s: InstanceState) -> str:
    """The dashboard's Overview around the alert's start (an hour each
    side), for its endpoint: the charts at the time it fired."""
    since = s.firing_since or s.since
    endpoint = s.endpoint if s.endpoint and s.endpoint != "*" else None
    return dashboard_url.rstrip("/") + timerange.link("", timerange.around(since), endpoint)


def _alert_view(
    s: InstanceState, values: AlertValues | None = None, dashboard_url: str = ""
) -> dict:
    unit = UNITS.get(s.type, "")
    return {
        "chart": chart_link(dashboard_url, s) if dashboard_url else None,
        # Each value labelled with its window: the value when it fired and
        # the value now differ, and the recent metrics below cover 15m.
        "now": values.now.text() if values and values.now else None,
        "fired": values.fired.text() if values and values.fired else None,
        "severity": s.severity,
        "type": s.type,
        "endpoint": s.endpoint,
        "message": s.message,
        "value": format_value(s.value, unit)
        if unit
        else f"{s.value:,.2f}"
        if s.value is not None
        else "n/a",
        "threshold": format_value(s.threshold, unit) if unit else f"{s.threshold:g}",
        "since": iso(s.firing_since or s.since),
        "state": s.state,
    }


def _view(
    notice: Notice, context: dict | None, dashboard_url: str, values: dict | None = None
) -> dict:
    types = [s.type for s in notice.firing] or [s.type for s in notice.resolved]
    causes = []
    for t in types:
        for c in CAUSES.get(t, DEFAULT_CAUSES):
            if c not in causes:
                causes.append(c)
    lead = notice.firing[0] if notice.firing else notice.resolved[0]
    return {
        "headline": (
            f"Cache {lead.severity}: {lead.type}" if notice.firing else f"Resolved: {lead.type}"
        ),
        "severity": lead.severity if notice.firing else "resolved",
        "firing": [_alert_view(s, (values or {}).get(s.key), dashboard_url) for s in notice.firing],
        "resolved": [_alert_view(s) for s in notice.resolved],
        "m": context,
        # Latencies as the alert values show them (3 significant digits below 10 ms).
        "lat": {q: format_value(context["latency"][q], "ms") for q in ("p50", "p95", "p99")}
        if context
        else {},
        "causes": causes if notice.firing else [],
        "link": dashboard_url.rstrip("/") + "/alerts",
        "timestamp": iso(notice.at),
        "repeat": notice.reason == Reason.REPEAT,
    }


def alert_email(
    notice: Notice,
    context: dict | None,
    to: tuple[str, ...],
    sender: str,
    prefix: str,
    dashboard_url: str,
    message_id: str,
    values: dict[tuple[str, str], AlertValues] | None = None,
) -> Email:
    """The alert (or resolve) email, as text and HTML. `values` (by
    instance key) give each firing alert's value when it fired and now,
    labelled with their windows."""
    view = _view(notice, context, dashboard_url, values)
    return Email(
        tuple(to),
        sender,
        subject(notice, prefix),
        TEXT.get_template("alert_email.txt.j2").render(view),
        HTML.get_template("alert_email.html.j2").render(view),
        message_id,
    )


def _chat_lines(notice: Notice, esc) -> list[str]:
    lines = []
    for s in notice.firing:
        a = _alert_view(s)
        lines.append(
            f"• {a['severity'].upper()} {esc(a['type'] + _where(s))}: {esc(a['message'])} (since {a['since']})"
        )
    for s in notice.resolved:
        lines.append(f"• RESOLVED {esc(s.type + _where(s))}")
    return lines


def slack_payload(notice: Notice, prefix: str, dashboard_url: str) -> dict:
    """An incoming-webhook message (mrkdwn, Slack-escaped)."""
    title = slack_escape(subject(notice, prefix))
    body = "\n".join(
        [
            f"*{title}*",
            *_chat_lines(notice, slack_escape),
            f"<{dashboard_url.rstrip('/')}/alerts|Open the dashboard>",
        ]
    )
    return slack_message(title, body)


def discord_payload(notice: Notice, prefix: str, dashboard_url: str) -> dict:
    """A webhook message: escaped markdown, no mentions, within 2,000 characters."""
    title = discord_escape(subject(notice, prefix))
    body = "\n".join(
        [
            f"**{title}**",
            *_chat_lines(notice, discord_escape),
            f"{dashboard_url.rstrip('/')}/alerts",
        ]
    )
    return discord_message(body)
