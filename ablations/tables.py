"""The ablation tables as DataFrames, and their CSV, Markdown and LaTeX forms.

Every cell holds a value or says why it has none: "not run in --quick" (the mode skipped it), "not
measured on this device" (the device cannot measure it, e.g. bf16 throughput on a CPU), "no paper row"
(the paper has no such design). Numbers from the paper carry "[paper]" (or "[authors' code, ...]") in
their column names and are never mixed with the project's own measurements.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from evmamba.analysis.erf_maps import CONVENTIONS, ratio_label
from evmamba.model import ModelConfig

from .config import Mode, Table, design, matches, slug

NOT_ON_DEVICE = "not measured on this device"
FAILED = "failed (see manifest.json)"
NO_PAPER_ROW = "no paper row"
NO_SQUARE = "none (no square holds that share)"  # RepLKNet's area ratio has no value
MARKERS = (NOT_ON_DEVICE, NO_PAPER_ROW, FAILED, NO_SQUARE, "not run in --quick", "not run")
ERF_TABLE_THRESHOLDS = ("0.2", "0.99")
HEAD_TITLES = {"orientation": "texture (local)", "match": "markers (global)"}


def row_columns(row: ModelConfig) -> dict:
    """The design's columns, as the model shows its fields (ModelConfig.shown)."""
    return row.shown()


def ratio_cell(value) -> str:
    """An area ratio in percent, or why there is none (RepLKNet's convention may find no square)."""
    return NO_SQUARE if value is None else f"{100 * value:.2f}"


def erf_column(t: str, convention: str) -> str:
    return f"ERF {ratio_label(float(t), convention)}, init (%)"


def mean_std(values) -> str:
    """'mean ± std (n=k)' in percent for accuracies in [0, 1] (sample standard deviation)."""
    a = 100 * np.asarray(values, dtype=float)
    if a.size == 1:
        return f"{a[0]:.1f} (n=1)"
    return f"{a.mean():.1f} ± {a.std(ddof=1):.1f} (n={a.size})"


def accuracy_by_head(runs: list[dict]) -> dict:
    """{head name: [accuracy of each run]} from training results (each run may answer several heads)."""
    out = {}
    for r in runs:
        for name, acc in zip(r["head_names"], r["test"]["accuracy"]):
            out.setdefault(name, []).append(acc)
    return out


def _paper_top1(row: ModelConfig, table: Table, paper: dict):
    """(top-1, params, FLOPs) the paper gives for exactly this design in the table's context, else None."""

    def fits(spec):
        return matches(row, spec)

    if table.name == "paper_table5":
        for p in paper.get("table5", []):
            if fits(p["row"]):
                return p["top1"], p["params_m"], p["flops_g"], p["model"] + ("" if p["same_widths"] else
                                                                            " (other widths)")
        return None
    if table.name == "stage_layout":
        for p in paper.get("layouts", []):
            if fits({**p["row"], "scan": "es2d", "step": 2, "conv_branch": True, "gate": True}):
                return p["top1"], None, p.get("flops_g"), paper["sources"][p["source"]].split(" (")[0]
        return None
    if row == design(variant=row.variant):
        for p in paper.get("table2", []):
            if p.get("ours") == row.variant:
                return p["top1"], p["params_m"], p["flops_g"], p["model"]
    return None


def _authors_gpu(row: ModelConfig, paper: dict):
    if row != design(variant=row.variant, scan=row.scan):  # the authors timed their released design only
        return None
    for p in paper.get("authors_gpu", []):
        if p["variant"] == row.variant and p["scan"] == row.scan:
            return p
    return None


def ablation_table(table: Table, results: dict, mode: Mode, paper: dict) -> pd.DataFrame:
    """One row per design of `table`: switches, cost columns, accuracy per task head, paper reference."""
    failed = results.get("failed", {})
    device = results["device_short"]
    on_gpu = results.get("device_type") == "cuda"
    sb, mb, size = mode.speed_batch, mode.memory_batch, mode.speed_size
    heads = results.get("heads") or ["orientation", "match"]
    records = []
    for row in table.rows:
        key = slug(row)
        rec = row_columns(row)

        def missing(kind, key=key):
            return FAILED if key in failed.get(kind, ()) else mode.not_run()

        cost = results["cost"].get(key)
        rec["params (M)"] = f"{cost['params'] / 1e6:.2f}" if cost else missing("cost")
        rec["FLOPs (G, 224²)"] = f"{cost['flops'] / 1e9:.3f}" if cost else missing("cost")
        sp = results["speed"].get(key)
        throughput = f"{sp['throughput']:.1f}" if sp else missing("speed")
        rec[f"throughput (img/s, {device}, batch {sb}, {size}²)"] = throughput
        rec[f"latency (ms, {device}, batch 1, {size}²)"] = f"{sp['latency_ms']:.0f}" if sp else missing("speed")
        if on_gpu:
            bf16 = sp and "throughput_bf16" in sp
            rec["throughput bf16 (img/s)"] = f"{sp['throughput_bf16']:.1f}" if bf16 else missing("speed")
        else:
            rec["throughput bf16 (img/s)"] = NOT_ON_DEVICE
        mem = results["memory"].get(key)
        memory = f"{mem['bytes'] / 2**20:.0f}" if mem else missing("memory")
        rec[f"train-step memory (MiB, batch {mb}, {size}²)"] = memory
        erf = results["erf"].get(key)
        for convention in CONVENTIONS:
            for t in ERF_TABLE_THRESHOLDS:
                rec[erf_column(t, convention)] = ratio_cell(erf[convention]["all"][t]) if erf else missing("erf")
        runs = results["runs"].get(key)
        acc = accuracy_by_head(runs) if runs else {}
        for h in heads:
            title = HEAD_TITLES.get(h, h)
            rec[f"{title} accuracy (%)"] = mean_std(acc[h]) if h in acc else missing("train")
        ref = _paper_top1(row, table, paper)
        rec["ImageNet top-1 (%) [paper]"] = f"{ref[0]:.1f}" if ref else NO_PAPER_ROW
        if table.name == "paper_table5":
            rec["params (M) [paper]"] = f"{ref[1]:g}" if ref and ref[1] is not None else NO_PAPER_ROW
            rec["FLOPs (G) [paper]"] = f"{ref[2]:g}" if ref and ref[2] is not None else NO_PAPER_ROW
            rec["paper row"] = ref[3] if ref else NO_PAPER_ROW
        if table.name == "scan_fusion":
            gpu = _authors_gpu(row, paper)
            rec["throughput fp32 (img/s) [authors' code, H200, batch 128]"] = \
                f"{gpu['inference_fp32']}" if gpu else NO_PAPER_ROW
        records.append(rec)
    return pd.DataFrame.from_records(records)


def erf_table(results: dict, mode: Mode) -> pd.DataFrame:
    """ERF area ratios at all four thresholds, at initialisation, for the rows that have them."""
    records = []
    for key, erf in results["erf"].items():
        row = results["rows"][key]
        rec = row_columns(row)
        for convention in CONVENTIONS:
            for t, v in erf[convention]["all"].items():
                rec[f"{ratio_label(float(t), convention)} (%)"] = ratio_cell(v)
        rec["map"] = f"network to stage {erf['stage'] + 1}, {erf['size']}² input, {erf['inputs']} random images"
        records.append(rec)
    return pd.DataFrame.from_records(records)


def scaling_table(results: dict) -> pd.DataFrame:
    records = []
    for scan, points in results["scaling"].items():
        for p in points:
            records.append({"scan": scan.upper(), "input": f"{p['size']}²", "tokens (stage 1)": p["tokens"],
                            "throughput (img/s)": f"{p['throughput']:.1f}",
                            "time per image (ms)": f"{1000 / p['throughput']:.1f}",
                            "activations saved for backward (MiB)": f"{p['saved_bytes'] / 2**20:.1f}"})
    return pd.DataFrame.from_records(records)


def check_filled(df: pd.DataFrame) -> list[str]:
    """The cells that are empty or NaN (a complete table has none): ['row i, column c', ...]."""
    bad = []
    for i, rec in enumerate(df.to_dict("records")):
        for col, v in rec.items():
            if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip()):
                bad.append(f"row {i}, column {col!r}")
    return bad


# ---- writers ------------------------------------------------------------------------------------------
def to_markdown(df: pd.DataFrame, caption: str = "") -> str:
    def cell(v):
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = [f"{caption}\n"] if caption else []
    lines.append("| " + " | ".join(cell(c) for c in df.columns) + " |")
    lines.append("| " + " | ".join("---" for _ in df.columns) + " |")
    for rec in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in rec) + " |")
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "²": r"$^2$", "×": r"$\times$"}


def latex_escape(text) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(df: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A booktabs table (needs \\usepackage{booktabs}); long tables fit the page with \\resizebox."""
    cols = "l" * len(df.columns)
    body = [" & ".join(latex_escape(c) for c in df.columns) + r" \\", r"\midrule"]
    for rec in df.itertuples(index=False):
        body.append(" & ".join(latex_escape(v) for v in rec) + r" \\")
    parts = [r"\begin{table}[t]", r"\centering"]
    if caption:
        parts.append(r"\caption{" + latex_escape(caption) + "}")
    if label:
        parts.append(r"\label{" + label + "}")
    parts += [r"\resizebox{\textwidth}{!}{%", r"\begin{tabular}{" + cols + "}", r"\toprule", *body, r"\bottomrule",
              r"\end{tabular}}", r"\end{table}"]
    return "\n".join(parts) + "\n"


def to_csv(df: pd.DataFrame) -> str:
    return df.to_csv(index=False)


__all__ = ["MARKERS", "NOT_ON_DEVICE", "NO_PAPER_ROW", "ablation_table", "accuracy_by_head", "check_filled",
           "erf_table", "latex_escape", "mean_std", "row_columns", "scaling_table", "to_csv", "to_latex",
           "to_markdown"]
