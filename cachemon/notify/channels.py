"""The notification channels and who receives what on them (a leaf module:
alert rules validate their `channels` against it)."""

from __future__ import annotations

from collections.abc import Iterable

from cachemon.settings import NotifyConfig

CHANNELS = ("email", "slack", "discord")


def recipients(
    nc: NotifyConfig, fallback: tuple[str, ...], severities: Iterable[str]
) -> tuple[str, ...]:
    """Email recipients for alerts of these severities, in the order given
    (the caller's: most severe first): `[notify] <severity>`, or `fallback`
    (ALERT_EMAIL) when a severity has none configured."""
    out: list[str] = []
    for sev in severities:
        for addr in getattr(nc, sev, ()) or fallback:
            if addr not in out:
                out.append(addr)
    return tuple(out)


def report_recipients(nc: NotifyConfig, fallback: tuple[str, ...]) -> tuple[str, ...]:
    """Recipients of reports and notices: `[notify] report`, else `fallback` (ALERT_EMAIL)."""
    return tuple(nc.report or fallback)
