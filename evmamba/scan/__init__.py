"""Selective scan (Mamba's S6) with interchangeable backends behind one signature.

`selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, backend="auto")` has the
semantics of mamba-ssm's `selective_scan_fn` without z:
    u, delta: (batch, K·d, L); A: (K·d, N); B, C: (batch, K, N, L) (channel block k uses group k) or
    (batch, N, L) (shared); D, delta_bias: (K·d,); returns y of u's shape and dtype.

Backends:
    reference  a plain per-token loop; any float dtype (float64 included), autograd; the ground truth.
    torch      the fast pure-PyTorch path (CPU, or GPU without mamba-ssm); same results.
    mamba_ssm  mamba-ssm's CUDA kernel; GPU tensors in float32/float16/bfloat16 only.
    auto       mamba_ssm where it can run (CUDA tensor, kernel importable, not float64), else torch;
               when a GPU tensor has to fall back to torch it says so once (a warning).
"""
import logging
import warnings

import torch

from .common import check_inputs
from .cuda import extension, selective_scan_mamba_ssm
from .reference import selective_scan_reference
from .torch_scan import selective_scan_torch

BACKENDS = ("auto", "reference", "torch", "mamba_ssm")
_IMPLEMENTATIONS = {
    "reference": selective_scan_reference,
    "torch": selective_scan_torch,
    "mamba_ssm": selective_scan_mamba_ssm,
}
log = logging.getLogger("evmamba")
_announced = set()


def _announce(key, message, warn=False):
    if key in _announced or torch.compiler.is_compiling():  # compiled code says nothing (eager runs do)
        return
    _announced.add(key)
    if warn:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    else:
        log.info(message)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {backend!r}: valid backends are {', '.join(BACKENDS)}")
    return backend


def resolve_backend(backend: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> str:
    """The backend that `backend` means for tensors on `device` with `dtype` ("auto" picks one)."""
    check_backend(backend)
    if backend != "auto":
        return backend
    device = torch.device(device)
    if device.type != "cuda":
        chosen = "torch"
    elif dtype == torch.float64:
        chosen = "torch"
        _announce(("f64", str(device)), "selective scan: mamba-ssm's kernel has no float64; using the torch "
                  "backend for float64 tensors", warn=True)
    elif extension() is None:
        chosen = "torch"
        _announce(("nokernel", str(device)), "selective scan: mamba-ssm is not installed, so the GPU runs the "
                  "slower torch backend; `pip install -r requirements-gpu.txt` gives the CUDA kernel", warn=True)
    else:
        chosen = "mamba_ssm"
    _announce(("chosen", str(device.type), chosen), f"selective scan: using the {chosen!r} backend on {device.type}")
    return chosen


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on `device` in this environment (besides "auto")."""
    out = ["reference", "torch"]
    if torch.device(device).type == "cuda" and extension() is not None:
        out.append("mamba_ssm")
    return out


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, backend="auto"):
    check_inputs(u, delta, A, B, C, D, delta_bias)
    name = resolve_backend(backend, u.device, u.dtype)
    return _IMPLEMENTATIONS[name](u, delta, A, B, C, D, delta_bias, delta_softplus)


__all__ = ["BACKENDS", "available_backends", "check_backend", "resolve_backend", "selective_scan",
           "selective_scan_reference", "selective_scan_torch", "selective_scan_mamba_ssm"]
