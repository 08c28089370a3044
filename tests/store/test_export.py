"""CSV export: keys from the internet cannot become spreadsheet formulas.
Parquet export: the analyst views by day, re-read by other engines with identical totals."""

from datetime import UTC, datetime, timedelta

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pytest

from cachemon.cli import main as cli_main
from cachemon.errors import InputError
from cachemon.store import db as store_db
from cachemon.store import export
from tests.helpers import load, simulate

START = datetime(2026, 11, 19, 20, 0, tzinfo=UTC)  # 8 hours across midnight


@pytest.fixture(scope="module")
def across_midnight(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "cachemon.duckdb"
    parts, truth = simulate(8, START)
    load(path, parts, now=START + timedelta(hours=8))
    return path, truth[truth.kind == "request"]


def _parquet(root, dataset):
    return duckdb.sql(
        f"SELECT * FROM read_parquet('{root}/{dataset}/*/*.parquet', hive_partitioning = true)"
    )


def test_every_dataset_round_trips_through_parquet_by_day(across_midnight, tmp_path):
    path, r = across_midnight
    with store_db.reader(path) as con:
        written = {w.dataset: w for w in export.parquet(con, tmp_path)}
        for d in export.DATASETS:
            view = con.execute(f"SELECT * FROM v1.{d.view} ORDER BY ALL").df()
            if not len(view):
                assert written[d.view].rows == 0
                continue
            back = (
                _parquet(tmp_path, d.view)
                .df()
                .sort_values(list(view.columns))
                .reset_index(drop=True)
            )
            day = pd.to_datetime(back.pop("date")).dt.date
            assert (day == pd.to_datetime(back[d.time], utc=True).dt.date).all()
            pd.testing.assert_frame_equal(back, view, check_dtype=False, obj=d.view)
            assert written[d.view].rows == len(view)
    assert written["requests_hour"].days == 2
    assert sorted(p.name for p in (tmp_path / "requests_minute").iterdir()) == [
        "date=2026-11-19",
        "date=2026-11-20",
    ]
    # pyarrow (and so pandas or Spark) reads the same partitions
    table = ds.dataset(tmp_path / "requests_day", format="parquet", partitioning="hive").to_table()
    assert table.column("requests").to_numpy().sum() == pytest.approx(
        r.sample_interval.sum(), rel=1e-12
    )


def test_since_exports_later_days_and_a_rerun_replaces_them(across_midnight, tmp_path):
    path, r = across_midnight
    with store_db.reader(path) as con:
        export.parquet(con, tmp_path, datetime(2026, 11, 20, 3, 0, tzinfo=UTC))
        assert [p.name for p in (tmp_path / "requests_hour").iterdir()] == ["date=2026-11-20"]
        export.parquet(con, tmp_path)
        export.parquet(con, tmp_path)  # again: whole days replaced, nothing doubled
    total = _parquet(tmp_path, "requests_minute").aggregate("sum(requests)").fetchall()[0][0]
    assert total == pytest.approx(r.sample_interval.sum(), rel=1e-12)
    assert not list(tmp_path.rglob(".*.tmp"))


def test_export_command_and_a_bad_target(across_midnight, tmp_path, capsys):
    path, r = across_midnight
    assert (
        cli_main.main(
            ["--db", str(path), "export", "--to", str(tmp_path / "out"), "--since", "2026-11-20"]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert all(f"{d.view}: " in err for d in export.DATASETS)
    day20 = r[r.timestamp >= datetime(2026, 11, 20, tzinfo=UTC)].sample_interval.sum()
    assert _parquet(tmp_path / "out", "requests_hour").aggregate("sum(requests)").fetchall()[0][
        0
    ] == pytest.approx(day20)
    (tmp_path / "file").write_text("x")
    with (
        store_db.reader(path) as con,
        pytest.raises(InputError, match="exists and is not a directory"),
    ):
        export.parquet(con, tmp_path / "file")
    assert (
        cli_main.main(
            ["--db", str(path), "export", "--to", str(tmp_path / "o2"), "--since", "yesterday"]
        )
        == 2
    )
    assert "--since" in capsys.readouterr().err
