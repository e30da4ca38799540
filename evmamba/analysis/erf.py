"""Effective receptive fields (ERF) per scan direction, by the gradient method of RepLKNet (Ding et al. 2022,
appendix) as VMamba uses it (see erf_gradients): how strongly each input position raises the activations
of one output position. The maps equal those of RepLKNet's `erf/visualize_erf.py` and VMamba's
`analyze/utils.py`; their area ratios are computed in RepLKNet's convention by default (see erf_maps).

Four levels, each with all routes together and each route alone (every mixer up to that point merging only
route k's scan output, through a per-call probe: the model is not changed, see interventions):

    mixer_erf(mixer, features)      one selective-scan mixer on (N, H, W, C) feature maps
    block_erf(block, features)      one EVSS block on (N, H, W, C) feature maps
    network_erf(model, images, s)   the network from the image to the end of stage s's blocks (the grid
                                    that stage's scans read, before its downsample); s = 3 is the final
                                    feature map
    effective_receptive_fields(model, level, ...)   picks the module, builds the inputs (random, seeded;
                                    or natural images, whose features at the module's input are captured)
    replknet_erf(model, images)     RepLKNet's reference setting: the final feature map at its centre,
                                    images stretched to 1024² (bicubic), the first 50 of a folder

For ES2D, route k reads only its own sub-map, so its ERF is taken at the position of that sub-map nearest
the requested one (`ScanRoutes.nearest_position`); the position used is in `ERF.position`. For SS2D every
route reads every position and the requested position is used.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from ..blocks import EVSSBlock
from ..checks import choice, integer
from ..mixer import SelectiveScan2D
from ..routes import scan_routes
from .erf_gradients import METHODS, ChosenActivation, contribution_map, input_gradients
from .erf_maps import (
    CONVENTIONS,
    NORMALISATIONS,
    THRESHOLDS,
    area_ratios,
    high_contribution_square,
    normalise,
    ratio_label,
)
from .interventions import capturing, for_inference, keep_only_route, on_inference_copy
from .progress import part, track

LEVELS = ("mixer", "block", "stage", "network")
REPLKNET_SIZE, REPLKNET_IMAGES = 1024, 50  # RepLKNet's setting: 50 ImageNet validation images at 1024²


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

    def area_ratios(self, thresholds=THRESHOLDS, convention: str = "replknet") -> dict[float, float]:
        """{t: ratio} in `convention` (erf_maps): RepLKNet's (NaN where no square qualifies) or cell-centred."""
        return area_ratios(self.contribution, self.centre, thresholds, convention)

    def square(self, threshold: float, convention: str = "replknet"):
        return high_contribution_square(self.contribution, self.centre, threshold, convention)


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
    skipped: int = 0  # inputs left out of the mean because their map was not finite

    def all(self) -> list[ERF]:
        return [self.combined, *self.routes]

    def table(self, thresholds=THRESHOLDS, conventions=CONVENTIONS):
        """A DataFrame: one row per ERF (all routes, then each route), its position and its area ratios in
        each convention (columns named by erf_maps.ratio_label; RepLKNet's NaN where no square qualifies)."""
        import pandas as pd
        rows = []
        for e in self.all():
            row = {"route": "all" if e.route is None else e.route, "name": e.route_name,
                   "row": e.position[0], "col": e.position[1],
                   "total": float(e.contribution.sum())}
            for convention in conventions:
                row.update({ratio_label(t, convention): r for t, r in e.area_ratios(thresholds, convention).items()})
            rows.append(row)
        return pd.DataFrame(rows)


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
    when no scan reads that grid: then the requested position is used for every route); and the number of
    inputs left out (non-finite maps)."""
    num_routes = mixers[0].num_routes if mixers else 0
    plans = [(None, requested)]
    if per_route and mixers:
        for k in range(num_routes):
            pos = requested
            if routes is not None and not routes.reads_position(k, *requested):  # ES2D: another sub-map's
                pos = routes.nearest_position(k, *requested)
            plans.append((k, pos))
    device = next(body.parameters()).device
    inputs = inputs.to(device)
    out, skipped = [], 0
    for i, (k, pos) in enumerate(track(plans, len(plans), desc, None, bar)):
        with keep_only_route(mixers, k) if k is not None else contextlib.nullcontext():
            # progress moves with every batch of inputs of every route, not only per route
            m = contribution_map(body, inputs, pos, channel_dim=channel_dim, method=method, batch_size=batch_size,
                                 bar=False, desc=desc, progress=part(progress, i / len(plans), (i + 1) / len(plans)))
        skipped = max(skipped, m.skipped)
        name = "all routes" if k is None else routes.routes[k].name if routes is not None else f"route {k}"
        out.append(ERF(m.contribution, pos, centre_of(pos), k, name))
    return out[0], out[1:], skipped


def _identity_centre(pos):
    return float(pos[0]), float(pos[1])


@on_inference_copy
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
    combined, per, skipped = _route_erfs(mixer, features, [mixer], mixer.routes(*grid), pos,
                                         centre_of=_identity_centre, channel_dim=-1, method=method,
                                         batch_size=batch_size, progress=progress, bar=bar, per_route=routes,
                                         desc=f"ERF of {name}")
    return RouteERFs("mixer", name, mixer.scan, mixer.step, grid, grid, pos,
                     inputs or f"{features.shape[0]} given feature maps", features.shape[0], combined, per,
                     skipped=skipped)


@on_inference_copy
def block_erf(block: EVSSBlock, features: torch.Tensor, position=None, *, routes: bool = True,
              method: str = "saliency", batch_size: int = 4, progress=None, bar: bool = True,
              name: str = "block", inputs: str | None = None) -> RouteERFs:
    """ERFs of one EVSS block (mixer, conv branch, gate, residual) on feature maps (N, H, W, C)."""
    if not isinstance(block, EVSSBlock):
        raise ValueError(f"block_erf takes an EVSS block, got {type(block).__name__}")
    features = _check_features(features, block.norm.normalized_shape[0], "the block")
    grid = tuple(features.shape[1:3])
    pos = _check_position(position, grid)
    combined, per, skipped = _route_erfs(block, features, [block.op], block.op.routes(*grid), pos,
                                         centre_of=_identity_centre, channel_dim=-1, method=method,
                                         batch_size=batch_size, progress=progress, bar=bar, per_route=routes,
                                         desc=f"ERF of {name}")
    notes = []
    if block.channel_gate is not None:
        notes.append("the block's channel gate pools over the whole map, so every position contributes a little")
    return RouteERFs("block", name, block.op.scan, block.op.step, grid, grid, pos,
                     inputs or f"{features.shape[0]} given feature maps", features.shape[0], combined, per,
                     notes=notes, skipped=skipped)


class NetworkToStage(nn.Module):
    """Image (B, 3, H, W) -> channels-last features at the end of stage `stage`'s blocks (before its
    downsample): the grid that stage's scans read (`EfficientVMamba.forward_to_stage`)."""

    def __init__(self, model, stage: int):
        super().__init__()
        self.model, self.stage = model, integer(stage, "stage", 0, len(model.layers) - 1)

    def forward(self, x):
        return self.model.forward_to_stage(x, self.stage)


@on_inference_copy
def network_erf(model, images: torch.Tensor, stage: int = 0, position=None, *, routes: bool = True,
                method: str = "saliency", batch_size: int = 4, progress=None, bar: bool = True,
                inputs: str | None = None) -> RouteERFs:
    """ERFs of the network from the input image (N, 3, H, W) to the end of stage `stage`'s blocks, at output
    `position` on that stage's grid (default the centre); the map is over image pixels. The last stage
    (3) ends at the final feature map, where RepLKNet takes its ERFs.

    Route k alone keeps only route k in every mixer up to that stage. For ES2D its position is the
    nearest one on route k's sub-map of the stage's grid when the stage is an EVSS stage; after an
    inverted-residual stage no scan reads the output grid and the requested position is used."""
    body = NetworkToStage(model, stage)
    stage = body.stage
    model.check_input(images)
    with torch.no_grad():
        grid = tuple(body(images[:1].to(next(model.parameters()).device)).shape[1:3])
    pos = _check_position(position, grid)
    h, w = images.shape[2:]
    stride = (h / grid[0], w / grid[1])
    mixers = [m for i in range(stage + 1) for _, m in model.layers[i].named_modules()
              if isinstance(m, SelectiveScan2D)]
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

    combined, per, skipped = _route_erfs(body, images, mixers, routes_obj, pos, centre_of=centre_of, channel_dim=1,
                                         method=method, batch_size=batch_size, progress=progress, bar=bar,
                                         per_route=routes, desc=f"ERF to stage {stage}")
    if skipped:
        notes.append(f"{skipped} of {images.shape[0]} inputs gave a non-finite map and are left out of the mean")
    return RouteERFs("stage", f"the network to stage {stage}", cfg.scan if mixers else None,
                     cfg.step if mixers else None, (h, w), grid, pos,
                     inputs or f"{images.shape[0]} given images", images.shape[0] - skipped, combined, per,
                     notes=notes, skipped=skipped)


# ---- everything from one call ---------------------------------------------------------------------------
def _check_size(size):
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"feature_size must be (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"feature_size must be positive, got {size!r}")
    return h, w


def captured_inputs(model, module: nn.Module, images: torch.Tensor, stage: int, batch_size: int = 4) -> torch.Tensor:
    """The inputs `module` (an EVSS block or a mixer inside stage `stage`) receives when the model runs on
    `images` in evaluation mode (recorded by a per-call probe: the model is not changed)."""
    if not isinstance(module, (EVSSBlock, SelectiveScan2D)):
        raise ValueError(f"captured_inputs records what an EVSS block or a mixer receives, got "
                         f"{type(module).__name__}")
    names = {id(m): n for n, m in model.named_modules()}
    if id(module) not in names:
        raise ValueError(f"the module is not part of this model ({type(model).__name__})")
    with for_inference(model) as model:  # in a copy, the same module is the one of the same name
        module = model.get_submodule(names[id(module)])
        with torch.no_grad(), capturing(module) as probe:
            for i in range(0, images.shape[0], batch_size):
                model.forward_to_stage(images[i:i + batch_size], stage)
    got = probe.captured.get((module, "input"))
    if not got:
        raise ValueError(f"the module is not part of stage {stage} of this model: nothing reached it")
    return torch.cat(got)


@on_inference_copy
def effective_receptive_fields(model, level: str = "stage", *, stage: int = 0, block: int = 0, inputs="random",
                               num_inputs: int | None = None, image_size: int | None = None, feature_size=None,
                               position=None, routes: bool = True, method: str = "saliency", seed: int = 0,
                               batch_size: int = 4, resize: str | None = None, progress=None,
                               bar: bool = True) -> RouteERFs:
    """ERFs of `model` at one level, all routes together and each route alone.

    level: "mixer" (block `block`'s scan mixer in stage `stage`), "block" (that EVSS block), "stage"
        (the network from the image to the end of stage `stage`'s blocks) or "network" (the network to its
        final feature map, the last stage's output: RepLKNet's level; `stage` is not used).
    inputs: "random" (num_inputs standard-normal images or feature maps, 4 by default, seeded by `seed`),
        or natural images: a sample name, a list of names, a folder, arrays (see `images.load_images`;
        None: the default samples); images are preprocessed to image_size, and for the mixer and block
        levels the features the module receives from them are used.
    image_size, resize: the side of the (random or natural) images, and how natural images become
        image_size x image_size: "crop" (the ImageNet evaluation transform) or "stretch" (a bicubic resize
        of the whole image, RepLKNet's ERF transform). None: as the weights expect (model.weights.inputs;
        224 and "crop" but for weights trained otherwise, such as the study's models). Natural images are
        normalised as the weights expect.
    feature_size: (H, W) of random feature maps at the mixer/block level (default: the stage's grid for an
        image_size input).
    position: (row, col) on the output grid; default its centre.
    """
    from .images import input_spec
    choice(level, "level", LEVELS)
    choice(method, "method", METHODS)
    spec = input_spec(model, image_size)
    image_size, resize = spec.size, spec.resize if resize is None else resize
    if level == "network":
        level, stage = "stage", len(model.layers) - 1
    stage = integer(stage, "stage", 0, len(model.layers) - 1)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    random = isinstance(inputs, str) and inputs == "random"
    if not random:
        for name, value in (("num_inputs", num_inputs), ("feature_size", feature_size)):
            if value is not None:
                raise ValueError(f"{name} applies to random inputs only; with natural images the images decide it "
                                 f"(pass inputs='random' to use {name})")
    num_inputs = integer(4 if num_inputs is None else num_inputs, "num_inputs", low=1)
    if feature_size is not None and level == "stage":
        raise ValueError("feature_size applies to the mixer and block levels; the stage level starts from "
                         "image_size x image_size images")
    if random:
        what = f"{num_inputs} random normal {'images' if level == 'stage' else 'feature maps'} (seed {seed})"
    else:
        from .images import image_batch
        images, names = image_batch(inputs, size=image_size, resize=resize, mean=spec.mean, std=spec.std)
        what = f"{len(names)} images ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
    common = dict(position=position, routes=routes, method=method, batch_size=batch_size, progress=progress,
                  bar=bar, inputs=what)
    if level == "stage":
        if random:
            images = torch.randn(num_inputs, 3, image_size, image_size, generator=gen)
        return network_erf(model, images.to(device), stage, **common)
    name, block_module = model.evss_block(stage, block)
    module, name = (block_module.op, name + ".op") if level == "mixer" else (block_module, name)
    if random:
        dim = model.config.dims[stage]
        grid = model.stage_grids(image_size, image_size)[stage]
        h, w = _check_size(feature_size) if feature_size is not None else grid
        features = torch.randn(num_inputs, h, w, dim, generator=gen).to(device)
    else:
        features = captured_inputs(model, module, images.to(device), stage, batch_size)
    fn = mixer_erf if level == "mixer" else block_erf
    return fn(module, features, name=name, **common)


def replknet_erf(model, images, *, image_size: int = REPLKNET_SIZE, num_images: int = REPLKNET_IMAGES,
                 routes: bool = False, method: str = "autograd", batch_size: int = 1, progress=None,
                 bar: bool = True) -> RouteERFs:
    """RepLKNet's reference ERF setting (their `erf/visualize_erf.py`): the network's final feature map at
    its centre, the first `num_images` images of `images` (a folder, sorted by name, or anything
    `images.load_images` takes; they use 50 ImageNet validation images) stretched to image_size² (bicubic;
    they use 1024) and normalised, the per-image maps averaged with non-finite ones left out and counted
    (`RouteERFs.skipped`). Read its area ratios in RepLKNet's convention (the default)."""
    from .images import load_images
    num_images = integer(num_images, "num_images", low=1)
    named = load_images(images)[:num_images]
    return effective_receptive_fields(model, "network", inputs=[a for _, a in named], image_size=image_size,
                                      resize="stretch", routes=routes, method=method, batch_size=batch_size,
                                      progress=progress, bar=bar)


__all__ = ["ERF", "LEVELS", "METHODS", "NORMALISATIONS", "REPLKNET_IMAGES", "REPLKNET_SIZE", "THRESHOLDS",
           "ChosenActivation", "NetworkToStage", "RouteERFs", "area_ratios", "block_erf", "captured_inputs",
           "contribution_map", "effective_receptive_fields", "high_contribution_square", "input_gradients",
           "mixer_erf", "network_erf", "normalise", "replknet_erf"]
