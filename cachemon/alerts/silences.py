"""Silences: people muting an alert type (or rule) for a while, with a reason.

A silence mutes notifications, not evaluation (`lifecycle.notifiable` leaves
silenced instances out of a channel's set). Silences are records of what
people decided: nothing deletes them; ending one early marks it expired.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb

from cachemon.alerts.lifecycle import Silence
from cachemon.errors import InputError

ACTIVE_SILENCES = """
SELECT id, matcher, endpoint, starts_at, ends_at, reason, created_by FROM silences
WHERE starts_at <= $at AND ends_at > $at AND expired_at IS NULL ORDER BY id
"""
MAX_DURATION = timedelta(days=30)


def active_silences(con: duckdb.DuckDBPyConnection, at: datetime) -> list[Silence]:
    """The silences in force at `at`, oldest first."""
    return [Silence(*r) for r in con.execute(ACTIVE_SILENCES, {"at": at}).fetchall()]


def has_control(text: str) -> bool:
    """Whether `text` holds a C0/C1 control character or DEL."""
    return any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text or "")


def add_silence(
    con: duckdb.DuckDBPyConnection,
    matcher: str,
    duration: timedelta,
    reason: str,
    now: datetime,
    endpoint: str = "",
    created_by: str = "",
) -> Silence:
    """Mute notifications of an alert type (or rule) for `duration`."""
    known = {
        r
        for row in con.execute("SELECT DISTINCT type, rule FROM alert_state").fetchall()
        for r in row
    }
    if not matcher or not matcher.replace("_", "").isalnum():
        raise InputError(f"silence: {matcher!r} is not an alert type or rule name")
    if known and matcher not in known:
        raise InputError(
            f"silence: no alert type or rule named {matcher!r}; known: {', '.join(sorted(known))}"
        )
    if duration <= timedelta(0) or duration > MAX_DURATION:
        raise InputError("silence: --for must be between 1m and 30d")
    if not reason.strip():
        raise InputError("silence: a --reason is required, so others know why alerts are muted")
    for name, text in (("reason", reason), ("endpoint", endpoint), ("by", created_by)):
        if has_control(text):
            raise InputError(
                f"silence: the {name} contains a control character (line break, ESC, …); "
                "it is printed in terminals and pages, so write it on one plain line"
            )
    sid = con.execute("SELECT nextval('silence_ids')").fetchall()[0][0]
    s = Silence(sid, matcher, endpoint, now, now + duration, reason.strip(), created_by)
    con.execute(
        "INSERT INTO silences VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
        [s.id, s.matcher, s.endpoint, s.starts_at, s.ends_at, s.reason, now, s.created_by],
    )
    return s


def expire_silence(con: duckdb.DuckDBPyConnection, sid: int, now: datetime) -> None:
    """End a silence now."""
    if not con.execute(
        "SELECT count(*) FROM silences WHERE id = ? AND expired_at IS NULL", [sid]
    ).fetchall()[0][0]:
        raise InputError(f"no active silence with id {sid}")
    con.execute("UPDATE silences SET expired_at = ? WHERE id = ?", [now, sid])
