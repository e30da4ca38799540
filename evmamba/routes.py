"""Scan routes: the order in which a 2-D feature map's token positions are read by the selective scan.

A route is data. `scan_routes(scan, height, width, step)` returns a `ScanRoutes` whose `index` tensor
(K routes × L tokens) holds flat positions on a (possibly padded) grid, in reading order. The model's
cross-scan is one gather by that index (`cross_scan`) and its cross-merge one gather back by its inverse,
each position's readers summed (`cross_merge`); the partition pictures, per-route receptive fields and
FLOP counts read the same object, so a picture cannot disagree with what the model computes. The routes
come from a registered family (evmamba.families: the built-ins below, zigzag, windows, hilbert, diagonal,
and any added with register_scan) and are checked here when built.

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

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import families
from .families import BUILT_IN, FamilyRoutes, Route, _as_routes, family, scans

SCANS = BUILT_IN  # the built-in scans; scans() lists those registered from user code too


class ScanRoutes:
    """The K routes of one scan over one grid, checked. Build with `scan_routes(...)` (cached)."""

    def __init__(self, scan: str, height: int, width: int, step: int):
        self.scan, self.height, self.width, self.step = scan, height, width, step
        entry = family(scan)
        made = _as_routes(entry.call(height, width, step if entry.param else None))
        self.padded_height, self.padded_width = made.padded or (height, width)
        self.submap_step = made.submap_step
        self.index = _checked_index(scan, made, height, width, self.padded_height, self.padded_width)
        self.routes = tuple(made.routes) if made.routes is not None else tuple(
            Route(f"route {k}") for k in range(len(self.index)))
        if len(self.routes) != len(self.index):
            raise ValueError(f"scan {scan!r} names {len(self.routes)} routes but returns {len(self.index)}")
        expected = entry.num_routes(step if entry.param else None)
        if len(self.index) != expected:
            raise ValueError(f"scan {scan!r} returned {len(self.index)} routes on a {height}x{width} map but "
                             f"{expected} on the map its models are sized by: a family must return the same "
                             "number of routes on every map (or give register_scan(..., routes=...))")

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
        if self.readers != 1:
            raise ValueError(f"route_map() needs a scan where each position has one route (es2d); every "
                             f"position of {self.scan} is read by {self.readers} routes: use reading_order(k)")
        out = torch.empty(self.padded_height * self.padded_width, dtype=torch.long)
        out[self.index] = torch.arange(self.num_routes)[:, None].expand_as(self.index)
        return out.view(self.padded_shape)

    @property
    def readers(self) -> int:
        """How many routes read each position (R: 1 for ES2D, 4 for SS2D)."""
        return self.tokens_read // (self.padded_height * self.padded_width)

    def reads_position(self, k: int, row: int, col: int) -> bool:
        """Whether route k reads position (row, col)."""
        return bool(self.reading_order(k)[row, col] >= 0)

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
    """Raise a ValueError naming the valid values when (scan, step) is not a registered scan with a valid
    parameter. `step` carries the family's one integer parameter (ES2D's step, the windows' side); a family
    without one takes the default 2."""
    entry = family(scan)
    if entry.param is None:
        if step != 2:
            takes = [f"{f}: {family(f).param}" for f in scans() if family(f).param]
            raise ValueError(f"step only applies to scans with a parameter ({', '.join(takes)}); {scan} takes "
                             f"none (got step={step!r})")
        return
    high = entry.high
    if isinstance(step, bool) or not isinstance(step, int) or step < entry.low or (high is not None and step > high):
        valid = f"an integer in {entry.low}..{high}" if high is not None else f"an integer >= {entry.low}"
        default = " (2 is the authors' ES2D)" if scan == "es2d" else ""
        what = "step" if entry.param == "step" else f"step ({scan}'s {entry.param})"
        raise ValueError(f"{what} must be {valid}{default}, got {step!r}")


def num_routes(scan: str, step: int = 2) -> int:
    """How many routes (and per-route parameter sets) a scan has: 4 for SS2D, step² for ES2D."""
    check_scan(scan, step)
    entry = family(scan)
    return entry.num_routes(step if entry.param else None)


def scan_label(scan: str, step: int = 2) -> str:
    """'ES2D step 2', 'WINDOWS size 7', 'SS2D': a scan and its parameter, for titles."""
    entry = family(scan)
    return scan.upper() + (f" {entry.param} {step}" if entry.param else "")


_ROUTES: dict = {}
_MAX_ROUTES = 256


def forget(scan: str) -> None:
    """Drop the cached routes and tables of `scan` (when its family is registered again)."""
    for cache in (_ROUTES, _TABLES):
        for key in [k for k in cache if k[0] == scan]:
            del cache[key]


families.ON_CHANGE.append(forget)  # a family registered again: its cached routes and tables are stale


def scan_routes(scan: str, height: int, width: int, step: int = 2) -> ScanRoutes:
    """The routes of a registered scan (evmamba.families: "es2d", "ss2d", "zigzag", ...) over a height×width
    map, with its parameter as `step` (cached; treat as read-only)."""
    check_scan(scan, step)
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    key = (scan, height, width, step)
    routes = _ROUTES.get(key)
    if routes is None:
        if len(_ROUTES) >= _MAX_ROUTES:
            del _ROUTES[next(iter(_ROUTES))]
        routes = _ROUTES[key] = ScanRoutes(scan, height, width, step)
    return routes


def _checked_index(scan: str, made: FamilyRoutes, height: int, width: int, hp: int, wp: int) -> torch.Tensor:
    """The routes as one (K, L) tensor, or a ValueError naming the family and what is wrong."""
    where = f"scan {scan!r} on a {height}x{width} map"
    if hp < height or wp < width:
        raise ValueError(f"{where}: the padded grid {hp}x{wp} is smaller than the map")
    index = list(made.index)
    if not index:
        raise ValueError(f"{where}: returned no routes")
    cells = hp * wp
    for k, idx in enumerate(index):
        if not isinstance(idx, torch.Tensor) or idx.dim() != 1 or idx.dtype.is_floating_point \
                or idx.dtype == torch.bool:
            raise ValueError(f"{where}: route {k} must be a 1-D integer tensor of flat positions, got "
                             f"{getattr(idx, 'shape', type(idx).__name__)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= cells):
            bad = int(idx.max()) if int(idx.max()) >= cells else int(idx.min())
            raise ValueError(f"{where}: route {k} reads position {bad}, outside the {hp}x{wp} grid (positions "
                             f"0..{cells - 1}, row-major)")
        if torch.unique(idx).numel() != idx.numel():
            raise ValueError(f"{where}: route {k} reads a position more than once")
    lengths = sorted({i.numel() for i in index})
    if len(lengths) != 1 or lengths[0] == 0:
        raise ValueError(f"{where}: routes must be non-empty and of one length (the scan runs them side by side), "
                         f"got lengths {', '.join(str(i.numel()) for i in index)}; pad the map (FamilyRoutes.padded)")
    stacked = torch.stack([i.long() for i in index])
    reads = torch.bincount(stacked.flatten(), minlength=cells)
    if not bool((reads == reads[0]).all()) or int(reads[0]) < 1:
        low = int(torch.argmin(reads))
        raise ValueError(f"{where}: every position must be read by the same number of routes (the merge sums "
                         f"them), but position ({low // wp}, {low % wp}) is read by {int(reads[low])} and others by "
                         f"{int(reads.max())}")
    return stacked
