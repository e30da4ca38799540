"""The 3x3 depthwise and 1x1 convolutions of the EVSS blocks, the scan mixers and the inverted-residual blocks,
in the forms that train fastest on small CPU maps (both behind one gate, `small_map_training`).

`DepthwiseConv3x3` is an nn.Conv2d (the same parameters, state-dict keys and results) whose training
forward on tiny maps on a CPU is one matrix per channel: on an H x W map with padding 1, output position
o reads input position i through tap (1 + i_row - o_row, 1 + i_col - o_col) when that tap exists, so the
convolution is y[b, c] = M[c] @ x[b, c] with M[c] an (HW x HW) matrix of the channel's taps. Training at
32x32 puts the inverted-residual stages on 2x2 and 1x1 maps, where oneDNN's depthwise forward and backward
took 9.8 ms (a 64 x 768 x 2 x 2 batch) and 15.5 ms (64 x 1536 x 1 x 1) against 1.1 and 0.7 ms this way
(2 cores); with both small-map forms (this and the 1x1 below) a whole training step of tiny at 32x32 is
1.41x faster for ES2D and 1.22x for SS2D (`python benchmarks/train_speed.py --depthwise`). On larger
maps (where the per-channel matrices cost more than they save), in evaluation, under torch.compile and on
a GPU the ordinary convolution runs. The two agree to float32 rounding (the tests hold them to 1e-5).
`PointwiseConv2d` does the same for the 1x1 convolutions: one matrix product over the positions (below).
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

SMALL_MAP = 4  # positions (H * W) up to which the per-channel matrix is used


@functools.lru_cache(maxsize=64)
def _taps(h: int, w: int, device: torch.device):
    """(tap index into the 9 kernel taps, valid mask), each (HW out, HW in), for an h x w map."""
    r, c = torch.arange(h), torch.arange(w)
    dr = (r.view(1, 1, h, 1) - r.view(h, 1, 1, 1) + 1).expand(h, w, h, w)  # (out_r, out_c, in_r, in_c)
    dc = (c.view(1, 1, 1, w) - c.view(1, w, 1, 1) + 1).expand(h, w, h, w)
    valid = (dr >= 0) & (dr <= 2) & (dc >= 0) & (dc <= 2)
    index = dr.clamp(0, 2) * 3 + dc.clamp(0, 2)
    return index.reshape(h * w, h * w).to(device), valid.reshape(h * w, h * w).to(device)


def depthwise_as_matrices(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 3x3 depthwise convolution with padding 1 of x (B, C, H, W), as per-channel (HW x HW) matrices."""
    b, ch, h, w = x.shape
    index, valid = _taps(h, w, x.device)
    m = weight.reshape(ch, 9)[:, index] * valid  # (C, out, in)
    # one batched product over the channels, the batch in its rows: (B x HW) @ (HW x HW) per channel, its
    # left side made contiguous first (bmm took the slow path on the strided view: a training step of tiny
    # at 32x32 took 142 ms against 130). A broadcast product and a sum took 140 ms; batching the (batch,
    # channel) pairs' 4 x 4 products loops over them one by one.
    xt = x.reshape(b, ch, h * w).transpose(0, 1).contiguous()  # (C, B, HW)
    y = torch.bmm(xt, m.transpose(1, 2)).transpose(0, 1).reshape(b, ch, h, w)
    return y if bias is None else y + bias.view(1, ch, 1, 1)


def small_map_training(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether `module` is training on a CPU map of at most SMALL_MAP positions, eagerly: where oneDNN's
    convolutions cost most per position and the matrix forms take over."""
    return (module.training and torch.is_grad_enabled() and x.device.type == "cpu" and x.dim() == 4
            and x.shape[2] * x.shape[3] <= SMALL_MAP and not torch.compiler.is_compiling())


class DepthwiseConv3x3(nn.Conv2d):
    """nn.Conv2d(channels, channels, 3, padding=1, groups=channels), faster to train on small CPU maps."""

    def __init__(self, channels: int, bias: bool = True):
        super().__init__(channels, channels, 3, padding=1, groups=channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if small_map_training(self, x):
            return depthwise_as_matrices(x, self.weight, self.bias)
        return super().forward(x)


class PointwiseConv2d(nn.Conv2d):
    """nn.Conv2d(cin, cout, 1) (the same parameters, state-dict keys and results) that trains on small CPU
    maps as one matrix product over the positions: on 1x1 and 2x2 maps of a batch of 64, oneDNN's 1x1
    convolution takes 1.5-3.5x as long, forward and backward, as F.linear on the channels-last view."""

    def __init__(self, cin: int, cout: int, bias: bool = True):
        super().__init__(cin, cout, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if small_map_training(self, x):
            w = self.weight.view(self.out_channels, self.in_channels)
            return F.linear(x.permute(0, 2, 3, 1), w, self.bias).permute(0, 3, 1, 2)
        return super().forward(x)


__all__ = ["SMALL_MAP", "DepthwiseConv3x3", "PointwiseConv2d", "depthwise_as_matrices", "small_map_training"]
