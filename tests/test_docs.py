"""The manual cannot fall behind the code (the way sqlite-utils and datasette test their docs).

- every subcommand of `python -m cachemon` (nested ones too) has a section in docs/cli.md, and
  every long option of it appears in that section;
- every section and key of the configuration (the frozen dataclasses of `cachemon.settings`)
  appears in docs/configuration.md under its section;
- every ```toml block of README.md and docs/*.md parses, and loads through cachemon's real
  loader unless it is marked as a fragment or another program's file;
- every ```sql block of the docs runs on a demo store, unless marked not-run with a reason;
  ```sql clickhouse blocks (ClickHouse SQL) are run on chDB by tests/store/test_clickhouse.py;
- every relative link of the docs reaches an existing file, and its #anchor a heading there.

A failure names the file and the line.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tomllib
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path

import duckdb
import pytest

from cachemon import config, settings
from cachemon.alerts.rules import Rule
from cachemon.cli.main import build_parser
from cachemon.pricing import COMPONENTS
from cachemon.store import db as store_db
from cachemon.store import export, snapshots
from cachemon.tuning.experiments import Experiment, example_toml
from cachemon.tuning.experiments import parse as parse_experiments
from jobs import __main__ as jobs_main

# The repository root, wherever this file sits below it.
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())
DOCS = sorted((ROOT / "docs").glob("*.md"))
CLI_DOC = ROOT / "docs" / "cli.md"
CONFIG_DOC = ROOT / "docs" / "configuration.md"
# A block preceded by one of these HTML comments is only parsed (TOML) or not run (SQL).
PARSE_ONLY = re.compile(r"<!--\s*(fragment|other-file)\b")
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(?P<reason>\S.*?)\s*-->")
HEADING = re.compile(r"^(#+)\s+(.*)$")


@dataclass(frozen=True)
class Block:
    """A fenced code block of a Markdown file."""

    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: str  # the HTML comment on the nearest non-blank line before the fence, or ""
    dialect: str = ""  # the info string's second word: ```sql clickhouse

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(paths, lang: str) -> list[Block]:
    """Every ```lang block of `paths`, in order."""
    out = []
    for path in paths:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            fence = re.match(r"^```(\w*)(?:[ \t]+(\w+))?\s*$", lines[i])
            if not fence:
                i += 1
                continue
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            assert end is not None, f"{path.relative_to(ROOT)}:{i + 1}: unclosed code block"
            before = next((s.strip() for s in reversed(lines[:i]) if s.strip()), "")
            marker = before if before.startswith("<!--") else ""
            if fence.group(1) == lang:
                text = "\n".join(lines[i + 1 : end]) + "\n"
                out.append(Block(path, i + 1, lang, text, marker, fence.group(2) or ""))
            i = end + 1
    return out


def section(path: Path, title: re.Pattern) -> tuple[int, str] | None:
    """The first line and the text of the section whose heading matches `title`, down to the
    next heading of the same or a higher level (subsections included)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    fenced = False
    for i, line in enumerate(lines):
        fenced ^= line.startswith("```")
        h = None if fenced else HEADING.match(line)
        if h and title.search(h.group(2)):
            level, body = len(h.group(1)), []
            for nxt in lines[i + 1 :]:
                fenced ^= nxt.startswith("```")
                other = None if fenced else HEADING.match(nxt)
                if other and len(other.group(1)) <= level:
                    break
                body.append(nxt)
            return i + 1, "\n".join(body)
    return None


# ---------------------------------------------------------------- the command line


def _commands(parser: argparse.ArgumentParser, path=()):
    """(command path, long options) of every subcommand, nested ones included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                options = [o for a in sub._actions for o in a.option_strings if o.startswith("--")]
                yield (*path, name), [o for o in options if o != "--help"]
                yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(build_parser()))
GLOBAL_OPTIONS = [
    o for a in build_parser()._actions for o in a.option_strings if o.startswith("--")
]
OPTIONS = [(" ".join(p), o) for p, opts in COMMANDS for o in opts] + [
    ("", o) for o in GLOBAL_OPTIONS if o != "--help"
]


def _command_section(command: str) -> tuple[int, str]:
    if not command:
        found = section(CLI_DOC, re.compile(r"^Global options$"))
    else:
        found = section(CLI_DOC, re.compile(rf"`(python -m cachemon )?{re.escape(command)}`"))
    assert found, f"docs/cli.md: no section (a heading like ## `{command}`) for {command!r}"
    return found


def test_the_parser_has_nested_subcommands():
    """The walk reaches nested commands, so the checks below cover them."""
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"demo", "alerts check", "ttl whatif", "experiments assign"} <= names


@pytest.mark.parametrize("command", [" ".join(p) for p, _ in COMMANDS])
def test_every_subcommand_has_a_section_in_the_cli_docs(command):
    line, text = _command_section(command)
    assert text.strip(), f"docs/cli.md:{line}: the section of {command!r} is empty"


@pytest.mark.parametrize(
    "command,option", OPTIONS, ids=[f"{c or 'global'} {o}" for c, o in OPTIONS]
)
def test_every_option_is_documented_in_its_commands_section(command, option):
    line, text = _command_section(command)
    mentioned = re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text)
    assert mentioned, (
        f"docs/cli.md:{line}: the section of {command or 'global options'!r} "
        f"does not mention {option}"
    )


# ---------------------------------------------------------------- the configuration

# Names the annotations of `cachemon.settings` use only under TYPE_CHECKING.
_TYPES = {"Rule": Rule, "Experiment": Experiment}


def _hints(cls) -> dict:
    module = vars(sys.modules[cls.__module__])
    return typing.get_type_hints(cls, globalns={**module, **_TYPES})


def _array_of(hint):
    """The dataclass of a `tuple[X, ...]` annotation (an array of tables), else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and args and is_dataclass(args[0]):
        return args[0]
    return None


def _keys(table: str, cls) -> list[tuple[str, str]]:
    """(section, key) for each TOML key of a table, and of the arrays of tables inside it."""
    out = []
    for f in fields(cls):
        hint = _hints(cls)[f.name]
        if cls is settings.Pricing and f.name == "prices":
            # [pricing.<component>] tables with price, per and included
            out += [(table, c) for c in (*COMPONENTS, "price", "per", "included")]
        elif (inner := _array_of(hint)) is not None:
            out += _keys(f"[[{table.strip('[]')}.{f.name}]]", inner)
        else:
            out.append((table, f.name.rstrip("_")))  # `for_` is the TOML key `for`
    return out


def _config_keys() -> list[tuple[str, str]]:
    out = []
    for f in fields(settings.Config):
        hint = _hints(settings.Config)[f.name]
        if is_dataclass(hint):
            out += _keys(f"[{f.name}]", hint)
        elif (inner := _array_of(hint)) is not None:
            out += _keys(f"[[{f.name}]]", inner)
        else:
            out.append(("top level", f.name))
    return out


CONFIG_KEYS = _config_keys()


def test_the_walk_finds_every_kind_of_key():
    keys = set(CONFIG_KEYS)
    assert {
        ("top level", "source"),
        ("[store]", "path"),
        ("[[alerts.rules]]", "for"),
        ("[[experiments]]", "margin"),
        ("[[experiments.cohorts]]", "weight"),
        ("[pricing]", "kv_reads"),
    } <= keys


@pytest.mark.parametrize("table,key", CONFIG_KEYS, ids=[f"{t} {k}" for t, k in CONFIG_KEYS])
def test_every_configuration_key_is_documented_under_its_section(table, key):
    if table == "top level":
        title = re.compile(r"^Top-level keys$")
    else:
        title = re.compile(rf"`{re.escape(table)}`")
    found = section(CONFIG_DOC, title)
    assert found, f"docs/configuration.md: no section (a heading like ## `{table}`) for {table}"
    line, text = found
    documented = re.search(rf"`{re.escape(key)}`|^\s*{re.escape(key)}\s*=", text, re.M)
    assert documented, (
        f"docs/configuration.md:{line}: the section {table} does not document {key!r}"
    )


# ---------------------------------------------------------------- TOML blocks

TOML_BLOCKS = blocks([ROOT / "README.md", *DOCS], "toml")


def test_the_docs_have_toml_examples():
    assert len([b for b in TOML_BLOCKS if not b.marker]) >= 10


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=[b.where for b in TOML_BLOCKS])
def test_every_toml_block_loads_through_the_real_loader(block, tmp_path):
    try:
        tomllib.loads(block.text)
    except tomllib.TOMLDecodeError as exc:
        pytest.fail(f"{block.where}: not valid TOML: {exc}")
    if PARSE_ONLY.match(block.marker):
        return
    f = tmp_path / "example.toml"
    f.write_text(block.text, encoding="utf-8")
    try:
        config.load(f, env={})
    except Exception as exc:  # any failure, named by the block's place in the docs
        pytest.fail(f"{block.where}: cachemon.config.load refuses it: {exc}")


# ---------------------------------------------------------------- SQL blocks

SQL_BLOCKS = blocks([ROOT / "README.md", *DOCS], "sql")
ANALYSTS_DOC = ROOT / "docs" / "analysts.md"
CLICKHOUSE_SECTION = re.compile(r"^The export on ClickHouse$")


def _in_section(block: Block, path: Path, title: re.Pattern) -> bool:
    """Whether `block` lies in the section of `path` whose heading matches `title`."""
    found = section(path, title)
    if block.path != path or found is None:
        return False
    line, text = found
    return line < block.line <= line + len(text.splitlines())


@pytest.fixture(scope="module")
def analyst_home(docs_store, tmp_path_factory):
    """A folder laid out as the docs assume an analyst's is: `data/cachemon.snapshot.duckdb`
    (the demo store's reader snapshot) and `exports/` (its Parquet export)."""
    home = tmp_path_factory.mktemp("analyst")
    (home / "data").mkdir()
    (home / "data" / "cachemon.snapshot.duckdb").symlink_to(snapshots.snapshot_path(docs_store))
    with store_db.reader(docs_store) as con:
        export.parquet(con, home / "exports")
    return home


def test_the_docs_have_sql_examples():
    assert len([b for b in SQL_BLOCKS if not b.marker]) >= 15


@pytest.mark.parametrize("block", SQL_BLOCKS, ids=[b.where for b in SQL_BLOCKS])
def test_every_sql_block_runs_on_a_demo_store(block, analyst_home, monkeypatch):
    if block.marker.startswith("<!-- not-run"):
        assert NOT_RUN.match(block.marker), f"{block.where}: a not-run block must say why"
        return
    assert not block.marker, f"{block.where}: unknown marker {block.marker!r}"
    if block.dialect:
        # ClickHouse SQL on the Parquet export: tests/store/test_clickhouse.py runs every
        # such block of this section on chDB and compares it with its DuckDB question.
        assert block.dialect == "clickhouse", (
            f"{block.where}: unknown SQL dialect {block.dialect!r}"
        )
        assert _in_section(block, ANALYSTS_DOC, CLICKHOUSE_SECTION), (
            f"{block.where}: ClickHouse SQL is run only from docs/analysts.md, "
            "section 'The export on ClickHouse'"
        )
        return
    monkeypatch.chdir(analyst_home)
    # A block that attaches the store itself starts from an empty database; the others run
    # where the docs tell analysts to, on the snapshot opened read-only.
    attaches = re.search(r"^\s*ATTACH\b", block.text, re.I | re.M)
    target = ":memory:" if attaches else os.path.join("data", "cachemon.snapshot.duckdb")
    con = duckdb.connect(target, read_only=not attaches)
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(block.text)
    except duckdb.Error as exc:
        pytest.fail(f"{block.where}: {type(exc).__name__}: {exc}")
    finally:
        con.close()


# ---------------------------------------------------------------- links

LINK = re.compile(r"\]\((?!https?://|mailto:)([^)#\s]*)(?:#([^)\s]+))?\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    lines, fenced, out = path.read_text(encoding="utf-8").splitlines(), False, set()
    for line in lines:
        fenced ^= line.startswith("```")
        if not fenced and (h := HEADING.match(line)):
            out.add(_slug(h.group(2)))
    return out


LINKS = [
    (path, n, target, anchor)
    for path in [ROOT / "README.md", *DOCS]
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
    for target, anchor in LINK.findall(line)
]


@pytest.mark.parametrize(
    "path,line,target,anchor",
    LINKS,
    ids=[f"{p.relative_to(ROOT)}:{n} {t}#{a}" for p, n, t, a in LINKS],
)
def test_every_link_between_the_docs_resolves(path, line, target, anchor):
    where = f"{path.relative_to(ROOT)}:{line}"
    dest = (path.parent / target).resolve() if target else path
    assert dest.exists(), f"{where}: {target} does not exist"
    if anchor and dest.suffix == ".md":
        assert anchor in _anchors(dest), f"{where}: {target} has no heading #{anchor}"


# ---------------------------------------------------------------- the front door


def test_the_readme_is_a_front_door():
    """The two commands first, then a short page: the manual lives in docs/."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first = blocks([ROOT / "README.md"], "sh")[0].text.splitlines()
    assert [line.split()[0] for line in first] == ["./run.sh", "./test.sh"], first
    assert len(text.encode("utf-8")) <= 15 * 1024, "README.md: over 15 KB; move text to docs/"
    for doc in DOCS:
        assert f"(docs/{doc.name})" in text, f"README.md: no link to docs/{doc.name}"


def test_the_experiments_example_is_the_codes_one_example():
    """docs/experiments.md spells out every field of the one example
    (`tuning.experiments.example_toml`, also used by `ttl whatif
    --draft-experiment` and the dashboard): both parse to the same experiment."""
    from_docs = [b for b in blocks([ROOT / "docs" / "experiments.md"], "toml")]
    assert from_docs, "docs/experiments.md has no toml block"
    doc = tomllib.loads(from_docs[0].text)["experiments"]
    code = tomllib.loads(example_toml())["experiments"]
    endpoints = tuple(e for e, _ in settings.CostsConfig().kv_ttl)
    assert parse_experiments("docs", doc, endpoints) == parse_experiments(
        "code", code, endpoints
    ), (
        f"docs/experiments.md:{from_docs[0].line}: the example differs from "
        "tuning.experiments.example_toml()"
    )


JOBS_OPTIONS = [
    o
    for a in jobs_main.build_parser()._actions
    for o in a.option_strings
    if o.startswith("--") and o != "--help"
]


@pytest.mark.parametrize("option", JOBS_OPTIONS)
def test_every_job_runner_option_is_documented(option):
    found = section(CLI_DOC, re.compile(r"`python -m jobs`"))
    assert found, "docs/cli.md: no section (a heading like ## `python -m jobs`) for the runner"
    line, text = found
    assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), (
        f"docs/cli.md:{line}: the section of `python -m jobs` does not mention {option}"
    )
