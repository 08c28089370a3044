"""Text from outside (cache keys, URL parameters, silence reasons) inside
the dashboard's Markdown: shown as typed, never as a link, an image or
formatting."""

from __future__ import annotations

import re

ZWSP = "\u200b"
AUTOLINK = re.compile(r"://|www\.|@", re.IGNORECASE)  # what starts a bare link
MARKDOWN_PUNCTUATION = frozenset("\\`*_{}[]()<>#+-.!|~:$&\"'=^%@,;?/")


def md(text: str) -> str:
    """`text` for Markdown, shown as typed: every punctuation character
    escaped (so no link, emphasis or HTML), line breaks as visible spaces."""
    flat = " ".join(str(text).splitlines()) if "\n" in str(text) or "\r" in str(text) else str(text)
    # Escapes do not stop GitHub-style bare links (https://…, www.…, a@b.c): an invisible
    # zero-width space breaks each one, so a URL's text can never become a working link.
    flat = AUTOLINK.sub(lambda m: m.group()[:-1] + ZWSP + m.group()[-1], flat)
    return "".join("\\" + c if c in MARKDOWN_PUNCTUATION else c for c in flat)
