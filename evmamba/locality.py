"""What a scan's routes keep together: per-family numbers to compare scan orders on one map.

    routes_table(56, 56)                         # one row per registered scan (its default parameter)
    locality(scan_routes("zigzag", 56, 56))      # the same numbers for one route set

    python -m evmamba routes --size 56 --distance 1 --tokens 1

Columns: K routes; tokens read (K·L); padding (share of the tokens read that are padded positions); the
mean and largest jump between consecutive tokens of a route (Euclidean, in patches, on the padded grid);
and `near`: of all pairs of map positions at most `distance` apart, the share that some route reads within
`tokens` tokens of each other (distance 1, tokens 1: the share of 4-neighbour pairs that a route reads
one after the other; SS2D reads every horizontal pair consecutively in its row-major route and every
vertical pair in its column-major route, so 1.0; ES2D's sub-maps never hold two neighbours, so 0.0).
"""
from __future__ import annotations

import math

import numpy as np

from .families import family, scans
from .routes import ScanRoutes, scan_routes


def _pairs(order: np.ndarray, height: int, width: int, distance: float, tokens: int) -> tuple[int, int]:
    """(pairs within `distance`, of those read within `tokens` of each other by some route)."""
    order = order[:, :height, :width]
    total = close = 0
    reach = int(math.floor(distance))
    for dy in range(0, reach + 1):
        for dx in range(-reach, reach + 1):
            if (dy == 0 and dx <= 0) or dy * dy + dx * dx > distance * distance:
                continue  # each unordered pair once
            if dy >= height or abs(dx) >= width:
                continue
            c0, c1 = max(0, -dx), min(width, width - dx)  # columns c with c and c + dx on the map
            a = order[:, : height - dy, c0:c1]
            b = order[:, dy:, c0 + dx: c1 + dx]
            both = (a >= 0) & (b >= 0) & (np.abs(a - b) <= tokens)
            total += a.shape[1] * a.shape[2]
            close += int(both.any(axis=0).sum())
    return total, close


def locality(routes: ScanRoutes, distance: float = 1.0, tokens: int = 1) -> dict:
    """The numbers of the module docstring for one route set."""
    hp, wp = routes.padded_shape
    pos = np.stack([routes.positions(k).numpy() for k in range(routes.num_routes)]).astype(float)  # (K, L, 2)
    jumps = np.sqrt(((pos[:, 1:] - pos[:, :-1]) ** 2).sum(-1)) if routes.length > 1 else np.zeros((1, 1))
    order = np.stack([routes.reading_order(k).numpy() for k in range(routes.num_routes)])
    total, close = _pairs(order, routes.height, routes.width, distance, tokens)
    padded = routes.tokens_read - routes.readers * routes.height * routes.width
    return {"routes": routes.num_routes, "tokens read": routes.tokens_read,
            "padding": padded / routes.tokens_read, "mean jump": float(jumps.mean()), "max jump": float(jumps.max()),
            f"near (d<={distance:g}, t<={tokens})": close / total if total else float("nan"),
            "padded grid": f"{hp}x{wp}"}


def routes_table(height: int = 56, width: int | None = None, *, distance: float = 1.0, tokens: int = 1,
                 params: dict | None = None) -> list[dict]:
    """One row per registered scan on a height×width map, with `params[scan]` as its parameter (default:
    ES2D's step 2 and LocalMamba's window of 7; a user family's parameter, 2 unless given)."""
    width = height if width is None else width
    chosen = {"es2d": 2, "windows": 7, **(params or {})}
    rows = []
    for name in scans():
        value = chosen.get(name, 2) if family(name).param else 2
        routes = scan_routes(name, height, width, value)
        label = name + (f" ({family(name).param} {value})" if family(name).param else "")
        rows.append({"scan": label, **locality(routes, distance, tokens)})
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as aligned text columns."""
    columns = list(rows[0])

    def text(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    widths = [max(len(c), *(len(text(r[c])) for r in rows)) for c in columns]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(text(r[c]).rjust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


__all__ = ["format_table", "locality", "routes_table"]
