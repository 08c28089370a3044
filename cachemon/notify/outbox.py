"""The durable outbox: what is to be told, and its delivery.

A notification is rendered and written to the store (`notifications`, in
the same transaction as the decision that caused it) before anything is
sent. `deliver` then sends what is due, oldest first, recording every
attempt in `deliveries`; a failure (server down, 5xx, timeout, rejection)
leaves it pending with exponential backoff (retry_base doubling up to
retry_max), forever, so nothing is lost; a later notification of the same
channel waits behind an undelivered one, so order is kept. A notification is
marked sent right after the server accepts it; only a crash between those
two instants can repeat it, and the repeat carries the same Message-ID.

A channel that cannot send, whatever the reason, fails alone: its failure is
recorded on its delivery and the other channels go on. Delivery is one call:
`delivery_round` around whatever queues (it delivers at the end and says
what became of each notification it queued, `Flush`), or `flush` alone for
a caller that queued nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import duckdb

from cachemon import jsontext
from cachemon.clock import iso
from cachemon.notify import format as notify_format
from cachemon.notify.channels import report_recipients
from cachemon.notify.transports import NotifyError, Transports, send
from cachemon.settings import NotifyConfig

log = logging.getLogger("cachemon.notify")

INSERT = "INSERT INTO notifications VALUES (nextval('notification_ids'), ?, ?, ?, ?, ?, ?, 'pending', 0, ?, NULL, NULL)"
DUE = """
SELECT id, channel, payload, attempts, next_attempt_at FROM notifications
WHERE status = 'pending' ORDER BY id
"""
MARK_SENT = "UPDATE notifications SET status = 'sent', attempts = attempts + 1, sent_at = ?, last_error = NULL WHERE id = ?"
MARK_FAILED = "UPDATE notifications SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE id = ?"
LOG_ATTEMPT = "INSERT INTO deliveries VALUES (?, ?, ?, ?)"
LAST_ID = "SELECT coalesce(max(id), 0) FROM notifications"
SINCE_ID = "SELECT id, channel, subject, status, next_attempt_at, last_error FROM notifications WHERE id > ? ORDER BY id"
EARLIER_PENDING = (
    "SELECT min(id) FROM notifications WHERE status = 'pending' AND channel = ? AND id < ?"
)
LIST = """
SELECT id, created_at, channel, kind, subject, members, status, attempts, next_attempt_at, last_error, sent_at
FROM notifications WHERE created_at >= $since AND ($until IS NULL OR created_at <= $until)
ORDER BY id DESC LIMIT $limit
"""


@dataclass(frozen=True)
class OutboxRow:
    """A rendered notification, ready for the outbox."""

    created_at: datetime
    channel: str
    kind: str  # firing | resolved | report | promote | rollback
    subject: str
    members: str
    payload: str  # JSON, exactly what will be sent


def enqueue(con: duckdb.DuckDBPyConnection, row: OutboxRow) -> None:
    """Write a rendered notification to the outbox (inside the caller's transaction)."""
    con.execute(
        INSERT,
        [
            row.created_at,
            row.channel,
            row.kind,
            row.subject,
            row.members,
            row.payload,
            row.created_at,
        ],
    )


def report_row(
    channel: str,
    at: datetime,
    subject: str,
    text: str,
    html: str,
    nc: NotifyConfig,
    t: Transports,
    kind: str = "report",
) -> OutboxRow:
    """A report or notice for a channel: the whole email, or its headline in chat."""
    if channel == "email":
        to = report_recipients(nc, t.alert_email)
        mid = notify_format.message_id(kind, at, channel, subject)
        payload = notify_format.Email(
            to, nc.email_from or t.sender, subject, text, html, mid
        ).to_json()
    else:
        keep = ("- Total:", "Total Potential", "View details") if kind == "report" else ("",)
        lines = [ln for ln in text.splitlines() if ln.startswith(keep) and ln.strip()]
        payload = notify_format.chat_text(channel, subject, lines)
    return OutboxRow(at, channel, kind, subject, kind, jsontext.dumps(payload, ensure_ascii=False))


@dataclass(frozen=True)
class Delivery:
    """One attempt to send a notification, as `deliver` made it."""

    id: int
    channel: str
    ok: bool
    detail: str


def deliver(
    con: duckdb.DuckDBPyConnection, t: Transports, nc: NotifyConfig, now: datetime
) -> list[Delivery]:
    """Send every due notification, oldest first; a channel stops at its
    first failure so its messages stay in order. Each result is written
    as soon as it is known. A channel's failure, whatever it is, is its
    own: recorded, logged, retried later, while the others go on."""
    results, blocked = [], set()
    for nid, channel, payload, attempts, due in con.execute(DUE).fetchall():
        if channel in blocked:
            continue
        if due > now:
            blocked.add(channel)
            continue
        problem = _attempt(t, channel, payload, nc.timeout, now)
        if problem is not None:
            detail = t.scrub(problem)  # second line of defence: what is stored holds no secret
            wait = min(nc.retry_base * (2**attempts), nc.retry_max)
            con.execute(MARK_FAILED, [now + wait, detail, nid])
            con.execute(LOG_ATTEMPT, [nid, now, False, detail])
            log.warning(
                "notification %d via %s failed (attempt %d), retry at %s: %s",
                nid,
                channel,
                attempts + 1,
                iso(now + wait),
                detail,
            )
            results.append(Delivery(nid, channel, False, detail))
            blocked.add(channel)
            continue
        con.execute(MARK_SENT, [now, nid])
        con.execute(LOG_ATTEMPT, [nid, now, True, "accepted"])
        log.info("notification %d sent via %s", nid, channel)
        results.append(Delivery(nid, channel, True, "accepted"))
    return results


def last_id(con: duckdb.DuckDBPyConnection) -> int:
    """The newest notification's id (0 for none): taken under the write
    lock before a command queues, it tells which notifications are its own."""
    return con.execute(LAST_ID).fetchone()[0]


class Fate(StrEnum):
    """What became of a notification after a delivery round."""

    SENT = "sent"
    FAILED = "failed"  # tried now and refused; retried later
    QUEUED = "queued"  # not tried now (not due, or waits behind another)


@dataclass(frozen=True)
class Outcome:
    """What became of one notification a command queued."""

    id: int
    channel: str
    subject: str
    state: Fate
    detail: str  # "" when sent; the failure, or why it waits

    def line(self, scrub=str) -> str:
        """The outcome for a terminal or a log, with `scrub` applied to the detail."""
        if self.state == Fate.QUEUED:
            return f"notification {self.id} via {self.channel}: queued, not sent yet: {scrub(self.detail)}"
        return f"delivery {self.id} via {self.channel}: " + (
            "sent" if self.state == Fate.SENT else f"failed: {scrub(self.detail)}"
        )


def outcomes(con: duckdb.DuckDBPyConnection, after: int, results: list[Delivery]) -> list[Outcome]:
    """The fate of every notification queued after id `after`, as stored
    now (after `deliver`): sent, failed this time (with the reason; the
    runner's deliver job retries it), or still queued (why it was not tried)."""
    tried = {d.id: d for d in results}
    out = []
    for nid, channel, subject, status, next_at, last_error in con.execute(
        SINCE_ID, [after]
    ).fetchall():
        if status == "sent":
            out.append(Outcome(nid, channel, subject, Fate.SENT, ""))
        elif nid in tried:
            out.append(
                Outcome(
                    nid,
                    channel,
                    subject,
                    Fate.FAILED,
                    f"{tried[nid].detail}; kept in the outbox, retried from {iso(next_at)} "
                    "by `cachemon alerts deliver` or the runner's deliver job",
                )
            )
        else:
            out.append(
                Outcome(
                    nid,
                    channel,
                    subject,
                    Fate.QUEUED,
                    _why_waiting(con, nid, channel, next_at, last_error),
                )
            )
    return out


def _why_waiting(
    con: duckdb.DuckDBPyConnection,
    nid: int,
    channel: str,
    next_at: datetime,
    last_error: str | None,
) -> str:
    earlier = con.execute(EARLIER_PENDING, [channel, nid]).fetchone()[0]
    if earlier is not None:
        return (
            f"waits behind notification {earlier} of the same channel, which is not delivered yet "
            "(see `cachemon alerts history`)"
        )
    return f"next attempt at {iso(next_at)}" + (
        f" (last error: {last_error})" if last_error else ""
    )


def _lines(results: list[Delivery], mine: list[Outcome], scrub) -> list[str]:
    own = {o.id: o for o in mine}
    lines = [
        own[d.id].line(scrub)
        if d.id in own
        else Outcome(d.id, d.channel, "", Fate.SENT if d.ok else Fate.FAILED, d.detail).line(scrub)
        for d in results
    ]
    return lines + [o.line(scrub) for o in mine if o.state == Fate.QUEUED]


def delivered_all(results: list[Delivery], mine: list[Outcome]) -> bool:
    """True when no attempt failed and everything the command queued was
    sent: the exit status of a command that queues and delivers."""
    return all(d.ok for d in results) and all(o.state == Fate.SENT for o in mine)


def _attempt(
    t: Transports, channel: str, payload: str, timeout: timedelta, now: datetime
) -> str | None:
    """One send; None when accepted, else what went wrong. Nothing a
    channel raises may stop the others, so an unexpected error is a failed
    delivery too (named by its type: its text may hold a URL)."""
    try:
        send(t, channel, json.loads(payload), timeout, now)
    except NotifyError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - isolation of one channel, see above
        return f"{channel}: unexpected {type(exc).__name__} while sending"
    return None


@dataclass(frozen=True)
class Flush:
    """One delivery round: every attempt, the fate of each notification
    queued after the caller's mark, and the lines that say so."""

    deliveries: tuple[Delivery, ...]
    outcomes: tuple[Outcome, ...]
    lines: tuple[str, ...]  # scrubbed: fit for a terminal or a log
    ok: bool  # no attempt failed and everything queued after the mark was sent

    @property
    def sent(self) -> int:
        """How many notifications went out in this round."""
        return sum(d.ok for d in self.deliveries)

    @property
    def failed(self) -> int:
        """How many attempts of this round failed."""
        return sum(not d.ok for d in self.deliveries)


NOTHING = Flush((), (), (), True)  # a dry run's: nothing delivered, nothing to say


def flush(con: duckdb.DuckDBPyConnection, nc: NotifyConfig, t: Transports, now: datetime) -> Flush:
    """Deliver what is due at `now` and say what became of it, for a caller
    that queued nothing itself (the deliver job, `cachemon alerts deliver`).
    A caller that queues uses `delivery_round`."""
    return _flush(con, nc, t, now, last_id(con))


def _flush(
    con: duckdb.DuckDBPyConnection, nc: NotifyConfig, t: Transports, now: datetime, mark: int
) -> Flush:
    results = deliver(con, t, nc, now)
    mine = outcomes(con, mark, results)
    lines = _lines(results, mine, t.scrub)
    return Flush(tuple(results), tuple(mine), tuple(lines), delivered_all(results, mine))


class Round:
    """A delivery round in progress (see `delivery_round`): `flush` is
    NOTHING inside the block, and the round's Flush once the block ended."""

    def __init__(self, mark: int):
        self.mark = mark  # the newest notification before the block: later ones are its own
        self.flush = NOTHING


@contextmanager
def delivery_round(
    con: duckdb.DuckDBPyConnection,
    nc: NotifyConfig,
    t: Transports,
    now: datetime,
    dry_run: bool = False,
) -> Iterator[Round]:
    """The one delivery call of everything that queues notifications:

        with outbox.delivery_round(con, nc, t, now) as r:
            ...enqueue...
        r.flush  # every attempt, and the fate of what the block queued

    The mark is taken on entry (under the caller's write lock), so the
    outcomes are those of the block's own notifications; delivery happens
    when the block ends without an error (never in a `dry_run`)."""
    r = Round(last_id(con))
    yield r
    if not dry_run:
        r.flush = _flush(con, nc, t, now, r.mark)


def outbox(
    con: duckdb.DuckDBPyConnection,
    since: datetime,
    limit: int = 100,
    until: datetime | None = None,
) -> list[dict]:
    """Notifications created from `since` (to `until`, both included),
    with their delivery state, newest first."""
    cur = con.execute(LIST, {"since": since, "limit": limit, "until": until})
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]
