"""Selective scan (Mamba's S6) with interchangeable backends behind one signature.

`selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, backend="auto")` has the
semantics of mamba-ssm's `selective_scan_fn` without z:
    u, delta: (batch, K·d, L); A: (K·d, N); B, C: (batch, K, N, L) (channel block k uses group k) or
    (batch, N, L) (shared); D, delta_bias: (K·d,); returns y of u's shape and dtype.

Backends:
    reference  a plain per-token loop; any float dtype (float64 included), autograd; the ground truth.
    torch      the pure-PyTorch path (CPU, or GPU without mamba-ssm); same results.
    cpu_fused  one fused CPU kernel for forward and backward (numba; see cpu_fused.py); float32 compute,
               float64 inputs run `torch`.
    mamba_ssm  mamba-ssm's CUDA kernel; GPU tensors in float32/float16/bfloat16 only.
    auto       on a GPU: mamba_ssm where it can run (kernel importable, not float64), else torch; when a
               GPU tensor has to fall back to torch it says so once (a warning). On a CPU: cpu_fused when
               numba can compile it (not for float64), else torch, saying once why.
"""
import logging
import warnings

import torch

from . import cpu_fused
from .common import check_inputs
from .cpu_fused import selective_scan_cpu_fused
from .cuda import extension, selective_scan_mamba_ssm
from .reference import selective_scan_reference
from .torch_scan import selective_scan_torch

BACKENDS = ("auto", "reference", "torch", "cpu_fused", "mamba_ssm")
_IMPLEMENTATIONS = {
    "reference": selective_scan_reference,
    "torch": selective_scan_torch,
    "cpu_fused": selective_scan_cpu_fused,
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
    if device.type == "cpu":
        chosen = _cpu_choice(dtype)
    elif device.type != "cuda":
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


def _cpu_choice(dtype: torch.dtype) -> str:
    if not cpu_fused.available():
        _announce("nocpukernel", "selective scan: the cpu_fused backend is unavailable "
                  f"({cpu_fused.unavailable_reason}), so the CPU runs the slower torch backend; "
                  "`pip install -r requirements.txt` installs numba")
        return "torch"
    if dtype == torch.float64:
        _announce("cpu-f64", "selective scan: the cpu_fused kernel computes in float32; float64 tensors use the "
                  "torch backend")
        return "torch"
    return "cpu_fused"


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on `device` in this environment (besides "auto")."""
    out = ["reference", "torch"]
    if torch.device(device).type == "cpu" and cpu_fused.available():
        out.append("cpu_fused")
    if torch.device(device).type == "cuda" and extension() is not None:
        out.append("mamba_ssm")
    return out


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, backend="auto"):
    check_inputs(u, delta, A, B, C, D, delta_bias)
    name = resolve_backend(backend, u.device, u.dtype)
    return _IMPLEMENTATIONS[name](u, delta, A, B, C, D, delta_bias, delta_softplus)


__all__ = ["BACKENDS", "available_backends", "check_backend", "resolve_backend", "selective_scan",
           "selective_scan_reference", "selective_scan_torch", "selective_scan_cpu_fused",
           "selective_scan_mamba_ssm"]
