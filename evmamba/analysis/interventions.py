"""What analyses do to a model's forward pass, without changing the model: keep or drop scan routes,
replace the scan by the identity, capture what a layer receives, run in evaluation mode. Each is a
context manager over a per-call probe (evmamba.probes), active for the forward passes of the calling
thread inside the block, so two analyses can share one model at the same time.

    with keep_only_route(model, 2):       # every mixer merges only route 2's scan output
        ...
    with drop_route(model.layers[0].blocks[1], 0):
        ...
    with for_inference(model) as model:   # the model itself when nothing in it behaves differently in
        ...                               # training, else an evaluation-mode copy (the caller's model
                                          # keeps its mode), with the caller's probes carried over
"""
from __future__ import annotations

import contextlib
import copy
import functools

import torch
import torch.nn as nn

from ..blocks import DropPath
from ..checks import integer
from ..mixer import SelectiveScan2D
from ..model import scan_mixers
from ..probes import Probe, active, identity_scan, probe, using
from ..routes import scan_label


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


def check_route(mixer: SelectiveScan2D, k) -> int:
    return integer(k, "route", 0, mixer.num_routes - 1,
                   note=f" ({scan_label(mixer.scan, mixer.step)} has {mixer.num_routes} routes)")


def routes_kept(target, masks):
    """Context: the mixers in `target` (a mixer, a module holding mixers, or a list of mixers) weight their
    routes' outputs in the merge by `masks(mixer)` (a (K,) tensor; None leaves that mixer as it is)."""
    weights = {}
    for m in _mixers(target):
        mask = masks(m)
        if mask is not None:
            weights[m] = torch.as_tensor(mask, dtype=torch.float32, device=m.A_logs.device)
    return probe(route_weights=weights)


def _route_k_set_to(k, value: float):
    """The mask maker for routes_kept: route k gets `value`, every other route 1 - value."""
    def mask(m):
        out = torch.full((m.num_routes,), 1.0 - value)
        out[check_route(m, k)] = value
        return out
    return mask


def keep_only_route(target, k: int):
    """Context: the mixers in `target` merge only route k's scan output (route k alone)."""
    return routes_kept(target, _route_k_set_to(k, 1.0))


def drop_route(target, k: int):
    """Context: the mixers in `target` merge every route's scan output except route k's."""
    return routes_kept(target, _route_k_set_to(k, 0.0))


def scan_replaced_by_identity(target):
    """Context: each mixer's cross-scan + selective scan + cross-merge returns its input unchanged, so the
    mixer is in_proj, depthwise 3x3 conv, SiLU, norm, gate and out_proj: only its convolutional part.
    The receptive field of a model in this context is the conv-only receptive field."""
    return probe(scans={m: identity_scan for m in _mixers(target)})


def capturing(*layers):
    """Context yielding a probe that records what the given EVSS blocks and mixers receive (see
    evmamba.probes for the capture points)."""
    return probe(capture=layers)


def _trains_differently(module: nn.Module) -> bool:
    """Whether some submodule in training mode would compute differently in evaluation mode (BatchNorm on
    batch statistics, dropout, stochastic depth)."""
    for m in module.modules():
        if not m.training:
            continue
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
            return True
        if isinstance(m, DropPath) and m.p > 0:
            return True
    return False


@contextlib.contextmanager
def for_inference(module: nn.Module):
    """Context yielding `module` itself when nothing in it computes differently in training mode, else an
    evaluation-mode deep copy, so that an analysis never switches the caller's model. With a copy, the
    probe active outside (route weights, scan replacements, captures keyed by the caller's layers) is
    carried over to the copy's layers for the block, and what it captures is handed back."""
    if not _trains_differently(module):
        yield module
        return
    twin = copy.deepcopy(module).eval()
    outer = active()
    if outer is None:
        yield twin
        return
    originals, twins = dict(module.named_modules()), dict(twin.named_modules())
    to_twin = {id(m): twins[n] for n, m in originals.items()}
    back = {id(twins[n]): m for n, m in originals.items()}

    def there(layer):
        return to_twin.get(id(layer), layer)

    inner = Probe({there(k): v for k, v in outer.route_weights.items()},
                  {there(k): v for k, v in outer.scans.items()}, frozenset(there(k) for k in outer.capture))
    with using(inner):
        yield twin
    for (layer, point), values in inner.captured.items():
        outer.captured.setdefault((back.get(id(layer), layer), point), []).extend(values)


def on_inference_copy(fn):
    """Decorator: run `fn(module, ...)` with its first argument through `for_inference` (the module
    itself, or an evaluation-mode copy that the caller's probes follow)."""
    @functools.wraps(fn)
    def run(module, *args, **kwargs):
        with for_inference(module) as m:
            return fn(m, *args, **kwargs)
    return run


__all__ = ["capturing", "check_route", "drop_route", "for_inference", "keep_only_route", "on_inference_copy",
           "routes_kept", "scan_replaced_by_identity"]
