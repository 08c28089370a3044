"""An alert decision (`lifecycle.Notice`) rendered for its channel, as an
outbox row: the bridge from the alert monitor to `cachemon.notify`."""

from __future__ import annotations

from cachemon import jsontext
from cachemon.alerts import messages
from cachemon.alerts.lifecycle import Notice
from cachemon.alerts.readings import AlertValues
from cachemon.notify.channels import recipients
from cachemon.notify.format import message_id
from cachemon.notify.outbox import OutboxRow
from cachemon.notify.transports import Transports
from cachemon.settings import NotifyConfig
from cachemon.severity import severity_rank


def alert_recipients(nc: NotifyConfig, t: Transports, severities: set[str]) -> tuple[str, ...]:
    """Email recipients for alerts of these severities, most severe first
    (ALERT_EMAIL when a severity has none configured)."""
    ordered = sorted(severities, key=severity_rank)
    return recipients(nc, t.alert_email, ordered)


def render(
    notice: Notice,
    context: dict | None,
    nc: NotifyConfig,
    t: Transports,
    values: dict[tuple[str, str], AlertValues] | None = None,
) -> OutboxRow:
    """A decision rendered for its channel, ready for the outbox. `values`
    (by instance key) label the email's values with their windows."""
    url = t.dashboard_url or nc.dashboard_url
    members = ",".join(s.member for s in notice.firing + notice.resolved)
    if notice.channel == "email":
        to = alert_recipients(nc, t, {s.severity for s in notice.firing + notice.resolved})
        mid = message_id(notice.kind, notice.at, notice.channel, members)
        email = messages.alert_email(
            notice, context, to, nc.email_from or t.sender, nc.subject_prefix, url, mid, values
        )
        payload = email.to_json()
    elif notice.channel == "slack":
        payload = messages.slack_payload(notice, nc.subject_prefix, url)
    else:
        payload = messages.discord_payload(notice, nc.subject_prefix, url)
    return OutboxRow(
        notice.at,
        notice.channel,
        notice.kind,
        messages.subject(notice, nc.subject_prefix),
        members,
        jsontext.dumps(payload, ensure_ascii=False),
    )
