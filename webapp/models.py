"""The models the app computes with: built on demand from the model panel (a ModelConfig, a weights choice,
a seed), kept in a small least-recently-used cache and shared by every request. Analyses never change the
model they are given (evmamba.probes), so requests use a cached model at the same time without a lock;
only building one is serialised, per model."""
from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict

from evmamba.checkpoint import read_checkpoint
from evmamba.errors import CheckpointMismatchError, DesignMismatchError
from evmamba.factory import Fit, build, fit
from evmamba.model import ModelConfig

from . import weights as W
from .settings import SETTINGS

_CACHE: OrderedDict = OrderedDict()
_LOCK = threading.Lock()
_BUILDING: dict = {}  # key -> a lock held while that model is built


def clear():
    with _LOCK:
        _CACHE.clear()


def _fit(config: ModelConfig, weights: W.Weights | None) -> Fit:
    """The design that runs (evmamba.factory.fit): the panel's design fields are all given, so a value the
    weights cannot honour is refused with its name; the class count comes from the weights."""
    options = {f.name: getattr(config, f.name) for f in dataclasses.fields(ModelConfig) if "column" in f.metadata}
    options["backend"] = config.backend
    if weights is None:
        return fit(None, num_classes=config.num_classes, **options)
    source = weights.source if weights.kind == "study" else read_checkpoint(weights.source,
                                                                             max_bytes=SETTINGS.hub_max_bytes)
    try:
        return fit(source, label=weights.label, **options)
    except DesignMismatchError as e:
        raise ValueError(f"{e}; set those in the model settings, or choose random weights for the design "
                         "chosen") from None


def _key(config: ModelConfig, weights: W.Weights | None, seed: int):
    return config.validate(), None if weights is None else weights.key, seed if weights is None else None, \
        SETTINGS.device


def get(config: ModelConfig, weights: W.Weights | None, seed: int, check=None):
    """(model, description) for the panel's settings, from the cache or built now (eval mode, on the app's
    device). check(config, size) runs before anything is built (the budget: it raises to refuse), on the
    design that will run and the input side its weights expect."""
    key = _key(config, weights, seed)
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            _CACHE.move_to_end(key)
    if cached is not None:
        if check is not None:
            check(cached[0].config, cached[0].weights.inputs.size)
        return cached
    planned = _fit(config, weights)
    if check is not None:
        check(planned.config, planned.image_size)
    with _LOCK:
        building = _BUILDING.setdefault(key, threading.Lock())
    with building:
        with _LOCK:
            if key in _CACHE:
                return _CACHE[key]
        try:
            model = build(planned, seed=seed)
        except CheckpointMismatchError:
            raise ValueError(f"{weights.label} does not fit the chosen model: its keys or shapes differ (is it an "
                             "EfficientVMamba checkpoint?)") from None
        model = model.to(SETTINGS.device).eval()
        built = model.config
        what = (f"EfficientVMamba-{built.variant} " + ", ".join(f"{k} {v}" for k, v in built.shown().items()
                                                               if k != "variant" and v != "-")
                + "; " + (model.weights.describe() if weights is None  # an upload by its name, not the server's path
                          else model.weights.describe().replace(weights.source, weights.label)))
        with _LOCK:
            _CACHE[key] = (model, what)
            while len(_CACHE) > max(1, SETTINGS.cached_models):
                _CACHE.popitem(last=False)
            _BUILDING.pop(key, None)
        return model, what


__all__ = ["clear", "get"]
