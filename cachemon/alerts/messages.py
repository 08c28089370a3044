"""Rendering notifications: email (text + HTML), Slack and Discord payloads.

Pure functions from a decision (`lifecycle.Notice`) and plain context (the
metrics JSON of the last window) to plain data, golden-tested; sending is
`cachemon.notify`. Everything that came from the internet (cache keys,
endpoints) is escaped for its medium: HTML autoescaping, Slack's `&<>`,
Discord markdown and mentions, and control characters shown as `\\n` so a
key cannot forge lines of text or headers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import jinja2

from cachemon.alerts.lifecycle import InstanceState, Notice
from cachemon.alerts.rules import format_value
from cachemon.clock import iso

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")
UNITS = {  # alert type's metric unit, for values in messages
    "miss_rate": "%",
    "edge_hit_rate": "%",
    "error_rate": "%",
    "p99_latency": "ms",
    "p95_latency": "ms",
    "queue_depth": "jobs",
    "kv_storage": "bytes",
    "data_stale": "s",
}
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


def oneline(value) -> str:
    """Control characters (newlines included) shown escaped, never acted on."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))


def header_safe(value: str, limit: int = 200) -> str:
    """A header value with no line breaks or control characters."""
    return oneline(value)[:limit]


def _env(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parents[1] / "notify" / "templates"),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["oneline"] = oneline
    env.filters["num"] = lambda v, d=0: "n/a" if v is None else f"{v:,.{d}f}"
    return env


HTML = _env(autoescape=True)
TEXT = _env(autoescape=False)


@dataclass(frozen=True)
class Email:
    to: tuple[str, ...]
    sender: str
    subject: str
    text: str
    html: str
    message_id: str

    def to_json(self) -> dict:
        return {
            "to": list(self.to),
            "from": self.sender,
            "subject": self.subject,
            "text": self.text,
            "html": self.html,
            "message_id": self.message_id,
        }


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


def _alert_view(s: InstanceState) -> dict:
    unit = UNITS.get(s.type, "")
    return {
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


def _view(notice: Notice, context: dict | None, dashboard_url: str) -> dict:
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
        "firing": [_alert_view(s) for s in notice.firing],
        "resolved": [_alert_view(s) for s in notice.resolved],
        "m": context,
        "causes": causes if notice.firing else [],
        "link": dashboard_url.rstrip("/") + "/alerts",
        "timestamp": iso(notice.at),
        "repeat": notice.reason == "repeat",
    }


def alert_email(
    notice: Notice,
    context: dict | None,
    to: tuple[str, ...],
    sender: str,
    prefix: str,
    dashboard_url: str,
    message_id: str,
) -> Email:
    """The alert (or resolve) email, as text and HTML."""
    view = _view(notice, context, dashboard_url)
    return Email(
        tuple(to),
        sender,
        subject(notice, prefix),
        TEXT.get_template("alert_email.txt.j2").render(view),
        HTML.get_template("alert_email.html.j2").render(view),
        message_id,
    )


def _slack_escape(text: str) -> str:
    return oneline(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_DISCORD_MD = re.compile(r"([\\*_~`|>#\[\]()-])")


def _discord_escape(text: str) -> str:
    return _DISCORD_MD.sub(r"\\\1", oneline(text))


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
    title = _slack_escape(subject(notice, prefix))
    body = "\n".join(
        [
            f"*{title}*",
            *_chat_lines(notice, _slack_escape),
            f"<{dashboard_url.rstrip('/')}/alerts|Open the dashboard>",
        ]
    )
    return {
        "text": title,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": body[:2900]}}],
    }


def discord_payload(notice: Notice, prefix: str, dashboard_url: str) -> dict:
    """A webhook message: escaped markdown, no mentions, within 2,000 characters."""
    title = _discord_escape(subject(notice, prefix))
    body = "\n".join(
        [
            f"**{title}**",
            *_chat_lines(notice, _discord_escape),
            f"{dashboard_url.rstrip('/')}/alerts",
        ]
    )
    return {"content": body[:2000], "allowed_mentions": {"parse": []}}


def chat_text(channel: str, title: str, lines: list[str]) -> dict:
    """A plain chat message (title and lines) for Slack or Discord, escaped."""
    if channel == "slack":
        body = "\n".join([f"*{_slack_escape(title)}*", *(_slack_escape(x) for x in lines)])
        return {
            "text": _slack_escape(title),
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": body[:2900]}}],
        }
    body = "\n".join([f"**{_discord_escape(title)}**", *(_discord_escape(x) for x in lines)])
    return {"content": body[:2000], "allowed_mentions": {"parse": []}}


def message_id(kind: str, at: datetime, channel: str, members: str) -> str:
    """A stable Message-ID: a resend of the same notification carries the
    same ID, so mail clients show it once."""
    import hashlib

    digest = hashlib.sha256(f"{kind}|{iso(at)}|{channel}|{members}".encode()).hexdigest()[:32]
    return f"<{digest}@cachemon>"
