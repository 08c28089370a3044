"""The one CSV rule (cachemon.csvtext): formulas neutralised, numbers kept."""

import io

import pandas as pd

from cachemon import csvtext


def test_formula_cells_are_neutralised_and_the_rest_round_trips():
    df = pd.DataFrame(
        {
            "key": [
                '=HYPERLINK("http://x")',
                "+1",
                "-2",
                "@SUM(A1)",
                "\tx",
                "title:q=ok",
                "<script>",
            ],
            "value": [1.5, 2, 3, 4, 5, 6, -7],
        }
    )
    back = pd.read_csv(io.BytesIO(csvtext.csv_bytes(df)), keep_default_na=False)
    assert list(back.key) == [
        '\'=HYPERLINK("http://x")',
        "'+1",
        "'-2",
        "'@SUM(A1)",
        "\u2409x",  # a tab is made visible (␉), so it no longer leads a formula
        "title:q=ok",
        "<script>",
    ]
    assert list(back.value) == [1.5, 2, 3, 4, 5, 6, -7]  # numbers stay numbers, negatives too


def test_bidi_overrides_and_spaced_formulas_are_neutralised():
    df = pd.DataFrame({"key": ["a\u202eb", " =1+1", "  @SUM(A1)", "ok"]})
    back = pd.read_csv(io.BytesIO(csvtext.csv_bytes(df)), keep_default_na=False)
    assert "\u202e" not in back.key[0] and back.key[0] == "a\ufffdb"
    assert list(back.key[1:]) == ["' =1+1", "'  @SUM(A1)", "ok"]
