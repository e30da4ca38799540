"""Scan-route families: the registry of scan orders, and the built-in ones.

A family is a callable `family(height, width, **params)` returning its routes over a height×width map,
in reading order: either a sequence of 1-D integer tensors of flat positions (row-major, on the map), or a
`FamilyRoutes` that also names the routes and pads the map. `register_scan(name, family)` adds one;
`evmamba.routes.scan_routes(name, h, w, ...)`, `build_model(..., scan=name)` and every analysis then use it.
A family takes at most one integer parameter (ES2D's step, the windows' side); the model's `step` field
carries it. The routes are checked when built (`evmamba.routes.ScanRoutes`): indices in range, no position
twice in a route, all routes of one length, every position read by the same number of routes.

Built-in families (K routes each; the papers whose orders they follow are named in each docstring):

    ss2d       4  VMamba's cross scan: row-major, column-major, and both reversed
    es2d(p)    p² EfficientVMamba's atrous skip-sampling: p² interleaved sub-maps, one route each
    zigzag     4  PlainMamba's continuous (serpentine) scan by rows and by columns, and both reversed
    windows(s) 4  LocalMamba's local scan in s×s windows, row- and column-first, and both reversed
    hilbert    4  Hilbert curves over power-of-two squares padding the map, mirrored, both reversed
    diagonal   4  diagonal and anti-diagonal orders, and both reversed
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Route:
    """One scan direction: a name for people; for pictures, the sub-map it reads ((row phase, column phase)
    of a `ScanRoutes.submap_step` split, None when it reads the whole map) and its line direction ("row",
    "col", or None when it is neither)."""

    name: str
    order: str | None = None
    reverse: bool = False
    submap: tuple[int, int] | None = None


@dataclass(frozen=True, eq=False)
class FamilyRoutes:
    """A family's routes with what pictures need: `index`, K 1-D tensors of flat positions on the padded
    grid in reading order; `padded`, that grid's (rows, columns) when the family pads the map at the bottom
    and right (None: the map itself); `routes`, one Route each (None: "route 0", "route 1", ...);
    `submap_step`, p when each route reads one sub-map of a p-strided split (ES2D), else 1."""

    index: Sequence[torch.Tensor]
    routes: Sequence[Route] | None = None
    padded: tuple[int, int] | None = None
    submap_step: int = 1


@dataclass(frozen=True)
class ScanFamily:
    """A registered family: its callable, the name of its one integer parameter (None: it takes none) and
    that parameter's valid range, and K as a function of the parameter (None: counted on a PROBE grid)."""

    name: str
    make: Callable
    param: str | None = None
    low: int = 1
    high: int | None = None
    routes: Callable[[int | None], int] | None = None
    doc: str = ""

    def num_routes(self, value: int | None) -> int:
        if self.routes is not None:
            return self.routes(value)
        return len(_as_routes(self.call(PROBE, PROBE, value)).index)

    def call(self, height: int, width: int, value: int | None):
        return self.make(height, width) if self.param is None else self.make(height, width, **{self.param: value})


PROBE = 16  # a user family's route count K is counted on a PROBE×PROBE map (the model is sized before it sees one)
_FAMILIES: dict[str, ScanFamily] = {}
ON_CHANGE: list[Callable[[str], None]] = []  # called with a name registered again or removed (routes' caches)


def _changed(name: str) -> None:
    for forget in ON_CHANGE:
        forget(name)


def register_scan(name: str, family: Callable, *, param: str | None = None, low: int = 1, high: int | None = None,
                  routes: Callable[[int | None], int] | None = None, replace: bool = False) -> ScanFamily:
    """Add a scan-route family under `name` (lower case), usable as `build_model(..., scan=name)`.

    family(height, width[, param=value]) returns its routes (see the module docstring). param: the name of
    its one integer parameter, given as the model's `step` (range low..high). routes: K from the parameter,
    when the family's route count is not the same on every map (it must be: the model holds K parameter
    sets); by default K is counted on a 16×16 map. replace=True overrides a family of that name."""
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise ValueError(f"a scan name must be a lower-case identifier such as 'spiral', got {name!r}")
    if name in _FAMILIES and not replace:
        raise ValueError(f"a scan family {name!r} is already registered; pass replace=True to override it")
    if not callable(family):
        raise ValueError(f"family must be a callable family(height, width, ...) returning routes, got {family!r}")
    if param is not None and param not in inspect.signature(family).parameters:
        raise ValueError(f"family {name!r} has no parameter {param!r} (its parameters: "
                         f"{', '.join(inspect.signature(family).parameters)})")
    doc = inspect.getdoc(family) or ""
    entry = ScanFamily(name, family, param, low, high, routes, doc.split("\n")[0])
    _FAMILIES[name] = entry
    _changed(name)
    return entry


def unregister_scan(name: str) -> None:
    """Remove a family added by register_scan (the built-ins stay)."""
    if name in BUILT_IN:
        raise ValueError(f"{name!r} is a built-in scan and cannot be removed")
    _FAMILIES.pop(name, None)
    _changed(name)


def scans() -> tuple[str, ...]:
    """The registered scan names, built-ins first."""
    return tuple(_FAMILIES)


def family(name: str) -> ScanFamily:
    """The registered family `name`, or a ValueError listing the registered ones."""
    entry = _FAMILIES.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ValueError(f"unknown scan {name!r}: registered scans are {', '.join(_FAMILIES)} "
                         "(add one with evmamba.register_scan)")
    return entry


def _as_routes(out) -> FamilyRoutes:
    if isinstance(out, FamilyRoutes):
        return out
    if isinstance(out, torch.Tensor) and out.dim() == 2:
        out = list(out)
    if not isinstance(out, (list, tuple)):
        raise ValueError(f"a scan family must return a sequence of 1-D index tensors or FamilyRoutes, got "
                         f"{type(out).__name__}")
    return FamilyRoutes([torch.as_tensor(i) for i in out])


# ---- the built-in families --------------------------------------------------------------------------
def _grid(height: int, width: int) -> torch.Tensor:
    return torch.arange(height * width).view(height, width)


def _with_reverses(index: list[torch.Tensor], routes: list[Route], **kw) -> FamilyRoutes:
    """index and routes followed by each route reversed."""
    rev = [Route(f"{r.name} reversed", r.order, True, r.submap) for r in routes]
    return FamilyRoutes(index + [i.flip(0) for i in index], routes + rev, **kw)


def ss2d(height: int, width: int) -> FamilyRoutes:
    """VMamba's cross scan (SS2D; Liu et al., arXiv 2401.10166): every position in four routes, row-major,
    column-major, then each reversed."""
    grid = _grid(height, width)
    return _with_reverses([grid.flatten(), grid.t().flatten()], [Route("row-major", "row"),
                                                                 Route("column-major", "col")])


def es2d(height: int, width: int, step: int = 2) -> FamilyRoutes:
    """EfficientVMamba's atrous skip-sampled scan (ES2D; Pei et al., arXiv 2403.09977): the map padded at
    the bottom/right to multiples of p, split into p² interleaved sub-maps; sub-map (i, j) holds positions
    (i + p·a, j + p·b). Sub-maps are numbered k = j·p + i and read row-major when k is even, column-major
    when odd, never reversed: for p = 2 exactly the authors' order (see evmamba.routes)."""
    p = step
    hp, wp = -(-height // p) * p, -(-width // p) * p
    grid = _grid(hp, wp)
    index, routes = [], []
    for k in range(p * p):
        i, j = k % p, k // p
        sub = grid[i::p, j::p]
        order = "row" if k % 2 == 0 else "col"
        index.append(sub.flatten() if order == "row" else sub.t().flatten())
        routes.append(Route(f"sub-map ({i},{j}) {'row' if order == 'row' else 'column'}-major", order, False, (i, j)))
    return FamilyRoutes(index, routes, padded=(hp, wp), submap_step=p)


def _snake(grid: torch.Tensor) -> torch.Tensor:
    g = grid.clone()
    g[1::2] = g[1::2].flip(1)
    return g.flatten()


def zigzag(height: int, width: int) -> FamilyRoutes:
    """PlainMamba's continuous 2-D scan (Yang et al., arXiv 2403.17695): serpentine orders in which
    consecutive tokens are always neighbours on the grid. Here the snake by rows (left to right, then right
    to left on the next row), the snake by columns (down, then up), both from the top-left corner, and
    each reversed: 4 routes. (The corners PlainMamba's own scans start from are not reproduced: these are
    the two snakes from the top-left corner and their reverses, which start where the snakes end.)"""
    grid = _grid(height, width)
    return _with_reverses([_snake(grid), _snake(grid.t())], [Route("row snake", "row"),
                                                             Route("column snake", "col")])


def windows(height: int, width: int, size: int = 7) -> FamilyRoutes:
    """LocalMamba's local scan (Huang et al., arXiv 2403.09338): the map padded at the bottom/right to
    multiples of `size` and cut into size×size windows; the row-first route reads the windows row by row and
    each window row-major (LocalMamba's local scan), the column-first route is its transpose (windows column
    by column, each column-major); then both reversed (LocalMamba's flipped scans). LocalMamba searches
    window sizes 2 and 7."""
    s = size
    hp, wp = -(-height // s) * s, -(-width // s) * s
    grid = _grid(hp, wp)
    blocks = grid.view(hp // s, s, wp // s, s)  # (window row, row in window, window column, column in window)
    row_first = blocks.permute(0, 2, 1, 3).flatten()
    col_first = blocks.permute(2, 0, 3, 1).flatten()
    return _with_reverses([row_first, col_first], [Route(f"{s}x{s} windows row-first", "row"),
                                                   Route(f"{s}x{s} windows column-first", "col")],
                          padded=(hp, wp))


def hilbert_curve(order: int) -> torch.Tensor:
    """(4**order, 2) (row, column) of the Hilbert curve over a 2**order square, from (0, 0) to (0, n-1)."""
    n = 1 << order
    d = torch.arange(n * n)
    x = torch.zeros_like(d)
    y = torch.zeros_like(d)
    t = d.clone()
    s = 1
    while s < n:  # the classic index-to-coordinates conversion, vectorised over all indices
        rx = (t // 2) & 1
        ry = (t ^ rx) & 1
        flip = (ry == 0) & (rx == 1)
        x = torch.where(flip, s - 1 - x, x)
        y = torch.where(flip, s - 1 - y, y)
        swap = ry == 0
        x, y = torch.where(swap, y, x), torch.where(swap, x, y)
        x = x + s * rx
        y = y + s * ry
        t = t // 4
        s *= 2
    return torch.stack([y, x], dim=1)


def hilbert(height: int, width: int) -> FamilyRoutes:
    """A Hilbert-curve scan (Hilbert's space-filling curve, as used for visual Mamba scans by e.g. ZigMa,
    Hu et al., arXiv 2403.13802): the map padded at the bottom/right to squares of side n (the smallest
    power of two >= its shorter side) laid along its longer side, each square read along the curve, which
    enters a square at one corner of the side it shares with the previous square's exit: route 0 starts at
    the top-left corner, route 1 is its mirror image (starting bottom-left on a wide map, top-right on a
    tall one; on a square map it plays the transposed curve's part and, unlike the transposed curve, chains
    across squares); then both reversed. Consecutive tokens are always neighbours on the padded grid."""
    if height > width:  # a tall map: the wide map's routes, transposed
        wide = hilbert(width, height)
        hp, wp = wide.padded
        index = [(i % wp) * hp + i // wp for i in wide.index]
        names = ["Hilbert curve", "Hilbert curve, mirrored"]
        return FamilyRoutes(index, [Route(n) for n in names] + [Route(f"{n} reversed", reverse=True) for n in names],
                            padded=(wp, hp))
    n = 1
    while n < height:
        n *= 2
    squares = -(-width // n)
    pos = hilbert_curve(n.bit_length() - 1)  # from (0, 0) to (0, n - 1): squares chain left to right
    rows = pos[:, 0].repeat(squares)
    cols = (pos[:, 1][None, :] + n * torch.arange(squares)[:, None]).flatten()
    wp = squares * n
    curve = rows * wp + cols
    mirrored = (n - 1 - rows) * wp + cols
    return _with_reverses([curve, mirrored], [Route("Hilbert curve"), Route("Hilbert curve, mirrored")],
                          padded=(n, wp))


def diagonal(height: int, width: int) -> FamilyRoutes:
    """Diagonal scans, as in RS-Mamba's omnidirectional scan (Zhao et al., arXiv 2404.02668): the diagonal
    route reads the lines parallel to the main diagonal (row − column constant), from the top-right corner's
    line to the bottom-left's, each from its top; the anti-diagonal route reads the lines row + column
    constant from the top-left corner, each from its top; then both reversed. (RS-Mamba's code builds its
    diagonal sequences its own way; this family reads the true diagonals of the map.)"""
    r, c = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    r, c = r.flatten(), c.flatten()
    main = torch.argsort((r - c) * (height + width) + r)
    anti = torch.argsort((r + c) * (height + width) + r)
    return _with_reverses([main, anti], [Route("diagonal"), Route("anti-diagonal")])


BUILT_IN = ("es2d", "ss2d", "zigzag", "windows", "hilbert", "diagonal")
for _name, _make, _param, _high, _k in (
        ("es2d", es2d, "step", None, lambda p: p * p), ("ss2d", ss2d, None, None, lambda _: 4),
        ("zigzag", zigzag, None, None, lambda _: 4), ("windows", windows, "size", None, lambda _: 4),
        ("hilbert", hilbert, None, None, lambda _: 4), ("diagonal", diagonal, None, None, lambda _: 4)):
    _FAMILIES[_name] = ScanFamily(_name, _make, _param, 1, _high, _k, inspect.getdoc(_make).split("\n")[0])

__all__ = ["BUILT_IN", "FamilyRoutes", "Route", "ScanFamily", "family", "hilbert_curve", "register_scan", "scans",
           "unregister_scan"]
