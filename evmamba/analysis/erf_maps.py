"""Numbers and display scales of effective-receptive-field maps (arrays of non-negative contributions).

Area ratio at threshold t: the area of the smallest square around the map's centre that holds more than a
share t of the map, as a fraction of the map. Two conventions, named wherever a ratio is printed:

  "replknet"      exactly RepLKNet's `erf/analyze_erf.py` (Ding et al., CVPR 2022), the numbers published in
                  RepLKNet-style ERF tables: the map is first transformed to log10(x + 1) and divided by its
                  maximum; squares of odd side 2i + 1, i = 1 .. h//2 - 1, are centred on the map's pixel
                  (h // 2, w // 2) (rows h//2 - i .. h//2 + i, columns w//2 - i .. w//2 + i, sliced as numpy
                  slices them); a square qualifies when its share is strictly greater than t; the ratio is
                  (2i + 1)² / (h·w). When no square qualifies there is no value: NaN. The log transform
                  makes the ratio depend on the map's scale (a map times 10³ gives other ratios).
                  Their maps are square (1024²); on other shapes the squares are sliced as their code
                  slices them, which is not meaningful (a ratio can exceed 1).
  "cell-centred"  this project's scale-free reading of the raw map: squares centred on the output cell's
                  centre in the map's coordinates (between pixels when that centre is), radius 0, 1, ...,
                  clipped to the map, qualifying at a share >= t; always has a value.

Display scales (`normalise`): power (x / max) ** 0.2 (VMamba's display), log10(1 + x) / log10(1 + max)
(RepLKNet's display), linear.
"""
from __future__ import annotations

import numpy as np

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
NORMALISATIONS = ("power", "log", "linear")
CONVENTIONS = ("replknet", "cell-centred")


def check_map(contribution) -> np.ndarray:
    x = np.asarray(contribution, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"an ERF map is 2-D (H, W), got shape {x.shape}")
    if np.any(x < 0) or not np.all(np.isfinite(x)):
        raise ValueError("an ERF map must be finite and non-negative")
    return x


def normalise(contribution, how: str = "power", exponent: float = 0.2) -> np.ndarray:
    """The map scaled to [0, 1] for display; the order of values is kept and zero stays zero.

    power:  (x / max) ** exponent (0.2 by default): lifts the weak far contributions into view.
    log:    log10(1 + x) / log10(1 + max), RepLKNet's display (depends on the map's scale).
    linear: x / max."""
    if how not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {how!r}: valid normalisations are {', '.join(NORMALISATIONS)}")
    x = check_map(contribution)
    top = x.max() if x.size else 0.0
    if top <= 0:
        return np.zeros_like(x)
    if how == "linear":
        return x / top
    if how == "power":
        if not exponent > 0:
            raise ValueError(f"exponent must be positive, got {exponent!r}")
        return (x / top) ** exponent
    return np.log10(1.0 + x) / np.log10(1.0 + top)


def check_thresholds(thresholds) -> tuple[float, ...]:
    t = tuple(float(v) for v in thresholds)
    if not t or any(not 0 < v <= 1 for v in t):
        raise ValueError(f"thresholds must be shares in (0, 1], got {thresholds!r}")
    return t


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown area-ratio convention {convention!r}: valid conventions are "
                         f"{', '.join(CONVENTIONS)}")
    return convention


# ---- RepLKNet's convention -----------------------------------------------------------------------------------
def _replknet_squares(x: np.ndarray):
    """(i, share) for RepLKNet's squares of side 2i + 1 on the transformed map."""
    h, w = x.shape
    t = np.log10(x + 1)
    top = t.max() if t.size else 0.0
    t = t / top if top > 0 else t
    total = t.sum()
    for i in range(1, h // 2):
        inside = t[h // 2 - i:h // 2 + 1 + i, w // 2 - i:w // 2 + 1 + i].sum()
        yield i, (inside / total if total > 0 else np.nan)


def _replknet_ratios(x, thresholds) -> dict[float, float]:
    h, w = x.shape
    squares = list(_replknet_squares(x))
    out = {}
    for t in thresholds:
        i = next((i for i, share in squares if share > t), None)
        out[t] = float("nan") if i is None else (i * 2 + 1) / h * (i * 2 + 1) / w
    return out


# ---- the cell-centred convention -----------------------------------------------------------------------------
def _square_bounds(shape, centre, radius):
    """Rows/cols [r0, r1) x [c0, c1) of the square of `radius` around `centre`, clipped to the map.
    An integer centre gives side 2·radius + 1; a half-integer one (between pixels) side 2·radius + 2."""
    (h, w), (cy, cx) = shape, centre
    r0, r1 = int(np.floor(cy)) - radius, int(np.ceil(cy)) + radius + 1
    c0, c1 = int(np.floor(cx)) - radius, int(np.ceil(cx)) + radius + 1
    return max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)


def _cell_centred_squares(x, centre):
    """For radius 0, 1, ... until the square covers the map: (radius, share of the total inside, area ratio)."""
    h, w = x.shape
    integral = np.zeros((h + 1, w + 1))
    integral[1:, 1:] = x.cumsum(0).cumsum(1)
    total = integral[-1, -1]
    radius = 0
    while True:
        r0, r1, c0, c1 = _square_bounds((h, w), centre, radius)
        inside = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
        yield radius, (inside / total if total > 0 else 1.0), (r1 - r0) * (c1 - c0) / (h * w)
        if (r0, r1, c0, c1) == (0, h, 0, w):
            return
        radius += 1


def _cell_centred_ratios(x, centre, thresholds) -> dict[float, float]:
    if centre is None:
        raise ValueError("the cell-centred area ratio needs the output cell's centre (row, col) in the map")
    squares = list(_cell_centred_squares(x, centre))
    # a small tolerance, so that a square holding everything counts for t = 1
    return {t: next(ratio for _, share, ratio in squares if share >= t - 1e-12) for t in thresholds}


# ---- both --------------------------------------------------------------------------------------------------
def area_ratios(contribution, centre=None, thresholds=THRESHOLDS, convention: str = "replknet") -> dict:
    """{t: area ratio} for each threshold t, in `convention` (module docstring): "replknet" (the default;
    NaN where no square qualifies) or "cell-centred" (needs `centre`, the output cell's centre (row, col)
    in the map's coordinates)."""
    x = check_map(contribution)
    thresholds = check_thresholds(thresholds)
    if check_convention(convention) == "replknet":
        return _replknet_ratios(x, thresholds)
    return _cell_centred_ratios(x, centre, thresholds)


def high_contribution_square(contribution, centre=None, threshold: float = 0.5, convention: str = "replknet"):
    """(top, left, bottom, right), bottom/right exclusive: the square `area_ratios` measures at `threshold`,
    or None where RepLKNet's convention finds none."""
    t = check_thresholds([threshold])[0]
    x = check_map(contribution)
    h, w = x.shape
    if check_convention(convention) == "replknet":
        i = next((i for i, share in _replknet_squares(x) if share > t), None)
        if i is None:
            return None
        return max(h // 2 - i, 0), max(w // 2 - i, 0), min(h // 2 + 1 + i, h), min(w // 2 + 1 + i, w)
    if centre is None:
        raise ValueError("the cell-centred square needs the output cell's centre (row, col) in the map")
    for radius, share, _ in _cell_centred_squares(x, centre):
        if share >= t - 1e-12:
            r0, r1, c0, c1 = _square_bounds(x.shape, centre, radius)
            return r0, c0, r1, c1
    raise AssertionError("unreachable: the square covering the map holds everything")


def ratio_label(t: float, convention: str = "replknet") -> str:
    """The column header of an area ratio: 'area ratio 0.5 (RepLKNet)' or 'area ratio 0.5 (cell-centred)'."""
    return f"area ratio {t:g} ({'RepLKNet' if check_convention(convention) == 'replknet' else 'cell-centred'})"


__all__ = ["CONVENTIONS", "NORMALISATIONS", "THRESHOLDS", "area_ratios", "check_map", "high_contribution_square",
           "normalise", "ratio_label"]
