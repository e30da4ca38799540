"""Figures (matplotlib, paper style) of the hidden attention of scan routes.

    atts = model_hidden_attention(model, "chelsea", mixer=0)
    fig = hidden_attention_figure(atts)            # per route: L x L in reading order and in image order
    fig = attention_row_figure(atts, (28, 28))     # per route: one query's attention over the image

Values are shown as (x / max) ** exponent (0.5 by default) so weak far-reaching attention stays visible;
signed ("mean") matrices use a diverging map with the same scaling of |x|.
"""
from __future__ import annotations

import warnings

import numpy as np
from matplotlib import patheffects
from matplotlib.figure import Figure

from ..routes import scan_label
from .hidden_attention import HiddenAttention
from .style import paper_style, route_colour

MAX_COLUMNS = 4
MAX_SIDE = 512  # matrices larger than this are shown as means over k x k cells (a panel is ~200 px wide)


def _scaled(x, exponent):
    """x scaled to [-1, 1] (or [0, 1]) as sign(x) |x / max|^exponent; NaN stays NaN."""
    top = np.nanmax(np.abs(x)) if np.isfinite(x).any() else 0.0
    if top <= 0:
        return np.where(np.isnan(x), np.nan, 0.0)
    return np.sign(x) * (np.abs(x) / top) ** exponent


def _shown(matrix, order=None) -> np.ndarray:
    """An L x L matrix as drawn, its rows and columns taken in `order` when given: itself up to MAX_SIDE,
    else the mean of each k x k cell (k = ceil(L / MAX_SIDE); NaN, for positions a route does not read,
    left out of the means), so a 3136-token route is not resampled from ~10 M values per panel. Cells are
    made k rows at a time, so no copy of the whole matrix is ever held."""
    m = np.asarray(matrix)
    k = -(-max(m.shape) // MAX_SIDE)
    if k == 1:
        return np.asarray(m if order is None else m[np.ix_(order, order)], dtype=np.float32)
    rows, cols = -(-m.shape[0] // k), -(-m.shape[1] // k)
    out = np.empty((rows, cols), np.float32)
    band = np.full((k, cols * k), np.nan, np.float32)  # k rows, padded with NaN to whole cells
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a cell of NaN only stays NaN
        for i in range(rows):
            r0, r1 = i * k, min((i + 1) * k, m.shape[0])
            band[:] = np.nan
            band[:r1 - r0, :m.shape[1]] = m[r0:r1] if order is None else m[order[r0:r1]][:, order]
            out[i] = np.nanmean(band.reshape(k, cols, k), axis=(0, 2))
    return out


def _as_list(atts):
    if isinstance(atts, HiddenAttention):
        return [atts]
    atts = list(atts)
    if not atts or not all(isinstance(a, HiddenAttention) for a in atts):
        raise ValueError("expected a HiddenAttention or a list of them (from hidden_attention or "
                         "model_hidden_attention)")
    return atts


def _cmap(reduce):
    return ("RdBu_r", -1.0) if reduce == "mean" else ("viridis", 0.0)


def _describe(a: HiddenAttention) -> str:
    scan = scan_label(a.scan, a.step)
    how = "mean |alpha|" if a.reduce == "abs" else "mean alpha (signed)"
    return f"{a.module}, {scan}, {a.grid[0]}×{a.grid[1]} map; {how} over {a.channels} channels"


def _route_title(ax, a: HiddenAttention, extra=""):
    ax.set_title(f"route {a.route}\n{a.route_name}{extra}", color=route_colour(a.route), fontsize=7)
    for side in ax.spines.values():
        side.set_visible(True)
        side.set_color(route_colour(a.route))
        side.set_linewidth(1.4)


def hidden_attention_figure(atts, *, exponent: float = 0.5, title: str | None = None) -> Figure:
    """Per route (one column each): the L x L attention in the route's reading order (top) and with
    queries and keys in image raster order (bottom). Rows are queries, columns keys; causal: zero above
    the diagonal in reading order."""
    atts = _as_list(atts)
    cmap, vmin = _cmap(atts[0].reduce)
    with paper_style():
        n = len(atts)
        fig = Figure(figsize=(2.0 * n + 0.8, 4.4), layout="constrained")
        axes = fig.subplots(2, n, squeeze=False)
        img = None
        for j, a in enumerate(atts):
            top, bottom = axes[0, j], axes[1, j]
            extent = (-0.5, a.length - 0.5, a.length - 0.5, -0.5)  # axes in tokens, however the matrix is shown
            img = top.imshow(_scaled(_shown(a.matrix), exponent), cmap=cmap, vmin=vmin, vmax=1,
                             interpolation="antialiased", extent=extent)
            _route_title(top, a)
            top.set_xlabel("key step s (reading order)")
            top.set_ylabel("query step t" if j == 0 else "")
            bottom.imshow(_scaled(_shown(a.matrix, a.raster_order()), exponent), cmap=cmap, vmin=vmin, vmax=1,
                          interpolation="antialiased", extent=extent)
            bottom.set_xlabel("key (image raster order)")
            bottom.set_ylabel("query (image raster order)" if j == 0 else "")
            for ax in (top, bottom):
                ax.set_xticks([0, a.length - 1])
                ax.set_yticks([0, a.length - 1])
        scale = f"sign(x)·|x / max|^{exponent:g}" if vmin < 0 else f"(x / max)^{exponent:g}"
        fig.colorbar(img, ax=axes.ravel().tolist(), shrink=0.6, label=f"attention, {scale}")
        fig.suptitle("\n".join(([title] if title else []) + [_describe(atts[0])]), fontsize=7)
    return fig


def attention_row_figure(atts, query, *, exponent: float = 0.5, picture=None, opacity: float = 0.75,
                         title: str | None = None) -> Figure:
    """Per route: the attention of one query position (row, col) over the map, drawn over the input
    picture when there is one (the HiddenAttention's, or `picture`: (H, W, 3) in [0, 1]). Positions the
    route does not read are left clear; the query is ringed in the route's colour (for ES2D, the position
    of the route's sub-map nearest the requested one, the requested one crossed)."""
    atts = _as_list(atts)
    try:
        row, col = (int(v) for v in query)
    except (TypeError, ValueError):
        raise ValueError(f"query must be (row, col), got {query!r}") from None
    cmap, vmin = _cmap(atts[0].reduce)
    n = len(atts)
    cols = min(n, MAX_COLUMNS)
    rows = -(-n // cols)
    with paper_style():
        fig = Figure(figsize=(2.1 * cols + 0.8, 2.3 * rows + 0.5), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
        img = None
        for ax, a in zip(axes.ravel(), atts):
            amap, used = a.row_map(row, col)
            h, w = a.grid
            under = a.picture if picture is None else np.asarray(picture)
            if under is not None:
                ax.imshow(under, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="bilinear")
            else:
                ax.imshow(np.ones((h, w, 3)) * 0.85, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
            img = ax.imshow(np.ma.masked_invalid(_scaled(amap, exponent)), cmap=cmap, vmin=vmin, vmax=1,
                            alpha=opacity if under is not None else 1.0, interpolation="nearest",
                            extent=(-0.5, w - 0.5, h - 0.5, -0.5))
            colour = route_colour(a.route)
            ax.plot([used[1]], [used[0]], marker="o", ms=8, mfc="none", mec=colour, mew=1.6, gid="query",
                    path_effects=[patheffects.withStroke(linewidth=3, foreground="white")])
            moved = used != (row, col)
            if moved:
                ax.plot([col], [row], marker="x", ms=5, color="white", mew=1.2, gid="requested")
            _route_title(ax, a)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"query {used}" + (f" (asked {(row, col)})" if moved else ""), fontsize=6)
        for ax in axes.ravel()[n:]:
            ax.set_visible(False)
        fig.colorbar(img, ax=axes.ravel().tolist(), shrink=0.6, label=f"attention, (x / max)^{exponent:g}")
        fig.suptitle("\n".join(([title] if title else []) + [f"attention of one query: {_describe(atts[0])}"]),
                     fontsize=7)
    return fig


__all__ = ["attention_row_figure", "hidden_attention_figure"]
