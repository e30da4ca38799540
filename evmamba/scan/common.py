"""Input checks and the shared prologue of the selective-scan backends."""
import torch
import torch.nn.functional as F


def _shape(t):
    return "x".join(map(str, t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def check_inputs(u, delta, A, B, C, D=None, delta_bias=None):
    """Raise a ValueError that names the offending argument when shapes do not fit together.

    u, delta: (batch, channels, L); A: (channels, N); B, C: (batch, groups, N, L) or (batch, N, L) with
    channels divisible by groups; D, delta_bias: (channels,)."""
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"selective_scan: {name} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"selective_scan: {name} must be a floating-point tensor, got {t.dtype}")
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, channels, L), got shape {_shape(u)}")
    batch, channels, length = u.shape
    if length < 1 or channels < 1:
        raise ValueError(f"selective_scan: u must have at least one channel and one token, got {_shape(u)}")
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta must have u's shape {_shape(u)}, got {_shape(delta)}")
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"selective_scan: A must be (channels={channels}, N), got {_shape(A)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        ok = (t.dim() == 3 and tuple(t.shape) == (batch, n, length)) or (
            t.dim() == 4 and t.shape[0] == batch and t.shape[2:] == (n, length) and t.shape[1] >= 1
            and channels % t.shape[1] == 0)
        if not ok:
            raise ValueError(f"selective_scan: {name} must be (batch={batch}, groups, N={n}, L={length}) with "
                             f"groups dividing channels={channels}, or (batch, N, L); got {_shape(t)}")
    if B.dim() != C.dim() or (B.dim() == 4 and B.shape[1] != C.shape[1]):
        raise ValueError(f"selective_scan: B and C must have the same grouping, got {_shape(B)} and {_shape(C)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and (not isinstance(t, torch.Tensor) or tuple(t.shape) != (channels,)):
            raise ValueError(f"selective_scan: {name} must be (channels={channels},), got {_shape(t)}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The scan runs in float32 at least (as mamba-ssm's kernel does), float64 when given float64."""
    return torch.promote_types(dtype, torch.float32)


def prepare(u, delta, A, B, C, delta_bias, delta_softplus):
    """Cast to the compute dtype, apply the delta bias and softplus, and give B, C a group axis."""
    ct = compute_dtype(u.dtype)
    u, delta, A, B, C = (t.to(ct) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    return u, delta, A, B, C
