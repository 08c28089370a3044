"""`ttl whatif`: predicted hit rate and cost per KV TTL, and the one TTL
rule's recommendation (the Costs recommendation, the TTL page's) with the
what-if's check of it: the CLI, the page and Costs name the same TTL."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd

from cachemon import jsontext
from cachemon.argcheck import bounded
from cachemon.clock import (
    DAY,
    HOUR,
    MINUTE,
    Window,
    days_span,
    floor_to,
    format_duration,
    iso,
    parse_duration,
    parse_instant,
)
from cachemon.costs import optimize
from cachemon.errors import InputError
from cachemon.events import ENDPOINTS
from cachemon.pricing import days_in_month
from cachemon.settings import Config
from cachemon.sources import files
from cachemon.sources.simulator import Simulator
from cachemon.store import db as store_db
from cachemon.store.queries import data_days, data_end
from cachemon.timerange import stamp
from cachemon.tuning import keyadvice, tracereplay
from cachemon.tuning import whatif as tuning_whatif

# Per-key rates exist for at most [retention] hour_days (400 by default).
MAX_DAYS = 400
# `--trace simulator` regenerates every request of the window in memory
# (~3 M a day at the default rate): longer windows would exhaust it.
MAX_SIMULATOR_TRACE_DAYS = 31


def register(sub) -> None:
    """Add the `ttl` command and its `whatif` action."""
    p = sub.add_parser(
        "ttl",
        description="Predict, from the store's per-key request rates, what each KV TTL would do.",
    )
    a = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    w = a.add_parser(
        "whatif", help="a table of candidate TTLs for an endpoint, and a recommendation"
    )
    w.add_argument(
        "--endpoint",
        required=True,
        help=f"{', '.join(ENDPOINTS)} (the [costs] kv_ttl endpoints)",
    )
    w.add_argument(
        "--ttl",
        help="candidate TTLs, comma-separated (default: 6h, 12h, 1d, 2d, 1w and the TTL rule's "
        "options up to the staleness limit); the recommended TTL is always predicted too",
    )
    w.add_argument(
        "--edge-ttl", help="candidate edge cache TTLs too, e.g. 1h,6h,24h (edge hit rate only)"
    )
    w.add_argument("--max-staleness", help="the longest TTL allowed (default [costs] max_kv_ttl)")
    w.add_argument(
        "--days", type=float, default=7.0, help="days of traffic to measure rates on (default 7)"
    )
    w.add_argument(
        "--at",
        help="the window ends here, or where the data ends when earlier, ISO 8601 UTC "
        "(default now)",
    )
    w.add_argument(
        "--keys",
        type=int,
        default=20,
        help="busiest keys to check for a TTL of their own (default 20)",
    )
    w.add_argument(
        "--trace",
        nargs="+",
        metavar="FILE",
        help="event files to replay exactly (unsampled traces; the window's requests are counted, "
        "those before it warm the cache), or `simulator` to regenerate the simulator's requests "
        "of the window and a warm-up before it",
    )
    w.add_argument(
        "--draft-experiment",
        action="store_true",
        help="print an [[experiments]] block testing the recommended TTL (the TTL rule's)",
    )
    w.add_argument("--json", action="store_true", help="JSON instead of a table")
    w.set_defaults(func=whatif)


def whatif(args: argparse.Namespace, cfg: Config, now: datetime) -> int:
    """`ttl whatif`: the candidate TTLs' table (or JSON), the one TTL rule's
    recommendation over the class window ending at the data's end (what
    Costs and the TTL page recommend) and the what-if's verdict on it."""
    kv_ttl = dict(cfg.costs.kv_ttl)
    if args.endpoint not in kv_ttl:
        raise InputError(
            f"unknown endpoint {args.endpoint!r}: [costs] kv_ttl has {', '.join(kv_ttl)}"
        )
    edge_ttls = tuning_whatif.parse_ttls(args.edge_ttl, "--edge-ttl") if args.edge_ttl else []
    limit = (
        parse_duration(args.max_staleness, "--max-staleness")
        if args.max_staleness
        else cfg.costs.max_kv_ttl
    )
    ttls = (
        tuning_whatif.parse_ttls(args.ttl)
        if args.ttl
        else tuning_whatif.default_candidates(kv_ttl[args.endpoint], limit)
    )
    span = days_span(args.days, "--days", MAX_DAYS)
    if args.trace == ["simulator"] and span > timedelta(days=MAX_SIMULATOR_TRACE_DAYS):
        raise InputError(
            f"--trace simulator regenerates the window's requests in memory: use --days "
            f"{MAX_SIMULATOR_TRACE_DAYS} or less, got {args.days:g}"
        )
    bounded(args.keys, "--keys", 0)
    at = parse_instant(args.at, "--at") if args.at else now  # read-only: any supported instant
    simulated = args.trace == ["simulator"]
    trace = (
        _trace(args.trace, args.endpoint, cfg, None, timedelta(0))
        if args.trace and not simulated
        else None
    )
    with store_db.reader(cfg.store.path) as con:
        # As the TTL page: the what-if and the rule end where the data ends.
        end = data_end(con, at)
        rule = _rule(con, cfg, args.endpoint, end, limit)
        window = Window(end - span, end)
        # The recommended TTL is always predicted, whatever candidates were asked.
        asked = sorted({*ttls, rule.choice.recommended})
        w = tuning_whatif.whatif(con, cfg, [args.endpoint], asked, window, end, edge_ttls)[0]
        keys = keyadvice.per_key(
            con, w, cfg.pricing, cfg.costs.value_bytes, days_in_month(end), limit, args.keys
        )
    ck = tuning_whatif.check(w, rule.choice.recommended)
    # The trace is replayed over the what-if's own window, warmed by what
    # precedes it: the longest TTL asked for (the rule's is flagged if longer).
    warmup = min(max(ttls), timedelta(days=MAX_SIMULATOR_TRACE_DAYS) - span)
    if simulated:
        trace = _trace(args.trace, args.endpoint, cfg, window, warmup)
    replays, replay_warmup = (
        tracereplay.replay_window(trace, w.window, [p.ttl for p in w.candidates])
        if trace is not None
        else ({}, None)
    )
    if args.json:
        print(jsontext.dumps(_json(w, rule, ck, keys, replays, replay_warmup), indent=2))
    else:
        _table(w, rule, ck, keys, replays, replay_warmup)
    if args.draft_experiment:
        _draft(cfg, w, rule, at, now)
    return 0


@dataclass(frozen=True)
class Rule:
    """The one TTL rule's choice for the endpoint, and what it was weighed over."""

    choice: optimize.TtlChoice
    window: Window  # the class window's part with data
    limit: timedelta  # the staleness limit


def _rule(con, cfg: Config, endpoint: str, end: datetime, limit: timedelta) -> Rule:
    """The Costs recommendation's choice (`optimize.recommended_ttls`, as the
    TTL page takes it): over `[costs] class_window` ending at `end`."""
    classes = Window(end - cfg.costs.class_window, end)
    choice = optimize.recommended_ttls(con, cfg, classes, end, limit)[endpoint]
    return Rule(choice, data_days(con, classes)[0], limit)


def _draft(cfg: Config, w: tuning_whatif.WhatIf, rule: Rule, at: datetime, now: datetime) -> None:
    """The draft experiment of the rule's TTL; said on stderr when there is none
    to draft, and when an experiment already runs on the endpoint (the draft
    would share its keys)."""
    c = rule.choice
    if not c.changes:
        print(
            f"ttl whatif: no experiment drafted: the TTL rule keeps {format_duration(c.current)}",
            file=sys.stderr,
        )
        return
    for x in tuning_whatif.running_experiments(cfg, w.endpoint, now):
        print(
            f"ttl whatif: warning: experiment {x.name} is already running on {w.endpoint} "
            f"({iso(x.start)} – {iso(x.start + x.duration)}); another one on the same keys "
            "would confound both: let it finish first",
            file=sys.stderr,
        )
    start = (at - timedelta(seconds=1)).replace(hour=0, minute=0, second=0, microsecond=0) + DAY
    print(
        "\n" + tuning_whatif.draft_experiment(w.endpoint, w.current_ttl, c.recommended, start),
        end="",
    )


def _trace(paths, endpoint: str, cfg: Config, window: Window | None, warmup: timedelta):
    """The trace's requests of `endpoint`: the files' (read before the store,
    so a bad file is the error), or the simulator's of `window` and `warmup`
    before it."""
    if paths == ["simulator"]:
        # Requests are drawn per hour from (seed, hour): the same arrivals as
        # the stored run; the caches start from their steady state. The
        # longest candidate TTL before the window (as far as the memory cap
        # allows) warms the replay.
        sim = Simulator(cfg.simulator)
        frames = [
            sim.generate(w).table.to_pandas()
            for w in Window(
                floor_to(window.start - max(warmup, timedelta(0)), MINUTE),
                floor_to(window.end, MINUTE),
            ).split(HOUR)
        ]
    else:
        frames = [files.read(p).frame.table.to_pandas() for p in paths]
    df = pd.concat(frames, ignore_index=True)
    df = df[(df["kind"].astype(str) == "request") & (df["endpoint"].astype(str) == endpoint)]
    if df.empty:
        raise InputError(f"the trace has no requests for endpoint {endpoint!r}")
    return df.assign(key=df["key"].astype(str), tier=df["tier"].astype(str))


# The curve points the text output shows (the JSON has them all).
CURVE_TEXT = tuple(timedelta(hours=h) for h in (1, 6, 24, 24 * 7, 24 * 30))


def _err(p) -> str:
    """'±0.12' for a replayed figure, '' for the model's (it states no error)."""
    return f"±{p.kv_hit_error:.2f}" if p.kv_hit_error is not None else ""


def _cold(ttl: timedelta, warmup: timedelta | None) -> str:
    """'?' where a replayed TTL is longer than the trace's warm-up (approximate)."""
    return "?" if warmup is not None and ttl > warmup else " "


def _table(
    w: tuning_whatif.WhatIf,
    rule: Rule,
    ck: tuning_whatif.Check,
    keys,
    replays: dict,
    replay_warmup=None,
) -> None:
    cur, rec = w.current, rule.choice.recommended
    print(
        f"{w.endpoint}: {w.window} ({w.days:.2f} days of data); current KV TTL {format_duration(w.current_ttl)}: "
        f"observed KV hit rate {w.observed_kv_hit_rate:.2f}%, predicted {cur.kv_hit_rate:.2f}%{_err(cur)}"
    )
    print(f"method: {w.method.name}: {w.method.note}")
    head = (
        f"{'TTL':>6} {'KV hit %':>9} {'± err':>6} {'hit %':>7} {'KV reads/day':>13} {'KV writes/day':>14} "
        f"{'cost $/day':>11} {'Δ cost':>9} {'Δ KV hit':>9}"
        + (f" {'replay KV %':>12}" if replays else "")
    )
    print(head)
    for p in w.candidates:
        mark = " *" if p.ttl == rec else ""
        err = f"{p.kv_hit_error:.2f}" if p.kv_hit_error is not None else "-"
        print(
            f"{format_duration(p.ttl):>6} {p.kv_hit_rate:>9.2f} {err:>6} {p.hit_rate:>7.2f} {p.kv_reads:>13,.0f} "
            f"{p.kv_writes:>14,.0f} {p.cost:>11.4f} {p.cost - cur.cost:>+9.4f} {p.kv_hit_rate - cur.kv_hit_rate:>+9.2f}"
            + (f" {replays[p.ttl]:>11.2f}{_cold(p.ttl, replay_warmup)}" if replays else "")
            + ("" if p.warm else " (TTL longer than the warm-up)")
            + mark
        )
    points = [p for p in w.curve if p.ttl in CURVE_TEXT]
    print(
        f"curve ({w.method.name}), KV hit %: "
        + ", ".join(
            f"{format_duration(p.ttl)} {p.kv_hit_rate:.2f}{_err(p)}" + ("" if p.warm else "?")
            for p in points
        )
        + (" (? = longer than the warm-up)" if any(not p.warm for p in points) else "")
    )
    if replays:
        print(
            f"replay KV %: the trace's requests in the window, after "
            f"{tuning_whatif.span_text(replay_warmup)} of warm-up from the trace before it"
            + (
                " (? = TTL longer than that)"
                if any(_cold(t, replay_warmup) for t in replays)
                else ""
            )
        )
    for line in _recommendation(w, rule, ck):
        print(line)
    if w.edge:
        print(
            f"edge: current TTL {format_duration(w.current_edge_ttl)}, observed edge hit rate "
            f"{w.observed_edge_hit_rate:.2f}% (fitted as {w.colos:.2f} equal colo caches)"
        )
        print(f"{'edge TTL':>9} {'edge hit %':>11} {'KV lookups/day':>15}")
        for e in w.edge:
            print(f"{format_duration(e.ttl):>9} {e.edge_hit_rate:>11.2f} {e.kv_lookups:>15,.0f}")
    for k in keys:
        print(
            f"  key {k.key}: {k.lookups:,.1f} KV lookups/day, {k.kv_hit_rate:.1f}% hit; its own TTL "
            f"{format_duration(k.ttl)} saves {k.saving:.6f} USD/day"
        )


def _recommendation(w: tuning_whatif.WhatIf, rule: Rule, ck: tuning_whatif.Check) -> list[str]:
    """The rule's recommendation and the what-if's verdict on it, as the TTL page says them."""
    c, lim = rule.choice, format_duration(rule.limit)
    rec = format_duration(c.recommended)
    basis = (
        f"{optimize.TTL_METHOD} {stamp(rule.window.start)} – {stamp(rule.window.end)}, "
        f"up to {lim} of staleness"
    )
    out = []
    if w.current_ttl > rule.limit:
        out.append(
            f"warning: the current TTL {format_duration(w.current_ttl)} is past the staleness "
            f"limit {lim}: the rule weighs TTLs up to the limit and keeps the current one when "
            "none of them costs less"
        )
    if not c.changes:
        out.append(f"recommended: keep {rec} (the Costs rule: no option saves anything; {basis})")
        return out
    out.append(
        f"recommended (*): {rec} (the Costs rule: saves {c.saving:.4f} USD/day on {c.keys:,} "
        f"warm keys written {c.writes:,.0f} times/day; {basis})"
    )
    said = f"what-if ({w.method.name}, the last {w.days:.2f} days)"
    if ck.verdict == tuning_whatif.AGREES:
        out.append(
            f"{said} agrees: {rec} costs {ck.cost_change:+.4f} USD/day, KV hit rate "
            f"{ck.kv_hit_change:+.2f} points"
        )
    elif ck.verdict == tuning_whatif.DISAGREES:
        out.append(
            f"{said} disagrees: {rec} costs {ck.cost_change:+.4f} USD/day against the current "
            "TTL; only an experiment will tell"
        )
    else:
        out.append(
            f"{said} cannot check {rec}: it is longer than the replay's "
            f"{tuning_whatif.span_text(w.method.warmup or timedelta(0))} of warm-up, so its "
            "figure is approximate; only an experiment will tell"
        )
    return out


def _row(p) -> dict:
    """One candidate TTL's prediction as JSON."""
    return {
        "ttl": format_duration(p.ttl),
        "ttlSeconds": int(p.ttl.total_seconds()),
        "kvHitRate": round(p.kv_hit_rate, 4),
        "hitRate": round(p.hit_rate, 4),
        "kvReadsPerDay": round(p.kv_reads, 3),
        "kvWritesPerDay": round(p.kv_writes, 3),
        "r2ReadsPerDay": round(p.r2_reads, 3),
        "storedGB": round(p.stored_gb, 6),
        "costPerDay": round(p.cost, 6),
        # None: the model's (no error stated), or too few sampled keys to estimate it.
        "kvHitRateError": (
            round(p.kv_hit_error, 4)
            if p.kv_hit_error is not None and math.isfinite(p.kv_hit_error)
            else None
        ),
        "warm": p.warm,
    }


def _json(
    w: tuning_whatif.WhatIf,
    rule: Rule,
    ck: tuning_whatif.Check,
    keys,
    replays: dict,
    replay_warmup=None,
) -> dict:
    m, c = w.method, rule.choice
    return {
        "endpoint": w.endpoint,
        "window": {"start": iso(w.window.start), "end": iso(w.window.end)},
        "days": round(w.days, 4),
        "method": {
            "name": m.name,
            "note": m.note,
            "sampleRate": m.rate,
            "sampledKeys": m.keys,
            "warmupSeconds": int(m.warmup.total_seconds()) if m.warmup is not None else None,
        },
        "currentTtl": format_duration(w.current_ttl),
        "observedKvHitRate": round(w.observed_kv_hit_rate, 4),
        "current": _row(w.current),
        "candidates": [
            _row(p)
            | (
                {
                    "replayKvHitRate": round(replays[p.ttl], 4),
                    "replayWarm": p.ttl <= replay_warmup,
                }
                if replays
                else {}
            )
            for p in w.candidates
        ],
        "curve": [_row(p) for p in w.curve],
        "replayWarmupSeconds": (
            int(replay_warmup.total_seconds()) if replay_warmup is not None else None
        ),
        # The what-if's figures at the rule's TTL (the current one's when kept).
        "recommended": _row(ck.prediction) if ck.prediction is not None else None,
        "rule": {
            "ttl": format_duration(c.recommended),
            "ttlSeconds": int(c.recommended.total_seconds()),
            "changes": c.changes,
            "savingPerDay": round(c.saving, 6),
            "warmKeys": c.keys,
            "kvWritesPerDay": round(c.writes, 3),
            "kvReadsPerDay": round(c.reads, 3),
            "options": [{"ttl": format_duration(t), "costPerDay": round(x, 6)} for t, x in c.costs],
            "maxStaleness": format_duration(rule.limit),
            "classWindow": {"start": iso(rule.window.start), "end": iso(rule.window.end)},
            "method": optimize.TTL_METHOD,
        },
        "check": {
            "verdict": ck.verdict,
            "method": m.name,
            "costChangePerDay": None if ck.cost_change is None else round(ck.cost_change, 6),
            "kvHitRateChange": None if ck.kv_hit_change is None else round(ck.kv_hit_change, 4),
        },
        "edge": {
            "currentTtl": format_duration(w.current_edge_ttl) if w.current_edge_ttl else None,
            "observedHitRate": round(w.observed_edge_hit_rate, 4),
            "fittedColos": round(w.colos, 3),
            "candidates": [
                {
                    "ttl": format_duration(e.ttl),
                    "hitRate": round(e.edge_hit_rate, 4),
                    "kvLookupsPerDay": round(e.kv_lookups, 3),
                }
                for e in w.edge
            ],
        },
        "keys": [
            {
                "key": k.key,
                "lookupsPerDay": round(k.lookups, 3),
                "kvHitRate": round(k.kv_hit_rate, 3),
                "ttl": format_duration(k.ttl),
                "savingPerDay": k.saving,
            }
            for k in keys
        ],
    }
