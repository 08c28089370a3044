"""`[costs] min_saving`: the saving (USD/day) below which the Costs page
folds recommendations away; checked where it is read."""

from __future__ import annotations

import math

import pytest

from cachemon import config
from cachemon.errors import ConfigError
from cachemon.settings import CostsConfig
from tests.helpers import config_error


def test_default_is_a_cent_a_day():
    assert CostsConfig().min_saving == 0.01
    assert config.load(None, env={}).costs.min_saving == 0.01


@pytest.mark.parametrize("text, value", [("0", 0.0), ("0.25", 0.25), ("3", 3.0)])
def test_a_finite_non_negative_amount_is_taken(tmp_path, text, value):
    f = tmp_path / "ok.toml"
    f.write_text(f"[costs]\nmin_saving = {text}\n")
    got = config.load(f, env={}).costs.min_saving
    assert got == value and isinstance(got, float)


@pytest.mark.parametrize(
    "text, says",
    [
        ("-0.01", "[costs] min_saving = -0.01 must be a finite number of USD per day, 0 or more"),
        ("nan", "costs.min_saving = nan is not a finite number"),
        ("inf", "costs.min_saving = inf is not a finite number"),
        ("1e999", "costs.min_saving = inf is not a finite number"),
        ('"0.01"', "[costs] min_saving must be float, got '0.01'"),
        ("true", "[costs] min_saving must be float, got True"),
    ],
)
def test_a_bad_amount_is_refused_naming_the_key(tmp_path, text, says):
    error, path = config_error(tmp_path, f"[costs]\nmin_saving = {text}\n")
    assert error == f"{path}: {says}"


@pytest.mark.parametrize("value", [-1e-9, math.nan, math.inf, -math.inf, True, "0.01", None])
def test_the_setting_itself_refuses_a_bad_amount(value):
    with pytest.raises(ConfigError, match=r"^\[costs\] min_saving = .* must be a finite number"):
        CostsConfig(min_saving=value)
