"""The package graph: the import contracts hold, and no import hides in a function.

`lint-imports` checks the contracts in pyproject.toml ([tool.importlinter]):
the layers, no cycle inside any package, no UI or scheduler library in
cachemon. A function-level import of a cachemon module would hide a cycle
from a reader (the import runs late, so the cycle only shows on some call
paths), so there are none.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Every tree of the project's own code: the package and the shells.
SCANNED = ("cachemon", "jobs", "pages", "app.py")
# The project's own top-level modules: importing one inside a function hides a cycle.
OWN = ("cachemon", "jobs", "pages")
# layers, store layers, acyclic siblings, forbidden UI libraries (pyproject.toml)
CONTRACTS = 4


def function_level_imports(source: str, filename: str) -> list[tuple[int, str]]:
    """(line, imported module) of every import of a project module (cachemon,
    jobs or pages; absolute, or relative: inside the project that is the
    project too) inside a function."""
    found = []
    for fn in ast.walk(ast.parse(source, filename)):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                found += [(node.lineno, a.name) for a in node.names if _own(a.name)]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level or _own(module):
                    found.append((node.lineno, "." * node.level + module))
    return sorted(set(found))


def _own(module: str) -> bool:
    return any(module == top or module.startswith(top + ".") for top in OWN)


def _sources() -> list[Path]:
    paths = []
    for name in SCANNED:
        p = ROOT / name
        paths += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return paths


def _all_function_level_imports() -> dict[tuple[str, str], list[int]]:
    found: dict[tuple[str, str], list[int]] = {}
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        for line, module in function_level_imports(path.read_text(encoding="utf-8"), rel):
            found.setdefault((rel, module), []).append(line)
    return found


def test_the_scan_covers_the_shells():
    scanned = {p.relative_to(ROOT).as_posix() for p in _sources()}
    assert {"app.py", "jobs/__main__.py", "cachemon/config.py"} <= scanned
    assert any(p.startswith("pages/") for p in scanned)


def test_no_function_level_import_of_a_project_module():
    found = _all_function_level_imports()
    new = [
        f"{rel}:{line}: imports {module} inside a function; import it at the top of the module"
        for (rel, module), lines in sorted(found.items())
        for line in lines
    ]
    assert not new, "\n".join(new)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("def f():\n    from cachemon.store import db\n", [(2, "cachemon.store")]),
        ("async def f():\n    import cachemon.clock\n", [(2, "cachemon.clock")]),
        ("class C:\n    def m(self):\n        from . import x\n", [(3, ".")]),
        ("def f():\n    if True:\n        from ..store import db\n", [(3, "..store")]),
        ("def f():\n    import os\n    from datetime import date\n", []),
        ("from cachemon.store import db\n\ndef f():\n    return db\n", []),
        ("def f():\n    from cachemonitor import x\n", []),
        ("def f():\n    from pages.shared import common\n", [(2, "pages.shared")]),
        ("def f():\n    import jobs.__main__\n", [(2, "jobs.__main__")]),
        ("def f():\n    import jobsite\n", []),
    ],
    ids=[
        "from",
        "async-import",
        "relative-in-method",
        "nested-relative",
        "stdlib",
        "top",
        "prefix",
        "pages",
        "jobs",
        "jobs-prefix",
    ],
)
def test_function_level_imports_are_found(source, expected):
    assert function_level_imports(source, "<test>") == expected


def test_import_contracts_hold():
    """`lint-imports` passes from the project root (so CI's test command checks
    the contracts); on failure, its report is the assertion message."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; "
            "lint_imports_command(prog_name='lint-imports')",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    # Every contract ran and none was broken (a contract dropped from the
    # configuration would lower the count).
    m = re.search(r"Contracts: (\d+) kept, 0 broken\.", report)
    assert m and int(m[1]) >= CONTRACTS, report
