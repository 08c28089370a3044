"""Alert severities and the health status they add up to: the one
definition the rules, the lifecycle, the health block, the Prometheus
exposition, the notify settings and the dashboard share.

Both are StrEnums, so the strings stored in the alert history, written in
TOML and sent in JSON are the members' values, unchanged. This module sits
at the base of the layers because metrics (the exposition) is below alerts.
"""

from __future__ import annotations

from enum import StrEnum


class Severity(StrEnum):
    """An alert rule's severity; members in order, most severe first."""

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


_RANK = {s: i for i, s in enumerate(Severity)}


def severity_rank(value: str) -> int:
    """0 for the most severe; a stored string that is no severity sorts last."""
    return _RANK.get(value, len(_RANK))  # a StrEnum member hashes as its value


class HealthStatus(StrEnum):
    """The health block's status: the worst severity among its issues."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    CRITICAL = "critical"

    @property
    def level(self) -> int:
        """0 healthy, 1 degraded, 2 critical: the Prometheus gauge's value."""
        return list(HealthStatus).index(self)

    @classmethod
    def of(cls, severities: set[str]) -> HealthStatus:
        """Critical when a critical issue is present, degraded for a warning."""
        if Severity.CRITICAL in severities:
            return cls.CRITICAL
        if Severity.WARNING in severities:
            return cls.DEGRADED
        return cls.HEALTHY
