"""Text from outside (cache keys, URL parameters, silence reasons) inside
the dashboard's Markdown: shown as typed, never as a link, an image or
formatting."""

from __future__ import annotations

MARKDOWN_PUNCTUATION = frozenset("\\`*_{}[]()<>#+-.!|~:$&\"'=^%@,;?/")


def md(text: str) -> str:
    """`text` for Markdown, shown as typed: every punctuation character
    escaped (so no link, emphasis or HTML), line breaks as visible spaces."""
    flat = " ".join(str(text).splitlines()) if "\n" in str(text) or "\r" in str(text) else str(text)
    return "".join("\\" + c if c in MARKDOWN_PUNCTUATION else c for c in flat)
