"""The cost columns of the ablation tables, measured on whatever device runs them.

    static_cost(row)                     parameters and FLOPs at 224x224 (the paper's convention, see
                                         evmamba.analysis.cost): the same on every machine
    speed(row, size, batch, ...)         forward throughput (images/s at `batch`; on a GPU also under bf16
                                         autocast) and latency (ms at batch 1)
    peak_memory(row, size, batch, ...)   memory one training step (forward + backward) needs: the CUDA
                                         allocator's peak on a GPU; on a CPU the growth of the resident set
                                         of a fresh process during the step
    saved_activations(model, x)          bytes autograd keeps for the backward pass (any device)
    erf_ratios(row, ...)                 effective-receptive-field area ratios of a freshly initialised model

A row is an evmamba.ModelConfig.
"""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import torch

from evmamba.model import ModelConfig
from evmamba.timing import median_seconds

from .config import config_dict


def build(row: ModelConfig, *, seed: int = 0, device="cpu"):
    """The model of `row` with weights that depend only on `seed` (the global random state is kept)."""
    from evmamba import create
    return create(row, seed=seed).to(device)


def static_cost(row: ModelConfig) -> dict:
    from evmamba import count_parameters
    from evmamba.analysis.cost import count_flops
    model = build(row)
    return {"params": count_parameters(model), "flops": count_flops(model, 224).total}


@torch.no_grad()
def speed(row: ModelConfig, size: int = 224, batch: int = 8, repeats: int = 5, device="cpu", backend="auto") -> dict:
    """Inference throughput (images/s, forward at `batch`) and latency (ms, forward at batch 1), medians of
    `repeats` timed runs after one warm-up, float32."""
    model = build(dataclasses.replace(row, backend=backend), device=device).eval()
    x = torch.randn(batch, 3, size, size, device=device)
    t_batch = median_seconds(lambda: model(x), repeats, device)
    t_one = median_seconds(lambda: model(x[:1]), repeats, device)
    out = {"throughput": batch / t_batch, "latency_ms": 1000 * t_one, "batch": batch, "size": size,
           "repeats": repeats, "threads": torch.get_num_threads(), "device": str(device)}
    if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported():
        def bf16():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                model(x)
        out["throughput_bf16"] = batch / median_seconds(bf16, repeats, device)
    return out


def saved_activations(model, x: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd saves for the backward pass of model(x) (views of one storage
    counted once; the model's own parameters and buffers left out): the activation memory of a training
    step, measured on any device."""
    storages = {}
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}

    def pack(t):
        try:
            s = t.untyped_storage()
            storages[(s.data_ptr(), t.device)] = s.nbytes()
        except (RuntimeError, NotImplementedError):
            storages[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return sum(n for key, n in storages.items() if not (isinstance(key, tuple) and key[0] in weights))


_MEMORY_SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, {root!r})
from ablations.measure import build
from evmamba.model import ModelConfig
torch.set_num_threads({threads})
row = ModelConfig(**json.loads({row!r}))
model = build(row)
x = torch.randn({batch}, 3, {size}, {size})

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":")) * 1024

rss = status("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set (VmHWM) to the current one
except OSError:
    pass
model(x).sum().backward()
print(json.dumps({{"before": rss, "peak": status("VmHWM")}}))
"""


def peak_memory(row: ModelConfig, size: int = 224, batch: int = 1, device="cpu") -> dict:
    """Memory one training step (forward + backward, float32) needs, in bytes.

    GPU: torch.cuda.max_memory_allocated during the step, minus what was allocated before it.
    CPU: a fresh Python process builds the model, then runs the step; the peak resident set during the step
    (VmHWM, reset just before it) minus the resident set before it. Linux only; elsewhere it raises."""
    if torch.device(device).type == "cuda":
        model = build(row, device=device)
        x = torch.randn(batch, 3, size, size, device=device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        model(x).sum().backward()
        torch.cuda.synchronize()
        return {"bytes": torch.cuda.max_memory_allocated(device) - before, "how": "CUDA allocator peak",
                "batch": batch, "size": size}
    from pathlib import Path
    root = str(Path(__file__).resolve().parent.parent)
    code = _MEMORY_SCRIPT.format(root=root, threads=1, row=json.dumps(config_dict(row)), batch=batch, size=size)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"the memory measurement failed: {out.stderr.strip()[-400:]}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return {"bytes": max(got["peak"] - got["before"], 0), "how": "growth of a fresh process's resident set",
            "batch": batch, "size": size}


def erf_ratios(row: ModelConfig, *, stage: int = 1, size: int = 224, inputs: int = 4, seed: int = 0,
               per_route: bool = False) -> dict:
    """High-contribution area ratios (thresholds 0.2, 0.3, 0.5, 0.99) of the ERF of the network up to the end
    of stage `stage`, at its centre output, for a model freshly initialised with `seed`, averaged over
    `inputs` random normal images (seeded), in both conventions (evmamba.analysis.erf_maps). Returns
    {convention: {"all": {t: ratio}, "routes": [...]}} (routes only when per_route; None where RepLKNet's
    convention has no value)."""
    from evmamba.analysis.erf import effective_receptive_fields
    from evmamba.analysis.erf_maps import CONVENTIONS
    model = build(row, seed=seed).eval()
    r = effective_receptive_fields(model, "stage", stage=stage, inputs="random", num_inputs=inputs,
                                   image_size=size, routes=per_route, seed=seed, bar=False, method="autograd")

    def ratios(e, convention):
        return {str(t): None if math.isnan(v) else v for t, v in e.area_ratios(convention=convention).items()}

    out = {"stage": stage, "size": size, "inputs": inputs, "grid": list(r.output_grid)}
    for convention in CONVENTIONS:
        out[convention] = {"all": ratios(r.combined, convention)}
        if per_route:
            out[convention]["routes"] = [ratios(e, convention) for e in r.routes]
    return out


@torch.no_grad()
def _forward_seconds(model, x, repeats, device):
    return median_seconds(lambda: model(x), repeats, device)


def scaling(row: ModelConfig, sizes, *, batch: int = 1, repeats: int = 3, device="cpu", progress=None) -> list[dict]:
    """Forward throughput and activation memory (`saved_activations`; on a GPU also the allocator's peak)
    at each input size in `sizes`, for one model."""
    model = build(row, device=device).eval()
    out = []
    for size in sizes:
        x = torch.randn(batch, 3, size, size, device=device)
        t = _forward_seconds(model, x, repeats, device)
        point = {"size": size, "tokens": (size // 4) ** 2, "throughput": batch / t, "seconds": t,
                 "saved_bytes": saved_activations(model, x)}
        if torch.device(device).type == "cuda":
            point["peak_bytes"] = peak_memory(row, size, batch, device)["bytes"]
        out.append(point)
        if progress is not None:
            progress(size)
    return out


__all__ = ["build", "erf_ratios", "peak_memory", "saved_activations", "scaling", "speed", "static_cost"]
