"""Static (matplotlib, paper style) pictures of how a scan partitions and reads an image's patches.

    fig = partition_figure(model, "astronaut", stage=0)          # stage 0's ES2D at 56x56, 224x224 input
    fig = route_paths_figure(evmamba.scan_routes("es2d", 8, 8))  # each route on its regrouped sub-image
    fig = scan_comparison_figure("astronaut", height=8, width=8) # ES2D's routes above SS2D's, same style

Every picture is drawn from a `Partition` (evmamba.analysis.partition), that is from the model's own
`ScanRoutes`. Coordinates in every panel are patch units: the patch at (row r, column c) of the panel's
grid has its centre at x = c, y = r, so the drawn paths can be read back and compared with the routes.
Artists carry ids: "path-k" (route k's path, NaN where it jumps to a new row or column), "jump-k" (those
jumps, dashed), "padding" (hatched padded positions), "routes" (the colour overlay).
"""
from __future__ import annotations

import numpy as np
from matplotlib import patheffects
from matplotlib.collections import LineCollection, PatchCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from ..checks import integer
from ..model import EfficientVMamba
from .partition import Partition, partition
from .style import paper_style, route_colour

PAD_FACE = "#d9d9d9"
PAD_HATCH = "////"
MAX_NUMBERED = 100  # number every token of a path only up to this many tokens in a panel
MAX_ARROWS = 12  # arrowheads per path when the path is long


def _stage_note(source, stage, image_size) -> str:
    if not isinstance(source, EfficientVMamba):
        return ""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    return f"stage {stage or 0} of the model, {h}×{w} input"


# ---- drawing pieces -----------------------------------------------------------------------------------
def _frame(ax, rows: int, cols: int):
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)


def _show(ax, picture: np.ndarray, rows: int, cols: int, fade: float = 0.0):
    if fade:
        picture = (picture * (1 - fade) + 255 * fade).astype(np.uint8)
    ax.imshow(picture, extent=(-0.5, cols - 0.5, rows - 0.5, -0.5), interpolation="antialiased", zorder=0)


def _grid_lines(ax, rows: int, cols: int, colour="white", lw=None):
    lw = lw if lw is not None else (0.6 if max(rows, cols) <= 16 else 0.25)
    ax.vlines(np.arange(cols + 1) - 0.5, -0.5, rows - 0.5, colors=colour, linewidths=lw, zorder=2)
    ax.hlines(np.arange(rows + 1) - 0.5, -0.5, cols - 0.5, colors=colour, linewidths=lw, zorder=2)


def _padding(ax, mask: np.ndarray):
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return
    boxes = [Rectangle((c - 0.5, r - 0.5), 1, 1) for r, c in zip(rows, cols)]
    coll = PatchCollection(boxes, facecolor=PAD_FACE, edgecolor="#7f7f7f", hatch=PAD_HATCH, linewidth=0.3,
                           zorder=3)
    coll.set_gid("padding")
    ax.add_collection(coll)


def _overlay(part: Partition, alpha: float, only: int | None = None) -> np.ndarray:
    """RGBA (Hp·q, Wp·q, 4): each position tinted by the colour of the route reading it; when m routes
    read it (SS2D), the patch is split into a q×q block of tiles (q = ⌈√m⌉), tile s of route readers[s].
    With `only`, the positions route `only` reads are tinted by its colour alone, the others stay clear."""
    if only is not None:
        rgba = np.zeros(part.padded_grid + (4,))
        rgba[:] = to_rgba(route_colour(only), alpha)
        rgba[..., 3] *= part.order[only] >= 0
        return rgba
    readers = part.readers  # (Hp, Wp, m)
    hp, wp, m = readers.shape
    q = int(np.ceil(np.sqrt(m)))
    palette = np.array([to_rgba(route_colour(k)) for k in range(part.num_routes)])
    rgba = np.zeros((hp, q, wp, q, 4))
    for s in range(m):
        rgba[:, s // q, :, s % q] = palette[readers[:, :, s]]
        rgba[:, s // q, :, s % q, 3] = alpha
    return rgba.reshape(hp * q, wp * q, 4)


def _route_overlay(ax, part: Partition, alpha=0.55, only=None):
    hp, wp = part.padded_grid
    im = ax.imshow(_overlay(part, alpha, only), extent=(-0.5, wp - 0.5, hp - 0.5, -0.5),
                   interpolation="nearest", zorder=1)
    im.set_gid("routes")


def _draw_path(ax, pos: np.ndarray, k: int, unit: int, *, steps: np.ndarray | None = None, length: int | None = None,
               numbers: bool, offset=(0.0, 0.0), lw=1.2, arrows: int | None = None, dense: bool = False):
    """Route k's path through `pos` ((n, 2) rows, columns, in reading order; `steps` their reading steps
    when only part of the route is shown, of `length` in all): solid between neighbours in the route's
    own sub-grid (`unit` apart), dashed where it jumps to its next row or column, broken where the shown
    part skips steps (the route leaves the panel). `dense` (big grids): thin, no halo, no jump lines, so
    the picture shows the direction of the rows or columns read."""
    colour = route_colour(k)
    steps = np.arange(len(pos)) if steps is None else np.asarray(steps)
    length = len(pos) if length is None else length
    y = pos[:, 0].astype(float) + offset[1]
    x = pos[:, 1].astype(float) + offset[0]
    consecutive = np.diff(steps) == 1
    near = consecutive & (np.abs(np.diff(pos, axis=0)).sum(1) == unit)
    jump = consecutive & ~near
    # the path with NaN wherever it is not a solid step: solid runs only
    xs, ys = [x[0]], [y[0]]
    for t in range(1, len(x)):
        if not near[t - 1]:
            xs.append(np.nan)
            ys.append(np.nan)
        xs.append(x[t])
        ys.append(y[t])
    halo = [] if dense else [patheffects.withStroke(linewidth=lw + 1.2, foreground="white", alpha=0.7)]
    line = Line2D(xs, ys, color=colour, lw=lw, solid_capstyle="round", zorder=5, path_effects=halo,
                  alpha=0.85 if dense else 1.0)
    line.set_gid(f"path-{k}")
    ax.add_line(line)
    jumps = [((x[t], y[t]), (x[t + 1], y[t + 1])) for t in np.nonzero(jump)[0]]
    if jumps and not dense:
        coll = LineCollection(jumps, colors=colour, linewidths=max(0.5, lw * 0.6), linestyles=(0, (2, 2)),
                              alpha=0.7, zorder=4)
        coll.set_gid(f"jump-{k}")
        ax.add_collection(coll)
    # arrowheads on solid steps (every one on short paths, a few evenly spaced on long ones)
    solid = np.nonzero(near)[0]
    if len(solid):
        count = len(solid) if arrows is None else min(len(solid), arrows)
        for t in solid[np.unique(np.linspace(0, len(solid) - 1, count).round().astype(int))]:
            mx, my = (x[t] + x[t + 1]) / 2, (y[t] + y[t + 1]) / 2
            dx, dy = (x[t + 1] - x[t]) * 0.05, (y[t + 1] - y[t]) * 0.05
            ax.annotate("", xy=(mx + dx, my + dy), xytext=(mx - dx, my - dy), zorder=6,
                        arrowprops=dict(arrowstyle="-|>", color=colour, lw=0, mutation_scale=8 + lw * 3))
    size = 3.5 + lw * 1.5
    if steps[0] == 0:
        ax.plot(x[0], y[0], "o", ms=size, mfc=colour, mec="white", mew=0.7, zorder=7)
    if steps[-1] == length - 1:
        ax.plot(x[-1], y[-1], "s", ms=size, mfc=colour, mec="white", mew=0.7, zorder=7)
    if numbers:
        stroke = [patheffects.withStroke(linewidth=1.6, foreground="white")]
        for t, cx, cy in zip(steps, x, y):
            ax.text(cx + 0.24, cy - 0.24, str(t), color=colour, fontsize=4.5, ha="center", va="center",
                    zorder=8, path_effects=stroke)


def _route_handles(part: Partition, padding: bool):
    handles = [Patch(facecolor=route_colour(k), alpha=0.8, label=f"route {k}: {n}")
               for k, n in enumerate(part.names)]
    if padding:
        handles.append(Patch(facecolor=PAD_FACE, edgecolor="#7f7f7f", hatch=PAD_HATCH,
                             label="padding (zeros: read, then cropped)"))
    return handles


def _marker_handles():
    return [Line2D([], [], marker="o", ls="", color="#555555", mec="white", label="first token"),
            Line2D([], [], marker="s", ls="", color="#555555", mec="white", label="last token"),
            Line2D([], [], ls=(0, (2, 2)), color="#555555", label="jump to next row/column")]


def _auto_numbers(numbers, tokens: int, rows: int, cols: int) -> bool:
    if numbers is None:
        return tokens <= MAX_NUMBERED and max(rows, cols) <= 16
    return bool(numbers)


# ---- figures ------------------------------------------------------------------------------------------
def partition_figure(source, image=None, *, stage=None, image_size=224, window: int | None = None,
                     numbers: bool | None = None) -> Figure:
    """Three panels: the image cut into the routes' patch grid; each patch coloured by the route that
    reads it (SS2D: by all four, in stripes), padding hatched; the reading order of every route, drawn
    as paths with arrows (numbered on small grids) over the top-left window×window patches (default:
    the whole grid up to 12×12, else the top-left 8×8).

    source: scan routes, a Partition, or a model (with stage and image_size); image: see `partition`."""
    part = partition(source, image, stage=stage, image_size=image_size)
    hp, wp = part.padded_grid
    pad = bool(part.padding.any())
    with paper_style():
        fig = Figure(figsize=(7.2, 3.3), layout="constrained")
        axes = fig.subplots(1, 3)
        # (a) the image cut into patches
        ax = axes[0]
        _show(ax, part.image, hp, wp)
        _grid_lines(ax, hp, wp)
        _padding(ax, part.padding)
        _frame(ax, hp, wp)
        ax.set_title(f"{'image' if part.has_image else 'grid'} cut into {part.grid[0]}×{part.grid[1]} patches")
        # (b) coloured by route
        ax = axes[1]
        _show(ax, part.image, hp, wp, fade=0.35)
        _route_overlay(ax, part)
        if max(hp, wp) <= 16:  # on big grids the colours alone mark the patches
            _grid_lines(ax, hp, wp)
        _padding(ax, part.padding)
        _frame(ax, hp, wp)
        ax.set_title("each patch coloured by the route reading it" if part.route_map is not None else
                     f"every patch is read by all {part.num_routes} routes")
        # (c) reading order in a window
        ax = axes[2]
        if window is None:
            window = max(hp, wp) if max(hp, wp) <= 12 else 8
        window = integer(window, "window", low=1, what="a positive number of patches")
        rows, cols = min(window, hp), min(window, wp)
        _show(ax, part.image, hp, wp, fade=0.6)
        _route_overlay(ax, part, alpha=0.25)
        _grid_lines(ax, hp, wp, colour="#bbbbbb", lw=0.4)
        _padding(ax, part.padding)
        unit = part.routes.submap_step
        show_numbers = _auto_numbers(numbers, rows * cols, rows, cols)
        for k, off in enumerate(part.path_offsets()):
            pos = part.positions(k)
            keep = np.nonzero((pos[:, 0] < rows) & (pos[:, 1] < cols))[0]
            if len(keep):
                _draw_path(ax, pos[keep], k, unit, steps=keep, length=len(pos), offset=off, lw=1.0,
                           numbers=show_numbers and part.route_map is not None)
        _frame(ax, rows, cols)
        whole = (rows, cols) == (hp, wp)
        ax.set_title("reading order" + ("" if whole else f" (top-left {rows}×{cols} patches)"))
        fig.legend(handles=_route_handles(part, pad) + _marker_handles(), loc="outside lower center",
                   ncol=4 if part.num_routes <= 4 else 3, frameon=False,
                   fontsize=7 if part.num_routes <= 4 else 6)
        note = _stage_note(source, stage, image_size)
        fig.suptitle(part.title() + (f": {note}" if note else ""), fontsize=9)
    return fig


def _panel_grid(part: Partition):
    """(rows, cols, slot of route k): ES2D's p² sub-maps at their phase (row phase i, column phase j);
    otherwise one row."""
    if part.routes.submap_step > 1:
        p = part.routes.submap_step
        return p, p, [tuple(r.submap) for r in part.routes.routes]
    return 1, part.num_routes, [(0, k) for k in range(part.num_routes)]


def _draw_route_on_grid(ax, part: Partition, k: int, numbers, fade=0.45):
    """Route k on the full padded grid: its patches tinted, others faded, its path over them."""
    hp, wp = part.padded_grid
    _show(ax, part.image, hp, wp, fade=fade)
    _route_overlay(ax, part, alpha=0.45, only=k)
    _grid_lines(ax, hp, wp, colour="#cccccc", lw=0.3 if max(hp, wp) > 16 else 0.5)
    _padding(ax, part.padding)
    pos = part.positions(k)
    unit = part.routes.submap_step
    dense = max(hp, wp) > 16
    _draw_path(ax, pos, k, unit, numbers=_auto_numbers(numbers, len(pos), hp, wp), lw=0.5 if dense else 1.0,
               arrows=None if len(pos) <= 40 else MAX_ARROWS, dense=dense)
    _frame(ax, hp, wp)


def _draw_route_sub_image(ax, part: Partition, k: int, numbers):
    rows, cols = part.sub_grid(k)
    _show(ax, part.sub_image(k), rows, cols)
    tint = np.zeros((rows, cols, 4))
    tint[...] = to_rgba(route_colour(k), 0.12)
    ax.imshow(tint, extent=(-0.5, cols - 0.5, rows - 0.5, -0.5), interpolation="nearest", zorder=1)
    _grid_lines(ax, rows, cols, lw=0.5 if max(rows, cols) <= 16 else 0.2)
    _padding(ax, part.sub_padding(k))
    pos = part.sub_positions(k)
    dense = max(rows, cols) > 16
    _draw_path(ax, pos, k, 1, numbers=_auto_numbers(numbers, len(pos), rows, cols), lw=0.5 if dense else 1.2,
               arrows=None if len(pos) <= 40 else MAX_ARROWS, dense=dense)
    _frame(ax, rows, cols)


def route_paths_figure(source, image=None, *, stage=None, image_size=224, layout: str = "sub-images",
                       numbers: bool | None = None) -> Figure:
    """One panel per route with its path and reading order.

    layout "sub-images": what each route actually scans: ES2D's sub-map (i, j) regrouped into its own
      ⌈H/p⌉×⌈W/p⌉ picture (panels placed at their phase, row i, column j); SS2D's routes each read the
      whole image. layout "grid": each route on the full grid, the patches it reads tinted.
    """
    if layout not in ("sub-images", "grid"):
        raise ValueError(f"layout must be 'sub-images' or 'grid', got {layout!r}")
    part = partition(source, image, stage=stage, image_size=image_size)
    nrows, ncols, slots = _panel_grid(part)
    pad = bool(part.padding.any())
    with paper_style():
        side = 7.2 / max(ncols, 3)
        fig = Figure(figsize=(side * ncols, side * nrows + 0.9), layout="constrained")
        axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
        for k, (i, j) in enumerate(slots):
            ax = axes[i, j]
            if layout == "sub-images":
                _draw_route_sub_image(ax, part, k, numbers)
                rows, cols = part.sub_grid(k)
                size = f"{rows}×{cols} sub-image" if part.routes.submap_step > 1 else "whole image"
            else:
                _draw_route_on_grid(ax, part, k, numbers)
                size = "full grid"
            ax.set_title(f"route {k}: {part.names[k]}\n{part.routes.length} tokens, {size}", color=route_colour(k),
                         fontsize=7)
        handles = _marker_handles() + ([_route_handles(part, True)[-1]] if pad else [])
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
        if layout == "grid":
            what = "each route on the grid"
        elif part.routes.submap_step > 1:
            what = "regrouped sub-images each route scans"
        else:
            what = "each route reads the whole image, in its own order"
        note = _stage_note(source, stage, image_size)
        fig.suptitle(f"{part.title()}" + (f" ({note})" if note else "") + f"\n{what}", fontsize=9)
    return fig


def scan_comparison_figure(image=None, *, height: int = 8, width: int = 8, step: int = 2,
                           numbers: bool | None = None, scan: str = "es2d") -> Figure:
    """A scan's routes (top rows; ES2D by default) and SS2D's four routes (bottom row) on the same
    height×width grid, each drawn the same way: the route's patches tinted on the full grid, its path and
    reading order over them. ES2D reads every patch once, split into step² short routes; SS2D reads every
    patch four times."""
    from ..routes import scan_routes
    es = partition(scan_routes(scan, height, width, step), image)
    ss = partition(scan_routes("ss2d", height, width), image)
    ncols = max(4, es.routes.submap_step)
    es_rows = -(-es.num_routes // ncols)
    with paper_style():
        side = min(1.8, 7.2 / ncols)
        fig = Figure(figsize=(side * ncols, side * (es_rows + 1) + 1.1), layout="constrained")
        axes = fig.subplots(es_rows + 1, ncols, squeeze=False)
        for ax in axes.flat:
            ax.set_axis_off()
        for part, first_row in ((es, 0), (ss, es_rows)):
            for k in range(part.num_routes):
                ax = axes[first_row + k // ncols, k % ncols]
                ax.set_axis_on()
                _draw_route_on_grid(ax, part, k, numbers)
                ax.set_title(f"{part.routes.scan.upper()} route {k}, {part.routes.length} tokens\n{part.names[k]}",
                             color=route_colour(k), fontsize=7)
        pad = bool(es.padding.any())
        handles = _marker_handles() + ([_route_handles(es, True)[-1]] if pad else [])
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
        fig.suptitle(f"{height}×{width} grid. ES2D (step {step}): {es.num_routes} routes × {es.routes.length} "
                     f"tokens = {es.routes.tokens_read} reads.  SS2D: 4 routes × {ss.routes.length} tokens = "
                     f"{ss.routes.tokens_read} reads.", fontsize=9)
    return fig


def drawn_paths(fig: Figure) -> dict[int, np.ndarray]:
    """The paths drawn in `fig` as {route: (L, 2) (row, column) in drawing order}, one entry per route
    from the first panel that draws it (coordinates in that panel's patch units, SS2D offsets removed)."""
    out = {}
    for ax in fig.axes:
        for line in ax.lines:
            gid = line.get_gid() or ""
            if gid.startswith("path-"):
                k = int(gid.split("-")[1])
                if k in out:
                    continue
                xy = np.column_stack([line.get_ydata(), line.get_xdata()]).astype(float)
                xy = xy[~np.isnan(xy).any(1)]
                out[k] = np.round(xy).astype(int)
    return out


__all__ = ["drawn_paths", "partition_figure", "route_paths_figure", "scan_comparison_figure"]
