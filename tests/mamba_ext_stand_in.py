"""A CPU stand-in for mamba-ssm's compiled `selective_scan_cuda` module, to test the operators that wrap it.

It follows the extension's contract as its C++ source defines it: `fwd(u, delta, A, B, C, D, z, delta_bias,
delta_softplus)` returns [out like delta, x of shape (batch, dim, ⌈L/2048⌉, 2N) in A's dtype];
`bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus, recompute_out_z)` returns
[du like u, ddelta like delta, dA, dB, dC (in B's and C's dtype), dD, ddelta_bias]. The arithmetic is the
torch backend's forward and backward with the chain rule for the bias, softplus and D written out."""
import torch
import torch.nn.functional as F

from evmamba.scan.torch_scan import chunk_length, scan_core, scan_core_backward


def _core_inputs(u, delta, A, B, C, delta_bias, delta_softplus):
    batch, channels, length = u.shape
    groups, n = B.shape[1], A.shape[1]
    d = channels // groups
    pre = delta.float() + delta_bias[:, None]
    dt = F.softplus(pre) if delta_softplus else pre

    def tm(t):  # time-major (L, batch, groups, d)
        return t.float().permute(2, 0, 1).reshape(length, batch, groups, d)

    def bc(t):  # (L, batch, groups, N)
        return t.float().permute(3, 0, 1, 2).contiguous()

    return pre, (tm(u), tm(dt), A.reshape(groups, d, n), bc(B), bc(C), chunk_length(length, batch * channels * n))


def _channels_first(t, shape):  # (L, b, G, d) -> (b, G·d, L)
    return t.reshape(shape[2], shape[0], shape[1]).permute(1, 2, 0)


def fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    assert z is None
    _, args = _core_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    y, _ = scan_core(*args)
    out = torch.empty_like(delta)
    out.copy_(_channels_first(y, u.shape) + u.float() * D[:, None])
    n_chunks = -(-u.shape[2] // 2048)
    return [out, torch.zeros(u.shape[0], u.shape[1], n_chunks, 2 * A.shape[1], dtype=A.dtype)]


def bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus, recompute_out_z):
    assert z is None and not recompute_out_z
    pre, args = _core_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    y, starts = scan_core(*args)
    length, batch, groups, d = args[0].shape
    gy = dout.float().permute(2, 0, 1).reshape(length, batch, groups, d)
    gu, gdt, gA, gB, gC = scan_core_backward(*args[:5], starts, gy, args[5])
    g = dout.float()
    du = torch.empty_like(u)
    du.copy_(_channels_first(gu, u.shape) + g * D[:, None])
    gdt = _channels_first(gdt, u.shape)
    if delta_softplus:
        gdt = gdt * torch.sigmoid(pre)
    ddelta = torch.empty_like(delta)
    ddelta.copy_(gdt)
    dB, dC = torch.empty_like(B), torch.empty_like(C)
    dB.copy_(gB.permute(1, 2, 3, 0))
    dC.copy_(gC.permute(1, 2, 3, 0))
    return [du, ddelta, gA.reshape(A.shape).clone(), dB, dC, (g * u.float()).sum((0, 2)), gdt.sum((0, 2))]
