"""Building blocks of EfficientVMamba: the EVSS block (scan mixer + depthwise-conv branch, each through a
shared channel gate), the inverted-residual block of the late stages, patch merging, stochastic depth.

Layout convention: EVSS blocks and patch merging work channels-last (B, H, W, C); inverted-residual
blocks channels-first (B, C, H, W), as in the authors' code.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import probes
from .depthwise import DepthwiseConv3x3, PointwiseConv2d
from .mixer import SelectiveScan2D


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability p (training only)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self):
        return f"p={self.p}"


class Permute(nn.Module):
    """Layout change with no weights (keeps the authors' module indices, hence checkpoint keys)."""

    def __init__(self, *dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


def channels_last():
    return Permute(0, 2, 3, 1)


def channels_first():
    return Permute(0, 3, 1, 2)


class ChannelGate(nn.Module):
    """The EVSS block's channel gate: t * sigmoid(W2 GELU(W1 mean_hw(LayerNorm(t)))), reduction 8 (the authors
    call it `se`, which stays its checkpoint key)."""

    def __init__(self, dim: int, ratio: float = 0.125):
        super().__init__()
        hidden = int(dim * ratio)
        self.norm = nn.LayerNorm(dim)
        self.global_reduce = nn.Linear(dim, hidden)
        self.channel_select = nn.Linear(hidden, dim)

    def forward(self, x):  # (B, H, W, C)
        g = self.norm(x).mean(dim=(1, 2), keepdim=True)
        g = self.channel_select(F.gelu(self.global_reduce(g)))
        return x * torch.sigmoid(g)


class EVSSBlock(nn.Module):
    """x + gate(mixer(LN(x))) + gate(conv_branch(LN(x))), one gate shared by both branches.

    conv_branch=False drops the local branch; gate=False drops the gate (both branches added as they are)."""

    def __init__(self, dim: int, drop_path: float = 0.0, scan: str = "es2d", step: int = 2,
                 conv_branch: bool = True, gate: bool = True, backend: str = "auto"):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = SelectiveScan2D(dim, scan=scan, step=step, backend=backend)
        self.conv_branch = nn.Sequential(
            DepthwiseConv3x3(dim), nn.BatchNorm2d(dim), nn.GELU(), PointwiseConv2d(dim, dim),
        ) if conv_branch else None
        self.se = ChannelGate(dim) if gate else None  # the channel gate; `se` is the authors' checkpoint key
        self.drop_path = DropPath(drop_path)

    @property
    def channel_gate(self) -> ChannelGate | None:
        return self.se

    def gated(self, t):
        return t if self.se is None else self.se(t)

    def forward(self, x):  # (B, H, W, C)
        probe = probes.active()  # None but inside an analysis
        if probe is not None:
            probe.record(self, "input", x)
        n = self.norm(x)
        out = x + self.drop_path(self.gated(self.op(n)))
        if self.conv_branch is not None:
            local = self.conv_branch(n.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            out = out + self.drop_path(self.gated(local))
        return out


class SqueezeExcite(nn.Module):
    """The inverted-residual block's squeeze-and-excitation: 1x1 convs m -> m/8 -> m, ReLU, sigmoid."""

    def __init__(self, channels: int, ratio: float = 0.125):
        super().__init__()
        hidden = int(channels * ratio)
        self.conv_reduce = PointwiseConv2d(channels, hidden)
        self.conv_expand = PointwiseConv2d(hidden, channels)

    def forward(self, x):  # (B, C, H, W)
        g = self.conv_expand(F.relu(self.conv_reduce(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(g)


def conv_bn(cin, cout, kernel=1, groups=1, relu=True):
    if kernel == 3 and groups == cin == cout:
        conv = DepthwiseConv3x3(cin, bias=False)
    elif kernel == 1 and groups == 1:
        conv = PointwiseConv2d(cin, cout, bias=False)
    else:
        conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False)
    layers = [conv, nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2-style block, expansion 4: 1x1 expand, depthwise 3x3, SE, 1x1 project, residual."""

    def __init__(self, dim: int, drop_path: float = 0.0, expand: int = 4):
        super().__init__()
        m = dim * expand
        self.conv_pw = conv_bn(dim, m)
        self.conv_dw = conv_bn(m, m, kernel=3, groups=m)
        self.se = SqueezeExcite(m)
        self.conv_pw2 = conv_bn(m, dim, relu=False)
        self.drop_path = DropPath(drop_path)

    def forward(self, x):  # (B, C, H, W)
        return x + self.drop_path(self.conv_pw2(self.se(self.conv_dw(self.conv_pw(x)))))


class PatchMerging(nn.Module):
    """Halve H and W, double C: the four 2x2 phases (even/even, odd/even, even/odd, odd/odd rows/cols)
    concatenated, LayerNorm(4C), Linear 4C -> 2C. Odd sizes are padded at the bottom/right."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x):  # (B, H, W, C)
        h, w = x.shape[1:3]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class EVSSStage(nn.Module):
    """A stage of EVSS blocks, then the downsample (keys `blocks.j`, `downsample`)."""

    kind = "evss"

    def __init__(self, dim, depth, drop_paths, downsample: bool, **block_options):
        super().__init__()
        self.blocks = nn.Sequential(*[EVSSBlock(dim, drop_paths[j], **block_options) for j in range(depth)])
        self.downsample = PatchMerging(dim) if downsample else nn.Identity()

    def forward(self, x):  # (B, H, W, C)
        return self.downsample(self.blocks(x))


class IRStage(nn.Sequential):
    """A stage of inverted-residual blocks as the authors' flat sequence: to channels-first (index 0),
    blocks 1..depth, back to channels-last (depth+1), downsample (depth+2)."""

    kind = "ir"

    def __init__(self, dim, depth, drop_paths, downsample: bool):
        super().__init__(channels_first(), *[InvertedResidual(dim, drop_paths[j]) for j in range(depth)],
                         channels_last(), PatchMerging(dim) if downsample else nn.Identity())

    @property
    def blocks(self):
        return [m for m in self if isinstance(m, InvertedResidual)]
