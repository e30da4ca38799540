"""How a scan partitions an image's patches: the data behind the partition pictures.

    routes = stage_routes(model, stage=0, image_size=224)       # what stage 0's mixers read (56x56)
    part = partition(routes, sample_image("astronaut"))
    part.route_map            # (Hp, Wp): the route that reads each patch (ES2D)
    part.order[k]             # (Hp, Wp): the step at which route k reads each patch, -1 if it does not
    part.sub_image(k)         # the patches route k reads, regrouped into the picture it actually scans

Everything comes from a `ScanRoutes` (evmamba.routes), the same object the mixers gather and scatter
with, so a picture drawn from a `Partition` shows exactly what the model computes. The image is cut into
the routes' H×W grid of square patches; ES2D pads the grid at the bottom/right to a multiple of the step,
and those padded positions (zeros in the model) are kept and marked in `padding`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..checks import integer
from ..model import EfficientVMamba
from ..routes import ScanRoutes, scan_label
from .images import load_image, sample_names

PAD_GREY = 225  # pixel value of padded patches in `Partition.image`
CANVAS = 512  # default size in pixels of the longer side of the patched image


# ---- images -----------------------------------------------------------------------------------------
def sample_image(name: str = "astronaut") -> np.ndarray:
    """A sample photograph bundled with scikit-image (works offline), as an (H, W, 3) uint8 array."""
    names = sample_names()
    if not isinstance(name, str) or name not in names:
        raise ValueError(f"unknown sample image {name!r}: valid names are {', '.join(names)}")
    return load_image(name)


def to_rgb(image) -> np.ndarray:
    """A user image as an (H, W, 3) uint8 array: a PIL image of any mode; a numpy array (H, W), (H, W, 1),
    (H, W, 3) or (H, W, 4) in uint8 0..255, float 0..1 or bool; an image file; or a sample name (see
    `sample_image`)."""
    if hasattr(image, "detach") and hasattr(image, "dim"):  # a torch tensor
        raise ValueError("expected a PIL image or an (H, W, 3) numpy array, got a torch tensor: pass "
                         "tensor.permute(1, 2, 0).cpu().numpy() for a (3, H, W) image in 0..1")
    return load_image(image)


def _fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop `image` to the aspect ratio height:width and resize it to height×width pixels."""
    from PIL import Image, ImageOps
    return np.asarray(ImageOps.fit(Image.fromarray(image), (width, height), Image.Resampling.BICUBIC))


# ---- routes from a model ------------------------------------------------------------------------------
def stage_routes(model, stage: int = 0, image_size=224) -> ScanRoutes:
    """The routes the scan mixers of stage `stage` (0-based) use for an image_size input (an int or
    (H, W)): `mixer.routes(h, w)` at that stage's grid (56×56 for stage 0 at 224×224)."""
    if not isinstance(model, EfficientVMamba):
        raise ValueError(f"expected an EfficientVMamba model (evmamba.build_model), got {type(model).__name__}")
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    try:
        ih, iw = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be an integer or an (H, W) pair, got {image_size!r}") from None
    grids = model.stage_grids(ih, iw)
    with_mixers = sorted({int(n.split(".")[1]) for n, _ in model.mixers() if n.startswith("layers.")})
    stage = integer(stage, "stage", 0, len(grids) - 1)
    mixers = [m for n, m in model.mixers() if n.startswith(f"layers.{stage}.")]
    if not mixers:
        raise ValueError(f"stage {stage} has no scan mixers (no EVSS blocks); stages with scan mixers: "
                         f"{', '.join(map(str, with_mixers)) or 'none'}")
    h, w = grids[stage]
    return mixers[0].routes(h, w)


def resolve_routes(source, stage=None, image_size=224) -> ScanRoutes:
    """A ScanRoutes from `source`: a ScanRoutes or Partition (stage must be None), or a model (routes of
    `stage`, default 0, at image_size)."""
    if isinstance(source, Partition):
        source = source.routes
    if isinstance(source, ScanRoutes):
        if stage is not None:
            raise ValueError("stage only applies when the source is a model; these routes already fix the grid")
        return source
    if isinstance(source, EfficientVMamba):
        return stage_routes(source, 0 if stage is None else stage, image_size)
    raise ValueError(f"expected scan routes (evmamba.scan_routes(...)), a Partition or a model, got "
                     f"{type(source).__name__}; for one mixer use mixer.routes(height, width)")


# ---- the partition ------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Partition:
    """A scan's routes over an image cut into the routes' grid of patches (see the module docstring).

    image: (Hp·patch, Wp·patch, 3) uint8, the picture fitted to the H×W grid; padded patches PAD_GREY.
    route_map: (Hp, Wp) route reading each position, or None when positions are read by several routes
      (SS2D: every route reads every position). readers: (Hp, Wp, m) the m routes reading each position.
    order: (K, Hp, Wp) the step at which route k reads each position, -1 where it does not.
    padding: (Hp, Wp) True on positions added by padding.
    """

    routes: ScanRoutes
    image: np.ndarray
    patch: int
    has_image: bool

    # ---- grid ----
    @property
    def grid(self) -> tuple[int, int]:
        return self.routes.height, self.routes.width

    @property
    def padded_grid(self) -> tuple[int, int]:
        return self.routes.padded_shape

    @property
    def num_routes(self) -> int:
        return self.routes.num_routes

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.routes.routes]

    @cached_property
    def padding(self) -> np.ndarray:
        return self.routes.padding_mask().numpy()

    @cached_property
    def order(self) -> np.ndarray:
        return np.stack([self.routes.reading_order(k).numpy() for k in range(self.num_routes)])

    @cached_property
    def route_map(self) -> np.ndarray | None:
        return self.routes.route_map().numpy() if self._single_reader else None

    @cached_property
    def _single_reader(self) -> bool:
        return bool((self.routes.reads() == 1).all())

    @cached_property
    def readers(self) -> np.ndarray:
        """(Hp, Wp, m): the routes reading each position, ascending (m = 1 for ES2D, 4 for SS2D)."""
        reads = self.routes.reads().numpy()
        m = int(reads.max())
        if (reads != m).any():  # not produced by any scan defined today; kept general for new ones
            raise ValueError("positions are read by different numbers of routes; use order instead")
        hp, wp = self.padded_grid
        index = self.routes.index.numpy()
        k_of = np.repeat(np.arange(index.shape[0]), index.shape[1])
        flat = index.reshape(-1)
        sort = np.lexsort((k_of, flat))
        return k_of[sort].reshape(hp, wp, m)

    def title(self) -> str:
        """'ES2D, step 2, 56×56 grid (padded to 58×58)' and the like."""
        h, w = self.grid
        hp, wp = self.padded_grid
        text = f"{scan_label(self.routes.scan, self.routes.step).replace(' ', ', ', 1)}, {h}×{w} grid"
        if (hp, wp) != (h, w):
            text += f" (padded to {hp}×{wp})"
        return text

    def path_offsets(self) -> list[tuple[float, float]]:
        """(dx, dy) per route, in patch units: small shifts that keep paths sharing a line apart in
        pictures. ES2D's row-major sub-maps of one row phase run along the same rows (shifted up/down by
        column phase), its column-major ones along the same columns (shifted by row phase); SS2D's routes
        share every position (shifted around the patch centre). All shifts are under 0.2."""
        k = self.num_routes
        if not self._single_reader:
            return [(0.16 * float(np.cos(2 * np.pi * i / k + np.pi / 4)),
                     0.16 * float(np.sin(2 * np.pi * i / k + np.pi / 4))) for i in range(k)]
        p = self.routes.submap_step
        out = []
        for r in self.routes.routes:
            if p == 1 or r.submap is None:
                out.append((0.0, 0.0))
            elif r.order == "row":
                out.append((0.0, 0.3 * (r.submap[1] / (p - 1) - 0.5)))
            else:
                out.append((0.3 * (r.submap[0] / (p - 1) - 0.5), 0.0))
        return out

    # ---- routes ----
    def positions(self, k: int) -> np.ndarray:
        """(L, 2) (row, column) on the padded grid in the order route k reads them."""
        return self.routes.positions(k).numpy()

    def _submap(self, k: int):
        sub = self.routes.routes[k].submap
        return (0, 0, 1) if sub is None else (sub[0], sub[1], self.routes.submap_step)

    def sub_positions(self, k: int) -> np.ndarray:
        """(L, 2) route k's reading order in the coordinates of its regrouped sub-image."""
        i, j, p = self._submap(k)
        pos = self.positions(k)
        return np.stack([(pos[:, 0] - i) // p, (pos[:, 1] - j) // p], axis=1)

    def sub_grid(self, k: int) -> tuple[int, int]:
        """(rows, columns) of route k's sub-map: ⌈H/p⌉×⌈W/p⌉ for ES2D, H×W for SS2D."""
        i, j, p = self._submap(k)
        hp, wp = self.padded_grid
        return len(range(i, hp, p)), len(range(j, wp, p))

    def sub_padding(self, k: int) -> np.ndarray:
        """(rows, columns) True where route k's sub-map holds a padded position."""
        i, j, p = self._submap(k)
        return self.padding[i::p, j::p]

    def sub_image(self, k: int) -> np.ndarray:
        """The patches route k reads, regrouped into the picture it scans: for ES2D sub-map (i, j) the
        patches at rows i, i+p, ... and columns j, j+p, ... put side by side; for SS2D the whole image."""
        i, j, p = self._submap(k)
        hp, wp = self.padded_grid
        s = self.patch
        tiles = self.image.reshape(hp, s, wp, s, 3)[i::p, :, j::p, :]
        rows, cols = tiles.shape[0], tiles.shape[2]
        return np.ascontiguousarray(tiles.reshape(rows * s, cols * s, 3))


def partition(source, image=None, *, stage=None, image_size=224, patch: int | None = None) -> Partition:
    """The partition of `image` by the routes of `source`.

    source: a ScanRoutes (evmamba.scan_routes("es2d", 8, 8, step=2)), or a model with `stage` (0-based,
      default 0) and image_size (the input size that fixes the stage's grid, default 224); a Partition
      is returned as it is.
    image: a PIL image or numpy array (any mode; see `to_rgb`), a sample name ("astronaut"; see
      `sample_image`), or None for a plain grid.
    patch: pixels per patch side in `Partition.image` (default: about 512 pixels across the grid).
    """
    if isinstance(source, Partition):
        if image is not None or stage is not None or patch is not None:
            raise ValueError("a Partition already fixes its routes, image and patch size; pass the routes or "
                             "the model instead to choose them")
        return source
    routes = resolve_routes(source, stage, image_size)
    hp, wp = routes.padded_shape
    h, w = routes.height, routes.width
    if patch is None:
        patch = max(4, round(CANVAS / max(hp, wp)))
    patch = integer(patch, "patch", low=1, what="a positive number of pixels")
    canvas = np.full((hp * patch, wp * patch, 3), PAD_GREY, dtype=np.uint8)
    if image is None:
        canvas[: h * patch, : w * patch] = 255
    else:
        canvas[: h * patch, : w * patch] = _fit(to_rgb(image), h * patch, w * patch)
    return Partition(routes, canvas, patch, image is not None)


__all__ = ["PAD_GREY", "Partition", "partition", "resolve_routes", "sample_image", "stage_routes", "to_rgb"]
