"""The gradient behind an effective receptive field (RepLKNet's `get_input_grad`, as VMamba uses it):

    map(i, j) = mean over inputs x of  sum over input channels of  ReLU( d/dx[i, j] sum_c ReLU(f(x)[r, c, c_]) )

for one output position (r, c) of f, which returns channels-last maps. Each input's map is computed on its
own; an input whose map is not finite is left out of the mean and counted (RepLKNet skips such images).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import choice, integer
from .progress import track

METHODS = ("saliency", "autograd")


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
    """d/dx of each sample's summed ReLU activation at `position` of body(x): a tensor of x's shape.
    method: "saliency" (captum's Saliency, signed gradients) or "autograd"; the two give the same map."""
    choice(method, "method", METHODS)
    chosen = ChosenActivation(body, tuple(position))
    x = x.detach().requires_grad_(True)
    if method == "saliency":
        from captum.attr import Saliency
        return Saliency(chosen).attribute(x, abs=False).detach()
    (g,) = torch.autograd.grad(chosen(x).sum(), x)
    return g


@dataclass
class ContributionMap:
    """The mean map over the inputs that gave a finite one, and how many did not."""

    contribution: np.ndarray  # (H_in, W_in), float64
    used: int  # inputs averaged
    skipped: int  # inputs whose map was not finite (left out)


def contribution_map(body: nn.Module, inputs: torch.Tensor, position, *, channel_dim: int, method: str = "saliency",
                     batch_size: int = 4, progress=None, bar: bool = True, desc: str = "ERF") -> ContributionMap:
    """The ERF map of `body` at output `position`, averaged over the N inputs (N, ...): ReLU of the input
    gradient, summed over the channel axis `channel_dim` (1 for images, -1 for channels-last maps).
    `body` must be in evaluation mode (see interventions.for_inference): BatchNorm on batch statistics
    would mix the inputs of a batch."""
    batch_size = integer(batch_size, "batch_size", low=1)
    n = inputs.shape[0]
    if n < 1:
        raise ValueError("need at least one input to average the ERF over")
    total, used = None, 0
    batches = [inputs[i:i + batch_size] for i in range(0, n, batch_size)]
    for xb in track(batches, len(batches), desc, progress, bar):
        g = input_gradients(body, xb, position, method)
        maps = F.relu(g).sum(dim=channel_dim).double()  # (b, H, W): one map per input
        finite = torch.isfinite(maps).flatten(1).all(1)
        part = maps[finite].sum(0)
        used += int(finite.sum())
        total = part if total is None else total + part
    if used == 0:
        raise ValueError(f"none of the {n} inputs gave a finite receptive-field map (NaN or infinite gradients)")
    return ContributionMap((total / used).cpu().numpy(), used, n - used)


__all__ = ["METHODS", "ChosenActivation", "ContributionMap", "contribution_map", "input_gradients"]
