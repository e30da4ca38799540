"""The report's figures, each a function of measured data that returns a matplotlib Figure in the paper style.

    scan_figure()                          SS2D vs ES2D scan routes on an 8x8 grid (the paper's Figure 2,
                                           drawn from the routes the model uses)
    erf_figure(results)                    ERF of all routes and of each route alone, ES2D and SS2D, at
                                           initialisation and after training
    accuracy_flops_figure(paper, costs)    ImageNet top-1 against FLOPs: the paper's points, and the
                                           paper's EfficientVMamba accuracies at the FLOPs we count
    ablation_bars_figure(groups)           task accuracy (mean, error bar = std over seeds) per design
    scaling_figure(points)                 time per image and activation memory against tokens
    task_examples_figure(tasks, size)      a few images of each procedural task, with their labels
    training_curves_figure(curves)         training loss per design, mean over seeds
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from evmamba.analysis.style import paper_style, route_colour

# ES2D and SS2D in every figure (from the project's palette: route 0's blue, and an orange-red).
SCAN_COLOURS = {"es2d": route_colour(0), "ss2d": "#D55E00"}
PAPER_GREY = "#8c8c8c"


def scan_colour(scan: str) -> str:
    """ES2D's and SS2D's fixed colours; any other registered scan a palette colour of its own."""
    from evmamba.families import scans
    scan = scan.lower()
    return SCAN_COLOURS.get(scan) or route_colour(2 + list(scans()).index(scan))


def scan_figure(height: int = 8, width: int = 8, step: int = 2) -> Figure:
    from evmamba.analysis.partition_figures import scan_comparison_figure
    return scan_comparison_figure(height=height, width=width, step=step)


def erf_figure(results: dict, title: str | None = None) -> Figure:
    """`results`: label -> RouteERFs (evmamba.analysis.erf), one figure row each."""
    from evmamba.analysis.erf_figures import erf_figure as _erf_figure
    return _erf_figure(results, title=title)


def accuracy_flops_figure(paper: dict, measured: dict) -> Figure:
    """paper: the paper numbers (paper_numbers.toml); measured: {variant: FLOPs (G) we count at 224²}."""
    with paper_style():
        fig = Figure(figsize=(4.6, 3.2), layout="constrained")
        ax = fig.subplots()
        for p in paper["table2"]:
            ours = p.get("ours")
            if ours:
                continue
            ax.scatter(p["flops_g"], p["top1"], s=14, color=PAPER_GREY, zorder=2)
            ax.annotate(p["model"], (p["flops_g"], p["top1"]), xytext=(3, -2), textcoords="offset points",
                        fontsize=6, color="#555555")
        ev = [p for p in paper["table2"] if p.get("ours")]
        xs = [p["flops_g"] for p in ev]
        ys = [p["top1"] for p in ev]
        ax.plot(xs, ys, "-", color=scan_colour("es2d"), lw=0.8, alpha=0.5, zorder=2)
        ax.scatter(xs, ys, s=30, facecolor="white", edgecolor=scan_colour("es2d"), lw=1.2, zorder=3,
                   label="EfficientVMamba at the paper's FLOPs [paper]")
        mx = [measured[p["ours"]] for p in ev if p["ours"] in measured]
        my = [p["top1"] for p in ev if p["ours"] in measured]
        ax.scatter(mx, my, s=16, color=scan_colour("es2d"), zorder=4,
                   label="same accuracy at the FLOPs we count [ours]")
        for p in ev:
            ax.annotate(p["model"].replace("EfficientVMamba", "EVM"), (p["flops_g"], p["top1"]), xytext=(4, 4),
                        textcoords="offset points", fontsize=6.5, color=scan_colour("es2d"))
        ax.set_xlabel("FLOPs (G) at 224×224, one multiply-add = one FLOP")
        ax.set_ylabel("ImageNet-1K top-1 (%) [paper]")
        from matplotlib.ticker import NullFormatter
        ax.set_xscale("log")
        ax.set_xticks([0.5, 1, 2, 4, 6])
        ax.set_xticklabels(["0.5", "1", "2", "4", "6"])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(frameon=False, loc="lower right")
        ax.set_title("Accuracy from the paper (Table 2); FLOPs counted by evmamba in the paper's convention",
                     fontsize=7)
    return fig


def ablation_bars_figure(groups: list[dict], heads: list[str], head_titles: dict, classes: dict,
                         note: str = "") -> Figure:
    """groups: [{"label", "scan", "conv", "gate", "acc": {head: [accuracy per seed]}}]; one panel per head
    (classes: head -> number of classes, for the chance line); bar = mean, error bar = sample standard
    deviation over seeds, dots = the seeds."""
    with paper_style():
        fig = Figure(figsize=(2.0 + 0.45 * len(groups) * len(heads), 2.9), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(heads), squeeze=False)[0])
        x = np.arange(len(groups))
        for ax, head in zip(axes, heads):
            for i, g in enumerate(groups):
                vals = 100 * np.asarray(g["acc"].get(head, []), dtype=float)
                if vals.size == 0:
                    continue
                colour = scan_colour(g["scan"])
                hatch = None if g.get("conv", True) else "////"
                ax.bar(i, vals.mean(), yerr=vals.std(ddof=1) if vals.size > 1 else 0, color=colour,
                       alpha=0.85 if g.get("gate", True) else 0.45, hatch=hatch, edgecolor="white", lw=0.5,
                       capsize=2, error_kw={"lw": 0.8})
                ax.scatter(np.full(vals.size, i) + np.linspace(-0.15, 0.15, vals.size), vals, s=5, color="black",
                           zorder=3)
            ax.set_xticks(x)
            ax.set_xticklabels([g["label"] for g in groups], rotation=60, ha="right", fontsize=6)
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(head_titles.get(head, head))
            chance = 100 / classes[head] if head in classes else None
            if chance:
                ax.axhline(chance, color=PAPER_GREY, lw=0.6, ls="--")
                ax.annotate("chance", (len(groups) - 0.5, chance), xytext=(0, 2), textcoords="offset points",
                            fontsize=6, color=PAPER_GREY, ha="right")
            ax.set_ylim(0, 100)
        from matplotlib.patches import Patch
        handles = [Patch(color=SCAN_COLOURS["es2d"], label="ES2D"), Patch(color=SCAN_COLOURS["ss2d"], label="SS2D"),
                   Patch(facecolor="white", edgecolor="black", hatch="////", label="no conv branch"),
                   Patch(color="black", alpha=0.35, label="no gate (lighter)")]
        fig.legend(handles=handles, loc="outside lower center", ncol=4, frameon=False)
        if note:
            fig.suptitle(note, fontsize=7)
    return fig


def scaling_figure(points: dict, device: str, note: str = "") -> Figure:
    """points: {scan: [{"tokens", "throughput", "saved_bytes", ...}]}; time per image and activation memory
    against the number of tokens the first stage scans, with a least-squares line through each."""
    with paper_style():
        fig = Figure(figsize=(6.0, 2.6), layout="constrained")
        ax_t, ax_m = fig.subplots(1, 2)
        for scan, pts in points.items():
            tokens = np.array([p["tokens"] for p in pts], dtype=float)
            ms = np.array([1000 / p["throughput"] for p in pts])
            mib = np.array([p["saved_bytes"] / 2**20 for p in pts])
            for ax, y in ((ax_t, ms), (ax_m, mib)):
                ax.plot(tokens, y, "o", ms=3.5, color=scan_colour(scan), label=scan.upper())
                if len(tokens) >= 2:
                    slope, icpt = np.polyfit(tokens, y, 1)
                    grid = np.linspace(0, tokens.max() * 1.05, 50)
                    ax.plot(grid, slope * grid + icpt, "-", lw=0.8, color=scan_colour(scan), alpha=0.7)
            sizes = [p["size"] for p in pts]
        for ax in (ax_t, ax_m):
            ax.set_xlabel("tokens in the first stage ((input side / 4)²)")
            ax.set_xlim(left=0)
            ax.set_ylim(bottom=0)
            ax.legend(frameon=False)
        ax_t.set_ylabel(f"forward time per image (ms)\n{device}")
        ax_m.set_ylabel("activations kept for backward (MiB)")
        sec = ax_t.secondary_xaxis("top", functions=(lambda t: 4 * np.sqrt(np.maximum(t, 0)),
                                                     lambda s: (np.asarray(s) / 4) ** 2))
        sec.set_xticks(sizes)
        sec.set_xlabel("input side (pixels)", fontsize=6)
        ax_t.set_title("time grows linearly with tokens (lines: least squares)", fontsize=7)
        ax_m.set_title("so does the memory a training step keeps", fontsize=7)
        if note:
            fig.suptitle(note, fontsize=7)
    return fig


def task_examples_figure(tasks: list[str], size: int, seed: int = 0, per_task: int = 6) -> Figure:
    from .study.tasks import TASKS, make_task
    with paper_style():
        fig = Figure(figsize=(1.0 * per_task + 1.4, 1.15 * len(tasks) + 0.3), layout="constrained")
        axes = fig.subplots(len(tasks), per_task, squeeze=False)
        for r, name in enumerate(tasks):
            data = make_task(name, per_task, size, seed)
            info = TASKS[name]
            for c in range(per_task):
                ax = axes[r, c]
                ax.imshow(data.images[c].permute(1, 2, 0).numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                for side in ax.spines.values():
                    side.set_visible(False)
                names = [info.class_names[h][int(data.labels[c, h])] for h in range(len(info.heads))]
                ax.set_title(", ".join(names), fontsize=6)
            axes[r, 0].set_ylabel(f"{name}\n({info.kind})", fontsize=7)
        fig.suptitle(f"The procedural tasks at {size}×{size} (seed {seed}): labels drawn first, images drawn "
                     "to match", fontsize=7)
    return fig


def training_curves_figure(curves: list[dict], note: str = "") -> Figure:
    """curves: [{"task", "label", "scan", "conv", "gate", "losses": [[loss per step] per seed]}]; one panel per
    task, one line per design (mean over seeds)."""
    tasks = list(dict.fromkeys(c["task"] for c in curves))
    with paper_style():
        fig = Figure(figsize=(3.2 * len(tasks) + 0.4, 3.3), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(tasks), squeeze=False)[0])
        for ax, task in zip(axes, tasks):
            for c in (c for c in curves if c["task"] == task):
                runs = np.array(c["losses"], dtype=float)
                mean = runs.mean(0)
                steps = np.arange(1, mean.size + 1)
                ax.plot(steps, mean, "-" if c.get("conv", True) else "--", lw=1.0, color=scan_colour(c["scan"]),
                        alpha=1.0 if c.get("gate", True) else 0.5, label=c["label"])
            ax.set_xlabel("optimiser step")
            ax.set_ylabel("training loss (mean over seeds)")
            ax.set_title(task)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=4, frameon=False, fontsize=6)
        if note:
            fig.suptitle(note, fontsize=7)
    return fig


__all__ = ["SCAN_COLOURS", "ablation_bars_figure", "accuracy_flops_figure", "erf_figure", "scaling_figure",
           "scan_colour", "scan_figure", "task_examples_figure", "training_curves_figure"]
