"""What the classifier sees in an image: its top classes, captum attributions for one class, and how much
each scan direction contributes to that class's logit.

    pred = predict(model, "chelsea")                       # top-5 with ImageNet names (pretrained or not)
    att = attributions(model, "chelsea", target=pred.top_class)   # Integrated Gradients, Saliency, ...
    df = route_contributions(model, "chelsea")             # logit change with each route removed, per block

A model whose weights were loaded (`model.weights.trained`: build_model(..., pretrained=True), load_checkpoint,
or a study model) is taken as trained; any other model as randomly initialised, unless `pretrained=` says
otherwise. The results say which it was, since the classes of a random model mean nothing. Class names come
from `model.weights.class_names` (ImageNet-1K's for other 1000-class models).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..checks import integer
from ..model import Weights
from .interventions import drop_route, on_inference_copy, routes_kept
from .progress import track

ATTRIBUTION_METHODS = ("integrated_gradients", "saliency", "input_x_gradient", "smoothgrad")
SIGNED = {"integrated_gradients": True, "saliency": False, "input_x_gradient": True, "smoothgrad": False}
BASELINES = ("black", "mean")
RANDOM_NOTE = ("randomly initialised weights: these classes and attributions say nothing about images; load "
               "a checkpoint (build_model(variant, pretrained=True) or load_checkpoint) for meaningful ones")


def _weights(model) -> Weights:
    return getattr(model, "weights", None) or Weights()


def _is_pretrained(model, pretrained):
    if pretrained is None:
        return _weights(model).trained
    if not isinstance(pretrained, bool):
        raise ValueError(f"pretrained must be True, False or None (inferred), got {pretrained!r}")
    return pretrained


def _class_names(model) -> list[str]:
    names = _weights(model).class_names
    if names is not None and len(names) == model.num_classes:
        return list(names)
    if model.num_classes == 1000:
        from ..imagenet import class_names
        return class_names()
    return [f"class {i}" for i in range(model.num_classes)]


def image_input(image, image_size: int | None = None, seed: int = 0, model=None):
    """(x, picture): the model input (1, 3, S, S) and the picture it shows (S, S, 3) in [0, 1].

    image: a sample name, path, PIL image or array (prepared as `model`'s weights expect:
    model.weights.inputs, by default the ImageNet evaluation transform at 224), an already normalised
    tensor (1, 3, H, W) or (3, H, W), or "random". image_size: the side, instead of the weights' own."""
    from .images import image_batch, input_spec, to_picture
    spec = input_spec(model, image_size)
    if isinstance(image, torch.Tensor):
        x = image[None] if image.dim() == 3 else image
        if x.dim() != 4 or x.shape[:2] != (1, 3):
            raise ValueError(f"expected one normalised image (1, 3, H, W), got {tuple(image.shape)}")
    elif isinstance(image, str) and image == "random":
        x = torch.randn(1, 3, spec.size, spec.size, generator=torch.Generator().manual_seed(seed))
    elif isinstance(image, (list, tuple)):
        raise ValueError("attributions are for one image at a time; pass one name, path or array")
    else:
        x, _ = image_batch(image, size=spec.size, resize=spec.resize, mean=spec.mean, std=spec.std)
    return x.float(), to_picture(x, spec.mean, spec.std)


class _Ticking(torch.nn.Module):
    """The model, reporting progress(done / total) after each forward pass (captum's batches)."""

    def __init__(self, model, total: int, progress, desc: str):
        super().__init__()
        self.model, self.total, self.progress, self.desc, self.done = model, max(total, 1), progress, desc, 0

    def forward(self, x):
        out = self.model(x)
        self.done += 1
        if self.progress is not None:
            self.progress(min(self.done / self.total, 1.0), desc=self.desc)
        return out


def _check_model(model):
    if getattr(model, "num_classes", 0) < 1:
        raise ValueError("this model has no classifier head (num_classes=0): build it with num_classes > 0")


# ---- top classes ------------------------------------------------------------------------------------------------
@dataclass
class Prediction:
    classes: object  # DataFrame: rank, class, name, probability, logit
    pretrained: bool
    note: str | None
    logits: torch.Tensor = field(repr=False)

    @property
    def top_class(self) -> int:
        return int(self.classes["class"].iloc[0])


@on_inference_copy
def predict(model, image, k: int = 5, *, pretrained: bool | None = None, image_size: int | None = None) -> Prediction:
    """The k most probable classes of one image, with names (ImageNet-1K for 1000-class models)."""
    import pandas as pd
    _check_model(model)
    k = integer(k, "k", low=1)
    pretrained = _is_pretrained(model, pretrained)
    x, _ = image_input(image, image_size, model=model)
    with torch.no_grad():
        logits = model(x.to(next(model.parameters()).device))[0].float().cpu()
    probs = logits.softmax(-1)
    p, idx = probs.topk(min(k, logits.numel()))
    names = _class_names(model)
    table = pd.DataFrame({"rank": range(1, len(idx) + 1), "class": idx.tolist(),
                          "name": [names[i] for i in idx.tolist()], "probability": p.tolist(),
                          "logit": logits[idx].tolist()})
    return Prediction(table, pretrained, None if pretrained else RANDOM_NOTE, logits)


# ---- captum attributions ------------------------------------------------------------------------------------
@dataclass
class Attributions:
    target: int
    target_name: str
    raw: dict  # method -> (3, H, W) attribution to each input value
    maps: dict  # method -> (H, W): signed sum over colour channels, or max |.| over them (unsigned methods)
    signed: dict  # method -> whether its map is signed
    picture: np.ndarray  # (H, W, 3) in [0, 1]: the image the model saw
    pretrained: bool
    note: str | None
    convergence_delta: float | None = None  # Integrated Gradients: sum of attributions - (f(x) - f(baseline))
    logit: float | None = None


def _target(model, logits, target):
    if target is None:
        return int(logits.argmax())
    return integer(target, "target", 0, model.num_classes - 1, what="a class id")


def _baseline(x, baseline, spec):
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}: valid baselines are {', '.join(BASELINES)}")
    if baseline == "mean":  # the normalisation's mean colour: zero after normalisation
        return torch.zeros_like(x)
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (torch.zeros_like(x) - mean) / std  # a black image, normalised


@on_inference_copy
def attributions(model, image, target: int | None = None, *, methods=("integrated_gradients", "saliency"),
                 pretrained: bool | None = None, image_size: int | None = None, n_steps: int = 24,
                 baseline: str = "black", smoothgrad_samples: int = 8, smoothgrad_sigma: float = 0.15,
                 batch_size: int = 8, progress=None, bar: bool = True) -> Attributions:
    """Captum attributions of class `target` (default: the top class) for one image.

    methods: any of integrated_gradients (n_steps Gauss-Legendre steps from a black or mean-colour
    baseline), saliency (|gradient|), input_x_gradient, smoothgrad (saliency averaged over
    smoothgrad_samples noisy copies, noise std smoothgrad_sigma in normalised units)."""
    from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency
    _check_model(model)
    methods = [methods] if isinstance(methods, str) else list(methods)
    bad = [m for m in methods if m not in ATTRIBUTION_METHODS]
    if bad or not methods:
        raise ValueError(f"unknown attribution method(s) {', '.join(map(repr, bad)) or '(none given)'}: valid methods "
                         f"are {', '.join(ATTRIBUTION_METHODS)}")
    for name, v in (("n_steps", n_steps), ("smoothgrad_samples", smoothgrad_samples), ("batch_size", batch_size)):
        integer(v, name, low=1)
    pretrained = _is_pretrained(model, pretrained)
    from .images import input_spec
    x, picture = image_input(image, image_size, model=model)
    device = next(model.parameters()).device
    x = x.to(device)
    base = _baseline(x, baseline, input_spec(model))
    raw, maps, delta = {}, {}, None
    with torch.no_grad():
        logits = model(x)[0]
    target = _target(model, logits, target)
    # progress moves with every forward pass captum makes (the methods' internal batches), not per method
    calls = {"integrated_gradients": -(-n_steps // batch_size) + 2,  # + the convergence check's two passes
             "saliency": 1, "input_x_gradient": 1,
             "smoothgrad": -(-smoothgrad_samples // batch_size)}
    ticking = _Ticking(model, sum(calls[m] for m in methods), progress, "attributions")
    for method in track(methods, len(methods), "attributions", None, bar):
        inputs = x.detach().clone().requires_grad_(True)
        if method == "integrated_gradients":
            out, d = IntegratedGradients(ticking).attribute(inputs, baselines=base, target=target,
                                                            n_steps=n_steps, internal_batch_size=batch_size,
                                                            return_convergence_delta=True)
            delta = float(d.abs().max())
        elif method == "saliency":
            out = Saliency(ticking).attribute(inputs, target=target, abs=True)
        elif method == "input_x_gradient":
            out = InputXGradient(ticking).attribute(inputs, target=target)
        else:
            out = NoiseTunnel(Saliency(ticking)).attribute(
                inputs, nt_type="smoothgrad", nt_samples=smoothgrad_samples, nt_samples_batch_size=batch_size,
                stdevs=smoothgrad_sigma, target=target, abs=True)
        a = out.detach()[0].cpu().numpy()
        raw[method] = a
        maps[method] = a.sum(0) if SIGNED[method] else np.abs(a).max(0)
    names = _class_names(model)
    return Attributions(target, names[target], raw, maps, {m: SIGNED[m] for m in methods}, picture, pretrained,
                        None if pretrained else RANDOM_NOTE, delta, float(logits[target]))


# ---- per-direction contribution ------------------------------------------------------------------------------
def _chosen_mixers(model, blocks):
    mixers = model.mixers()
    if not mixers:
        raise ValueError("this model has no scan mixers (every stage is inverted-residual), so no routes to remove")
    names = [n for n, _ in mixers]
    if blocks is None:
        return mixers
    blocks = [blocks] if isinstance(blocks, (str, int)) else list(blocks)
    out = []
    for b in blocks:
        if isinstance(b, str):
            key = b if b in names else f"{b}.op" if f"{b}.op" in names else None
            if key is None:
                raise ValueError(f"no EVSS block or mixer named {b!r}: the mixers are {', '.join(names)} "
                                 "(their blocks are the names without .op)")
            out.append(mixers[names.index(key)])
        elif isinstance(b, int) and not isinstance(b, bool) and 0 <= b < len(mixers):
            out.append(mixers[b])
        else:
            raise ValueError(f"blocks must be mixer indices in 0..{len(mixers) - 1} or names ({', '.join(names)}), "
                             f"got {b!r}")
    if not out:
        raise ValueError("blocks is empty: name at least one block, or pass None for all EVSS blocks")
    return out


@on_inference_copy
def route_contributions(model, image, target: int | None = None, *, blocks=None, pretrained: bool | None = None,
                        image_size: int | None = None, progress=None, bar: bool = True):
    """How much each scan direction adds to the class `target`'s logit (default: the top class).

    For each chosen block (default: every EVSS block; indices into model.mixers() or names such as
    "layers.0.blocks.1"), each route k is removed from that block's merge alone (its `keep_routes` zero
    at k), and also all routes at once (route "all"); then the same with the route removed in every chosen
    block together (block "all chosen"). A DataFrame with one row per (block, route): the logit without
    the route and its change from the full model's logit (negative: the route supported the class)."""
    import pandas as pd
    _check_model(model)
    pretrained = _is_pretrained(model, pretrained)
    chosen = _chosen_mixers(model, blocks)
    x, _ = image_input(image, image_size, model=model)
    x = x.to(next(model.parameters()).device)
    names = _class_names(model)
    with torch.no_grad():
        logits = model(x)[0]
        target = _target(model, logits, target)
        full = float(logits[target])
        num_routes = chosen[0][1].num_routes
        groups = [(n.removesuffix(".op"), [m]) for n, m in chosen]
        if len(chosen) > 1:
            groups.append(("all chosen", [m for _, m in chosen]))
        plans = [(g, mixers, k) for g, mixers in groups for k in [*range(num_routes), "all"]]
        rows = []
        for group, mixers, k in track(plans, len(plans), "route contributions", progress, bar):
            if k == "all":
                ctx = routes_kept(mixers, lambda m: torch.zeros(m.num_routes))
            else:
                ctx = drop_route(mixers, k)
            with ctx:
                out = model(x)[0]
            logit = float(out[target])
            m0 = mixers[0]
            rows.append({"block": group, "route": k,
                         "route name": "all routes" if k == "all" else m0.routes(4, 4).routes[k].name,
                         "logit without": logit, "change": logit - full,
                         "probability without": float(out.softmax(-1)[target])})
    df = pd.DataFrame(rows)
    df.attrs.update(target=target, target_name=names[target], full_logit=full,
                    full_probability=float(logits.softmax(-1)[target]), pretrained=pretrained,
                    note=None if pretrained else RANDOM_NOTE)
    return df


__all__ = ["ATTRIBUTION_METHODS", "Attributions", "Prediction", "attributions", "image_input", "predict",
           "route_contributions"]
