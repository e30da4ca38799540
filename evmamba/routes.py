"""Scan routes: the order in which a 2-D feature map's token positions are read by the selective scan.

A route is data. `scan_routes(scan, height, width, step)` returns a `ScanRoutes` whose `index` tensor
(K routes × L tokens) holds flat positions on a (possibly padded) grid, in reading order. The model's
cross-scan is one gather by that index (`cross_scan`) and its cross-merge one gather back by its inverse,
each position's readers summed (`cross_merge`); the partition pictures, per-route receptive fields and
FLOP counts read the same object, so a picture cannot disagree with what the model computes.

SS2D (VMamba's four-way scan): K = 4 routes, each over all H·W positions, no padding:
  0 row-major, 1 column-major, 2 = route 0 reversed, 3 = route 1 reversed.

ES2D (EfficientVMamba's atrous skip-sampled scan) with step p:
  the map is padded at the bottom/right with zeros to ⌈H/p⌉·p × ⌈W/p⌉·p, then split into p² interleaved
  sub-maps; sub-map (i, j) holds the positions (i + p·a, j + p·b), i.e. row phase i and column phase j.
  Sub-maps are numbered k = j·p + i (row phase fastest) and read row-major when k is even, column-major
  when k is odd; never reversed. For p = 2 this is exactly the authors' scan:
  0 (even row, even col) row-major, 1 (odd row, even col) column-major,
  2 (even row, odd col) row-major,  3 (odd row, odd col) column-major.
  For odd p the even/odd rule gives a checkerboard of directions over the p×p phases; for any p,
  ⌈p²/2⌉ sub-maps are read row-major and ⌊p²/2⌋ column-major. p = 1 is a single row-major route.
  Padded tokens are real tokens of the scan (zeros after the depthwise conv, as in the authors' code:
  they still decay the state); their outputs are cropped away by `scatter`.
"""
from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SCANS = ("es2d", "ss2d")


@dataclass(frozen=True)
class Route:
    """One scan direction: a name for people, and how it walks its positions."""

    name: str
    order: str  # "row" (row-major) or "col" (column-major)
    reverse: bool
    submap: tuple[int, int] | None  # (row phase, column phase) for ES2D; None when it covers all positions


class ScanRoutes:
    """The K routes of one scan over one grid. Build with `scan_routes(...)` (cached)."""

    def __init__(self, scan: str, height: int, width: int, step: int):
        self.scan, self.height, self.width, self.step = scan, height, width, step
        if scan == "ss2d":
            self.padded_height, self.padded_width = height, width
            grid = torch.arange(height * width).view(height, width)
            row, col = grid.flatten(), grid.t().flatten()
            self.routes = (
                Route("row-major", "row", False, None),
                Route("column-major", "col", False, None),
                Route("row-major reversed", "row", True, None),
                Route("column-major reversed", "col", True, None),
            )
            index = torch.stack([row, col, row.flip(0), col.flip(0)])
        else:
            p = step
            hs, ws = -(-height // p), -(-width // p)
            self.padded_height, self.padded_width = hs * p, ws * p
            grid = torch.arange(self.padded_height * self.padded_width).view(self.padded_height, self.padded_width)
            routes, index = [], []
            for k in range(p * p):
                i, j = k % p, k // p
                sub = grid[i::p, j::p]
                order = "row" if k % 2 == 0 else "col"
                name = f"sub-map ({i},{j}) {'row' if order == 'row' else 'column'}-major"
                routes.append(Route(name, order, False, (i, j)))
                index.append(sub.flatten() if order == "row" else sub.t().flatten())
            self.routes = tuple(routes)
            index = torch.stack(index)
        self.index = index  # (K, L) flat positions on the padded grid, in reading order

    # ---- what a route is ------------------------------------------------------------------------
    @property
    def num_routes(self) -> int:
        return self.index.shape[0]

    @property
    def length(self) -> int:
        """Tokens read per route (L)."""
        return self.index.shape[1]

    @property
    def padded_shape(self) -> tuple[int, int]:
        return self.padded_height, self.padded_width

    @property
    def tokens_read(self) -> int:
        """Total tokens the scan reads over all routes (K·L): 4·H·W for SS2D, about H·W for ES2D."""
        return self.index.numel()

    def _check_route(self, k: int) -> int:
        try:
            i = operator.index(k)
        except TypeError:
            i = -1
        if not 0 <= i < self.num_routes:
            raise ValueError(f"route must be an integer in 0..{self.num_routes - 1} ({self.scan} has "
                             f"{self.num_routes} routes), got {k!r}")
        return i

    def positions(self, k: int) -> torch.Tensor:
        """(L, 2) tensor of (row, column) on the padded grid, in the order route k reads them."""
        idx = self.index[self._check_route(k)]
        return torch.stack([idx // self.padded_width, idx % self.padded_width], dim=1)

    def reading_order(self, k: int) -> torch.Tensor:
        """(Hp, Wp) map: the step (0..L-1) at which route k reads each position, -1 where it does not."""
        out = torch.full((self.padded_height * self.padded_width,), -1, dtype=torch.long)
        out[self.index[self._check_route(k)]] = torch.arange(self.length)
        return out.view(self.padded_shape)

    def reads(self) -> torch.Tensor:
        """(Hp, Wp) map: how many routes read each position (1 everywhere for ES2D, 4 for SS2D)."""
        cells = self.padded_height * self.padded_width
        return torch.bincount(self.index.flatten(), minlength=cells).view(self.padded_shape)

    def route_map(self) -> torch.Tensor:
        """(Hp, Wp) map: the route that reads each position. Only defined when every position has one
        route (ES2D); SS2D's routes all read every position, so asking is an error."""
        if self.scan != "es2d":
            raise ValueError("route_map() needs a scan where each position has one route (es2d); "
                             "every ss2d route reads every position: use reading_order(k) instead")
        out = torch.empty(self.padded_height * self.padded_width, dtype=torch.long)
        out[self.index] = torch.arange(self.num_routes)[:, None].expand_as(self.index)
        return out.view(self.padded_shape)

    def padding_mask(self) -> torch.Tensor:
        """(Hp, Wp) bool map, True on positions added by padding (outside the H×W input)."""
        mask = torch.ones(self.padded_shape, dtype=torch.bool)
        mask[: self.height, : self.width] = False
        return mask

    def nearest_position(self, k: int, row: int, col: int) -> tuple[int, int]:
        """The position read by route k (inside the unpadded grid) nearest to (row, col)."""
        pos = self.positions(k)
        pos = pos[(pos[:, 0] < self.height) & (pos[:, 1] < self.width)]
        d = (pos[:, 0] - row) ** 2 + (pos[:, 1] - col) ** 2
        r, c = pos[int(torch.argmin(d))].tolist()
        return r, c

    def __repr__(self):
        return (f"ScanRoutes(scan={self.scan!r}, height={self.height}, width={self.width}, step={self.step}, "
                f"routes={self.num_routes}, length={self.length}, padded={self.padded_shape})")

    # ---- cross-scan and cross-merge -------------------------------------------------------------
    # Tokens travel route-major, (K, C, B, L): each route's channels over the whole batch are one matrix,
    # so the per-route projections are K large matrix products, and the (B, K·C, L) view the selective
    # scan takes is free (its token axis is contiguous; the kernel takes the other strides as they are).
    def merge_index(self) -> torch.Tensor:
        """(R, H·W): for each unpadded position (row-major) and each of the R routes reading it, the flat
        slot k·L + l it occupies in the routes' outputs; R = 1 for ES2D, 4 for SS2D."""
        hw = self.padded_height * self.padded_width
        k, length = self.index.shape
        slot = torch.full((k, hw), -1, dtype=torch.long)
        slot.scatter_(1, self.index, torch.arange(k * length).view(k, length))
        keep = ~self.padding_mask().flatten()
        slot = slot[:, keep]
        readers = (slot >= 0).sum(0)
        if not bool((readers == readers[0]).all()):
            raise AssertionError("every position must be read by the same number of routes")
        return slot.t()[slot.t() >= 0].view(-1, int(readers[0])).t()  # routes in order k = 0..K-1

    def cross_scan(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (K, C, B, L), contiguous: route k's tokens in its reading order."""
        return cross_scan(x, route_tables(self.scan, self.height, self.width, self.step, x.device))

    def cross_merge(self, y: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """(K, C, B, L) -> (B, H, W, C), contiguous: each route's outputs go back to the positions it read,
        routes reading the same position are summed, padding is cropped.

        keep: optional (K,) mask or weights; route k's outputs are multiplied by keep[k] (0 drops it)."""
        return cross_merge(y, route_tables(self.scan, self.height, self.width, self.step, y.device), keep)


@dataclass(frozen=True)
class RouteTables:
    """What the model's cross-scan and cross-merge need of one grid's routes on one device: sizes, and
    the flat index tensors (plain attributes, so torch.compile reads them as constants)."""

    num_routes: int
    length: int
    height: int
    width: int
    padded_height: int
    padded_width: int
    readers: int  # routes reading each position: 1 for ES2D, 4 for SS2D
    scan_index: torch.Tensor  # (K·L,) flat padded positions, route by route in reading order
    merge_index: torch.Tensor  # (R·H·W,) flat slots k·L + l, reader by reader, unpadded positions row-major


_TABLES: dict = {}
_MAX_TABLES = 512  # grids × devices kept; the oldest goes first (a server sees many image sizes)


def _build_tables(scan: str, height: int, width: int, step: int, device: str) -> RouteTables:
    r = scan_routes(scan, height, width, step)
    merge = r.merge_index()
    return RouteTables(r.num_routes, r.length, height, width, r.padded_height, r.padded_width, merge.shape[0],
                       r.index.flatten().to(device), merge.flatten().to(device))


def route_tables(scan: str, height: int, width: int, step: int, device) -> RouteTables:
    """The cached `RouteTables` of `scan` over a height×width map on `device`.

    Built once per grid and device, in eager mode: compiled code then finds them cached and reads their
    tensors as constants (one graph). A model compiled before any eager call still computes the same
    result, but the compiler breaks its graphs where it meets the tables' construction."""
    key = (scan, height, width, step, str(device))
    tables = _TABLES.get(key)
    if tables is None:
        if len(_TABLES) >= _MAX_TABLES:
            del _TABLES[next(iter(_TABLES))]
        tables = _TABLES[key] = _build_tables(scan, height, width, step, str(device))
    return tables


def cross_scan(x: torch.Tensor, t: RouteTables) -> torch.Tensor:
    """(B, C, H, W) -> (K, C, B, L), contiguous (see `ScanRoutes.cross_scan`)."""
    b, c, h, w = x.shape
    if (h, w) != (t.height, t.width):
        raise ValueError(f"these routes are for a {t.height}x{t.width} map, got {h}x{w}")
    ph, pw = t.padded_height - h, t.padded_width - w
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    xs = x.reshape(b, c, -1).index_select(2, t.scan_index)  # (B, C, K·L)
    return xs.view(b, c, t.num_routes, t.length).permute(2, 1, 0, 3).contiguous()


def cross_merge(y: torch.Tensor, t: RouteTables, keep: torch.Tensor | None = None) -> torch.Tensor:
    """(K, C, B, L) -> (B, H, W, C), contiguous (see `ScanRoutes.cross_merge`)."""
    k, c, b, length = y.shape
    if (k, length) != (t.num_routes, t.length):
        raise ValueError(f"expected {t.num_routes} routes of {t.length} tokens, got {k} of {length}")
    if keep is not None:
        y = y * keep.to(y)[:, None, None, None]
    tokens = y.permute(2, 0, 3, 1).reshape(b, k * length, c)  # (B, K·L, C): slot-major, channels last
    out = tokens.index_select(1, t.merge_index).view(b, t.readers, t.height, t.width, c)
    return out[:, 0] if t.readers == 1 else out.sum(1)


def check_scan(scan: str, step: int) -> None:
    """Raise a ValueError naming the valid values when (scan, step) is not a scan this project defines."""
    if scan not in SCANS:
        raise ValueError(f"unknown scan {scan!r}: valid scans are {', '.join(SCANS)}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be an integer >= 1 (2 is the authors' ES2D), got {step!r}")
    if scan == "ss2d" and step != 2:
        raise ValueError(f"step only applies to scan='es2d'; ss2d reads every position in four directions "
                         f"(got step={step})")


def num_routes(scan: str, step: int = 2) -> int:
    """How many routes (and per-route parameter sets) a scan has: 4 for SS2D, step² for ES2D."""
    check_scan(scan, step)
    return 4 if scan == "ss2d" else step * step


@functools.lru_cache(maxsize=256)
def _cached(scan: str, height: int, width: int, step: int) -> ScanRoutes:
    return ScanRoutes(scan, height, width, step)


def scan_routes(scan: str, height: int, width: int, step: int = 2) -> ScanRoutes:
    """The routes of `scan` ("es2d" or "ss2d") over a height×width map (cached; treat as read-only)."""
    check_scan(scan, step)
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return _cached(scan, height, width, step)
