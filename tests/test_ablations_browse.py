"""Browsing ablation results: reading, filtering, charting, and measuring a missing design."""
import numpy as np
import pandas as pd
import pytest

from ablations.browse import column_chart, filter_rows, load_tables, measure_row, numeric_columns, parse_value
from evmamba import ModelConfig


@pytest.fixture(scope="module")
def tables():
    return load_tables()  # the committed quick results


def test_committed_results_load(tables):
    assert {"scan_fusion", "paper_table5", "stage_layout", "scan_step"} <= set(tables)
    assert len(tables["scan_fusion"]) == 24


def test_filters(tables):
    df = filter_rows(tables["scan_fusion"], variant="tiny", scan="ss2d", conv_branch=False, gate="all")
    assert len(df) == 2 and set(df["scan"]) == {"SS2D"} and set(df["conv branch"]) == {"no"}
    assert len(filter_rows(df, gate=False)) == 1
    with pytest.raises(ValueError, match="unknown filter colour: filters are variant, scan"):
        filter_rows(df, colour="red")


def test_cells_parse():
    assert parse_value("0.807") == (0.807, pytest.approx(np.nan, nan_ok=True))
    assert parse_value("96.1 ± 1.0 (n=3)") == (96.1, 1.0)
    assert all(np.isnan(parse_value(m)[0]) for m in ("not run in --quick", "no paper row", "n/a"))


def test_chart_has_one_bar_per_numeric_row(tables):
    df = tables["scan_fusion"]
    assert "FLOPs (G, 224²)" in numeric_columns(df) and "variant" not in numeric_columns(df)
    bars = column_chart(df, "FLOPs (G, 224²)").data[0]
    assert len(bars.x) == 24 and min(bars.y) > 0.7
    acc = column_chart(df, "texture (local) accuracy (%)")
    assert len(acc.data[0].x) == 8 and "not a number for" in acc.layout.annotations[0].text
    with pytest.raises(ValueError, match="no column 'speed'"):
        column_chart(df, "speed")


def test_missing_folder_says_how_to_make_it(tmp_path):
    with pytest.raises(ValueError, match="run `python -m ablations all --quick --out"):
        load_tables(tmp_path)


def test_measure_row_fills_the_cost_columns():
    calls = []
    row = measure_row(ModelConfig(step=3, conv_branch=False), progress=lambda f, desc=None: calls.append(f))
    assert isinstance(row, pd.DataFrame) and len(row) == 1
    r = row.iloc[0]
    assert (r["step p"], r["conv branch"]) == (3, "no")
    assert float(r["FLOPs (G, 224²)"]) == pytest.approx(0.784, abs=0.01)
    assert r["accuracy"] == "not trained here" and calls[0] == 0 and calls[-1] == 1.0
    with pytest.raises(ValueError, match="measure_row takes an evmamba.ModelConfig, got dict"):
        measure_row({"depth": 3})
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        measure_row(ModelConfig(variant="huge"))
