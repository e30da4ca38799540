"""Figures (matplotlib, paper style) of effective receptive fields per scan direction.

    r = effective_receptive_fields(model, "stage", stage=0)
    fig = erf_figure(r)                                    # all routes, then each route alone
    fig = erf_figure({"ES2D": r_es2d, "SS2D": r_ss2d})     # one row per result
    fig = area_ratio_figure(r)                             # area ratio against threshold, per route

Each panel shows the normalised map, the output position the ERF was taken at (a ring; for an ES2D route
the position on its sub-map nearest the requested one, with the requested one as a small cross), the
square holding 99% of the contribution, and the high-contribution area ratios, in RepLKNet's convention
unless another is asked for (see erf_maps; "none" where RepLKNet's has no value).
"""
from __future__ import annotations

import numpy as np
from matplotlib import patheffects
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..routes import scan_label
from .erf import ERF, THRESHOLDS, RouteERFs
from .erf_maps import check_convention
from .style import paper_style, route_colour

ALL_COLOUR = "#333333"
MAX_COLUMNS = 5


def _colour(e: ERF) -> str:
    return ALL_COLOUR if e.route is None else route_colour(e.route)


CONVENTION_NAMES = {"replknet": "RepLKNet", "cell-centred": "cell-centred"}


def _ratios_text(e: ERF, thresholds, convention) -> str:
    """'area ratio, RepLKNet:\n0.2/0.3/0.5/0.99: 14/14/14/39%' (compact: panels sit side by side)."""
    ratios = e.area_ratios(thresholds, convention)
    values = "/".join("none" if np.isnan(r) else f"{100 * r:.2g}" for r in ratios.values())
    return f"area ratio, {CONVENTION_NAMES[convention]}:\n{'/'.join(f'{t:g}' for t in ratios)}: {values}%"


def _outline():
    return [patheffects.withStroke(linewidth=2.2, foreground="white")]


def _panel(ax, e: ERF, result: RouteERFs, normalisation, exponent, thresholds, square, cmap, convention):
    img = ax.imshow(e.normalised(normalisation, exponent), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    colour = _colour(e)
    ax.set_title(("all routes\n" if e.route is None else f"route {e.route}\n{e.route_name}"), color=colour,
                 fontsize=7)
    for side in ax.spines.values():
        side.set_visible(True)
        side.set_color(colour)
        side.set_linewidth(1.6 if e.route is not None else 0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    box = e.square(square, convention) if square is not None else None
    if box is not None:
        r0, c0, r1, c1 = box
        ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, lw=0.8, ls="--",
                               ec="white", gid="square"))
    cy, cx = e.centre
    ax.plot([cx], [cy], marker="o", ms=7, mfc="none", mec=colour, mew=1.4, path_effects=_outline(),
            gid="position")
    moved = tuple(e.position) != tuple(result.requested)
    where = f"at {tuple(e.position)}"
    if moved:
        rcy, rcx = _centre_of(result, result.requested)
        ax.plot([rcx], [rcy], marker="x", ms=4, color="white", mew=1.0, gid="requested")
        where += f" (asked {tuple(result.requested)})"
    ax.set_xlabel(where + "\n" + _ratios_text(e, thresholds, convention), fontsize=6, linespacing=1.3)
    return img


def _centre_of(result: RouteERFs, pos):
    """The centre of output `pos` in input coordinates (the same mapping the result's ERFs used)."""
    h, w = result.input_shape
    gh, gw = result.output_grid
    sy, sx = h / gh, w / gw
    return (pos[0] + 0.5) * sy - 0.5, (pos[1] + 0.5) * sx - 0.5


def _label(result: RouteERFs) -> str:
    scan = "" if result.scan is None else f", {scan_label(result.scan, result.step)}"
    what = {"mixer": "mixer ", "block": "EVSS block ", "stage": ""}[result.level]
    return (f"{what}{result.module}{scan}: {result.input_shape[0]}×{result.input_shape[1]} input, "
            f"{result.output_grid[0]}×{result.output_grid[1]} output; {result.inputs}")


def _named(results, what: str) -> dict:
    """label -> RouteERFs from one result (label None), a list ("(1)", "(2)", ...) or a dict."""
    if isinstance(results, RouteERFs):
        results = {None: results}
    elif isinstance(results, (list, tuple)):
        results = {None if len(results) == 1 else f"({i + 1})": r for i, r in enumerate(results)}
    if not isinstance(results, dict) or not results or not all(isinstance(r, RouteERFs) for r in results.values()):
        raise ValueError(f"{what} takes a RouteERFs from effective_receptive_fields (or a dict or list of them)")
    return results


def erf_figure(results, *, normalisation: str = "power", exponent: float = 0.2, thresholds=THRESHOLDS,
               square: float | None = 0.99, cmap: str = "magma", title: str | None = None,
               convention: str = "replknet") -> Figure:
    """One row per result (a RouteERFs, or a dict label -> RouteERFs, or a list): the ERF of all routes
    together, then of each route alone, each in its route's colour; maps normalised by `normalisation`
    (power with `exponent`, log or linear); the dashed square holds `square` of the contribution; area
    ratios in `convention` (replknet or cell-centred)."""
    results = _named(results, "erf_figure")
    check_convention(convention)
    rows = []  # (label, result, erfs of one figure row)
    for label, r in results.items():
        erfs = r.all()
        for i in range(0, len(erfs), MAX_COLUMNS):
            rows.append((label if i == 0 else None, r, erfs[i:i + MAX_COLUMNS]))
    cols = max(len(e) for _, _, e in rows)
    with paper_style():
        fig = Figure(figsize=(1.75 * cols + 0.6, 2.25 * len(rows) + 0.5), layout="constrained")
        axes = np.atleast_2d(fig.subplots(len(rows), cols, squeeze=False))
        img = None
        for (label, result, erfs), row_axes in zip(rows, axes):
            for ax, e in zip(row_axes, erfs):
                img = _panel(ax, e, result, normalisation, exponent, thresholds, square, cmap, convention)
            for ax in row_axes[len(erfs):]:
                ax.set_visible(False)
            if label is not None:
                row_axes[0].set_ylabel(str(label), fontsize=8)
        scale = {"power": f"(x / max)^{exponent:g}", "log": "log10(1 + x) / log10(1 + max)",
                 "linear": "x / max"}[normalisation]
        fig.colorbar(img, ax=axes.ravel().tolist(), shrink=0.6, label=f"contribution, {scale}")
        lines = [title] if title else []
        lines += [(f"{label}: " if label is not None and len(results) > 1 else "") + _label(r)
                  for label, r in results.items()]
        notes = sorted({n for r in results.values() for n in r.notes})
        lines += [f"note: {n}" for n in notes]
        fig.suptitle("\n".join(lines), fontsize=7)
    return fig


def area_ratio_figure(results, *, thresholds=THRESHOLDS, title: str | None = None,
                      convention: str = "replknet") -> Figure:
    """High-contribution area ratio against the threshold, one line per route (all routes: dark, thick),
    one panel per result (a RouteERFs, or a dict label -> RouteERFs, or a list); ratios in `convention`
    (thresholds where RepLKNet's convention has no value are left out of the line)."""
    results = _named(results, "area_ratio_figure")
    check_convention(convention)
    with paper_style():
        fig = Figure(figsize=(2.6 * len(results) + 0.4, 2.4), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(results), squeeze=False)[0])
        for ax, (label, r) in zip(axes, results.items()):
            for e in r.all():
                ratios = {t: v for t, v in e.area_ratios(thresholds, convention).items() if not np.isnan(v)}
                ax.plot(list(ratios), [100 * v for v in ratios.values()], marker="o", ms=3, color=_colour(e),
                        lw=1.8 if e.route is None else 1.0,
                        label="all routes" if e.route is None else f"{e.route}: {e.route_name}")
            ax.set_yscale("log")
            ax.set_xlabel("threshold (share of the total contribution)")
            ax.set_ylabel(f"area ratio, {CONVENTION_NAMES[convention]} (% of the map)")
            ax.set_title(_label(r) if label is None else f"{label} {_label(r)}", fontsize=7, wrap=True)
            ax.legend(frameon=False, fontsize=6)
        if title:
            fig.suptitle(title, fontsize=8)
    return fig


__all__ = ["area_ratio_figure", "erf_figure"]
