"""The fast pure-PyTorch selective scan (the `torch` backend): same signature and results as the reference.

The scan runs over time in chunks of T tokens, time-major, so each chunk's work stays in cache and no
tensor is larger than a chunk's state (T, batch, channels, N):

    decay_t = exp(delta_t · A),  drive_t = delta_t · u_t · B_t        all T tokens of the chunk at once
    h_t     = decay_t ⊙ h_{t-1} + drive_t                             one fused multiply-add per token
    y_t     = <C_t, h_t>                                               one batched contraction per chunk

Only the state entering each chunk is kept for the backward pass, which recomputes the chunk and runs the
adjoint recurrence g_t = <C_t, dy_t> + decay_{t+1} ⊙ g_{t+1} in reverse, again one fused op per token.
No product of decays is ever formed (each factor is exp of a non-positive number when A < 0 and delta
>= 0), so nothing overflows or underflows into NaN however long the sequence or large delta·|A|.
"""
import torch
import torch.nn.functional as F

from .common import compute_dtype

STATE_ELEMENTS_PER_CHUNK = 1 << 18  # T·batch·channels·N per chunk: about 1 MB of float32 per tensor


def chunk_length(length: int, state_size: int) -> int:
    return max(8, min(length, 512, STATE_ELEMENTS_PER_CHUNK // max(state_size, 1)))


def _recurrence(decay, drive, h_prev, out):
    """out_t = decay_t * out_{t-1} + drive_t for t in the chunk, with out_{-1} = h_prev (all (T, M))."""
    prev = h_prev
    for a, b, h in zip(decay.unbind(0), drive.unbind(0), out.unbind(0)):
        torch.addcmul(b, a, prev, out=h)
        prev = h
    return out


def _decay_and_drive(dt_c, u_c, A, B_c, decay, drive):
    """decay = exp(dt·A) and drive = dt·u·B for one chunk, written into the given buffers."""
    torch.mul(dt_c[..., None], A, out=decay).exp_()
    torch.mul((dt_c * u_c)[..., None], B_c[:, :, :, None, :], out=drive)


# The core runs as two registered operators (forward, and backward with its own recomputation) so that
# torch.compile sees one opaque node rather than unrolling the per-token loop, and autograd calls our
# backward. Shapes: u, dt (L, b, G, d) time-major; B, C (L, b, G, N); A (G, d, N); returns y like u and
# the state entering each chunk, (chunks, b, G, d, N), which the backward needs. (Registered with
# torch.library.define/impl rather than custom_op, whose wrapper loads torch._dynamo on the first call:
# a second and 70 MB that eager users do not need.)
# Compiled code hands both operators dense time-major inputs; the tag tells inductor to pass them contiguous
# rather than in whatever stride order it traced.
_CONTIGUOUS = (torch.Tag.needs_contiguous_strides,)
torch.library.define("evmamba::torch_scan", "(Tensor u, Tensor dt, Tensor A, Tensor B, Tensor C, int chunk) "
                     "-> (Tensor, Tensor)", tags=_CONTIGUOUS)
torch.library.define("evmamba::torch_scan_backward", "(Tensor u, Tensor dt, Tensor A, Tensor B, Tensor C, "
                     "Tensor starts, Tensor gy, int chunk) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
                     tags=_CONTIGUOUS)


@torch.library.impl("evmamba::torch_scan", "CompositeExplicitAutograd")
def _scan_core(u, dt, A, B, C, chunk):
    """Forward over chunks. Each chunk works in a few (chunk, b, G, d, N) buffers allocated once per call,
    so the loop allocates no state-sized tensors (fresh allocations of that size cost page faults)."""
    length = u.shape[0]
    state = u.shape[1:] + A.shape[-1:]  # (b, G, d, N)
    decay, drive, hbuf = (u.new_empty((chunk,) + state) for _ in range(3))
    y = u.new_empty(u.shape)
    starts = u.new_empty((-(-length // chunk),) + state)  # the state entering each chunk
    h = u.new_zeros(state)
    for j, t0 in enumerate(range(0, length, chunk)):
        t1 = min(t0 + chunk, length)
        n = t1 - t0
        starts[j] = h
        _decay_and_drive(dt[t0:t1], u[t0:t1], A, B[t0:t1], decay[:n], drive[:n])
        hc = _recurrence(decay[:n], drive[:n], h, hbuf[:n])
        y[t0:t1] = torch.einsum("tbgdn,tbgn->tbgd", hc, C[t0:t1])
        h = hc[-1]
    return y, starts


@torch.library.register_fake("evmamba::torch_scan")
def _(u, dt, A, B, C, chunk):
    return u.new_empty(u.shape), u.new_empty((-(-u.shape[0] // chunk),) + u.shape[1:] + A.shape[-1:])


@torch.library.impl("evmamba::torch_scan_backward", "CompositeExplicitAutograd")
def _scan_core_backward(u, dt, A, B, C, starts, gy, chunk):
    """Gradients of scan_core's y for u, dt, A, B, C: recompute each chunk from its start state, then run
    the adjoint recurrence g_t = C_t dy_t + decay_{t+1} g_{t+1} backwards through it."""
    gy = gy.contiguous()
    length = u.shape[0]
    gu, gdt, gB, gC = (t.new_empty(t.shape) for t in (u, dt, B, C))  # contiguous, whatever the inputs' strides
    gA = A.new_zeros(A.shape)
    carry = torch.zeros_like(starts[0])  # decay_{t1} ⊙ g_{t1}: the adjoint entering the chunk from the right
    decay, drive, hbuf, gbuf = (u.new_empty((chunk,) + starts.shape[1:]) for _ in range(4))
    for j in range(starts.shape[0] - 1, -1, -1):
        t0 = j * chunk
        t1 = min(t0 + chunk, length)
        n = t1 - t0
        dt_c, u_c, B_c, C_c, gy_c = dt[t0:t1], u[t0:t1], B[t0:t1], C[t0:t1], gy[t0:t1]
        dec, drv = decay[:n], drive[:n]
        _decay_and_drive(dt_c, u_c, A, B_c, dec, drv)
        h = _recurrence(dec, drv, starts[j], hbuf[:n])
        g = torch.mul(gy_c[..., None], C_c[:, :, :, None, :], out=gbuf[:n])
        g[n - 1] += carry
        for a, out, nxt in zip(dec[1:].unbind(0)[::-1], g[:-1].unbind(0)[::-1], g[1:].unbind(0)[::-1]):
            out.addcmul_(a, nxt)
        torch.mul(dec[0], g[0], out=carry)
        gC[t0:t1] = torch.einsum("tbgdn,tbgd->tbgn", h, gy_c)
        # through drive = dt·u·B
        gBu = torch.einsum("tbgdn,tbgn->tbgd", g, B_c)  # Σ_n g·B
        gB[t0:t1] = torch.einsum("tbgdn,tbgd->tbgn", g, dt_c * u_c)
        # through decay = exp(dt·A): d decay = decay·(A ddt + dt dA), with g·h_{t-1}·decay = g·(h - drive)
        # (elementwise products and plain sums here: einsum would pick slow batched matmuls)
        q = torch.sub(h, drv, out=drv).mul_(g)
        gA += torch.mul(q, dt_c[..., None], out=h).flatten(0, 1).sum(0)
        torch.add(torch.mul(q, A, out=dec).sum(-1), gBu * u_c, out=gdt[t0:t1])
        torch.mul(gBu, dt_c, out=gu[t0:t1])
    return gu, gdt, gA, gB, gC


@torch.library.register_fake("evmamba::torch_scan_backward")
def _(u, dt, A, B, C, starts, gy, chunk):
    return tuple(t.new_empty(t.shape) for t in (u, dt, A, B, C))


def _setup_context(ctx, inputs, output):
    u, dt, A, B, C, chunk = inputs
    ctx.chunk = chunk
    ctx.save_for_backward(u, dt, A, B, C, output[1])


def _backward(ctx, gy, _gstarts):
    gu, gdt, gA, gB, gC = scan_core_backward(*ctx.saved_tensors, gy, ctx.chunk)
    return gu, gdt, gA, gB, gC, None


torch.library.register_autograd("evmamba::torch_scan", _backward, setup_context=_setup_context)
scan_core = torch.ops.evmamba.torch_scan
scan_core_backward = torch.ops.evmamba.torch_scan_backward


def selective_scan_torch(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    out_dtype = u.dtype
    ct = compute_dtype(u.dtype)
    batch, channels, length = u.shape
    groups, n = (B.shape[1] if B.dim() == 4 else 1), A.shape[1]
    d = channels // groups
    compiling = torch.compiler.is_compiling()

    def time_major(t):  # (batch, channels, L) -> (L, batch, groups, d): a view, eagerly
        t = t.to(ct).permute(2, 0, 1).reshape(length, batch, groups, d)
        # Compiled code copies it to dense memory: then the operator's inputs, the tensors it saves for
        # backward and the gradients flowing back are plain dense tensors, never views of the mixer's
        # route-major tokens, whose strides inductor cannot order for a symbolic batch size, and on which
        # the compiler's and eager's stride rules for softplus_backward disagree (the input's layout against
        # the gradient's), so that views of the gradient taken on the compiler's word read wrong elements.
        return t.contiguous() if compiling else t

    def groups_last(t):  # B, C: (batch, groups, N, L) or (batch, N, L) -> (L, batch, groups, N)
        t = t.to(ct)
        return (t.unsqueeze(1) if t.dim() == 3 else t).permute(3, 0, 1, 2).contiguous()

    dt = time_major(delta)  # delta's bias and softplus in the scan's own layout (mamba-ssm's semantics)
    if delta_bias is not None:
        dt = dt + delta_bias.to(ct).view(groups, d)
    if delta_softplus:
        dt = F.softplus(dt)
    # a chunk's state is (T, batch, channels, N); compiled code sizes the chunk per sample instead, so that
    # one graph serves every batch size (no guard on the chunk length, which changes no result)
    chunk = chunk_length(length, channels * n if compiling else batch * channels * n)
    y, _ = scan_core(time_major(u), dt, A.to(ct).reshape(groups, d, n), groups_last(B), groups_last(C), chunk)
    y = y.reshape(length, batch, channels).permute(1, 2, 0)
    if D is not None:
        y = y + u.to(ct) * D.to(ct)[:, None]
    return y.to(out_dtype)
