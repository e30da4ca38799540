"""Temporary changes to a model for analyses, always undone: keep or drop scan routes, replace the scan by
identity, evaluation mode. Each is a context manager, so an exception inside cannot leave a model altered.

    with keep_only_route(model, 2):       # every mixer merges only route 2's scan output
        ...
    with drop_route(model.layers[0].blocks[1], 0):
        ...
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from ..mixer import SelectiveScan2D


def scan_mixers(module: nn.Module) -> list[tuple[str, SelectiveScan2D]]:
    """(name, mixer) for every selective-scan mixer in `module` (the module itself included)."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, SelectiveScan2D)]


def _mixers(target) -> list[SelectiveScan2D]:
    if isinstance(target, SelectiveScan2D):
        return [target]
    if isinstance(target, nn.Module):
        return [m for _, m in scan_mixers(target)]
    mixers = list(target)
    for m in mixers:
        if not isinstance(m, SelectiveScan2D):
            raise ValueError(f"expected selective-scan mixers (SelectiveScan2D), got {type(m).__name__}")
    return mixers


def _check_route(mixer: SelectiveScan2D, k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < mixer.num_routes:
        raise ValueError(f"route must be an integer in 0..{mixer.num_routes - 1} ({mixer.scan} at step "
                         f"{mixer.step} has {mixer.num_routes} routes), got {k!r}")
    return k


@contextlib.contextmanager
def routes_kept(target, masks):
    """Set `keep_routes` of the mixers in `target` (a mixer, a module holding mixers, or a list of mixers)
    to `masks(mixer)` (a (K,) tensor, or None for all routes) and restore the previous values on exit."""
    mixers = _mixers(target)
    saved = [m.keep_routes for m in mixers]
    try:
        for m in mixers:
            mask = masks(m)
            m.keep_routes = None if mask is None else torch.as_tensor(mask, dtype=torch.float32,
                                                                      device=m.A_logs.device)
        yield mixers
    finally:
        for m, keep in zip(mixers, saved):
            m.keep_routes = keep


def _route_k_set_to(k: int, value: float):
    """The mask maker for routes_kept: route k gets `value`, every other route 1 - value."""
    def mask(m):
        out = torch.full((m.num_routes,), 1.0 - value)
        out[_check_route(m, k)] = value
        return out
    return mask


def keep_only_route(target, k: int):
    """Context: the mixers in `target` merge only route k's scan output (route k alone)."""
    return routes_kept(target, _route_k_set_to(k, 1.0))


def drop_route(target, k: int):
    """Context: the mixers in `target` merge every route's scan output except route k's."""
    return routes_kept(target, _route_k_set_to(k, 0.0))


@contextlib.contextmanager
def scan_replaced_by_identity(target):
    """Context: each mixer's cross-scan + selective scan + cross-merge returns its input unchanged, so the
    mixer is in_proj, depthwise 3x3 conv, SiLU, norm, gate and out_proj: only its convolutional part.
    The receptive field of a model in this context is the conv-only receptive field."""
    mixers = _mixers(target)
    try:
        for m in mixers:
            m.scan_map = _identity  # instance attribute shadows the method
        yield mixers
    finally:
        for m in mixers:
            m.__dict__.pop("scan_map", None)


def _identity(x):
    return x


@contextlib.contextmanager
def evaluation_mode(module: nn.Module):
    """Context: `module` in eval mode (BatchNorm uses running statistics, no stochastic depth), so every
    sample is computed on its own; each submodule's training flag is restored on exit."""
    flags = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        yield module
    finally:
        for m, flag in flags:
            m.training = flag
