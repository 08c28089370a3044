"""The demo use case: argument checks before anything is built."""

from __future__ import annotations

import pytest

from cachemon import config, settings
from cachemon.errors import InputError
from cachemon.usecases import demo
from tests.helpers import T0


@pytest.mark.parametrize("days", [1e-49, 1e-12])
def test_a_span_that_rounds_to_no_time_is_refused_by_name(tmp_path, days):
    """Found by the CLI fuzz test: `--days 1e-49` is positive, yet no
    microsecond long, and the demo failed with an IndexError. The rule is
    `clock.days_span`'s, so every --days (`ttl whatif` too) refuses it."""
    cfg = config.with_db(settings.Config(), str(tmp_path / "d.duckdb"))
    with pytest.raises(InputError, match="--days .* shorter than a microsecond"):
        demo.demo(cfg, days, T0)
    assert not (tmp_path / "d.duckdb").exists()  # nothing was built
