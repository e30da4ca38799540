"""The plain selective scan: one Python step per token, written to be read, not to be fast.

Mamba's S6 recurrence, per channel c and state n, with h_0 = 0:
    delta_t = softplus(delta_t + delta_bias)          (when delta_softplus)
    h_t     = exp(delta_t · A) ⊙ h_{t-1} + delta_t · B_t · u_t
    y_t     = <C_t, h_t> + D · u_t
Every other backend is tested against this one.
"""
import torch

from .common import prepare


def selective_scan_reference(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    out_dtype = u.dtype
    u, delta, A, B, C = prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    batch, channels, length = u.shape
    groups = B.shape[1]
    B = B.repeat_interleave(channels // groups, dim=1)  # (batch, channels, N, L)
    C = C.repeat_interleave(channels // groups, dim=1)
    h = u.new_zeros(batch, channels, A.shape[1])
    ys = []
    # unbind: per-step views whose backward is one stack (indexing per step would cost O(L²) in backward)
    for d_t, u_t, B_t, C_t in zip(delta.unbind(-1), u.unbind(-1), B.unbind(-1), C.unbind(-1)):
        h = torch.exp(d_t[:, :, None] * A) * h + (d_t * u_t)[:, :, None] * B_t
        ys.append((h * C_t).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.to(u)[:, None]
    return y.to(out_dtype)
