"""Compact weight files: 8-bit weights with one scale per output channel, dequantized on load.

    save_compact(model.state_dict(), "m.pt", meta={...})   # about a quarter of the float32 size
    state, meta = read_compact("m.pt")                      # a float32 state dict, the metadata

Which tensors are stored in 8 bits: floating-point weights with at least two dimensions and at least
QUANTIZED_MIN_SIZE elements (linear and convolution weights, the scan's batched projections), except the
scan's A_logs (its exponent makes small errors large). Each output channel (the first dimension; the first
two of a 3-dimensional tensor, which are (route, output) in the scan's projections) gets its own scale:
max|w| / 127, and w is stored as round(w / scale). Everything else (norms, biases, A_logs, Ds, BatchNorm
statistics, integer buffers) is stored as it is.
"""
from __future__ import annotations

import torch

from .files import atomic_path

FORMAT = "evmamba-int8-per-channel"
QUANTIZED_MIN_SIZE = 1024
KEPT_AS_THEY_ARE = ("A_logs",)


def _quantized(name: str, t: torch.Tensor) -> bool:
    return t.is_floating_point() and t.dim() >= 2 and t.numel() >= QUANTIZED_MIN_SIZE \
        and not name.endswith(KEPT_AS_THEY_ARE)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """The tensor as (output channels, rest)."""
    lead = t.shape[0] * t.shape[1] if t.dim() == 3 else t.shape[0]
    return t.reshape(lead, -1)


def quantize(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, float32 scale per output channel) with t ≈ values * scale (per channel)."""
    rows = _rows(t.detach().float().cpu())
    scale = rows.abs().amax(1).clamp_min(1e-12) / 127.0
    q = torch.round(rows / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(t.shape), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (_rows(q).float() * scale[:, None]).reshape(q.shape)


def save_compact(state: dict, path, meta: dict | None = None) -> None:
    """Write `state` (a state dict) to `path` in the compact format, with JSON-able `meta`."""
    tensors = {}
    for name, t in state.items():
        if _quantized(name, t):
            q, scale = quantize(t)
            tensors[name] = {"int8": q, "scale": scale, "dtype": str(t.dtype).removeprefix("torch.")}
        else:
            tensors[name] = {"tensor": t.detach().cpu().clone()}
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "meta": dict(meta or {}), "tensors": tensors}, tmp)


def read_compact(path) -> tuple[dict, dict]:
    """(state dict in float32 where it was floating point, metadata) from a compact file."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{path} is not a compact weights file (format {FORMAT!r}); read checkpoints with "
                         "evmamba.load_checkpoint")
    state = {}
    for name, entry in obj["tensors"].items():
        if "int8" in entry:
            state[name] = dequantize(entry["int8"], entry["scale"]).to(getattr(torch, entry["dtype"]))
        else:
            state[name] = entry["tensor"]
    return state, obj["meta"]


__all__ = ["FORMAT", "dequantize", "quantize", "read_compact", "save_compact"]
