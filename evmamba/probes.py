"""What an analysis asks of the model's layers during its own forward passes, passed per call.

An analysis never changes the model it is given: no attributes set on mixers, no methods replaced, no
hooks registered. What it needs from a layer travels with the call instead, in a `Probe` that is active
for the forward passes made inside a `with probe(...)` block of the same thread (or asyncio task):

    with probe(route_weights={mixer: torch.tensor([0., 0., 1., 0.])}):   # mixer merges route 2 alone
        model(x)
    with probe(scans={mixer: identity_scan}):                            # mixer's scan replaced
        model(x)
    with probe(capture={block}) as p:                                     # record what a layer sees
        model(x)
    p.captured[block, "input"]                                            # [tensor, ...], one per call

So two analyses can run on one model at the same time, each in its own thread, and neither sees the
other's probe. The layers read the active probe at one place each (`SelectiveScan2D.forward`,
`EVSSBlock.forward`); compiled code never sees one (it is for eager analyses).

Capture points: an EVSS block's "input" (what it receives), a mixer's "input" (the normalised map the
block hands it) and "scan_input" (SiLU of its depthwise conv: the map the cross-scan reads), each
(B, ...) as the layer holds it, detached.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch

_ACTIVE: ContextVar[Probe | None] = ContextVar("evmamba_probe", default=None)


@dataclass
class Probe:
    """route_weights: mixer -> (K,) weights of its routes' outputs in the merge (0 drops a route).
    scans: mixer -> fn(mixer, x) replacing its cross-scan, selective scan and merge ((B, d, H, W) in and out).
    capture: the layers whose capture points are recorded into `captured[(layer, point)]`."""

    route_weights: Mapping = field(default_factory=dict)
    scans: Mapping = field(default_factory=dict)
    capture: frozenset = frozenset()
    captured: dict = field(default_factory=dict)

    def weights_for(self, mixer) -> torch.Tensor | None:
        return self.route_weights.get(mixer)

    def scan_for(self, mixer) -> Callable | None:
        return self.scans.get(mixer)

    def record(self, layer, point: str, value: torch.Tensor) -> None:
        if layer in self.capture:
            self.captured.setdefault((layer, point), []).append(value.detach())


def active() -> Probe | None:
    """The probe of the calling thread's current `with probe(...)` block, or None (always None while
    torch.compile traces)."""
    if torch.compiler.is_compiling():
        return None
    return _ACTIVE.get()


@contextlib.contextmanager
def probe(route_weights: Mapping | None = None, scans: Mapping | None = None, capture: Iterable = ()):
    """Make a Probe active for the forward passes inside the block (this thread only); yields it. A probe
    opened inside another adds to it: the outer one's route weights and scans hold unless the inner one names
    the same mixer; each records only its own captures."""
    outer = _ACTIVE.get()
    p = Probe({**(outer.route_weights if outer else {}), **(route_weights or {})},
              {**(outer.scans if outer else {}), **(scans or {})}, frozenset(capture))
    token = _ACTIVE.set(p)
    try:
        yield p
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def using(p: Probe | None):
    """Make exactly `p` the active probe inside the block (None: none), whatever was active outside."""
    token = _ACTIVE.set(p)
    try:
        yield p
    finally:
        _ACTIVE.reset(token)


def identity_scan(mixer, x: torch.Tensor) -> torch.Tensor:
    """A scan replacement that returns its input: the mixer keeps only its convolutional part."""
    return x


__all__ = ["Probe", "active", "identity_scan", "probe", "using"]
