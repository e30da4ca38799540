"""Interactive (plotly) pictures of how a scan partitions and reads an image's patches.

    fig = partition_plotly(model, "astronaut", stage=0)      # 56x56 ES2D: patches by route, paths, a slider
    fig = regrouped_plotly(evmamba.scan_routes("es2d", 8, 8), "astronaut")
    fig = scan_comparison_plotly("astronaut", height=8, width=8)

Drawn from a `Partition`, that is from the model's own `ScanRoutes`, in patch units (the patch at row r,
column c is centred at x = c, y = r). Kept light for a browser at 56×56 (3136 patches): the picture is one
JPEG, each route is one tinted heatmap and one path (never one trace per patch). The reading-order
animation reveals the paths in a few dozen frames: each path is drawn in as many pieces as there are
frames and a frame only switches pieces on or off, so the frames stay small at any grid size (about
0.5 MB for the whole 56×56 figure). Traces carry `meta`: {"route": k, "part": "path" (with "piece"),
"patches", "jumps" or "ends"}, {"part": "head"}, or {"part": "padding", "positions": [[row, col], ...]}.
"""
from __future__ import annotations

import base64
import io

import numpy as np
import plotly.graph_objects as go
from matplotlib.colors import to_hex
from plotly.subplots import make_subplots

from ..checks import integer
from .partition import Partition, partition
from .style import route_colour

PAD_COLOUR = "#9e9e9e"
MAX_PIECES = 200  # path traces over all routes in an animated figure, at most (K routes × frames)


def _colour(k: int) -> str:
    return to_hex(route_colour(k))


def _data_uri(picture: np.ndarray, photo: bool) -> str:
    from PIL import Image
    buf = io.BytesIO()
    if photo:
        Image.fromarray(picture).save(buf, format="JPEG", quality=85)
        kind = "jpeg"
    else:
        Image.fromarray(picture).save(buf, format="PNG", optimize=True)
        kind = "png"
    return f"data:image/{kind};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _picture(picture: np.ndarray, patch: int, photo: bool) -> go.Image:
    return go.Image(source=_data_uri(picture, photo), x0=-0.5 + 0.5 / patch, dx=1 / patch,
                    y0=-0.5 + 0.5 / patch, dy=1 / patch, hoverinfo="skip")


def _route_patches(part: Partition, k: int, opacity: float, name_prefix="", tiles: bool = True) -> go.Heatmap:
    """Route k's patches tinted with its colour (one heatmap; positions it does not read are empty).
    With `tiles`, where several routes read a patch (SS2D) each takes one tile of a q×q block, as in the
    static figure; without, route k tints its whole patches. The paths carry the hover text (every patch
    lies on a path)."""
    readers = part.readers
    if not tiles:
        readers = np.where((readers == k).any(-1), k, -1)[..., None]
    hp, wp, m = readers.shape
    q = int(np.ceil(np.sqrt(m)))
    z = np.zeros((hp, q, wp, q), dtype=np.uint8)  # 1 where route k reads; 0 is drawn transparent
    for s in range(m):
        z[:, s // q, :, s % q] = readers[:, :, s] == k
    sub = (np.arange(q) + 0.5) / q - 0.5
    colour = _colour(k)
    clear = "rgba(0,0,0,0)"
    return go.Heatmap(
        z=z.reshape(hp * q, wp * q), x=(np.arange(wp)[:, None] + sub[None, :]).reshape(-1),
        y=(np.arange(hp)[:, None] + sub[None, :]).reshape(-1),
        colorscale=[[0, clear], [0.5, clear], [0.5, colour], [1, colour]], zmin=0, zmax=1, showscale=False,
        opacity=opacity, name=f"{name_prefix}route {k}: {part.names[k]}", legendgroup=f"route {k}",
        showlegend=False, meta={"route": k, "part": "patches"}, hoverinfo="skip")


def _path_arrays(pos: np.ndarray, unit: int, offset=(0.0, 0.0)):
    """x, y (None after every jump to a new row/column) and per-point step numbers; and the jumps as
    separate x, y (None-separated segments)."""
    near = np.abs(np.diff(pos, axis=0)).sum(1) == unit
    x, y, steps, jx, jy = [], [], [], [], []
    for t in range(len(pos)):
        if t and not near[t - 1]:
            x.append(None)
            y.append(None)
            steps.append(None)
            jx += [float(pos[t - 1, 1] + offset[0]), float(pos[t, 1] + offset[0]), None]
            jy += [float(pos[t - 1, 0] + offset[1]), float(pos[t, 0] + offset[1]), None]
        x.append(round(float(pos[t, 1] + offset[0]), 3))
        y.append(round(float(pos[t, 0] + offset[1]), 3))
        steps.append(t)
    return x, y, steps, jx, jy


def _path_traces(part: Partition, k: int, pos: np.ndarray, unit: int, offset, *, legend: bool, big: bool,
                 cuts=None):
    """Route k's path as line traces (split at the token counts in `cuts`, one trace per piece, so an
    animation can reveal it piece by piece), its jumps to the next row/column (dotted) and its first and
    last tokens."""
    colour = _colour(k)
    x, y, steps, jx, jy = _path_arrays(pos, unit, offset)
    index = [i for i, t in enumerate(steps) if t is not None]  # array index of token t
    cuts = [len(pos)] if cuts is None else list(cuts)
    pieces, start = [], 0
    for c, end in enumerate(cuts):
        lo = index[start - 1] if start else 0  # repeat the last token shown so the pieces join up
        hi = index[end - 1] + 1
        custom = np.array([[t, pos[t, 0], pos[t, 1]] if t is not None else [-1, -1, -1] for t in steps[lo:hi]],
                          dtype=np.int16 if len(pos) < 2 ** 15 else np.int32)
        pieces.append(go.Scatter(
            x=x[lo:hi], y=y[lo:hi], mode="lines" if big else "lines+markers", name=f"route {k}: {part.names[k]}",
            legendgroup=f"route {k}", showlegend=legend and c == 0, line=dict(color=colour, width=1.2 if big else 2),
            marker=dict(symbol="arrow", angleref="previous", size=8, color=colour, line=dict(width=0)),
            customdata=custom, meta={"route": k, "part": "path", "piece": c},
            hovertemplate=f"route {k}: {part.names[k]}<br>step %{{customdata[0]}} of {len(pos)}"
                          "<br>row %{customdata[1]}, column %{customdata[2]}<extra></extra>"))
        start = end
    jumps = go.Scatter(x=jx, y=jy, mode="lines", line=dict(color=colour, width=1, dash="dot"), opacity=0.5,
                       legendgroup=f"route {k}", showlegend=False, hoverinfo="skip",
                       meta={"route": k, "part": "jumps"})
    ends = go.Scatter(x=[x[0], x[-1]], y=[y[0], y[-1]], mode="markers", legendgroup=f"route {k}", showlegend=False,
                      marker=dict(symbol=["circle", "square"], size=9, color=colour, line=dict(color="white", width=1)),
                      hovertext=[f"route {k}: first token", f"route {k}: last token"], hoverinfo="text",
                      meta={"route": k, "part": "ends"})
    return pieces, jumps, ends


def _padding_trace(part: Partition, mask: np.ndarray | None = None) -> go.Scatter | None:
    """Padded positions as hatched squares (one trace), labelled in the legend."""
    mask = part.padding if mask is None else mask
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return None
    x, y = [], []
    for r, c in zip(rows, cols):
        x += [c - 0.5, c + 0.5, c + 0.5, c - 0.5, c - 0.5, None]
        y += [r - 0.5, r - 0.5, r + 0.5, r + 0.5, r - 0.5, None]
    return go.Scatter(x=x, y=y, mode="lines", fill="toself", fillcolor="rgba(200,200,200,0.85)",
                      fillpattern=dict(shape="/", fgcolor=PAD_COLOUR, size=6, solidity=0.25),
                      line=dict(color=PAD_COLOUR, width=0.5), name="padding (zeros: read, then cropped)",
                      hoverinfo="name", meta={"part": "padding", "positions": [[int(r), int(c)] for r, c in
                                                                               zip(rows, cols)]})


def _axes(fig, rows: int, cols: int, row=None, col=None, ticks=True):
    bare = {} if ticks else dict(showticklabels=False, ticks="", showline=False)
    fig.update_xaxes(range=[-0.5, cols - 0.5], showgrid=False, zeroline=False, constrain="domain", row=row,
                     col=col, **bare)
    fig.update_yaxes(range=[rows - 0.5, -0.5], showgrid=False, zeroline=False, constrain="domain",
                     scaleanchor="x" if row is None else None, row=row, col=col, **bare)


def _unit(part: Partition) -> int:
    return part.routes.submap_step


def partition_plotly(source, image=None, *, stage=None, image_size=224, frames: int = 40) -> go.Figure:
    """The image cut into the routes' patch grid, each patch tinted by the route that reads it (SS2D: by
    all four, in tiles), every route's path in reading order (arrows, hover shows the step), padding
    hatched, and a slider / play button that reveals the paths in reading order in `frames` steps.
    Click a route in the legend to hide it.

    source: scan routes, a Partition, or a model (with stage and image_size); image: see `partition`."""
    frames = integer(frames, "frames", low=0, note=" (0: no animation)")
    part = partition(source, image, stage=stage, image_size=image_size)
    hp, wp = part.padded_grid
    k_routes = part.num_routes
    big = max(hp, wp) > 16
    fig = go.Figure()
    fig.add_trace(_picture(part.image, part.patch, part.has_image))
    for k in range(k_routes):
        fig.add_trace(_route_patches(part, k, opacity=0.35))
    pad = _padding_trace(part)
    if pad is not None:
        fig.add_trace(pad)
    offsets = part.path_offsets()
    cuts = _cuts(part, frames)
    pieces = {}
    for k in range(k_routes):
        paths, jumps, ends = _path_traces(part, k, part.positions(k), _unit(part), offsets[k], legend=True,
                                          big=big, cuts=cuts)
        fig.add_trace(jumps)
        pieces[k] = list(range(len(fig.data), len(fig.data) + len(paths)))
        fig.add_traces(paths)
        fig.add_trace(ends)
    if frames:
        _animate(fig, part, pieces, cuts, offsets)
    _axes(fig, hp, wp)
    side = 640
    fig.update_layout(
        title=dict(text=f"{part.title()}: patches coloured by route, paths in reading order", x=0.5),
        width=side + 260, height=side + (120 if frames else 60), template="simple_white",
        legend=dict(title="route (click to hide)", itemsizing="constant"), margin=dict(l=40, r=20, t=60, b=40),
        hoverlabel=dict(namelength=-1))
    return fig


def _cuts(part: Partition, frames: int) -> list[int]:
    """Token counts at which the animation's frames stop: about `frames` of them, fewer on short routes
    and with many routes (each route is drawn as one trace per frame, so K·frames stays under MAX_PIECES)."""
    length = part.routes.length
    if not frames:
        return [length]
    frames = max(1, min(frames, length, max(8, MAX_PIECES // part.num_routes)))
    return [int(t) for t in np.unique(np.linspace(1, length, frames).round().astype(int))]


def _animate(fig, part: Partition, pieces, cuts, offsets):
    """Frames revealing every route's first t tokens (all routes advance together: the scan runs them in
    parallel). Each route is already split into one trace per frame; a frame only switches pieces on or
    off and moves the marker at each route's current token, so frames stay tiny at any grid size."""
    head = len(fig.data)
    fig.add_trace(go.Scatter(x=[], y=[], mode="markers", showlegend=False, hoverinfo="skip",
                             marker=dict(size=12, color=[_colour(k) for k in range(part.num_routes)],
                                         line=dict(color="white", width=2)), meta={"part": "head"}))
    all_pieces = [i for k in pieces for i in pieces[k]]
    frames = []
    for f, t in enumerate(cuts):
        data = [{"visible": piece <= f} for k in pieces for piece in range(len(pieces[k]))]
        heads = [part.positions(k)[t - 1] for k in pieces]
        data.append(go.Scatter(x=[float(p[1] + offsets[k][0]) for k, p in zip(pieces, heads)],
                               y=[float(p[0] + offsets[k][1]) for k, p in zip(pieces, heads)]))
        frames.append(go.Frame(name=str(t), data=data, traces=all_pieces + [head]))
    fig.frames = frames
    play = dict(label="▶ play", method="animate",
                args=[None, dict(frame=dict(duration=120, redraw=True), transition=dict(duration=0),
                                 fromcurrent=True, mode="immediate")])
    pause = dict(label="❚❚ pause", method="animate",
                 args=[[None], dict(frame=dict(duration=0, redraw=True), mode="immediate")])
    fig.update_layout(
        updatemenus=[dict(type="buttons", direction="left", x=0.0, y=-0.06, xanchor="left", yanchor="top",
                          pad=dict(t=10), buttons=[play, pause], showactive=False)],
        sliders=[dict(active=len(cuts) - 1, x=0.22, len=0.78, y=-0.02, yanchor="top",
                      currentvalue=dict(prefix="tokens read per route: ", suffix=f" of {part.routes.length}",
                                        xanchor="right"),
                      steps=[dict(label=str(t), method="animate",
                                  args=[[str(t)], dict(mode="immediate", frame=dict(duration=0, redraw=True),
                                                       transition=dict(duration=0))]) for t in cuts])])


def regrouped_plotly(source, image=None, *, stage=None, image_size=224) -> go.Figure:
    """What each route actually scans, side by side: ES2D's sub-map (i, j) regrouped into its own
    ⌈H/p⌉×⌈W/p⌉ picture (panel row i, column j), with the route's path; SS2D's routes each over the whole
    image."""
    part = partition(source, image, stage=stage, image_size=image_size)
    if part.routes.submap_step > 1:
        n_rows = n_cols = part.routes.submap_step
        slots = [tuple(r.submap) for r in part.routes.routes]
    else:
        n_rows, n_cols = 1, part.num_routes
        slots = [(0, k) for k in range(part.num_routes)]
    titles = [""] * (n_rows * n_cols)
    for k, (i, j) in enumerate(slots):
        rows, cols = part.sub_grid(k)
        titles[i * n_cols + j] = f"route {k}: {rows}×{cols}, {part.routes.length} tokens<br>{part.names[k]}"
    fig = make_subplots(n_rows, n_cols, subplot_titles=titles, horizontal_spacing=0.03, vertical_spacing=0.08)
    fig.update_annotations(font_size=11)
    for k, (i, j) in enumerate(slots):
        rows, cols = part.sub_grid(k)
        fig.add_trace(_picture(part.sub_image(k), part.patch, part.has_image), row=i + 1, col=j + 1)
        pad = _padding_trace(part, part.sub_padding(k))
        if pad is not None:
            pad.showlegend = k == next(q for q in range(part.num_routes) if part.sub_padding(q).any())
            fig.add_trace(pad, row=i + 1, col=j + 1)
        paths, jumps, ends = _path_traces(part, k, part.sub_positions(k), 1, (0.0, 0.0), legend=True,
                                          big=max(rows, cols) > 16)
        for trace in [jumps] + paths + [ends]:
            fig.add_trace(trace, row=i + 1, col=j + 1)
        _axes(fig, rows, cols, row=i + 1, col=j + 1, ticks=False)
        fig.update_yaxes(scaleanchor=f"x{_axis_no(i, j, n_cols)}", row=i + 1, col=j + 1)
    side = min(300, 1000 // n_cols)
    fig.update_layout(title=dict(text=f"{part.title()}: the regrouped sub-images each route scans", x=0.5),
                      width=side * n_cols + 240, height=side * n_rows + 100, template="simple_white",
                      margin=dict(l=20, r=20, t=80, b=20), hoverlabel=dict(namelength=-1))
    return fig


def _axis_no(i: int, j: int, n_cols: int) -> str:
    n = i * n_cols + j + 1
    return "" if n == 1 else str(n)


def scan_comparison_plotly(image=None, *, height: int = 8, width: int = 8, step: int = 2,
                           scan: str = "es2d") -> go.Figure:
    """A scan's routes (top; ES2D by default) and SS2D's four routes (bottom row) on the same height×width
    grid, drawn the same way: each route's patches tinted on the full grid, its path in reading order."""
    from ..routes import scan_routes
    es_routes = scan_routes(scan, height, width, step)
    patch = max(4, round(256 / max(es_routes.padded_shape)))  # small pictures: many panels share the page
    es = partition(es_routes, image, patch=patch)
    ss = partition(scan_routes("ss2d", height, width), image, patch=patch)
    n_cols = max(4, es_routes.submap_step)
    es_rows = -(-es.num_routes // n_cols)
    n_rows = es_rows + 1
    slots = [(es, k, k // n_cols, k % n_cols) for k in range(es.num_routes)]
    slots += [(ss, k, es_rows, k) for k in range(ss.num_routes)]
    titles = [""] * (n_rows * n_cols)
    for part, k, i, j in slots:
        titles[i * n_cols + j] = (f"{part.routes.scan.upper()} route {k}, {part.routes.length} tokens"
                                  f"<br>{part.names[k]}")
    fig = make_subplots(n_rows, n_cols, subplot_titles=titles, horizontal_spacing=0.02, vertical_spacing=0.1)
    fig.update_annotations(font_size=11)
    hp, wp = es.padded_grid
    for part, k, i, j in slots:
        r, c = i + 1, j + 1
        php, pwp = part.padded_grid
        fig.add_trace(_picture(part.image, part.patch, part.has_image), row=r, col=c)
        fig.add_trace(_route_patches(part, k, opacity=0.4, name_prefix=f"{part.routes.scan.upper()} ", tiles=False),
                      row=r, col=c)
        pad = _padding_trace(part)
        if pad is not None:
            pad.showlegend = (part is es and k == 0)
            fig.add_trace(pad, row=r, col=c)
        (path,), jumps, ends = _path_traces(part, k, part.positions(k), _unit(part), (0.0, 0.0), legend=False,
                                            big=max(php, pwp) > 16)
        path.name = f"{part.routes.scan.upper()} {path.name}"
        for trace in (jumps, path, ends):
            trace.legendgroup = f"{part.routes.scan} {trace.legendgroup}"
            fig.add_trace(trace, row=r, col=c)
        _axes(fig, max(php, hp), max(pwp, wp), row=r, col=c, ticks=False)
        fig.update_yaxes(scaleanchor=f"x{_axis_no(i, j, n_cols)}", row=r, col=c)
    fig.update_layout(
        title=dict(text=f"{height}×{width} grid: ES2D (step {step}) reads each patch once in {es.num_routes} routes "
                        f"of {es.routes.length}; SS2D reads it four times, in 4 routes of {ss.routes.length}", x=0.5),
        width=230 * n_cols + 40, height=240 * n_rows + 100, template="simple_white",
        margin=dict(l=20, r=20, t=90, b=20), hoverlabel=dict(namelength=-1))
    return fig


def drawn_paths(fig: go.Figure, scan: str | None = None) -> dict[int, np.ndarray]:
    """The route paths in `fig` as {route: (L, 2) (row, column) in drawing order}: the path pieces of each
    route's first panel joined (the token repeated where pieces meet dropped), offsets rounded away.
    `scan` ("ES2D"/"SS2D") picks one scan's traces in a comparison figure."""
    points: dict[int, list] = {}
    done: set[int] = set()
    last: dict[int, int] = {}
    for trace in fig.data:
        meta = trace.meta if isinstance(trace.meta, dict) else {}
        if meta.get("part") != "path" or meta["route"] in done:
            continue
        if scan is not None and not (trace.name or "").startswith(scan.upper()):
            continue
        k = meta["route"]
        if meta.get("piece", 0) == 0 and k in points:  # a second panel drawing the same route
            done.add(k)
            continue
        for x, y, c in zip(trace.x, trace.y, trace.customdata):
            if x is None or (k in last and c[0] <= last[k]):
                continue
            points.setdefault(k, []).append((y, x))
            last[k] = c[0]
    return {k: np.round(np.array(v, dtype=float)).astype(int) for k, v in points.items()}


__all__ = ["drawn_paths", "partition_plotly", "regrouped_plotly", "scan_comparison_plotly"]
