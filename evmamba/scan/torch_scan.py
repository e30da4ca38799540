"""The fast pure-PyTorch selective scan (the `torch` backend): same signature and results as the reference.

Everything that does not depend on the previous step is computed for all tokens at once, time-major:
    decay_t = exp(delta_t · A),  drive_t = delta_t · u_t · B_t          (L, batch, groups, d, N)
Only the recurrence h_t = decay_t ⊙ h_{t-1} + drive_t is sequential; `linear_scan` runs it with one
fused multiply-add per step on a contiguous slice, and its backward is the same recurrence run in reverse
(g_t = grad_t + decay_{t+1} ⊙ g_{t+1}), so autograd never records a per-step graph. The contraction with
C is one batched matmul afterwards. Products of decays are never formed, so nothing overflows: every
factor is exp of a non-positive number when A < 0.
"""
import torch

from .common import prepare


def _scan_forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t along dim 0, h_{-1} = 0."""
    h = torch.empty_like(b)
    h[0] = b[0]
    for t in range(1, b.shape[0]):
        torch.addcmul(b[t], a[t], h[t - 1], out=h[t])
    return h


def _scan_backward(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """G_t = g_t + a_{t+1} * G_{t+1} along dim 0, G_L = 0: the adjoint of `_scan_forward`."""
    G = torch.empty_like(g)
    last = g.shape[0] - 1
    G[last] = g[last]
    for t in range(last - 1, -1, -1):
        torch.addcmul(g[t], a[t + 1], G[t + 1], out=G[t])
    return G


class LinearScan(torch.autograd.Function):
    """h_t = a_t ⊙ h_{t-1} + b_t over dim 0 (h_{-1} = 0), with a hand-written backward."""

    @staticmethod
    def forward(ctx, a, b):
        a, b = a.contiguous(), b.contiguous()
        h = _scan_forward(a, b)
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, grad_h):
        a, h = ctx.saved_tensors
        G = _scan_backward(a, grad_h.contiguous())
        grad_a = None
        if ctx.needs_input_grad[0]:
            grad_a = torch.zeros_like(a)
            torch.mul(G[1:], h[:-1], out=grad_a[1:])
        return grad_a, G


def linear_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return LinearScan.apply(a, b)


def selective_scan_torch(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    out_dtype = u.dtype
    u, delta, A, B, C = prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    batch, channels, length = u.shape
    groups, n = B.shape[1], A.shape[1]
    d = channels // groups
    # time-major: (L, batch, groups, d, 1) against per-token B, C as (L, batch, groups, 1 or N, N or 1)
    time_major = lambda t: t.permute(2, 0, 1).reshape(length, batch, groups, d, 1)  # noqa: E731
    B = B.permute(3, 0, 1, 2).contiguous()  # (L, batch, groups, N)
    C = C.permute(3, 0, 1, 2).contiguous()
    dt = time_major(delta)
    decay = torch.exp(dt * A.view(groups, d, n))
    drive = (dt * time_major(u)) * B.unsqueeze(3)
    h = linear_scan(decay, drive)  # (L, batch, groups, d, N)
    y = torch.einsum("lbgdn,lbgn->bgdl", h, C).reshape(batch, channels, length)
    if D is not None:
        y = y + u * D.to(u)[:, None]
    return y.to(out_dtype)
