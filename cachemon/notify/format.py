"""Generic parts of a notification, for any sender (alerts, reports, notices).

Everything that came from the internet (cache keys, endpoints) is escaped for
its medium: HTML autoescaping, Slack's `&<>`, Discord markdown and mentions,
and control characters shown as `\\n` so a key cannot forge lines of text or
headers. The templates live next to this module (`templates/`).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cachemon.clock import iso

if TYPE_CHECKING:
    import jinja2

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")
_DISCORD_MD = re.compile(r"([\\*_~`|>#\[\]()-])")
TEMPLATES = Path(__file__).parent / "templates"
SLACK_LIMIT = 2900  # characters of a section block's text (Slack allows 3,000)
DISCORD_LIMIT = 2000  # characters of a message's content


def oneline(value) -> str:
    """Control characters (newlines included) shown escaped, never acted on."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))


def header_safe(value: str, limit: int = 200) -> str:
    """A header value with no line breaks or control characters."""
    return oneline(value)[:limit]


@functools.cache
def _env(autoescape: bool) -> jinja2.Environment:
    # jinja2 is imported when a message is first rendered, not at start-up.
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["oneline"] = oneline
    env.filters["num"] = lambda v, d=0: "n/a" if v is None else f"{v:,.{d}f}"
    return env


@dataclass(frozen=True)
class Templates:
    """The templates of one medium; the Jinja2 environment is made on first use."""

    autoescape: bool

    def get_template(self, name: str) -> jinja2.Template:
        """The template `name` of `templates/`."""
        return _env(self.autoescape).get_template(name)


HTML = Templates(autoescape=True)
TEXT = Templates(autoescape=False)


@dataclass(frozen=True)
class Email:
    """One email as the outbox stores it: addresses, subject, text and HTML."""

    to: tuple[str, ...]
    sender: str
    subject: str
    text: str
    html: str
    message_id: str

    def to_json(self) -> dict:
        """The outbox payload of this email."""
        return {
            "to": list(self.to),
            "from": self.sender,
            "subject": self.subject,
            "text": self.text,
            "html": self.html,
            "message_id": self.message_id,
        }


def slack_escape(text: str) -> str:
    """Text for Slack mrkdwn: one line, `&<>` escaped (no links, no mentions)."""
    return oneline(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def discord_escape(text: str) -> str:
    """Text for Discord: one line, markdown characters escaped."""
    return _DISCORD_MD.sub(r"\\\1", oneline(text))


def slack_message(title: str, body: str) -> dict:
    """An incoming-webhook message: `title` as the notification text, `body`
    (mrkdwn, already escaped) as one section within Slack's limit."""
    return {
        "text": title,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": body[:SLACK_LIMIT]}}],
    }


def discord_message(body: str) -> dict:
    """A webhook message: `body` (already escaped) within Discord's limit, no mentions."""
    return {"content": body[:DISCORD_LIMIT], "allowed_mentions": {"parse": []}}


def chat_text(channel: str, title: str, lines: list[str]) -> dict:
    """A plain chat message (title and lines) for Slack or Discord, escaped."""
    if channel == "slack":
        body = "\n".join([f"*{slack_escape(title)}*", *(slack_escape(x) for x in lines)])
        return slack_message(slack_escape(title), body)
    body = "\n".join([f"**{discord_escape(title)}**", *(discord_escape(x) for x in lines)])
    return discord_message(body)


def message_id(kind: str, at: datetime, channel: str, members: str) -> str:
    """A stable Message-ID: a resend of the same notification carries the
    same ID, so mail clients show it once."""
    digest = hashlib.sha256(f"{kind}|{iso(at)}|{channel}|{members}".encode()).hexdigest()[:32]
    return f"<{digest}@cachemon>"
