"""How a rendered notification reaches its channel: SMTP (STARTTLS/SSL/auth),
the MailChannels Email API, Slack and Discord incoming webhooks.

Their secrets come from the environment only and never reach a log line, an
error or the store: remote text (an error page, an SMTP reply) is redacted and
cut to 300 characters where it enters (`redact`). Every send has one total
deadline and reads a bounded answer (`outbound`).

The functions that touch the world are parameters with real defaults, as
prometheus_client's `handler=`: `Transports.post` (HTTP, `outbound.call`),
`Transports.smtp_open` (an SMTP session) and `Transports.clock` (the monotonic
clock of the send deadline); the Date header is the caller's `now`. Tests
inject fakes instead of patching modules.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime

from cachemon import outbound
from cachemon.errors import CachemonError, ConfigError
from cachemon.notify.format import header_safe
from cachemon.redact import Redactor
from cachemon.settings import EMAIL_RE, NotifyConfig

MAILCHANNELS_URL = "https://api.mailchannels.net/tx/v1/send"
ANSWER_CAP = 16 * 1024  # bytes of an error answer read: its first lines say what is wrong


class NotifyError(CachemonError):
    """A channel refused or could not take a notification."""


@dataclass(frozen=True)
class Smtp:
    """An SMTP server from SMTP_*; the password never prints."""

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


def open_smtp(s: Smtp, deadline: Deadline, timeout: float) -> smtplib.SMTP:
    """An SMTP session, secured and logged in as `s` says, every socket
    operation bounded by `deadline` (the default `Transports.smtp_open`)."""
    context = ssl.create_default_context(cafile=s.ca_file or None)
    if s.tls == "ssl":
        smtp = _DeadlineSMTPSSL(deadline, s.host, s.port, timeout=timeout, context=context)
    else:
        smtp = _DeadlineSMTP(deadline, s.host, s.port, timeout=timeout)
    try:
        if s.tls == "starttls":
            smtp.starttls(context=context)
        if s.user:
            smtp.login(s.user, s.password)
    except BaseException:
        _close(smtp)
        raise
    return smtp


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


class Deadline:
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

    def __init__(self, sock: socket.socket, deadline: Deadline):
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

    def __init__(self, deadline: Deadline, *args, **kwargs):
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
    # The world, injectable (tests pass fakes; the defaults are the real thing):
    post: Callable[..., outbound.Answer] = field(default=outbound.call, repr=False)
    smtp_open: Callable[[Smtp, Deadline, float], smtplib.SMTP] = field(
        default=open_smtp, repr=False
    )
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    @classmethod
    def from_env(cls, env: dict, strict: bool = True, **world) -> Transports:
        """Read ALERT_EMAIL, ALERT_FROM, SMTP_*, MAILCHANNELS_API_KEY,
        SLACK_WEBHOOK_URL, DISCORD_WEBHOOK_URL and CACHEMON_DASHBOARD_URL.
        A bad email setting raises ConfigError; with `strict=False` (the job
        runner) email is left out and the problem kept in `email_problem`,
        so a broken email setting fails alone: chat channels still deliver.
        `world` sets `post`, `smtp_open` or `clock` (fakes for tests)."""
        smtp, problem = None, ""
        try:
            smtp = _smtp_from_env(env)
            to = tuple(a.strip() for a in env.get("ALERT_EMAIL", "").split(",") if a.strip())
            sender = env.get("ALERT_FROM", "").strip() or "cachemon@localhost"
            for addr in to + (sender,):
                if not is_address(addr):
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
            **world,
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


def send(t: Transports, channel: str, payload: dict, timeout: timedelta, now: datetime) -> None:
    """Hand one rendered notification to its channel at `now` (an email's
    Date); NotifyError on failure."""
    if channel == "email":
        _check_addresses(payload)
        if t.smtp:
            return _send_smtp(t, payload, timeout.total_seconds(), now)
        if t.mailchannels_key:
            return _post(
                t,
                "MailChannels",
                t.mailchannels_url,
                _mailchannels_body(payload),
                timeout,
                {"X-Api-Key": t.mailchannels_key},
                "MAILCHANNELS_API_URL and MAILCHANNELS_API_KEY",
            )
        raise NotifyError("email is not configured: set SMTP_HOST or MAILCHANNELS_API_KEY")
    url = {"slack": t.slack_url, "discord": t.discord_url}.get(channel)
    if not url:
        raise NotifyError(f"{channel} is not configured: set {channel.upper()}_WEBHOOK_URL")
    _post(t, f"{channel} webhook", url, payload, timeout, {}, f"{channel.upper()}_WEBHOOK_URL")


def is_address(addr: str) -> bool:
    """Whether `addr` is one plain email address (nothing a header could abuse)."""
    # fullmatch: `$` alone would accept a trailing newline.
    return isinstance(addr, str) and EMAIL_RE.fullmatch(addr) is not None


def _check_addresses(payload: dict) -> None:
    """Header values never hold CR, LF or other control characters: an
    address that would (an older outbox row, a bad setting) is refused."""
    for role, addrs in (("sender", [payload["from"]]), ("recipient", payload["to"])):
        for addr in addrs:
            if not is_address(addr):
                raise NotifyError(
                    f"email {role} {addr!r} is not an email address "
                    "(check ALERT_EMAIL, ALERT_FROM and [notify])"
                )


def email_message(payload: dict, now: datetime) -> EmailMessage:
    """The MIME message (text + HTML alternative) for an email payload,
    dated `now` (the caller's clock: a resend carries its own send time)."""
    msg = EmailMessage()
    msg["Subject"] = header_safe(payload["subject"])
    msg["From"] = payload["from"]
    msg["To"] = ", ".join(payload["to"])
    msg["Message-ID"] = payload["message_id"]
    msg["Date"] = format_datetime(now)
    msg.set_content(payload["text"])
    msg.add_alternative(payload["html"], subtype="html")
    return msg


def _send_smtp(t: Transports, payload: dict, timeout: float, now: datetime) -> None:
    s, scrub = t.smtp, t.scrub
    if not payload["to"]:
        raise NotifyError("email has no recipients: set ALERT_EMAIL or [notify] recipients")
    where = f"SMTP server {s.host}:{s.port}"
    deadline = Deadline(t.clock() + timeout, t.clock)
    smtp = None
    try:
        smtp = t.smtp_open(s, deadline, timeout)
        smtp.send_message(email_message(payload, now))
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


def _mailchannels_body(p: dict) -> dict:
    return {
        "personalizations": [{"to": [{"email": a} for a in p["to"]]}],
        "from": {"email": p["from"]},
        "subject": header_safe(p["subject"]),
        "content": [
            {"type": "text/plain", "value": p["text"]},
            {"type": "text/html", "value": p["html"]},
        ],
        "headers": {"Message-ID": p["message_id"]},
    }


def _post(
    t: Transports,
    what: str,
    url: str,
    body: dict,
    timeout: timedelta,
    headers: dict,
    setting: str = "",
) -> None:
    # The URL (a webhook's secret) and the headers (an API key) never
    # appear in the messages below; the answer's text is scrubbed of them.
    try:
        r = t.post(
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
        raise NotifyError(f"{what} rejected the message: HTTP {r.status}{hint}: {t.scrub(r.body)}")
