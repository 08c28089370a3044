"""Secrets out of text: every configured secret, and the secret parts of
webhook URLs, replaced before text is logged, stored, exported or printed.

Remote servers echo what they were sent (a 404 page repeating the request
path, an API error quoting the Authorization header), so any text that
comes back from outside goes through `Redactor.clip` where it enters
cachemon, and the output edges apply it again. Besides each secret as it is
(and URL- and JSON-escaped), a URL-valued secret gives its path and query,
its password, and each path segment or query value that looks like a token
(6+ characters with a digit, or 16+ characters): a server that echoes only
part of the path still shows nothing. Values shorter than 4 characters are
not searched for (they would match everywhere); a real secret is longer.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

MARK = "[redacted]"
LIMIT = 300  # characters of remote text kept in a message
MIN_SECRET = 4
# The secrets cachemon reads (README, "Channels" and "Analytics Engine"), and
# any later one named like them.
SECRET_VARS = (
    "CF_API_TOKEN",
    "SMTP_PASSWORD",
    "MAILCHANNELS_API_KEY",
    "SLACK_WEBHOOK_URL",
    "DISCORD_WEBHOOK_URL",
    "CACHEMON_API_TOKEN",
    "CACHEMON_HEARTBEAT_URL",
    "AWS_SECRET_ACCESS_KEY",  # the S3 export's fallback name for its secret
    "AWS_SESSION_TOKEN",
)
_SECRET_NAME = re.compile(
    r"^(CF|CACHEMON|SMTP|MAILCHANNELS|SLACK|DISCORD)_\w*(TOKEN|PASSWORD|SECRET|KEY|_URL)$"
)
# URLs that are not secrets: their text stays readable.
PUBLIC_URLS = ("CF_API_BASE", "MAILCHANNELS_API_URL", "CACHEMON_DASHBOARD_URL")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")
_TOKENISH = re.compile(r"^(?=.*\d).{6,}$|^.{16,}$")


def secret_names(env: Mapping[str, str]) -> list[str]:
    """The variables of `env` whose values are secrets."""
    return [k for k in env if (k in SECRET_VARS or _SECRET_NAME.match(k)) and k not in PUBLIC_URLS]


def variants(value: str) -> set[str]:
    """The forms a secret can take in text: itself, URL- and JSON-escaped,
    and for a URL its path, query, password and token-like parts."""
    value = value.strip()
    out = {
        value,
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote(value),
        json.dumps(value)[1:-1],
    }
    if "://" in value:
        out |= _url_parts(value)
    return {v for v in out if len(v) >= MIN_SECRET}


def _url_parts(url: str) -> set[str]:
    try:
        u = urllib.parse.urlsplit(url)
    except ValueError:
        return set()
    out = set()
    if u.path not in ("", "/"):
        out |= {u.path, u.path + ("?" + u.query if u.query else ""), urllib.parse.unquote(u.path)}
    if u.query:
        out.add(u.query)
    if u.password:
        out.add(u.password)
    segments = u.path.split("/") + [v for _, v in urllib.parse.parse_qsl(u.query)]
    out |= {s for s in segments if _TOKENISH.match(s)}
    return out


@dataclass(frozen=True)
class Redactor:
    """Replaces every known secret form with `[redacted]`. Its repr shows
    how many forms it knows, never one of them."""

    forms: tuple[str, ...] = ()  # longest first, so a secret's part never leaves the rest

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Redactor:
        return cls().plus(*(env[k] for k in secret_names(env)))

    def plus(self, *secrets: str) -> Redactor:
        """This redactor and these secret values (empty ones ignored)."""
        forms = set(self.forms)
        for s in secrets:
            if s:
                forms |= variants(str(s))
        return Redactor(tuple(sorted(forms, key=lambda f: (-len(f), f))))

    def __repr__(self) -> str:
        return f"Redactor({len(self.forms)} forms)"

    def __call__(self, text) -> str:
        """`text` with every secret form replaced."""
        text = str(text)
        for form in self.forms:
            if form in text:
                text = text.replace(form, MARK)
        return text

    def clip(self, text, limit: int = LIMIT) -> str:
        """Remote text fit for a message: bytes decoded, secrets replaced,
        on one line (control characters shown escaped), at most `limit`
        characters."""
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", "replace")
        # Again after escaping: an escape's letters can join the text around
        # them into a secret ("\n" + "abc" shows as `\nabc`).
        text = self(oneline(self(text).strip()))
        return text if len(text) <= limit else text[: limit - 1] + "…"


def oneline(text: str) -> str:
    """Control characters (newlines included) shown escaped, never acted on."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
