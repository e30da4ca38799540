"""How closely two computations agree: one tensor (`rel_err`), or a whole set of gradients (`grad_agreement`).

A per-tensor relative error max|a - b| / max|b| is the right measure for one output, but not for a model's
gradients one tensor at a time: some are zero by construction (a convolution's bias just before a
BatchNorm in training mode: the normalisation removes any constant, so its gradient is rounding noise),
and the ratio of two rounding noises says nothing. `grad_agreement` measures each tensor's error on the
scale of that tensor or, when the tensor is far smaller than the gradients around it, on a floor set by
the largest gradient of the set:

    error[n] = max|a_n - b_n| / max( max|b_n|,  floor · max_m max|b_m| )

so a gradient that is zero up to rounding cannot fail a check (its noise, ~1e-7 of its neighbours', is
measured against floor = 1e-3 of the largest), and a real error cannot hide in it: any tensor whose
difference reaches `tolerance · floor` of the largest gradient fails, whatever its own size.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

FLOOR = 1e-3  # the scale below which a tensor's gradient is measured against the largest one's


def rel_err(a, b) -> float:
    """max |a - b| / max |b|: the relative error of a against the reference b (one tensor or array)."""
    a, b = (torch.as_tensor(t).detach().cpu() for t in (a, b))
    if a.shape != b.shape:
        raise ValueError(f"rel_err compares tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    diff = (a.double() - b.double()).abs().max() if a.numel() else torch.tensor(0.0)
    top = b.double().abs().max() if b.numel() else torch.tensor(0.0)
    return float(diff / top.clamp_min(1e-30))


@dataclass(frozen=True)
class GradAgreement:
    """The agreement of two sets of gradients: the worst tensor, its error, and every tensor's error."""

    error: float  # the worst tensor's error (see the module docstring)
    worst: str  # its name
    errors: dict  # name -> error
    scale: float  # the largest reference gradient, max over tensors of max|b|

    def ok(self, tolerance: float) -> bool:
        return self.error < tolerance

    def __str__(self):
        return f"{self.error:.1e} ({self.worst})"


def grad_agreement(grads: Mapping, reference: Mapping, floor: float = FLOOR) -> GradAgreement:
    """Compare the gradients `grads` against `reference` (two mappings name -> tensor with the same names and
    shapes; a list or tuple is numbered). Tensors that are None on both sides are skipped."""
    grads, reference = _named(grads), _named(reference)
    if set(grads) != set(reference):
        only = sorted(set(grads) ^ set(reference))
        raise ValueError(f"the two gradient sets name different tensors: {', '.join(map(str, only[:4]))}")
    pairs = {n: (grads[n], reference[n]) for n in reference if not (grads[n] is None and reference[n] is None)}
    for n, (a, b) in pairs.items():
        if a is None or b is None:
            raise ValueError(f"gradient {n!r} is None on one side only")
        if a.shape != b.shape:
            raise ValueError(f"gradient {n!r} has shape {tuple(a.shape)} against {tuple(b.shape)}")
    if not pairs:
        raise ValueError("no gradients to compare")
    tops = {n: float(b.detach().double().abs().max()) if b.numel() else 0.0 for n, (_, b) in pairs.items()}
    scale = max(tops.values())
    errors = {}
    for n, (a, b) in pairs.items():
        diff = float((a.detach().double() - b.detach().double()).abs().max()) if b.numel() else 0.0
        errors[n] = diff / max(tops[n], floor * scale, 1e-30)
    worst = max(errors, key=errors.get)
    return GradAgreement(errors[worst], str(worst), errors, scale)


def _named(grads) -> dict:
    if isinstance(grads, Mapping):
        return dict(grads)
    return dict(enumerate(grads))


def parameter_grads(model: torch.nn.Module) -> dict:
    """{name: a copy of .grad} for every parameter of `model` (None where it has none)."""
    return {n: None if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters()}


__all__ = ["FLOOR", "GradAgreement", "grad_agreement", "parameter_grads", "rel_err"]
