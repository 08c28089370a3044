"""Experiment config and cohort assignment: the seed's scheme against
vectors computed by its own JavaScript, the unbiased scheme, allocations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from scipy import stats as sps

from cachemon import config
from cachemon.assignment import seed_sha256_byte
from cachemon.errors import ConfigError
from cachemon.sources import catalog
from cachemon.tuning.experiments import example_toml, parse, u64_value
from cachemon.tuning.whatif import draft_experiment
from tests.helpers import ROOT

VECTORS = json.loads((ROOT / "tests" / "vectors" / "seed_assignment.json").read_text())


def _load(tmp_path, text):
    f = tmp_path / "e.toml"
    f.write_text(text)
    return config.load(f, env={})


def test_seed_scheme_matches_the_seeds_javascript():
    """Vectors from scripts/seed_vectors.mjs (the seed's assignCohort under Node)."""
    assert len(VECTORS) > 600 and any(v["byte"] == 255 for v in VECTORS)
    for v in VECTORS:
        assert seed_sha256_byte(v["key"], v["experiment"], v["weights"]) == v["index"], v


def test_effective_allocations(tmp_path):
    seed = _load(tmp_path, example_toml(scheme="seed-sha256-byte")).experiments[0]
    assert seed.allocation() == (Fraction(129, 256), Fraction(127, 256))
    fair = _load(tmp_path, example_toml(scheme="sha256-u64")).experiments[0]
    assert fair.allocation() == (Fraction(1, 2), Fraction(1, 2))
    # Assignment follows the stated allocation: 20,000 keys, chi-square does not reject.
    counts = [0, 0]
    for i in range(20_000):
        counts[fair.cohorts.index(fair.assign(f"search:title:q=k{i}"))] += 1
    assert sps.chisquare(counts, [10_000, 10_000]).pvalue > 0.001


def test_unbiased_scheme_separates_key_and_name():
    assert u64_value("ab", "c") != u64_value("a", "bc")
    assert seed_sha256_byte("ab", "c", [0.5, 0.5]) == seed_sha256_byte(
        "a", "bc", [0.5, 0.5]
    )  # the seed cannot tell


@pytest.mark.parametrize(
    "change, message",
    [
        (
            (
                'weight = 0.5\n[[experiments.cohorts]]\nname = "treatment"\nttl = "48h"\nweight = 0.5',
                'weight = 0.5\n[[experiments.cohorts]]\nname = "treatment"\nttl = "48h"\nweight = 0.4',
            ),
            "weights sum to 0.9, not 1",
        ),
        (('name = "treatment"', 'name = "control"'), "duplicate cohort name 'control'"),
        (('endpoint = "title"', 'endpoint = "titles"'), "unknown endpoint 'titles'"),
        (('ttl = "48h"', 'ttl = "30s"'), "ttl '30s' is out of range"),
        (('scheme = "sha256-u64"', 'scheme = "md5"'), "scheme: 'md5'"),
        (('duration = "14d"', 'duration = "two weeks"'), "'two weeks' is not a duration"),
    ],
)
def test_invalid_experiments_are_named(tmp_path, change, message):
    text = example_toml(scheme="sha256-u64").replace(*change)
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text)
    assert "experiment 'extended-title-ttl'" in str(err.value) and message in str(err.value)


def test_cli_assign_and_list(tmp_path):
    (tmp_path / "e.toml").write_text(example_toml(scheme="seed-sha256-byte"))
    env = dict(os.environ, CACHEMON_CONFIG=str(tmp_path / "e.toml"), PYTHONPATH=str(ROOT))

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "cachemon", "experiments", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    v = next(x for x in VECTORS if x["experiment"] == "extended-title-ttl" and x["byte"] == 255)
    out = json.loads(cli("assign", v["key"], "--experiment", "extended-title-ttl").stdout)
    assert out["cohort"] == "control" == v["cohort"]  # byte 255 falls through to the first cohort
    assert (
        out["allocation"] == {"control": "129/256", "treatment": "127/256"}
        and out["ttlSeconds"] == 86400
    )
    assert "allocation control 50.3906% (129/256)" in cli("list").stdout
    bad = cli("assign", "k", "--experiment", "nope")
    assert bad.returncode == 2 and "unknown experiment 'nope'" in bad.stderr


def test_readme_experiment_example_loads(tmp_path):
    import re

    block = next(
        b
        for b in re.findall(
            r"```toml\n(.*?)```", (ROOT / "docs" / "experiments.md").read_text(), re.S
        )
        if b.startswith("[[experiments]]")
    )
    e = _load(tmp_path, block).experiments[0]
    assert e.scheme == "seed-sha256-byte" and [c.name for c in e.cohorts] == [
        "control",
        "treatment",
    ]


def test_one_example_template_is_the_seeds_experiment():
    """example_toml's defaults are the seed's experiment, the one the
    simulator runs; the TTL what-if's draft comes from the same template."""
    (e,) = parse("example", tomllib.loads(example_toml())["experiments"], ("title",))
    assert e.name == catalog.EXPERIMENT and e.scheme == "seed-sha256-byte"
    assert [(c.name, int(c.ttl.total_seconds()), c.weight) for c in e.cohorts] == [
        (name, ttl, weight) for name, ttl, weight in catalog.COHORTS
    ]
    start = datetime(2026, 11, 29, tzinfo=UTC)
    draft = draft_experiment("isbn", timedelta(days=30), timedelta(days=60), start)
    (d,) = parse("draft", tomllib.loads(draft)["experiments"], ("isbn",))
    assert (d.name, d.endpoint, d.start, d.scheme, d.duration) == (
        "isbn-ttl-60d",
        "isbn",
        start,
        "sha256-u64",
        timedelta(days=14),
    )
    assert [c.ttl for c in d.cohorts] == [timedelta(days=30), timedelta(days=60)]


def test_example_strings_are_quoted():
    text = example_toml(name="x", description='say "hi" \\ back\nthen')
    (e,) = parse("quoted", tomllib.loads(text)["experiments"], ("title",))
    assert e.description == 'say "hi" \\ back\nthen'
