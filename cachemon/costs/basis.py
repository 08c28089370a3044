"""What a cost figure is: its basis, named on every surface.

A cost figure is one of

* a **rate**: a window's usage scaled to a day (the Costs headline, the
  metrics `costs` block), from the part of the window the data covers;
* **measured**: a window's usage as it was, not scaled (the daily report's
  UTC day);
* **month to date**: the usage since the 1st, priced only for the time
  there is data for;
* a **forecast**: the month to date plus the rest of the month at the
  daily rate of a recent window;

and is priced at **list** (usage × price) or **billed** (after the plan's
included amounts). `Basis.text` says all of it in a sentence, `Basis.short`
in a few words for a label; `Basis.to_json` for machines. Every surface
(dashboard, report email, CLI, JSON) takes its wording from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from cachemon.clock import DAY, Window, format_duration, iso, parse_instant
from cachemon.timerange import stamp


class Kind(StrEnum):
    """What a figure is (see the module docstring)."""

    RATE = "rate"
    MEASURED = "measured"
    MONTH_TO_DATE = "month_to_date"
    FORECAST = "forecast"


class Price(StrEnum):
    """List (usage × price) or billed (after the included amounts)."""

    LIST = "list"
    BILLED = "billed"


PRICES = "list = usage × price; billed = after the plan's included amounts"


def between(w: Window) -> str:
    """A window for people, in the one timestamp format (`timerange.stamp`):
    '2026-12-01 14:15Z – 2026-12-01 20:15Z'."""
    return f"{stamp(w.start)} – {stamp(w.end)}"


def span(length: timedelta) -> str:
    """A length for people: '1h', '90m', '5.5 days'."""
    if length >= 2 * DAY:
        return f"{length / DAY:.1f} days"
    return format_duration(length) if length > timedelta(0) else "no time"


@dataclass(frozen=True)
class Basis:
    """The basis of a cost figure: its kind, the window measured and the
    part of it the data covers; a forecast also names the window of its
    daily rate and the days it adds at that rate."""

    kind: Kind
    window: Window
    covered: Window
    rate: Window | None = None  # FORECAST: the window of the daily rate
    days_left: float = 0.0  # FORECAST: days at that rate
    rate_covered: Window | None = None  # FORECAST: the part of `rate` with data

    @property
    def partial(self) -> bool:
        """Whether the data covers less than the window."""
        return self.covered.length < self.window.length

    @property
    def month(self) -> str:
        return self.window.start.strftime("%Y-%m")

    def short(self, price: Price | None = Price.LIST) -> str:
        """A few words for a label, e.g. 'list, rate from 1h of data'
        (None: no price named, for a figure shown at both)."""
        head = f"{price}, " if price else ""
        if self.kind is Kind.RATE:
            return f"{head}rate from {span(self.covered.length)} of data"
        partial = f", {span(self.covered.length)} of it with data" if self.partial else ""
        if self.kind is Kind.MEASURED:
            return f"{head}{span(self.window.length)} measured{partial}"
        if self.kind is Kind.MONTH_TO_DATE:
            return f"{head}{self.month} to date{partial}"
        return f"{head}{self.month} month-end forecast"

    def text(self, price: Price | None = Price.LIST) -> str:
        """The basis in a sentence: window, kind, coverage, list or billed
        (None: a figure shown at both)."""
        unit = "USD/day" if self.kind is Kind.RATE else "USD"
        head = f"{price.capitalize() if price else 'List and billed'} {unit}"
        if self.kind is Kind.RATE:
            out = (
                f"{head}: a rate, the usage of {between(self.window)} ({span(self.window.length)})"
            )
            out += " scaled to a day"
            if self.partial:
                out += (
                    f"; the data covers {span(self.covered.length)} of it ({between(self.covered)}), "
                    "and the rate is from that"
                )
        elif self.kind is Kind.MEASURED:
            out = f"{head}: the usage of {between(self.window)} as measured, not scaled"
            out += self._uncovered()
        elif self.kind is Kind.MONTH_TO_DATE:
            out = f"{head}, month to date: the usage of {between(self.window)}" + self._uncovered()
        else:
            with_data = f", {span(self.covered.length)} with data" if self.partial else ""
            rate = f" at the daily rate of {between(self.rate)}" if self.rate else ""
            rc = self.rate_covered
            if self.rate and rc is not None and rc.length < self.rate.length:
                rate += f" (from the {span(rc.length)} of it with data)"
            out = (
                f"{head}, month-end forecast for {self.month}: the month to date "
                f"({between(self.window)}{with_data}) plus {self.days_left:.1f} days{rate}"
            )
        return out + self._billed(price)

    def _billed(self, price: Price | None) -> str:
        whole_month = self.kind is Kind.FORECAST
        if price is Price.LIST:
            return ""
        if whole_month:
            return "; billed applies the plan's included amounts to the whole month"
        return "; billed = after the plan's included amounts, pro-rated to the span"

    def _uncovered(self) -> str:
        if not self.partial:
            return ""
        if self.covered.length <= timedelta(0):
            return "; there is no data in it, so nothing is priced"
        return (
            f"; the data covers only {between(self.covered)} ({span(self.covered.length)}), "
            "the rest is not priced"
        )

    def to_json(self) -> dict:
        """The basis for machines (the metrics JSON, the stored report)."""
        out = {
            "kind": str(self.kind),
            "window": {"start": iso(self.window.start), "end": iso(self.window.end)},
            "covered": {"start": iso(self.covered.start), "end": iso(self.covered.end)},
            "partial": self.partial,
        }
        if self.kind is Kind.FORECAST:
            out["rate"] = (
                {"start": iso(self.rate.start), "end": iso(self.rate.end)} if self.rate else None
            )
            out["daysLeft"] = self.days_left
            rc = self.rate_covered
            out["rateCovered"] = {"start": iso(rc.start), "end": iso(rc.end)} if rc else None
        return out

    @classmethod
    def from_json(cls, d: dict) -> Basis:
        """A basis read back from `to_json`."""

        def window(w: dict) -> Window:
            return Window(parse_instant(w["start"]), parse_instant(w["end"]))

        rate, rc = d.get("rate"), d.get("rateCovered")
        return cls(
            Kind(d["kind"]),
            window(d["window"]),
            window(d["covered"]),
            window(rate) if rate else None,
            float(d.get("daysLeft", 0.0)),
            window(rc) if rc else None,
        )


def label(basis: Basis, price: Price = Price.LIST) -> str:
    """The one label of a cost figure (for a KPI's caption or help): the
    basis sentence, with what list and billed mean."""
    return f"{basis.text(price)} ({PRICES})."
