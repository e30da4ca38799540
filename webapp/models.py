"""The models the app computes with: built on demand from the model panel (a ModelConfig, a weights choice,
a seed), kept in a small least-recently-used cache and shared by every request. Analyses never change the
model they are given (evmamba.probes), so requests use a cached model at the same time without a lock;
only building one is serialised, per model."""
from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict

from evmamba.checkpoint import describe_checkpoint, read_checkpoint
from evmamba.errors import CheckpointMismatchError
from evmamba.factory import PRETRAINED, create, imagenet_weights
from evmamba.model import ModelConfig
from evmamba.study_models import load_study_model, study_model_meta

from . import weights as W
from .settings import SETTINGS

_CACHE: OrderedDict = OrderedDict()
_LOCK = threading.Lock()
_BUILDING: dict = {}  # key -> a lock held while that model is built


def clear():
    with _LOCK:
        _CACHE.clear()


def _design_difference(fits: dict, config: ModelConfig) -> list[str]:
    """The fields (other than the class count) where a checkpoint's design differs from the chosen one."""
    chosen = config.validate()
    fitted = ModelConfig(**{**dataclasses.asdict(chosen), **fits}).validate()
    return [f"{f.name}={getattr(fitted, f.name)!r} (chosen: {getattr(chosen, f.name)!r})"
            for f in dataclasses.fields(ModelConfig)
            if f.name != "num_classes" and getattr(fitted, f.name) != getattr(chosen, f.name)]


def _build(config: ModelConfig, weights: W.Weights | None, seed: int):
    if weights is None:
        return create(config, seed=seed)
    if weights.kind == "study":  # its design, task classes and inputs come with it
        differ = _design_difference(study_model_meta(weights.source)["model"], config)
        if differ:
            raise ValueError(f"{weights.source} was trained as another design: {', '.join(differ)}; set those in "
                             "the model settings, or choose random weights for the design chosen")
        return load_study_model(weights.source, backend=config.backend)
    ckpt = read_checkpoint(weights.source, max_bytes=SETTINGS.hub_max_bytes)
    fits = describe_checkpoint(ckpt)
    differ = _design_difference(fits, config)
    if differ:
        raise ValueError(f"{weights.label} is an EfficientVMamba-{fits.get('variant', '?')} checkpoint whose design "
                         f"differs from the one chosen: {', '.join(differ)}; set those in the model settings")
    config = dataclasses.replace(config, num_classes=fits.get("num_classes", config.num_classes))
    try:
        model = create(config, weights=ckpt)
    except CheckpointMismatchError:
        raise ValueError(f"{weights.label} does not fit the chosen model: its keys or shapes differ (is it an "
                         "EfficientVMamba checkpoint?)") from None
    if weights.source in PRETRAINED.values():
        imagenet_weights(model)
    return model


def get(config: ModelConfig, weights: W.Weights | None, seed: int):
    """(model, description) for the panel's settings, from the cache or built now (eval mode, on the app's
    device)."""
    config = config.validate()
    key = (config, None if weights is None else weights.key, seed if weights is None else None, SETTINGS.device)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        building = _BUILDING.setdefault(key, threading.Lock())
    with building:
        with _LOCK:
            if key in _CACHE:
                return _CACHE[key]
        model = _build(config, weights, seed).to(SETTINGS.device).eval()
        built = model.config
        what = (f"EfficientVMamba-{built.variant} " + ", ".join(f"{k} {v}" for k, v in built.shown().items()
                                                               if k != "variant" and v != "-")
                + f"; {model.weights.describe()}")
        with _LOCK:
            _CACHE[key] = (model, what)
            while len(_CACHE) > max(1, SETTINGS.cached_models):
                _CACHE.popitem(last=False)
            _BUILDING.pop(key, None)
        return model, what


__all__ = ["clear", "get"]
