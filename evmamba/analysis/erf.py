"""Effective receptive fields (ERF) per scan direction, by the gradient method of RepLKNet (Ding et al. 2022,
appendix) as VMamba uses it:

    ERF(i, j) = mean over inputs x of  sum over input channels of  ReLU( d/dx[i, j] sum_c ReLU(f(x)[r, c, c_]) )

for a chosen output position (r, c) of f. The map says how strongly each input position raises the chosen
output's activations. Its high-contribution area ratio at threshold t is the area of the smallest square,
centred at the output position's centre in input coordinates, that holds a share t of the map's total,
divided by the map's area (clipped to the map); RepLKNet reports t = 0.2, 0.3, 0.5, 0.99.

Three levels, each with all routes together and each route alone (the mixers' `keep_routes` set to keep only
route k's scan output in the merge, see `interventions.keep_only_route`):

    mixer_erf(mixer, features)      one selective-scan mixer on (N, H, W, C) feature maps
    block_erf(block, features)      one EVSS block on (N, H, W, C) feature maps
    network_erf(model, images, s)   the network from the image to the end of stage s's blocks (the grid
                                    that stage's scans read, before its downsample)
    effective_receptive_fields(model, level, ...)   picks the module, builds the inputs (random, seeded;
                                    or natural images, whose features at the module's input are captured)

For ES2D, route k reads only its own sub-map, so its ERF is taken at the position of that sub-map nearest
the requested one (`ScanRoutes.nearest_position`); the position used is in `ERF.position`. For SS2D every
route reads every position and the requested position is used.

The gradient comes from captum's Saliency (method="saliency", signed gradients) on a module returning the
chosen output's summed ReLU activation per sample, or from plain autograd (method="autograd"); the two give
the same map.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..blocks import EVSSBlock, EVSSStage
from ..mixer import SelectiveScan2D
from ..routes import scan_routes
from .interventions import evaluation_mode, keep_only_route, scan_mixers
from .progress import track

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
NORMALISATIONS = ("power", "log", "linear")
LEVELS = ("mixer", "block", "stage")
METHODS = ("saliency", "autograd")


# ---- maps and their numbers ----------------------------------------------------------------------
def normalise(contribution, how: str = "power", exponent: float = 0.2) -> np.ndarray:
    """The map scaled to [0, 1] for display; the order of values is kept and zero stays zero.

    power:  (x / max) ** exponent (0.2 by default): lifts the weak far contributions into view.
    log:    log10(1 + x) / log10(1 + max), RepLKNet's display (depends on the map's scale).
    linear: x / max."""
    x = np.asarray(contribution, dtype=np.float64)
    if how not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {how!r}: valid normalisations are {', '.join(NORMALISATIONS)}")
    if np.any(x < 0) or not np.all(np.isfinite(x)):
        raise ValueError("an ERF map must be finite and non-negative")
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


def _square_bounds(shape, centre, radius):
    """Rows/cols [r0, r1) x [c0, c1) of the square of `radius` around `centre`, clipped to the map.
    An integer centre gives side 2·radius + 1; a half-integer one (between pixels) side 2·radius + 2."""
    (h, w), (cy, cx) = shape, centre
    r0, r1 = int(np.floor(cy)) - radius, int(np.ceil(cy)) + radius + 1
    c0, c1 = int(np.floor(cx)) - radius, int(np.ceil(cx)) + radius + 1
    return max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)


def _square_shares(contribution, centre):
    """For radius 0, 1, ... until the square covers the map: (share of the total inside, area ratio)."""
    x = np.asarray(contribution, dtype=np.float64)
    h, w = x.shape
    integral = np.zeros((h + 1, w + 1))
    integral[1:, 1:] = x.cumsum(0).cumsum(1)
    total = integral[-1, -1]
    out = []
    radius = 0
    while True:
        r0, r1, c0, c1 = _square_bounds((h, w), centre, radius)
        inside = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
        out.append((inside / total if total > 0 else 1.0, (r1 - r0) * (c1 - c0) / (h * w)))
        if (r0, r1, c0, c1) == (0, h, 0, w):
            return out
        radius += 1


def _check_thresholds(thresholds):
    t = tuple(float(v) for v in thresholds)
    if not t or any(not 0 < v <= 1 for v in t):
        raise ValueError(f"thresholds must be shares in (0, 1], got {thresholds!r}")
    return t


def area_ratios(contribution, centre, thresholds=THRESHOLDS) -> dict[float, float]:
    """{t: area ratio}: the smallest square centred at `centre` (row, col in the map's coordinates) holding a
    share t of the map's total, as a fraction of the map's area (RepLKNet's high-contribution area ratio)."""
    shares = _square_shares(contribution, centre)
    out = {}
    for t in _check_thresholds(thresholds):
        # a small tolerance, so that a square holding everything counts for t = 1
        out[t] = next(ratio for share, ratio in shares if share >= t - 1e-12)
    return out


def high_contribution_square(contribution, centre, threshold: float):
    """(top, left, bottom, right), bottom/right exclusive: the square `area_ratios` measures at `threshold`."""
    t = _check_thresholds([threshold])[0]
    x = np.asarray(contribution, dtype=np.float64)
    for radius, (share, _) in enumerate(_square_shares(x, centre)):
        if share >= t - 1e-12:
            r0, r1, c0, c1 = _square_bounds(x.shape, centre, radius)
            return r0, c0, r1, c1
    raise AssertionError("unreachable: the square covering the map holds everything")


@dataclass
class ERF:
    """One effective receptive field: the map over the input and where it was taken."""

    contribution: np.ndarray  # (H_in, W_in): mean over inputs of the summed ReLU'd input gradients
    position: tuple[int, int]  # the output position (row, col) whose activations were differentiated
    centre: tuple[float, float]  # that position's centre in input coordinates (a pixel, or between pixels)
    route: int | None  # None: all routes merged, as the model computes
    route_name: str

    def normalised(self, how: str = "power", exponent: float = 0.2) -> np.ndarray:
        return normalise(self.contribution, how, exponent)

    def area_ratios(self, thresholds=THRESHOLDS) -> dict[float, float]:
        return area_ratios(self.contribution, self.centre, thresholds)

    def square(self, threshold: float):
        return high_contribution_square(self.contribution, self.centre, threshold)


@dataclass
class RouteERFs:
    """The ERF of all routes together (`combined`) and of each route alone (`routes`, in route order)."""

    level: str  # mixer, block or stage
    module: str  # which module, e.g. "layers.0.blocks.1.op"
    scan: str | None
    step: int | None
    input_shape: tuple[int, int]  # the map the ERF lives on (feature grid, or image pixels)
    output_grid: tuple[int, int]
    requested: tuple[int, int]  # the output position asked for
    inputs: str  # what the average ran over
    num_inputs: int
    combined: ERF
    routes: list[ERF] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def all(self) -> list[ERF]:
        return [self.combined, *self.routes]

    def table(self, thresholds=THRESHOLDS):
        """A DataFrame: one row per ERF (all routes, then each route), its position and area ratios."""
        import pandas as pd
        rows = []
        for e in self.all():
            row = {"route": "all" if e.route is None else e.route, "name": e.route_name,
                   "row": e.position[0], "col": e.position[1],
                   "total": float(e.contribution.sum())}
            row.update({f"area ratio {t:g}": r for t, r in e.area_ratios(thresholds).items()})
            rows.append(row)
        return pd.DataFrame(rows)


# ---- the gradient ---------------------------------------------------------------------------------
class ChosenActivation(nn.Module):
    """Per sample: sum over channels of ReLU(body(x)[:, row, col, :]); body returns channels-last maps."""

    def __init__(self, body: nn.Module, position: tuple[int, int]):
        super().__init__()
        self.body, self.position = body, position

    def forward(self, x):
        out = self.body(x)
        r, c = self.position
        return F.relu(out[:, r, c, :]).sum(-1)


def input_gradients(body: nn.Module, x: torch.Tensor, position, method: str = "saliency") -> torch.Tensor:
    """d/dx of each sample's summed ReLU activation at `position` of body(x): a tensor of x's shape."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: valid methods are {', '.join(METHODS)}")
    chosen = ChosenActivation(body, tuple(position))
    x = x.detach().requires_grad_(True)
    if method == "saliency":
        from captum.attr import Saliency
        return Saliency(chosen).attribute(x, abs=False).detach()
    (g,) = torch.autograd.grad(chosen(x).sum(), x)
    return g


def contribution_map(body: nn.Module, inputs: torch.Tensor, position, *, channel_dim: int, method: str = "saliency",
                     batch_size: int = 4, progress=None, bar: bool = True, desc: str = "ERF") -> np.ndarray:
    """The ERF map of `body` at output `position`, averaged over the N inputs (N, ...): ReLU of the input
    gradient, summed over the channel axis `channel_dim` (1 for images, -1 for channels-last maps)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = inputs.shape[0]
    if n < 1:
        raise ValueError("need at least one input to average the ERF over")
    total = None
    batches = [inputs[i:i + batch_size] for i in range(0, n, batch_size)]
    with evaluation_mode(body):
        for xb in track(batches, len(batches), desc, progress, bar):
            g = input_gradients(body, xb, position, method)
            part = F.relu(g).sum(dim=channel_dim).sum(0).double()
            total = part if total is None else total + part
    return (total / n).cpu().numpy()


# ---- levels ----------------------------------------------------------------------------------------
def _check_position(position, grid, what="position"):
    h, w = grid
    if position is None:
        return h // 2, w // 2
    try:
        r, c = (int(v) for v in position)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (row, col), got {position!r}") from None
    if not (0 <= r < h and 0 <= c < w):
        raise ValueError(f"{what} {(r, c)} is outside the {h}x{w} output grid: rows 0..{h - 1}, cols 0..{w - 1}")
    return r, c


def _check_features(features, dim, what):
    if not isinstance(features, torch.Tensor) or features.dim() != 4:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"{what} takes channels-last feature maps (N, H, W, {dim}), got {shape}")
    if features.shape[-1] != dim:
        raise ValueError(f"{what} takes {dim} channels (channels last: (N, H, W, {dim})), got "
                         f"{tuple(features.shape)}; a channels-first map needs .permute(0, 2, 3, 1)")
    if not features.is_floating_point():
        raise ValueError(f"features must be floating point, got {features.dtype}")
    return features


def _route_erfs(body, inputs, mixers, routes, requested, *, centre_of, channel_dim, method, batch_size, progress,
                bar, per_route, desc):
    """The combined ERF and, when per_route, one per route of `routes` (ScanRoutes on the output grid, or None
    when no scan reads that grid: then the requested position is used for every route)."""
    num_routes = mixers[0].num_routes if mixers else 0
    plans = [(None, requested)]
    if per_route and mixers:
        for k in range(num_routes):
            pos = requested
            if routes is not None and routes.scan == "es2d":
                pos = routes.nearest_position(k, *requested)
            plans.append((k, pos))
    device = next(body.parameters()).device
    inputs = inputs.to(device)
    out = []
    for k, pos in track(plans, len(plans), desc, progress, bar):
        if k is None:
            m = contribution_map(body, inputs, pos, channel_dim=channel_dim, method=method, batch_size=batch_size,
                                 bar=False)
            name = "all routes"
        else:
            with keep_only_route(mixers, k):
                m = contribution_map(body, inputs, pos, channel_dim=channel_dim, method=method,
                                     batch_size=batch_size, bar=False)
            name = routes.routes[k].name if routes is not None else f"route {k}"
        out.append(ERF(m, pos, centre_of(pos), k, name))
    return out[0], out[1:]


def _identity_centre(pos):
    return float(pos[0]), float(pos[1])


def mixer_erf(mixer: SelectiveScan2D, features: torch.Tensor, position=None, *, routes: bool = True,
              method: str = "saliency", batch_size: int = 4, progress=None, bar: bool = True,
              name: str = "mixer", inputs: str | None = None) -> RouteERFs:
    """ERFs of one selective-scan mixer on channels-last feature maps `features` (N, H, W, C), at output
    `position` (default the centre), all routes together and (routes=True) each route alone."""
    if not isinstance(mixer, SelectiveScan2D):
        raise ValueError(f"mixer_erf takes a SelectiveScan2D mixer, got {type(mixer).__name__}")
    features = _check_features(features, mixer.in_proj.in_features, "the mixer")
    grid = tuple(features.shape[1:3])
    pos = _check_position(position, grid)
    routes_obj = mixer.routes(*grid)
    combined, per = _route_erfs(mixer, features, [mixer], routes_obj, pos, centre_of=_identity_centre,
                                channel_dim=-1, method=method, batch_size=batch_size, progress=progress, bar=bar,
                                per_route=routes, desc=f"ERF of {name}")
    return RouteERFs("mixer", name, mixer.scan, mixer.step, grid, grid, pos,
                     inputs or f"{features.shape[0]} given feature maps", features.shape[0], combined, per)


def block_erf(block: EVSSBlock, features: torch.Tensor, position=None, *, routes: bool = True,
              method: str = "saliency", batch_size: int = 4, progress=None, bar: bool = True,
              name: str = "block", inputs: str | None = None) -> RouteERFs:
    """ERFs of one EVSS block (mixer, conv branch, gate, residual) on feature maps (N, H, W, C)."""
    if not isinstance(block, EVSSBlock):
        raise ValueError(f"block_erf takes an EVSS block, got {type(block).__name__}")
    features = _check_features(features, block.norm.normalized_shape[0], "the block")
    grid = tuple(features.shape[1:3])
    pos = _check_position(position, grid)
    combined, per = _route_erfs(block, features, [block.op], block.op.routes(*grid), pos,
                                centre_of=_identity_centre, channel_dim=-1, method=method, batch_size=batch_size,
                                progress=progress, bar=bar, per_route=routes, desc=f"ERF of {name}")
    notes = []
    if block.se is not None:
        notes.append("the block's channel gate pools over the whole map, so every position contributes a little")
    return RouteERFs("block", name, block.op.scan, block.op.step, grid, grid, pos,
                     inputs or f"{features.shape[0]} given feature maps", features.shape[0], combined, per, notes=notes)


def _stage_body(stage: nn.Module) -> list[nn.Module]:
    """The modules of a stage before its downsample."""
    if isinstance(stage, EVSSStage):
        return [stage.blocks]
    return list(stage)[:-1]  # IRStage: to channels-first, blocks, to channels-last | downsample


class NetworkToStage(nn.Module):
    """Image (B, 3, H, W) -> channels-last features at the end of stage `stage`'s blocks (before its
    downsample): the grid that stage's scans read."""

    def __init__(self, model, stage: int):
        super().__init__()
        self.model, self.stage = model, stage
        self.parts = nn.ModuleList([model.patch_embed, *model.layers[:stage], *_stage_body(model.layers[stage])])

    def forward(self, x):
        self.model.check_input(x)
        for part in self.parts:
            x = part(x)
        return x


def _check_stage(model, stage):
    n = len(model.layers)
    if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage < n:
        raise ValueError(f"stage must be an integer in 0..{n - 1}, got {stage!r}")
    return stage


def network_erf(model, images: torch.Tensor, stage: int = 0, position=None, *, routes: bool = True,
                method: str = "saliency", batch_size: int = 4, progress=None, bar: bool = True,
                inputs: str | None = None) -> RouteERFs:
    """ERFs of the network from the input image (N, 3, H, W) to the end of stage `stage`'s blocks, at output
    `position` on that stage's grid (default the centre); the map is over image pixels.

    Route k alone keeps only route k in every mixer up to that stage. For ES2D its position is the
    nearest one on route k's sub-map of the stage's grid when the stage is an EVSS stage; after an
    inverted-residual stage no scan reads the output grid and the requested position is used."""
    stage = _check_stage(model, stage)
    model.check_input(images)
    body = NetworkToStage(model, stage)
    with torch.no_grad(), evaluation_mode(model):
        grid = tuple(body(images[:1].to(next(model.parameters()).device)).shape[1:3])
    pos = _check_position(position, grid)
    h, w = images.shape[2:]
    stride = (h / grid[0], w / grid[1])
    mixers = [m for i in range(stage + 1) for _, m in scan_mixers(model.layers[i])]
    cfg = model.config
    notes = []
    routes_obj = None
    if cfg.stages[stage] == "evss":
        routes_obj = scan_routes(cfg.scan, grid[0], grid[1], cfg.step)
    elif mixers and routes:
        notes.append(f"stage {stage} has no scan: each route's ERF is taken at the requested position, "
                     f"with that route alone in every mixer of stages 0..{stage}")
    if routes and not mixers:
        notes.append("this model has no scan mixers up to this stage: only the combined ERF is given")

    def centre_of(p):  # the output cell's centre in pixel coordinates
        return (p[0] + 0.5) * stride[0] - 0.5, (p[1] + 0.5) * stride[1] - 0.5

    combined, per = _route_erfs(body, images, mixers, routes_obj, pos, centre_of=centre_of, channel_dim=1,
                                method=method, batch_size=batch_size, progress=progress, bar=bar,
                                per_route=routes, desc=f"ERF to stage {stage}")
    return RouteERFs("stage", f"the network to stage {stage}", cfg.scan if mixers else None,
                     cfg.step if mixers else None, (h, w), grid, pos,
                     inputs or f"{images.shape[0]} given images", images.shape[0], combined, per, notes=notes)


# ---- everything from one call ---------------------------------------------------------------------------
def seeded_model(variant: str = "tiny", *, seed: int = 0, scan: str = "es2d", step: int = 2,
                 conv_branch: bool = True, se: bool = True, stages="released", backend: str = "auto"):
    """A randomly initialised model in eval mode whose weights depend only on `seed` (the global random
    state is left as it was)."""
    from ..model import build_model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(variant, scan=scan, step=step, conv_branch=conv_branch, se=se, stages=stages,
                            backend=backend)
    return model.eval()


def _evss_module(model, stage, block, level):
    kind = model.config.stages[stage]
    if kind != "evss":
        evss = [i for i, k in enumerate(model.config.stages) if k == "evss"]
        raise ValueError(f"stage {stage} is made of inverted-residual blocks and has no scan; a {level} ERF needs "
                         f"an EVSS stage ({', '.join(map(str, evss)) or 'this model has none'})")
    blocks = model.layers[stage].blocks
    if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block < len(blocks):
        raise ValueError(f"block must be an integer in 0..{len(blocks) - 1} (stage {stage} has {len(blocks)} "
                         f"blocks), got {block!r}")
    b = blocks[block]
    name = f"layers.{stage}.blocks.{block}"
    return (b.op, name + ".op") if level == "mixer" else (b, name)


def _check_size(size):
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"feature_size must be (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"feature_size must be positive, got {size!r}")
    return h, w


def captured_inputs(model, module: nn.Module, images: torch.Tensor, stage: int, batch_size: int = 4) -> torch.Tensor:
    """The inputs `module` (inside stage `stage`) receives when the model runs on `images`."""
    got = []
    handle = module.register_forward_pre_hook(lambda m, args: got.append(args[0].detach()))
    try:
        with torch.no_grad(), evaluation_mode(model):
            for i in range(0, images.shape[0], batch_size):
                model.forward_stages(images[i:i + batch_size], upto=stage)
    finally:
        handle.remove()
    return torch.cat(got)


def effective_receptive_fields(model, level: str = "stage", *, stage: int = 0, block: int = 0, inputs="random",
                               num_inputs: int | None = None, image_size: int = 224, feature_size=None, position=None,
                               routes: bool = True, method: str = "saliency", seed: int = 0, batch_size: int = 4,
                               progress=None, bar: bool = True) -> RouteERFs:
    """ERFs of `model` at one level, all routes together and each route alone.

    level: "mixer" (block `block`'s scan mixer in stage `stage`), "block" (that EVSS block) or "stage"
        (the network from the image to the end of stage `stage`'s blocks).
    inputs: "random" (num_inputs standard-normal images or feature maps, 4 by default, seeded by `seed`),
        or natural images: a sample name, a list of names, a folder, arrays (see `images.load_images`;
        None: the default samples); images are preprocessed to image_size, and for the mixer and block
        levels the features the module receives from them are used.
    feature_size: (H, W) of random feature maps at the mixer/block level (default: the stage's grid for an
        image_size input).
    position: (row, col) on the output grid; default its centre.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}: valid levels are {', '.join(LEVELS)}")
    stage = _check_stage(model, stage)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    random = isinstance(inputs, str) and inputs == "random"
    if not random:
        for name, value in (("num_inputs", num_inputs), ("feature_size", feature_size)):
            if value is not None:
                raise ValueError(f"{name} applies to random inputs only; with natural images the images decide it "
                                 f"(pass inputs='random' to use {name})")
    if num_inputs is None:
        num_inputs = 4
    if isinstance(num_inputs, bool) or not isinstance(num_inputs, int) or num_inputs < 1:
        raise ValueError(f"num_inputs must be a positive integer, got {num_inputs!r}")
    if feature_size is not None and level == "stage":
        raise ValueError("feature_size applies to the mixer and block levels; the stage level starts from "
                         "image_size x image_size images")
    if random:
        what = f"{num_inputs} random normal {'images' if level == 'stage' else 'feature maps'} (seed {seed})"
    else:
        from .images import image_batch
        images, names = image_batch(inputs, size=image_size)
        what = f"{len(names)} images ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
    common = dict(position=position, routes=routes, method=method, batch_size=batch_size, progress=progress,
                  bar=bar, inputs=what)
    if level == "stage":
        if random:
            images = torch.randn(num_inputs, 3, image_size, image_size, generator=gen)
        return network_erf(model, images.to(device), stage, **common)
    module, name = _evss_module(model, stage, block, level)
    if random:
        dim = model.config.dims[stage]
        grid = model.stage_grids(image_size, image_size)[stage]
        h, w = _check_size(feature_size) if feature_size is not None else grid
        features = torch.randn(num_inputs, h, w, dim, generator=gen).to(device)
    else:
        features = captured_inputs(model, module, images.to(device), stage, batch_size)
    fn = mixer_erf if level == "mixer" else block_erf
    return fn(module, features, name=name, **common)


__all__ = ["ERF", "LEVELS", "METHODS", "NORMALISATIONS", "THRESHOLDS", "ChosenActivation", "NetworkToStage",
           "RouteERFs", "area_ratios", "block_erf", "captured_inputs", "contribution_map",
           "effective_receptive_fields", "high_contribution_square", "input_gradients", "mixer_erf",
           "network_erf", "normalise", "seeded_model"]
