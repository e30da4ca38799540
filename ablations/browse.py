"""Browse ablation results: read the tables a run wrote, filter them, chart a column, and measure a design
that is not in them yet (the app's Ablations tab and the notebooks use these).

    tables = load_tables("assets/ablations")             # name -> DataFrame, as written by the pipeline
    df = filter_rows(tables["scan_fusion"], scan="SS2D")
    fig = column_chart(df, "FLOPs (G, 224²)")
    row = measure_row(ModelConfig(step=3))               # cost columns, measured now
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd

from evmamba.model import ModelConfig

from .tables import CONVENTIONS, ERF_TABLE_THRESHOLDS, MARKERS, erf_column, ratio_cell, row_columns

DEFAULT_RESULTS = Path(__file__).resolve().parent.parent / "assets" / "ablations"
# field -> the table column that shows it (ModelConfig's field metadata)
FILTERS = {f.name: f.metadata["column"] for f in dataclasses.fields(ModelConfig) if "column" in f.metadata}
NOT_TRAINED_HERE = "not trained here"
_NUMBER = re.compile(r"^\s*(-?\d+(?:\.\d+)?)(?:\s*±\s*(\d+(?:\.\d+)?))?")


def load_tables(folder=None) -> dict[str, pd.DataFrame]:
    """Every table (tables/*.csv) of an ablation run's output folder, by name, cells as the strings written."""
    folder = Path(folder) if folder is not None else DEFAULT_RESULTS
    files = sorted((folder / "tables").glob("*.csv")) if folder.is_dir() else []
    if not files:
        raise ValueError(f"no ablation tables in {folder}: run `python -m ablations all --quick --out {folder}` "
                         "first, or point at the folder such a run wrote")
    return {f.stem: pd.read_csv(f, dtype=str, keep_default_na=False) for f in files}


def filter_rows(df: pd.DataFrame, **selection) -> pd.DataFrame:
    """The rows whose switches match; a value of None or "all" leaves that switch free.

    Keys: the design fields tables show (FILTERS: variant "tiny", scan "ES2D"/"es2d", booleans as True/False
    or "yes"/"no", stages by name, ...)."""
    unknown = set(selection) - set(FILTERS)
    if unknown:
        raise ValueError(f"unknown filter {', '.join(sorted(unknown))}: filters are {', '.join(FILTERS)}")
    keep = pd.Series(True, index=df.index)
    for key, value in selection.items():
        column = FILTERS[key]
        if value is None or value == "all" or column not in df.columns:
            continue
        if isinstance(value, bool):
            value = "yes" if value else "no"
        keep &= df[column].str.lower() == str(value).lower()
    return df[keep].reset_index(drop=True)


def parse_value(cell) -> tuple[float, float]:
    """(value, std) of a table cell: "0.807" -> (0.807, nan), "96.1 ± 1.0 (n=3)" -> (96.1, 1.0); a marker
    such as "not run in --quick" -> (nan, nan)."""
    m = _NUMBER.match(str(cell))
    if not m or str(cell) in MARKERS:
        return float("nan"), float("nan")
    return float(m.group(1)), float(m.group(2)) if m.group(2) else float("nan")


def numeric_columns(df: pd.DataFrame) -> list[str]:
    """Columns that hold at least one number (the ones worth charting)."""
    return [c for c in df.columns if c not in FILTERS.values()
            and any(not np.isnan(parse_value(v)[0]) for v in df[c])]


def row_labels(df: pd.DataFrame) -> list[str]:
    """A label per row from its design columns: the variant and scan, then each other column that varies
    in the table ("conv branch no", "step p 3")."""
    cols = [c for c in FILTERS.values() if c in df.columns]
    varying = [c for c in cols[2:] if df[c].nunique() > 1]
    out = []
    for _, r in df.iterrows():
        parts = [" ".join(str(r[c]) for c in cols[:2])] + [f"{c} {r[c]}" for c in varying if r[c] != "-"]
        out.append(" | ".join(parts))
    return out


def column_chart(df: pd.DataFrame, column: str, title: str | None = None):
    """A plotly bar chart of one column, one bar per row (error bars where the cell has ± std); rows whose
    cell is not a number (not run, not measured) are left out and named under the chart."""
    import plotly.graph_objects as go
    if column not in df.columns:
        raise ValueError(f"no column {column!r}: columns with numbers are {', '.join(numeric_columns(df))}")
    values = [parse_value(v) for v in df[column]]
    labels = row_labels(df)
    shown = [(lab, v, s) for lab, (v, s) in zip(labels, values) if not np.isnan(v)]
    missing = [lab for lab, (v, _) in zip(labels, values) if np.isnan(v)]
    colours = ["#0072B2" if " ES2D" in lab else "#D55E00" for lab, _, _ in shown]
    fig = go.Figure(go.Bar(x=[s[0] for s in shown], y=[s[1] for s in shown], marker_color=colours,
                           error_y=dict(type="data", array=[0 if np.isnan(s[2]) else s[2] for s in shown],
                                        visible=any(not np.isnan(s[2]) for s in shown))))
    note = f"not a number for: {', '.join(missing)}" if missing else ""
    fig.update_layout(title=title or column, yaxis_title=column, template="simple_white", height=420,
                      margin=dict(b=160), annotations=[dict(text=note, x=0, y=-0.55, xref="paper", yref="paper",
                                                            showarrow=False, font=dict(size=10))] if note else [])
    return fig


def measure_row(row: ModelConfig, *, device="cpu", erf_inputs: int = 1, speed_repeats: int = 2, progress=None
                ) -> pd.DataFrame:
    """The cost columns of one design, measured now on `device`: parameters, FLOPs at 224², throughput
    (batch 2) and latency (batch 1) at 224², ERF area ratios at initialisation (network to the end of stage
    2, random inputs; RepLKNet's convention and the cell-centred one). Accuracy needs training and is marked
    as not trained here. progress: optional callable progress(fraction, desc=...)."""
    from . import measure
    if not isinstance(row, ModelConfig):
        raise ValueError(f"measure_row takes an evmamba.ModelConfig, got {type(row).__name__}")
    row = row.validate()  # a clear error before any work
    steps = [("parameters and FLOPs", lambda: measure.static_cost(row)),
             ("throughput and latency", lambda: measure.speed(row, batch=2, repeats=speed_repeats, device=device)),
             ("receptive field at initialisation", lambda: measure.erf_ratios(row, inputs=erf_inputs))]
    got = []
    for i, (desc, fn) in enumerate(steps):
        if progress is not None:
            progress(i / len(steps), desc=desc)
        got.append(fn())
    if progress is not None:
        progress(1.0, desc="done")
    cost, speed, erf = got
    where = f"{'GPU' if str(device).startswith('cuda') else 'CPU'}, measured now"
    rec = row_columns(row)
    rec.update({"params (M)": f"{cost['params'] / 1e6:.2f}", "FLOPs (G, 224²)": f"{cost['flops'] / 1e9:.3f}",
                f"throughput (img/s, {where}, batch 2, 224²)": f"{speed['throughput']:.1f}",
                f"latency (ms, {where}, batch 1, 224²)": f"{speed['latency_ms']:.0f}"})
    for convention in CONVENTIONS:
        for t in ERF_TABLE_THRESHOLDS:
            rec[erf_column(t, convention)] = ratio_cell(erf[convention]["all"][t])
    rec["accuracy"] = NOT_TRAINED_HERE
    return pd.DataFrame([rec])


__all__ = ["DEFAULT_RESULTS", "column_chart", "filter_rows", "load_tables", "measure_row", "numeric_columns",
           "parse_value", "row_labels"]
