"""The command line never tracebacks: hypothesis builds argument vectors for
every subcommand from the real argparse parser (hostile numbers, instants in
years 1 and 9999, overflowing durations, invalid UTF-8, paths that are
directories or deeply nested TOML) and runs `cachemon.cli.main` in-process
on a copy of a small demo store. Every outcome is an exit code 0, 1 or 2; an
error is one `cachemon: error:` line (or argparse's usage message)."""

from __future__ import annotations

import argparse
import os
import shutil
from collections import Counter
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from cachemon.cli import main as cli_main
from tests.helpers import T0

NOW = T0 + timedelta(hours=4)
SMALL_TOML = """
[simulator]
requests_per_hour = 3000
catalog_keys = 1000
sample_threshold_per_minute = 30
"""
# `serve` would block serving; another suite drives it over HTTP.
SKIP = {"serve"}
# Options whose value is a file or directory: always one of PATHS, never a
# generated path (an `export --to /` must not write anywhere real).
PATH_OPTIONS = {"--db", "--config", "--to", "--trace", "files"}
NUMBERS = [
    "0",
    "-1",
    "1",
    "0.5",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "1e9",
    "1e308",
    "1e309",
    "-0",
    "2147483648",
    str(2**63),
    str(2**64),
    "9" * 400,
    "0x10",
    "1_000",
    " 7 ",
    "",
]
INSTANTS = [
    "0001-01-01",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59-01:00",
    "1969-12-31T23:59:59Z",
    "2199-12-31T23:59:59Z",
    "2026-11-19T12:00:00Z",
    "2026-11-19",
    "2026-11-32",
    "2026-11-19T12:00:00+14:00",
    "2026-02-29",
    "now",
    "1e9",
    "2026-11-19T12:00:00.123456789Z",
]
DURATIONS = [
    "0s",
    "1s",
    "15m",
    "2h",
    "7d",
    "2w",
    "99999999999d",
    "1" * 400 + "w",
    "1.5h",
    "-1h",
    "1e9s",
    "h",
]
VALID = [
    "15m",
    "1h",
    "24h",
    "7d",
    "json",
    "prometheus",
    "0.1",
    "0.01",
    "3",
    "10",
    "6h,12h",
    "2026-11-18",
]
ENDPOINTS = ["title", "isbn", "author", "nope", "", "' OR 1=1 --", "<b>x</b>"]
OUTCOMES: Counter = Counter()  # what the property test saw, for the results table
INVALID_UTF8 = [os.fsdecode(b) for b in (b"\xff", b"title\xfe", b"\xed\xa0\x80", b"caf\xe9")]


def _leaves(
    parser: argparse.ArgumentParser, prefix=()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable (sub)command: its name path and its parser."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(prefix, parser)]
    return [
        leaf
        for name, p in subs[0].choices.items()
        if name not in SKIP
        for leaf in _leaves(p, (*prefix, name))
    ]


ROOT_PARSER = cli_main.build_parser()
LEAVES = _leaves(ROOT_PARSER)


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
    ]


@st.composite
def argument_vectors(draw, paths: list[str]):
    # Invalid UTF-8 is refused before anything else looks: one choice of
    # many, so the other values reach the commands.
    values = st.one_of(
        st.sampled_from(NUMBERS + INSTANTS + DURATIONS + ENDPOINTS + VALID + INVALID_UTF8[:1]),
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.text(max_size=12),
    )
    path_values = st.sampled_from(paths + INVALID_UTF8[:1])

    def value(action: argparse.Action) -> str:
        name = action.option_strings[0] if action.option_strings else action.dest
        return draw(path_values if name in PATH_OPTIONS or action.dest in PATH_OPTIONS else values)

    def tokens(action: argparse.Action) -> list[str]:
        if action.nargs == 0:
            return [action.option_strings[0]]
        n = draw(st.integers(1, 2)) if action.nargs in ("+", "*") else 1
        return [*action.option_strings[:1], *(value(action) for _ in range(n))]

    argv: list[str] = []
    for action in _options(ROOT_PARSER):  # --db, --config: a path of ours unless drawn
        if action.option_strings and draw(st.integers(0, 3)) == 0:
            argv += tokens(action)
    path, parser = draw(st.sampled_from(LEAVES))
    argv += path
    for action in _options(parser):
        if not action.option_strings:
            argv += tokens(action)[-1:] if action.nargs in (None, 1) else tokens(action)
        elif (
            action.required or draw(st.integers(0, 2)) == 0
        ):  # mostly defaults: errors hide later ones
            argv += tokens(action)
    return argv


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("args")
    cfg = d / "small.toml"
    cfg.write_text(SMALL_TOML)
    db = d / "demo.duckdb"
    assert (
        cli_main.main(
            ["--db", str(db), "--config", str(cfg), "demo", "--days", "0.25", "--quiet"], now=NOW
        )
        == 0
    )
    bad = d / "bad"
    bad.mkdir()
    (bad / "nested.toml").write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    (bad / "inline.toml").write_text(
        "[simulator]\nseed = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n"
    )
    (bad / "garbage.duckdb").write_bytes(b"not a database" * 100)
    (bad / "events.ndjson").write_text('{"not": "an event"}\n')
    (bad / os.fsdecode(b"caf\xe9.toml")).write_text(SMALL_TOML)
    return d, db, cfg, bad


PATH_KINDS = [
    "store",
    "config",
    "dir",
    "nested",
    "inline",
    "garbage",
    "events",
    "missing",
    "latin1",
    "simulator",
]


@settings(
    max_examples=int(os.environ.get("CACHEMON_CLI_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
def test_no_argument_vector_tracebacks(demo_store, tmp_path_factory, capsys, monkeypatch, data):
    home, db, cfg, bad = demo_store
    work = tmp_path_factory.mktemp("ex")
    store_copy = work / "demo.duckdb"
    shutil.copyfile(db, store_copy)
    shutil.copyfile(db.with_name("demo.snapshot.duckdb"), work / "demo.snapshot.duckdb")
    paths = {
        "store": str(store_copy),
        "config": str(cfg),
        "dir": str(bad),
        "nested": str(bad / "nested.toml"),
        "inline": str(bad / "inline.toml"),
        "garbage": str(bad / "garbage.duckdb"),
        "events": str(bad / "events.ndjson"),
        "missing": str(work / "missing" / "x"),
        "latin1": str(bad / os.fsdecode(b"caf\xe9.toml")),
        "simulator": "simulator",
    }
    argv = data.draw(argument_vectors(list(paths.values())))
    # Our store and config unless the vector names others (argparse keeps the last).
    argv = ["--db", str(store_copy), "--config", str(cfg), *argv]
    # A valid long demo or simulator trace is slow, not wrong: keep them short.
    parsed = _parsed(argv)
    long = (
        parsed is not None
        and isinstance(getattr(parsed, "days", None), float)
        and parsed.days > 0.5
    )
    assume(
        not (long and (parsed.command == "demo" or getattr(parsed, "trace", None) == ["simulator"]))
    )
    for name in [
        k
        for k in os.environ
        if k.startswith(
            ("CF_", "SMTP_", "CACHEMON_", "SLACK_", "DISCORD_", "MAILCHANNELS_", "ALERT_")
        )
    ]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(work)  # any relative path an argument names lands here
    try:
        code = cli_main.main(argv, now=NOW)
    except SystemExit as exc:  # argparse: usage error (2) or --help (0)
        code = exc.code
        err = capsys.readouterr().err
        event("argparse usage error")
        OUTCOMES["usage error"] += 1
        assert code in (0, 2), (argv, err)
        assert code == 0 or "usage:" in err, (argv, err)
        return
    err = capsys.readouterr().err
    event(f"exit {code}")
    OUTCOMES[f"exit {code}"] += 1
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    if code == 2:
        errors = [line for line in err.splitlines() if line.startswith("cachemon: error:")]
        assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], (argv, err)


def test_fuzzed_cli_outcomes(results):
    """Reports what the property test above generated (it runs first, in file order)."""
    assert sum(OUTCOMES.values()) >= 50
    results(
        "command line fuzzed (hypothesis)",
        "argument vectors for every subcommand from the real parser: "
        "nan/inf/1e309/2**64, years 1 and 9999, 99999999999d, invalid UTF-8, directories, deep TOML",
        f"{sum(OUTCOMES.values())} command lines",
        "no traceback; "
        + ", ".join(f"{n} {k}" for k, n in sorted(OUTCOMES.items()))
        + "; every error one `cachemon: error:` line",
    )


def _parsed(argv):
    try:
        return ROOT_PARSER.parse_args(argv)
    except SystemExit:
        return None


@pytest.mark.parametrize(
    "argv, named",
    [
        (["demo", "--days", "nan"], "--days"),
        (["demo", "--days", "1e9"], "--days"),
        (["demo", "--seed", "-1"], "--seed"),
        (["demo", "--until", "0001-01-01"], "--until"),
        (["demo", "--until", "9999-12-31T23:59:59Z"], "--until"),
        (["metrics", "--at", "0001-01-01"], "--at"),
        (["metrics", "--at", "9999-12-31T23:59:59-01:00"], "--at"),
        (["metrics", "--top", str(2**64)], "--top"),
        (["ttl", "whatif", "--endpoint", "title", "--days", "1e9"], "--days"),
        (["ttl", "whatif", "--endpoint", "title", "--days", "inf"], "--days"),
        (
            ["ttl", "whatif", "--endpoint", "title", "--days", "32", "--trace", "simulator"],
            "--days 31",
        ),
        (["alerts", "silence", "miss_rate", "--for", "99999999999d", "--reason", "x"], "--for"),
        (["alerts", "unsilence", str(2**40)], "silence id"),
        (["alerts", "history", "--limit", str(2**63)], "--limit"),
        (["costs", "report", "--date", "0001-01-01"], "--date"),
        (
            ["experiments", "assign", os.fsdecode(b"title:\xff"), "--experiment", "x"],
            "not valid UTF-8",
        ),
        (["--config", "DIR", "metrics"], "is a directory"),
        (["--config", "NESTED", "metrics"], "too deeply"),
        (["--config", "INLINE", "metrics"], "too deeply"),
    ],
)
def test_out_of_range_arguments_are_one_clear_line(demo_store, tmp_path, capsys, argv, named):
    home, db, cfg, bad = demo_store
    copy = tmp_path / "demo.duckdb"
    shutil.copyfile(db, copy)
    shutil.copyfile(db.with_name("demo.snapshot.duckdb"), tmp_path / "demo.snapshot.duckdb")
    before = copy.read_bytes()
    swap = {"DIR": str(bad), "NESTED": str(bad / "nested.toml"), "INLINE": str(bad / "inline.toml")}
    argv = [swap.get(a, a) for a in argv]
    code = cli_main.main(
        ["--db", str(copy), "--config", str(cfg), *argv]
        if argv[0] != "--config"
        else ["--db", str(copy), *argv],
        now=NOW,
    )
    err = capsys.readouterr().err
    assert (
        code == 2 and err.count("\n") == 1 and err.startswith("cachemon: error:") and named in err
    ), err
    assert copy.read_bytes() == before  # nothing stored changed


@pytest.mark.parametrize(
    "args, named",
    [
        (["--clock-start", "9999-12-31T00:00:00Z"], "--clock-start"),
        (["--clock-start", "2090-01-01T00:00:00Z"], "in the future"),
        (["--clock-start", "0001-01-01"], "--clock-start"),
        (["--clock-speed", "nan"], "--clock-speed"),
        (["--clock-speed", "-1"], "--clock-speed"),
        (["--clock-speed", "1e300"], "--clock-speed"),
    ],
)
def test_the_job_runner_refuses_its_clock_arguments(demo_store, tmp_path, caplog, args, named):
    from jobs.__main__ import main as jobs_main

    home, db, cfg, bad = demo_store
    copy = tmp_path / "demo.duckdb"
    shutil.copyfile(db, copy)
    before = copy.read_bytes()
    assert jobs_main(["--db", str(copy), "--config", str(cfg), "--list", *args]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and named in errors[0], errors
    assert copy.read_bytes() == before and not (tmp_path / "demo.snapshot.duckdb").exists()


def test_a_demo_of_a_fraction_of_a_day_starts_on_a_whole_minute(demo_store, tmp_path, capsys):
    """0.01 days is 14.4 minutes: the span starts at a whole minute, as every stored window must."""
    home, db, cfg, bad = demo_store
    code = cli_main.main(
        [
            "--db",
            str(tmp_path / "d.duckdb"),
            "--config",
            str(cfg),
            "demo",
            "--days",
            "0.01",
            "--quiet",
            "--until",
            "2026-11-19T12:00:00Z",
        ],
        now=NOW,
    )
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    "text",
    [
        "0001-01-01",
        "0001-01-01T00:30:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "1969-12-31T23:59:59Z",
        "2200-01-01T00:00:00Z",
    ],
)
def test_instants_outside_the_supported_years_are_input_errors(text):
    from cachemon.clock import parse_instant
    from cachemon.errors import InputError

    with pytest.raises(InputError, match="--at: "):
        parse_instant(text, "--at")


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("36525d", 36525 * 86400),
        ("1e9s", None),
        ("36526d", None),
        ("99999999999d", None),
        ("1" * 400 + "w", None),
    ],
)
def test_durations_are_bounded(text, seconds):
    from cachemon.clock import parse_duration
    from cachemon.errors import InputError

    if seconds is not None:
        assert parse_duration(text).total_seconds() == seconds
    else:
        with pytest.raises(InputError, match="--for: "):
            parse_duration(text, "--for")


def _runnable(parser: argparse.ArgumentParser, prefix=()) -> list[tuple[tuple[str, ...], object]]:
    """Every runnable (sub)command, `serve` included: its name path and its `func` default."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(prefix, parser.get_default("func"))]
    return [leaf for name, p in subs[0].choices.items() for leaf in _runnable(p, (*prefix, name))]


def test_every_command_is_registered_by_a_group_module():
    """One registration style: each group module's register() sets func= on its commands (the
    ones GROUPS lists for it), and --help lists the commands in the order the manual documents
    them."""
    groups = set(cli_main.GROUPS)
    group_of = {name: module for module, names in cli_main.GROUPS.items() for name in names}
    leaves = _runnable(ROOT_PARSER)
    assert len(leaves) == 19
    for path, func in leaves:
        assert callable(func) and func.__module__ == group_of[path[0]], (path, func)
    assert {func.__module__ for _, func in leaves} == groups  # no group without a command
    top = next(a for a in ROOT_PARSER._actions if isinstance(a, argparse._SubParsersAction))
    assert list(top.choices) == [
        *("demo", "import", "pull", "serve", "metrics", "alerts", "ttl", "export", "compact"),
        *("costs", "experiments"),
    ]
