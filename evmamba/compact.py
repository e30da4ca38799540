"""Compact weight files: 8-bit weights with one scale per output channel, dequantized on load.

    save_compact(model.state_dict(), "m.pt", meta={...})   # about a quarter of the float32 size
    state, meta = read_compact("m.pt")                      # a float32 state dict, the metadata
    state = compacted(model.state_dict())                   # the same round trip, without a file

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


def _entries(state: dict) -> dict:
    """What the file stores per tensor: int8 values with per-channel scales, or the tensor as it is."""
    out = {}
    for name, t in state.items():
        if _quantized(name, t):
            q, scale = quantize(t)
            out[name] = {"int8": q, "scale": scale, "dtype": str(t.dtype).removeprefix("torch.")}
        else:
            out[name] = {"tensor": t.detach().cpu().clone()}
    return out


def _restored(entries: dict) -> dict:
    return {name: dequantize(e["int8"], e["scale"]).to(getattr(torch, e["dtype"])) if "int8" in e else e["tensor"]
            for name, e in entries.items()}


def compacted(state: dict) -> dict:
    """`state` as a compact file of it reads back (the 8-bit round trip), without writing one."""
    return _restored(_entries(state))


def save_compact(state: dict, path, meta: dict | None = None) -> None:
    """Write `state` (a state dict) to `path` in the compact format, with JSON-able `meta`."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "meta": dict(meta or {}), "tensors": _entries(state)}, tmp)


def _load(path) -> dict:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{path} is not a compact weights file (format {FORMAT!r}); read checkpoints with "
                         "evmamba.load_checkpoint")
    return obj


def read_compact(path) -> tuple[dict, dict]:
    """(state dict in float32 where it was floating point, metadata) from a compact file."""
    obj = _load(path)
    return _restored(obj["tensors"]), obj["meta"]


def read_compact_meta(path) -> dict:
    """The metadata of a compact file, without restoring its tensors."""
    return _load(path)["meta"]


__all__ = ["FORMAT", "compacted", "dequantize", "quantize", "read_compact", "read_compact_meta", "save_compact"]
