"""Notification channels and the durable outbox.

A notification is rendered and written to the store (`notifications`, in
the same transaction as the decision that caused it) before anything is
sent. `deliver` then sends what is due, oldest first, recording every
attempt in `deliveries`; a failure (server down, 5xx, timeout, rejection)
leaves it pending with exponential backoff (retry_base doubling up to
retry_max), forever, so nothing is lost; a later notification of the same
channel waits behind an undelivered one, so order is kept. A notification is
marked sent right after the server accepts it; only a crash between those
two instants can repeat it, and the repeat carries the same Message-ID.

Channels: email (SMTP with STARTTLS/SSL/auth, or the MailChannels Email
API), Slack and Discord incoming webhooks. Their secrets come from the
environment only and never reach a log line, an error or the store: remote
text (an error page, an SMTP reply) is redacted and cut to 300 characters
where it enters (`redact`). Every send has one total deadline
(`[notify] timeout`) and reads a bounded answer (`outbound`); a channel that
cannot send, whatever the reason, fails alone: its failure is recorded on
its delivery and the other channels go on.
"""

from __future__ import annotations

import json
import logging
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime

import duckdb

from cachemon import jsontext, outbound
from cachemon.alerts import messages
from cachemon.alerts.lifecycle import SEVERITY_ORDER, Notice
from cachemon.clock import iso
from cachemon.errors import CachemonError, ConfigError
from cachemon.redact import Redactor
from cachemon.settings import EMAIL_RE, NotifyConfig

log = logging.getLogger("cachemon.notify")

CHANNELS = ("email", "slack", "discord")
MAILCHANNELS_URL = "https://api.mailchannels.net/tx/v1/send"
ANSWER_CAP = 16 * 1024  # bytes of an error answer read: its first lines say what is wrong

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
FROM notifications WHERE created_at >= $since ORDER BY id DESC LIMIT $limit
"""


class NotifyError(CachemonError):
    """A channel refused or could not take a notification."""


@dataclass(frozen=True)
class Smtp:
    host: str
    port: int
    tls: str  # none | starttls | ssl
    user: str = ""
    password: str = field(default="", repr=False)
    ca_file: str = ""


def _smtp_from_env(env: dict) -> Smtp | None:
    if not env.get("SMTP_HOST"):
        return None
    tls = env.get("SMTP_TLS", "starttls").lower()
    if tls not in ("none", "starttls", "ssl"):
        raise ConfigError(f"SMTP_TLS={tls!r}: use none, starttls or ssl")
    port = env.get("SMTP_PORT") or {"none": "25", "starttls": "587", "ssl": "465"}[tls]
    # Checked here, not at connect time: 99999 would only show up as an
    # "unreachable" server, retried forever, long after the setting was made.
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ConfigError(f"SMTP_PORT={port[:20]!r} is not a port number (1 to 65535)")
    return Smtp(
        env["SMTP_HOST"],
        int(port),
        tls,
        env.get("SMTP_USER", ""),
        env.get("SMTP_PASSWORD", ""),
        env.get("SMTP_CA_FILE", ""),
    )


@dataclass(frozen=True)
class Transports:
    """Where notifications go, from the environment. Secrets never print."""

    smtp: Smtp | None = None
    mailchannels_key: str = field(default="", repr=False)
    mailchannels_url: str = MAILCHANNELS_URL
    slack_url: str = field(default="", repr=False)
    discord_url: str = field(default="", repr=False)
    alert_email: tuple[str, ...] = ()
    sender: str = "cachemon@localhost"
    dashboard_url: str = ""
    redactor: Redactor = field(default=Redactor(), repr=False)  # every secret of the environment
    email_problem: str = ""  # why email is left out (from_env(strict=False)); "" when it is fine

    @classmethod
    def from_env(cls, env: dict, strict: bool = True) -> Transports:
        """Read ALERT_EMAIL, ALERT_FROM, SMTP_*, MAILCHANNELS_API_KEY,
        SLACK_WEBHOOK_URL, DISCORD_WEBHOOK_URL and CACHEMON_DASHBOARD_URL.
        A bad email setting raises ConfigError; with `strict=False` (the job
        runner) email is left out and the problem kept in `email_problem`,
        so a broken email setting fails alone: chat channels still deliver."""
        smtp, problem = None, ""
        try:
            smtp = _smtp_from_env(env)
            to = tuple(a.strip() for a in env.get("ALERT_EMAIL", "").split(",") if a.strip())
            sender = env.get("ALERT_FROM", "").strip() or "cachemon@localhost"
            for addr in to + (sender,):
                if not _is_address(addr):
                    raise ConfigError(f"ALERT_EMAIL/ALERT_FROM: {addr!r} is not an email address")
        except ConfigError as exc:
            if strict:
                raise
            smtp, to, sender, problem = None, (), "cachemon@localhost", str(exc)
        return cls(
            smtp,
            "" if problem else env.get("MAILCHANNELS_API_KEY", ""),
            env.get("MAILCHANNELS_API_URL", MAILCHANNELS_URL),
            env.get("SLACK_WEBHOOK_URL", ""),
            env.get("DISCORD_WEBHOOK_URL", ""),
            to,
            sender,
            env.get("CACHEMON_DASHBOARD_URL", ""),
            Redactor.from_env(env),
            problem,
        )

    def scrub(self, text) -> str:
        """`text` with every secret (of the environment and of these
        transports) replaced, on one line, capped: fit for a log line,
        the store or a terminal."""
        own = (
            self.mailchannels_key,
            self.slack_url,
            self.discord_url,
            self.smtp.password if self.smtp else "",
        )
        return self.redactor.plus(*own).clip(text)

    def channels(self, nc: NotifyConfig) -> tuple[str, ...]:
        """The channels that can deliver now."""
        out = []
        if (self.smtp or self.mailchannels_key) and (
            self.alert_email or nc.critical or nc.warning or nc.info
        ):
            out.append("email")
        if self.slack_url:
            out.append("slack")
        if self.discord_url:
            out.append("discord")
        return tuple(out)


@dataclass(frozen=True)
class OutboxRow:
    created_at: datetime
    channel: str
    kind: str  # firing | resolved | report
    subject: str
    members: str
    payload: str  # JSON, exactly what will be sent


def recipients(nc: NotifyConfig, t: Transports, severities: set[str]) -> tuple[str, ...]:
    """Email recipients for alerts of these severities (ALERT_EMAIL when a
    severity has none configured)."""
    out: list[str] = []
    for sev in sorted(severities, key=lambda s: SEVERITY_ORDER.get(s, 9)):
        for addr in getattr(nc, sev, ()) or t.alert_email:
            if addr not in out:
                out.append(addr)
    return tuple(out)


def render(notice: Notice, context: dict | None, nc: NotifyConfig, t: Transports) -> OutboxRow:
    """A decision rendered for its channel, ready for the outbox."""
    url = t.dashboard_url or nc.dashboard_url
    members = ",".join(s.member for s in notice.firing + notice.resolved)
    if notice.channel == "email":
        to = recipients(nc, t, {s.severity for s in notice.firing + notice.resolved})
        mid = messages.message_id(notice.kind, notice.at, notice.channel, members)
        email = messages.alert_email(
            notice, context, to, nc.email_from or t.sender, nc.subject_prefix, url, mid
        )
        payload = email.to_json()
    elif notice.channel == "slack":
        payload = messages.slack_payload(notice, nc.subject_prefix, url)
    else:
        payload = messages.discord_payload(notice, nc.subject_prefix, url)
    subj = messages.subject(notice, nc.subject_prefix)
    return OutboxRow(
        notice.at,
        notice.channel,
        notice.kind,
        subj,
        members,
        jsontext.dumps(payload, ensure_ascii=False),
    )


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
        to = nc.report or t.alert_email
        mid = messages.message_id(kind, at, channel, subject)
        payload = messages.Email(
            tuple(to), nc.email_from or t.sender, subject, text, html, mid
        ).to_json()
    else:
        keep = ("- Total:", "Total Potential", "View details") if kind == "report" else ("",)
        lines = [ln for ln in text.splitlines() if ln.startswith(keep) and ln.strip()]
        payload = messages.chat_text(channel, subject, lines)
    return OutboxRow(at, channel, kind, subject, kind, jsontext.dumps(payload, ensure_ascii=False))


@dataclass(frozen=True)
class Delivery:
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
        problem = _attempt(t, channel, payload, nc.timeout)
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


@dataclass(frozen=True)
class Outcome:
    """What became of one notification a command queued."""

    id: int
    channel: str
    subject: str
    state: str  # sent | failed | queued
    detail: str  # "" when sent; the failure, or why it waits

    def line(self, scrub=str) -> str:
        if self.state == "queued":
            return f"notification {self.id} via {self.channel}: queued, not sent yet: {scrub(self.detail)}"
        return f"delivery {self.id} via {self.channel}: " + (
            "sent" if self.state == "sent" else f"failed: {scrub(self.detail)}"
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
            out.append(Outcome(nid, channel, subject, "sent", ""))
        elif nid in tried:
            out.append(
                Outcome(
                    nid,
                    channel,
                    subject,
                    "failed",
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
                    "queued",
                    _why_waiting(con, nid, channel, next_at, last_error),
                )
            )
    return out


def _why_waiting(con, nid: int, channel: str, next_at: datetime, last_error: str | None) -> str:
    earlier = con.execute(EARLIER_PENDING, [channel, nid]).fetchone()[0]
    if earlier is not None:
        return (
            f"waits behind notification {earlier} of the same channel, which is not delivered yet "
            "(see `cachemon alerts history`)"
        )
    return f"next attempt at {iso(next_at)}" + (
        f" (last error: {last_error})" if last_error else ""
    )


def summary(
    con: duckdb.DuckDBPyConnection, after: int, results: list[Delivery], scrub=str
) -> tuple[list[str], bool]:
    """One line per delivery attempted (an earlier notification's too) and
    per notification queued after id `after` that was not tried, and
    whether everything went out (see `delivered_all`)."""
    mine = outcomes(con, after, results)
    own = {o.id: o for o in mine}
    lines = [
        own[d.id].line(scrub)
        if d.id in own
        else Outcome(d.id, d.channel, "", "sent" if d.ok else "failed", d.detail).line(scrub)
        for d in results
    ]
    lines += [o.line(scrub) for o in mine if o.state == "queued"]
    return lines, delivered_all(results, mine)


def delivered_all(results: list[Delivery], mine: list[Outcome]) -> bool:
    """True when no attempt failed and everything the command queued was
    sent: the exit status of a command that queues and delivers."""
    return all(d.ok for d in results) and all(o.state == "sent" for o in mine)


def _attempt(t: Transports, channel: str, payload: str, timeout: timedelta) -> str | None:
    """One send; None when accepted, else what went wrong. Nothing a
    channel raises may stop the others, so an unexpected error is a failed
    delivery too (named by its type: its text may hold a URL)."""
    try:
        send(t, channel, json.loads(payload), timeout)
    except NotifyError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - isolation of one channel, see above
        return f"{channel}: unexpected {type(exc).__name__} while sending"
    return None


def send(t: Transports, channel: str, payload: dict, timeout: timedelta) -> None:
    """Hand one rendered notification to its channel; NotifyError on failure."""
    if channel == "email":
        _check_addresses(payload)
        if t.smtp:
            return _send_smtp(t.smtp, payload, timeout.total_seconds(), t.scrub)
        if t.mailchannels_key:
            return _post(
                "MailChannels",
                t.mailchannels_url,
                _mailchannels_body(payload),
                timeout,
                {"X-Api-Key": t.mailchannels_key},
                t.scrub,
                "MAILCHANNELS_API_URL and MAILCHANNELS_API_KEY",
            )
        raise NotifyError("email is not configured: set SMTP_HOST or MAILCHANNELS_API_KEY")
    url = {"slack": t.slack_url, "discord": t.discord_url}.get(channel)
    if not url:
        raise NotifyError(f"{channel} is not configured: set {channel.upper()}_WEBHOOK_URL")
    _post(
        f"{channel} webhook", url, payload, timeout, {}, t.scrub, f"{channel.upper()}_WEBHOOK_URL"
    )


def _is_address(addr: str) -> bool:
    # fullmatch: `$` alone would accept a trailing newline.
    return isinstance(addr, str) and EMAIL_RE.fullmatch(addr) is not None


def _check_addresses(payload: dict) -> None:
    """Header values never hold CR, LF or other control characters: an
    address that would (an older outbox row, a bad setting) is refused."""
    for role, addrs in (("sender", [payload["from"]]), ("recipient", payload["to"])):
        for addr in addrs:
            if not _is_address(addr):
                raise NotifyError(
                    f"email {role} {addr!r} is not an email address "
                    "(check ALERT_EMAIL, ALERT_FROM and [notify])"
                )


def email_message(payload: dict) -> EmailMessage:
    """The MIME message (text + HTML alternative) for an email payload."""
    msg = EmailMessage()
    msg["Subject"] = messages.header_safe(payload["subject"])
    msg["From"] = payload["from"]
    msg["To"] = ", ".join(payload["to"])
    msg["Message-ID"] = payload["message_id"]
    msg["Date"] = format_datetime(datetime.now().astimezone())
    msg.set_content(payload["text"])
    msg.add_alternative(payload["html"], subtype="html")
    return msg


def _send_smtp(s: Smtp, payload: dict, timeout: float, scrub=str) -> None:
    if not payload["to"]:
        raise NotifyError("email has no recipients: set ALERT_EMAIL or [notify] recipients")
    context = ssl.create_default_context(cafile=s.ca_file or None)
    where = f"SMTP server {s.host}:{s.port}"
    deadline = _Deadline(time.monotonic() + timeout)
    cls = _DeadlineSMTPSSL if s.tls == "ssl" else _DeadlineSMTP
    kwargs = {"context": context} if s.tls == "ssl" else {}
    smtp = None
    try:
        smtp = cls(deadline, s.host, s.port, timeout=timeout, **kwargs)
        if s.tls == "starttls":
            smtp.starttls(context=context)
        if s.user:
            smtp.login(s.user, s.password)
        smtp.send_message(email_message(payload))
    except smtplib.SMTPAuthenticationError as exc:
        raise NotifyError(
            f"{where} refused the login for SMTP_USER (code {exc.smtp_code})"
        ) from None
    except smtplib.SMTPResponseException as exc:
        raise NotifyError(f"{where} answered {exc.smtp_code}: {scrub(exc.smtp_error)}") from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise NotifyError(f"{where} refused the recipients {', '.join(exc.recipients)}") from None
    except (smtplib.SMTPException, OSError) as exc:
        if deadline.expired:
            raise NotifyError(f"{where}: no complete answer within {timeout:g} s") from None
        raise NotifyError(f"{where} unreachable: {type(exc).__name__}: {scrub(str(exc))}") from None
    finally:
        _close(smtp)


def _close(smtp) -> None:
    """QUIT politely if time allows, then close: the message's fate is
    already known, so nothing here can fail the send."""
    if smtp is None:
        return
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        pass
    finally:
        smtp.close()


class _Deadline:
    """A monotonic deadline shared by every socket operation of one send."""

    def __init__(self, at: float, clock=time.monotonic):
        self.at, self.clock, self.expired = at, clock, False

    def remaining(self) -> float:
        left = self.at - self.clock()
        if left <= 0:
            self.expired = True
            raise TimeoutError("the total deadline of the send has passed")
        return left


class _DeadlineLines:
    """smtplib reads replies with `file.readline`; a file from
    `sock.makefile` waits up to the socket timeout per recv, so a server
    dripping a byte at a time would never time out. This reader gives each
    recv only the time left before the deadline."""

    def __init__(self, sock: socket.socket, deadline: _Deadline):
        self.sock, self.deadline, self.buf = sock, deadline, b""

    def readline(self, limit: int = -1) -> bytes:
        while b"\n" not in self.buf and (limit < 0 or len(self.buf) < limit):
            self.sock.settimeout(self.deadline.remaining())
            try:
                chunk = self.sock.recv(4096)
            except TimeoutError:
                self.deadline.expired = True
                raise
            if not chunk:
                break
            self.buf += chunk
        end = self.buf.find(b"\n") + 1 or len(self.buf)
        if limit >= 0:
            end = min(end, limit)
        line, self.buf = self.buf[:end], self.buf[end:]
        return line

    def close(self) -> None:
        self.buf = b""


class _DeadlineMixin:
    """An SMTP client whose every socket operation (connect, TLS, each
    command, each recv of a reply) gets only the time left before one
    total deadline, so no server can hold a send longer than the timeout."""

    def __init__(self, deadline: _Deadline, *args, **kwargs):
        self.deadline = deadline
        super().__init__(*args, **kwargs)

    def _get_socket(self, host, port, timeout):
        return super()._get_socket(host, port, self.deadline.remaining())

    def send(self, s):
        if self.sock:
            self.sock.settimeout(self.deadline.remaining())
        return super().send(s)

    def getreply(self):
        if self.sock and not (
            isinstance(self.file, _DeadlineLines) and self.file.sock is self.sock
        ):
            self.file = _DeadlineLines(self.sock, self.deadline)
        return super().getreply()

    def starttls(self, *args, **kwargs):
        if self.sock:
            self.sock.settimeout(self.deadline.remaining())
        return super().starttls(*args, **kwargs)


class _DeadlineSMTP(_DeadlineMixin, smtplib.SMTP):
    pass


class _DeadlineSMTPSSL(_DeadlineMixin, smtplib.SMTP_SSL):
    pass


def _mailchannels_body(p: dict) -> dict:
    return {
        "personalizations": [{"to": [{"email": a} for a in p["to"]]}],
        "from": {"email": p["from"]},
        "subject": messages.header_safe(p["subject"]),
        "content": [
            {"type": "text/plain", "value": p["text"]},
            {"type": "text/html", "value": p["html"]},
        ],
        "headers": {"Message-ID": p["message_id"]},
    }


def _post(
    what: str, url: str, body: dict, timeout: timedelta, headers: dict, scrub=str, setting: str = ""
) -> None:
    # The URL (a webhook's secret) and the headers (an API key) never
    # appear in the messages below; the answer's text is scrubbed of them.
    try:
        r = outbound.call(
            "POST",
            url,
            json=body,
            headers=headers,
            limit=timeout.total_seconds(),
            max_bytes=ANSWER_CAP,
            want_body=lambda status: not 200 <= status < 300,
        )
    except outbound.DeadlineExceeded:
        raise NotifyError(
            f"{what}: timed out after {timeout.total_seconds():g} s (total deadline)"
        ) from None
    except outbound.BadRequest as exc:
        raise NotifyError(
            f"{what}: cannot send: {exc}{' (check ' + setting + ')' if setting else ''}"
        ) from None
    except outbound.Unreachable as exc:
        raise NotifyError(f"{what}: unreachable ({exc})") from None
    if not 200 <= r.status < 300:
        hint = " (check the URL or key)" if r.status in (401, 403, 404) else ""
        raise NotifyError(f"{what} rejected the message: HTTP {r.status}{hint}: {scrub(r.body)}")


def outbox(con, since: datetime, limit: int = 100) -> list[dict]:
    """Notifications with their delivery state, newest first."""
    cur = con.execute(LIST, {"since": since, "limit": limit})
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]
