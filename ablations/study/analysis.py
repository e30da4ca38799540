"""What the study's trained models do: per-route effective receptive fields on task images next to the
same model at initialisation, and route contributions (accuracy and logit margin with each route removed).

    model = trained_model(run)             # a kept run's weights (ablations.study.run_study)
    model = initial_model(run)             # the same network as the trainer initialised it
    fields = erfs(model, images, level="block")           # RouteERFs: all routes, then each route
    with as_run(model, run): ...                          # a scan-free run's model as it was trained
    effects = route_effects(model, images, labels)          # one row per route removed (and all of them)
    pictures = study_pictures("study:markers", 8)           # a shipped model's test images, as pictures
"""
from __future__ import annotations

import dataclasses

import torch

from evmamba.model import ModelConfig

from ..data import TaskDataset

LEVELS = ("block", "stage")


def _config(run: dict) -> ModelConfig:
    return dataclasses.replace(ModelConfig(**run["config"]["model"]), num_classes=sum(run["heads"]))


def initial_model(run: dict):
    """The run's network with the weights the trainer started from (its seed), in eval mode."""
    from evmamba import create
    return create(_config(run), seed=run["config"]["seed"]).eval()


def trained_model(run: dict):
    """The run's trained weights (its final.pth), in eval mode."""
    from evmamba import create
    return create(_config(run), weights=run["checkpoint"]).eval()


def test_images(run: dict, count: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images and labels count..: the run's fixed test set (its test_seed's stream)."""
    from ..train import TrainConfig
    c = TrainConfig.from_dict(run["config"])
    seed, offset = c.test_split()
    data = TaskDataset(c.data, count, c.image_size, seed, start=offset + start)
    xs, ys = zip(*(data[i] for i in range(len(data))))
    return torch.stack(xs), torch.stack(ys)


def study_pictures(source, count: int, start: int = 0) -> list:
    """The first `count` test images (from `start`) of the task a shipped study model was trained on, as
    pictures: the images its test accuracy was measured on. source: "study:NAME", or a model loaded from
    one (build_model(..., weights="study:NAME"))."""
    from evmamba.study_models import is_study_name, study_model_meta

    from .tasks import pictures
    if not isinstance(source, str):
        source = getattr(getattr(source, "weights", None), "source", None)
    if not is_study_name(source):
        raise ValueError("task images are the test images of a study model's task: choose study weights "
                         "(study:...), or natural images")
    meta = study_model_meta(source)
    return pictures(meta["task"], count, meta["image_size"], meta["test_seed"], start)


def erfs(model, images: torch.Tensor, level: str, inputs: str = "", *, stage: int = 0, routes: bool = True):
    """Per-route ERFs of `model` on task `images`: level "block" is the last EVSS block of stage `stage` on
    the features it receives (the grid the scans read); "stage" is the network from the image to the end of
    that stage (the map over pixels). routes=False: all routes together only."""
    from evmamba.analysis.erf import block_erf, captured_inputs, network_erf
    if level == "stage":
        return network_erf(model, images, stage, bar=False, method="autograd", inputs=inputs, routes=routes)
    if level != "block":
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    name, block = model.evss_block(stage, len(model.layers[stage].blocks) - 1)
    features = captured_inputs(model, block, images, stage)
    return block_erf(block, features, bar=False, method="autograd", name=name, inputs=inputs, routes=routes)


def as_run(model, run: dict):
    """Context: the model as its run trained and tested it (a scan-free run's scans replaced by the
    identity; any other run as it is)."""
    import contextlib

    from evmamba.analysis.interventions import scan_replaced_by_identity
    return scan_replaced_by_identity(model) if run["config"].get("scan_free") else contextlib.nullcontext()


@torch.no_grad()
def route_effects(model, images: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    """Accuracy (%) and mean correct-class logit margin (the correct logit minus the largest other) of the
    model as it is, with route k's scan output removed from every mixer's merge (each k), and with every
    route removed (the mixers' scan outputs all zero)."""
    from evmamba.analysis.interventions import drop_route, routes_kept
    from evmamba.model import scan_mixers
    y = labels[:, 0]

    def measure(ctx):
        with ctx:
            logits = model(images)
        correct = logits.gather(1, y[:, None])[:, 0]
        others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
        return 100 * (logits.argmax(1) == y).float().mean().item(), (correct - others).mean().item()

    import contextlib
    acc, margin = measure(contextlib.nullcontext())
    rows = [{"removed": "none", "accuracy": acc, "margin": margin, "margin change": 0.0}]
    mixers = [m for _, m in scan_mixers(model)]
    if not mixers:
        return rows
    routes = mixers[0].routes(4, 4).routes
    for k, route in enumerate(routes):
        a, m = measure(drop_route(model, k))
        rows.append({"removed": f"route {k} ({route.name})", "accuracy": a, "margin": m, "margin change": m - margin})
    a, m = measure(routes_kept(model, lambda mx: torch.zeros(mx.num_routes)))
    rows.append({"removed": "all routes", "accuracy": a, "margin": m, "margin change": m - margin})
    return rows


__all__ = ["LEVELS", "as_run", "erfs", "initial_model", "route_effects", "study_pictures", "test_images",
           "trained_model"]
