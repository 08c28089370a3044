"""`python -m cachemon`: the command line, a thin shell over the library.

Each command group is one module of this package with a `register(subparsers)`
that adds its parser(s) and sets `func=` (called as `func(args, cfg, now)`,
returning the exit code) with `set_defaults`. This module holds what every
command shares: the global options, the list of commands (`GROUPS`, with the
one-line help `--help` lists) and the error policy: every CachemonError becomes
one line on stderr and exit code 2.

Start-up time: a group's module (and the library it calls) is imported only
when one of its commands is parsed, so `--help` imports no group and
`metrics` only its own; see `Commands`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from datetime import datetime

from cachemon import config
from cachemon.argcheck import check_utf8
from cachemon.clock import utcnow
from cachemon.errors import CachemonError, InputError, StoreUnpublishedError

# The usage line's program name when run from a checkout; the installed script says its own name.
PROG = "python -m cachemon"
EXIT_ERROR = 2
# The write was stored but readers do not see it yet (publishing failed): not an error to retry.
EXIT_UNPUBLISHED = 3
# Each group's module and its commands' one-line help, in the order `--help`
# lists them. The module's register() adds these commands (and no other).
GROUPS: dict[str, dict[str, str]] = {
    "cachemon.cli.ingest": {
        "demo": "fill the store from the embedded traffic simulator",
        "import": "import NDJSON / CSV / Parquet event files",
        "pull": "pull rollups from Cloudflare Workers Analytics Engine",
    },
    "cachemon.cli.serve": {"serve": "serve GET /metrics, /healthz and /openapi.json"},
    "cachemon.cli.metrics": {"metrics": "print the metrics of a period"},
    "cachemon.cli.alerts": {"alerts": "evaluate alert rules, show history, manage silences"},
    "cachemon.cli.ttl": {"ttl": "TTL what-if: predicted KV hit rate and cost per candidate TTL"},
    "cachemon.cli.store": {
        "export": "write the analyst views as Hive-partitioned Parquet, one folder per day",
        "compact": "apply [retention] now: old minutes into hours, old hours into days "
        "(the daily job)",
    },
    "cachemon.cli.costs": {"costs": "the daily cost optimisation report"},
    "cachemon.cli.experiments": {
        "experiments": "TTL experiments (configured as [[experiments]] in TOML)"
    },
}


class Commands(argparse._SubParsersAction):
    """The top-level commands, listed by `--help` from GROUPS without importing
    their modules. A command's parser is made by its group's register() when
    the command is parsed (or, with `lazy=False`, at once: for walking the
    whole parser). The group's module is imported by name here, the one place
    the CLI imports a module late; nothing imports a CLI module, so no cycle
    can hide behind it, and `lint-imports` still checks the group's imports."""

    def __init__(self, *args, lazy: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self._group: dict[str, str] = {}  # command -> its group's module, until made
        self._making = ""  # the group whose register() runs
        for module, commands in GROUPS.items():
            for name, text in commands.items():
                self._choices_actions.append(self._ChoicesPseudoAction(name, (), text))
                self._name_parser_map[name] = None
                self._group[name] = module
        if not lazy:
            for name in list(self._group):
                self._make(name)

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        """The parser of a command in GROUPS, called by its group's register();
        its help is GROUPS's (the one place), so `help=` is refused."""
        made = self._name_parser_map.get(name) is not None
        if self._group.get(name) != self._making or made or "help" in kwargs:
            raise ValueError(
                f"{self._making}.register() adds {name!r}: not one of its commands in GROUPS "
                "(or added twice), or with help= (its help is GROUPS's)"
            )
        kwargs.setdefault("prog", f"{self._prog_prefix} {name}")
        parser = self._parser_class(**kwargs)
        self._name_parser_map[name] = parser
        return parser

    def __call__(self, parser, namespace, values, option_string=None):
        self._make(values[0])
        super().__call__(parser, namespace, values, option_string)

    def _make(self, name: str) -> None:
        """Import the command's group and let it register its commands."""
        module = self._group.get(name)
        if module is None:  # made already, with the rest of its group
            return
        self._making = module
        try:
            importlib.import_module(module).register(self)
        finally:
            self._making = ""
        missing = [n for n in GROUPS[module] if self._name_parser_map[n] is None]
        if missing:
            raise ValueError(f"{module}.register() did not add {', '.join(missing)}")
        for n in GROUPS[module]:
            del self._group[n]


def build_parser(prog: str = PROG, lazy: bool = False) -> argparse.ArgumentParser:
    """The whole argument parser: the global options and every group's
    subcommands; with `lazy`, a command's own arguments are added only when
    it is parsed (what `main` does: it imports only the group it runs)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Monitoring, alerting, cost and TTL tuning for the BooksTrack tiered cache.",
    )
    parser.add_argument("--db", help="store file (default: CACHEMON_DB or data/cachemon.duckdb)")
    parser.add_argument("--config", help="TOML config file (default: CACHEMON_CONFIG)")
    parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", action=Commands, lazy=lazy
    )
    return parser


def main(argv: list[str] | None = None, now: datetime | None = None, prog: str = PROG) -> int:
    """Run one command line; returns the exit code (argparse exits itself on a usage error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        check_utf8(argv)
    except InputError as exc:
        print(f"cachemon: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    args = build_parser(prog, lazy=True).parse_args(argv)
    try:
        cfg = config.load(args.config)
        if args.db is not None:
            cfg = config.with_db(cfg, args.db)
        return args.func(args, cfg, now or utcnow())
    except StoreUnpublishedError as exc:
        print(f"cachemon: warning: {exc}", file=sys.stderr)
        return EXIT_UNPUBLISHED
    except CachemonError as exc:
        print(f"cachemon: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def script() -> int:
    """The installed `cachemon` command (`[project.scripts]`): as `main`, with
    usage lines naming the command as it was typed (`cachemon`, or a link's
    name), not `python -m cachemon`."""
    return main(prog=os.path.basename(sys.argv[0]) or PROG)
