"""What a model costs: FLOPs in the paper's convention, per layer, and parameters per kind of module.

The paper's convention (the authors' fvcore count, also VMamba's):
  * one multiply-add is one FLOP;
  * convolutions, linear layers, matrix products and einsums count their multiply-adds; LayerNorm and
    GroupNorm count 5 per element (4 without affine), BatchNorm 2 per element at inference (1 without
    affine; 5 or 4 in training), average pooling 1 per input element, bilinear resampling 4 per output
    element, nearest upsampling 1 (fvcore's default operator handles); elementwise operations,
    activations, layout changes, gathers and scatters count nothing;
  * each selective scan of batch B, length L, D channels and N states counts 9·B·L·D·N + B·D·L
    (VMamba's `flops_selective_scan_fn`, with the D skip term). L, D and N come from the mixer and its
    routes, so ES2D counts its padded sub-maps (K = p² routes of ⌈H/p⌉·⌈W/p⌉ tokens, D = K·d) and SS2D
    its four full-length routes (D = 4·d).

`count_flops` runs a private meta-device copy of the model once (no data, no arithmetic) under a
dispatch-level counter; a per-call probe (evmamba.probes) has every scan mixer count its scan by the
formula above instead of running it, so the scan's inner operations are never counted twice. torch's own
`FlopCounterMode` counts 2 FLOPs per multiply-add and ignores norms and pooling; the tests hold the conv
and matmul part against it.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..blocks import ChannelGate, EVSSBlock, EVSSStage, InvertedResidual, IRStage, PatchMerging
from ..checks import integer
from ..mixer import SelectiveScan2D
from ..probes import probe

if TYPE_CHECKING:  # pandas is imported when a table is made: `import evmamba` does not need it
    import pandas as pd

CATEGORIES = ("conv", "matmul", "norm", "pool", "scan")
OTHER = "(other)"
aten = torch.ops.aten


def scan_flops(batch: int, length: int, channels: int, states: int, with_d: bool = True) -> int:
    """FLOPs of one selective scan in the paper's convention: 9·B·L·D·N, plus B·D·L for the D term."""
    flops = 9 * batch * length * channels * states
    if with_d:
        flops += batch * channels * length
    return flops


# ---- operator handles: FLOPs of one aten call, in multiply-adds -------------------------------------
def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _mm(args, out):  # (n, k) @ (k, m)
    a, b = args[0], args[1]
    return a.shape[0] * a.shape[1] * b.shape[1]


def _addmm(args, out):  # bias + (n, k) @ (k, m): the bias add is free, as in fvcore
    return _mm(args[1:], out)


def _bmm(args, out):  # (b, n, k) @ (b, k, m)
    a, b = args[0], args[1]
    return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


def _baddbmm(args, out):
    return _bmm(args[1:], out)


def _mv(args, out):
    return _numel(args[0].shape)


def _addmv(args, out):
    return _numel(args[1].shape)


def _conv(args, out):
    # convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    # one multiply-add per weight element per output position (input position when transposed).
    x, w, transposed = args[0], args[1], bool(args[6])
    spatial = (x if transposed else out).shape[2:]
    return x.shape[0] * _numel(w.shape) * _numel(spatial)


def _affine_norm(weight_index):
    def count(args, out):
        affine = len(args) > weight_index and args[weight_index] is not None
        return _numel(args[0].shape) * (5 if affine else 4)
    return count


def _batch_norm_eval(args, out):
    affine = args[1] is not None
    return _numel(args[0].shape) * (2 if affine else 1)


def _batch_norm(training_index):
    def count(args, out):
        training = bool(args[training_index]) if len(args) > training_index else False
        return _affine_norm(1)(args, out) if training else _batch_norm_eval(args, out)
    return count


def _input_elements(args, out):
    return _numel(args[0].shape)


def _output_elements(scale):
    def count(args, out):
        o = out[0] if isinstance(out, (tuple, list)) else out
        return scale * _numel(o.shape)
    return count


_HANDLES = {
    "matmul": {
        aten.mm.default: _mm, aten.addmm.default: _addmm, aten.bmm.default: _bmm,
        aten.baddbmm.default: _baddbmm, aten.mv.default: _mv, aten.addmv.default: _addmv,
        aten.dot.default: _mv, aten.vdot.default: _mv,
    },
    "conv": {aten.convolution.default: _conv},
    "norm": {
        aten.native_layer_norm.default: _affine_norm(2),
        aten.native_group_norm.default: _affine_norm(1),
        aten.native_batch_norm.default: _batch_norm(5),
        aten._native_batch_norm_legit.default: _batch_norm(5),
        aten._native_batch_norm_legit.no_stats: _batch_norm(3),
        aten._native_batch_norm_legit_functional.default: _batch_norm(5),
        aten._native_batch_norm_legit_no_training.default: _batch_norm_eval,
    },
    "pool": {
        # Global average pooling counts one FLOP per input element whether it is written as
        # adaptive_avg_pool2d (fvcore's handle) or as a mean over H and W.
        aten._adaptive_avg_pool2d.default: _input_elements,
        aten.mean.dim: _input_elements,
        aten.upsample_nearest2d.default: _output_elements(1),
        aten.upsample_bilinear2d.default: _output_elements(4),
        aten.grid_sampler_2d.default: _output_elements(4),
    },
}
_OP_CATEGORY = {op: (cat, handle) for cat, handles in _HANDLES.items() for op, handle in handles.items()}


class _Counter(TorchDispatchMode):
    """Counts FLOPs per (row, category), the row being the table row whose module is running."""

    def __init__(self):
        super().__init__()
        self.counts: dict[str, dict[str, int]] = {}
        self.row = OTHER

    def add(self, category: str, flops: int):
        row = self.counts.setdefault(self.row, dict.fromkeys(CATEGORIES, 0))
        row[category] += int(flops)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        hit = _OP_CATEGORY.get(func)
        if hit is not None:
            category, handle = hit
            self.add(category, handle(args, out))
        return out


def _counted_scan(counter: _Counter):
    """A mixer's scan map (a probe's replacement) whose selective scan is counted by formula and not run (its
    output is zeros, which on the meta device costs nothing); the projections before it are counted as
    operators."""

    def scan_map(mixer: SelectiveScan2D, x: torch.Tensor) -> torch.Tensor:
        routes, u, dt, Bs, Cs = mixer.ssm_inputs(x)
        batch, channels, length = u.shape  # channels = K·d: every route's channels
        counter.add("scan", scan_flops(batch, length, channels, mixer.d_state))
        return mixer.merge(torch.zeros_like(u), mixer.tables(x.shape[2], x.shape[3], x.device))

    return scan_map


# ---- table rows -------------------------------------------------------------------------------------
_KINDS = ((EVSSBlock, "EVSS block"), (InvertedResidual, "inverted residual"), (PatchMerging, "patch merging"))


def _rows(model: nn.Module):
    """(name, module, kind, stage) for the modules that make the per-layer table: disjoint, covering
    the network (patch embedding, every block, every downsample, classifier)."""
    if not (hasattr(model, "layers") and hasattr(model, "patch_embed")):
        return [(n, m, type(m).__name__, None) for n, m in model.named_children()]
    rows = [("patch_embed", model.patch_embed, "patch embedding", None)]
    for i, stage in enumerate(model.layers):
        if isinstance(stage, EVSSStage):
            members = [(f"layers.{i}.blocks.{j}", b) for j, b in enumerate(stage.blocks)]
            members.append((f"layers.{i}.downsample", stage.downsample))
        elif isinstance(stage, IRStage):
            members = [(f"layers.{i}.{j}", m) for j, m in enumerate(stage)]
        else:
            members = [(f"layers.{i}", stage)]
        for name, m in members:
            kind = next((k for t, k in _KINDS if isinstance(m, t)), None)
            if kind is not None:
                rows.append((name, m, kind, i))
    for name, m in model.named_children():
        if name not in ("patch_embed", "layers"):
            rows.append((name, m, "classifier" if name == "classifier" else type(m).__name__, None))
    return rows


def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters and buffers live on the meta device (no data is copied)."""
    memo = {}
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in memo:
            continue
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


class FlopCount(NamedTuple):
    """`total`: FLOPs in the paper's convention. `table`: a pandas DataFrame, one row per layer (see
    `count_flops`)."""

    total: int
    table: pd.DataFrame


def _image_shape(image_size) -> tuple[int, int]:
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    if not isinstance(image_size, (tuple, list)) or len(image_size) != 2:
        raise ValueError(f"image_size must be a positive integer or a (height, width) pair, got {image_size!r}")
    return tuple(integer(v, "image_size", low=1) for v in image_size)


def count_flops(model: nn.Module, image_size=224, batch_size: int = 1) -> FlopCount:
    """FLOPs of one forward pass of `model` on batch_size images of image_size (an int or (H, W)), in the
    paper's convention (module docstring), and a per-layer table.

    Returns FlopCount(total, table). The table (a DataFrame) has one row per layer: the patch embedding,
    every EVSS or inverted-residual block, every patch merging, the classifier, and "(other)" if anything
    ran outside them. Columns: module, kind, stage, grid (the token grid the layer reads), conv, matmul,
    norm, pool, scan (FLOPs by kind of operation), flops (their sum) and params. The flops column sums
    to `total`, the params column to the model's parameter count. The model is not modified or run on
    data: a meta-device copy is traced, so this is fast on any machine.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"count_flops takes a torch module (e.g. evmamba.build_model('tiny')), got "
                         f"{type(model).__name__}")
    height, width = _image_shape(image_size)
    batch_size = integer(batch_size, "batch_size", low=1)

    counted = _meta_copy(model).eval()
    counter = _Counter()
    scans = {m: _counted_scan(counter) for m in counted.modules() if isinstance(m, SelectiveScan2D)}

    rows = _rows(counted)
    grids: dict[str, str] = {}

    def enter(name):
        def hook(module, args):
            counter.row = name
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.dim() == 4 and name not in grids:
                grids[name] = _grid_of(module, x)
        return hook

    def leave(module, args, out):
        counter.row = OTHER

    handles = []
    for name, m, _, _ in rows:
        handles.append(m.register_forward_pre_hook(enter(name)))
        handles.append(m.register_forward_hook(leave))
    try:
        with torch.no_grad(), probe(scans=scans), counter:
            counted(torch.empty(batch_size, 3, height, width, device="meta"))
    finally:
        for h in handles:
            h.remove()

    records, seen = [], set()
    for name, m, kind, stage in rows:
        params = sum(p.numel() for p in m.parameters() if id(p) not in seen)
        seen.update(id(p) for p in m.parameters())
        flops = counter.counts.get(name, dict.fromkeys(CATEGORIES, 0))
        records.append(dict(module=name, kind=kind, stage=stage, grid=grids.get(name, ""), **flops, params=params))
    rest_params = sum(p.numel() for p in counted.parameters() if id(p) not in seen)
    rest_flops = counter.counts.get(OTHER, dict.fromkeys(CATEGORIES, 0))
    if rest_params or any(rest_flops.values()):
        records.append(dict(module=OTHER, kind="other", stage=None, grid="", **rest_flops, params=rest_params))

    import pandas as pd

    table = pd.DataFrame.from_records(records)
    table["stage"] = table["stage"].astype("Int64")
    table.insert(table.columns.get_loc("params"), "flops", table[list(CATEGORIES)].sum(axis=1))
    return FlopCount(int(table["flops"].sum()), table)


def _grid_of(module, x) -> str:
    """The token grid 'HxW' a layer reads: the image for the patch embedding, else the feature map
    (channels-last for EVSS blocks and patch merging, channels-first inside inverted-residual stages)."""
    if isinstance(module, InvertedResidual) or (isinstance(module, nn.Sequential) and x.shape[1] == 3):
        h, w = x.shape[2], x.shape[3]
    else:
        h, w = x.shape[1], x.shape[2]
    return f"{h}x{w}"


# ---- parameters ---------------------------------------------------------------------------------------
PARAMETER_GROUPS = ("scan mixer", "conv branch", "gate", "inverted residual", "rest")


def parameter_breakdown(model: nn.Module) -> pd.DataFrame:
    """Parameters per kind of module: scan mixer (every SelectiveScan2D), conv branch (the EVSS blocks'
    local branch), gate (the EVSS blocks' shared channel gate), inverted residual (whole blocks, their
    squeeze-excite included) and rest (patch embedding, the EVSS blocks' LayerNorm, patch merging,
    classifier). Index: those five names; columns: params and share (of the total).
    The params column sums to the model's parameter count."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"parameter_breakdown takes a torch module, got {type(model).__name__}")
    group_of: dict[int, str] = {}

    def claim(module, group):
        for p in module.parameters():
            group_of.setdefault(id(p), group)

    for m in model.modules():
        if isinstance(m, SelectiveScan2D):
            claim(m, "scan mixer")
        elif isinstance(m, EVSSBlock) and m.conv_branch is not None:
            claim(m.conv_branch, "conv branch")
        elif isinstance(m, ChannelGate):
            claim(m, "gate")
        elif isinstance(m, InvertedResidual):
            claim(m, "inverted residual")
    params = dict.fromkeys(PARAMETER_GROUPS, 0)
    seen = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        params[group_of.get(id(p), "rest")] += p.numel()
    total = sum(params.values())
    import pandas as pd

    table = pd.DataFrame({"params": params})
    table["share"] = table["params"] / total if total else 0.0
    table.index.name = "group"
    return table


__all__ = ["CATEGORIES", "FlopCount", "PARAMETER_GROUPS", "count_flops", "parameter_breakdown", "scan_flops"]
