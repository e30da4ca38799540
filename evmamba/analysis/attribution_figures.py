"""Figures (matplotlib, paper style) for predictions, attributions and per-direction contributions.

    fig = prediction_figure(predict(model, "chelsea"))
    fig = attribution_figure(attributions(model, "chelsea"))
    fig = route_contribution_figure(route_contributions(model, "chelsea"))

A randomly initialised model's figures carry its note in red, so nobody reads them as a trained model's.
"""
from __future__ import annotations

import textwrap

import numpy as np
from matplotlib.figure import Figure

from .attribution import Attributions, Prediction
from .style import paper_style, route_colour

WARNING_COLOUR = "#B00020"
LABELS = {"integrated_gradients": "Integrated Gradients", "saliency": "Saliency (|gradient|)",
          "input_x_gradient": "Input × Gradient", "smoothgrad": "SmoothGrad"}


def _note(fig, note, width=None):
    """The note under the figure, wrapped to the figure's width (about 17 characters an inch at 7 pt)."""
    if note:
        width = width or max(30, int(fig.get_figwidth() * 17))
        fig.supxlabel(textwrap.fill("Note: " + note, width), color=WARNING_COLOUR, fontsize=7, gid="note")


def prediction_figure(prediction: Prediction, *, title: str | None = None) -> Figure:
    """A horizontal bar per class of the top-k, most probable on top, with its probability."""
    if not isinstance(prediction, Prediction):
        raise ValueError("prediction_figure takes the Prediction returned by predict(model, image)")
    df = prediction.classes
    with paper_style():
        fig = Figure(figsize=(3.6, 0.3 * len(df) + 0.9), layout="constrained")
        ax = fig.subplots()
        y = np.arange(len(df))[::-1]
        bars = ax.barh(y, df["probability"], color="#0072B2", height=0.6)
        ax.set_yticks(y, [f"{n} ({c})" for n, c in zip(df["name"], df["class"])])
        ax.bar_label(bars, [f"{100 * p:.1f}%" for p in df["probability"]], padding=2, fontsize=6)
        ax.set_xlim(0, max(1e-9, float(df["probability"].max())) * 1.25)
        ax.set_xlabel("probability")
        ax.set_title(title or f"top {len(df)} classes" + ("" if prediction.pretrained else " (random weights)"),
                     color="black" if prediction.pretrained else WARNING_COLOUR)
        _note(fig, prediction.note, 70)
    return fig


def attribution_figure(att: Attributions, *, opacity: float = 0.6, percentile: float = 99.0,
                       title: str | None = None) -> Figure:
    """The image the model saw, then each method's map over it: signed maps (Integrated Gradients,
    Input × Gradient) in red (for the class) and blue (against), unsigned ones in one colour scale; the
    colour range is clipped at the `percentile` of |map| so a few extreme pixels do not wash it out."""
    if not isinstance(att, Attributions):
        raise ValueError("attribution_figure takes the Attributions returned by attributions(model, image)")
    methods = list(att.maps)
    with paper_style():
        n = len(methods) + 1
        fig = Figure(figsize=(1.9 * n + 0.3, 2.4), layout="constrained")
        axes = fig.subplots(1, n, squeeze=False)[0]
        axes[0].imshow(att.picture)
        axes[0].set_title("input")
        for ax, method in zip(axes[1:], methods):
            m = att.maps[method]
            top = float(np.percentile(np.abs(m), percentile)) or float(np.abs(m).max()) or 1.0
            ax.imshow(att.picture, alpha=0.35)
            if att.signed[method]:
                img = ax.imshow(m, cmap="RdBu_r", vmin=-top, vmax=top, alpha=opacity)
            else:
                img = ax.imshow(m, cmap="magma", vmin=0, vmax=top, alpha=opacity)
            label = LABELS[method]
            if method == "integrated_gradients" and att.convergence_delta is not None:
                label += f"\nconvergence error {att.convergence_delta:.2g}"
            ax.set_title(label)
            fig.colorbar(img, ax=ax, shrink=0.7, location="bottom", pad=0.02)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(title or f"attributions for class {att.target} ({att.target_name}), logit {att.logit:.3g}",
                     color="black" if att.pretrained else WARNING_COLOUR)
        _note(fig, att.note)
    return fig


def route_contribution_figure(df, *, title: str | None = None) -> Figure:
    """Change of the class logit when a route is removed: one group of bars per block, one bar per route
    in its colour (and grey for all routes at once). Below zero: the route was supporting the class."""
    need = {"block", "route", "route name", "change"}
    if not need <= set(getattr(df, "columns", [])):
        raise ValueError("route_contribution_figure takes the DataFrame returned by route_contributions(model, image)")
    blocks = list(dict.fromkeys(df["block"]))
    routes = list(dict.fromkeys(df["route"]))
    width = 0.8 / len(routes)
    with paper_style():
        fig = Figure(figsize=(max(3.5, 1.1 * len(blocks) + 1.5), 2.8), layout="constrained")
        ax = fig.subplots()
        for j, k in enumerate(routes):
            part = df[df["route"] == k].set_index("block").reindex(blocks)
            colour = "#999999" if k == "all" else route_colour(k)
            label = part["route name"].dropna().iloc[0]
            label = label if k == "all" else f"{k}: {label}"
            ax.bar(np.arange(len(blocks)) + (j - (len(routes) - 1) / 2) * width, part["change"], width,
                   color=colour, label=label, gid=f"route-{k}")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(np.arange(len(blocks)), blocks, rotation=20, ha="right")
        ax.set_ylabel("logit change with the route removed")
        ax.legend(frameon=False, fontsize=6, ncols=2)
        a = df.attrs
        what = f"class {a['target']} ({a['target_name']}), logit {a['full_logit']:.3g}" if "target" in a else ""
        pretrained = a.get("pretrained", True)
        ax.set_title(title or f"per-direction contribution to {what}",
                     color="black" if pretrained else WARNING_COLOUR)
        _note(fig, a.get("note"), 80)
    return fig


__all__ = ["attribution_figure", "prediction_figure", "route_contribution_figure"]
