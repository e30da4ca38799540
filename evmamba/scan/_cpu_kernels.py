"""The numba kernels of the `cpu_fused` backend (imported only by evmamba.scan.cpu_fused, which handles a
missing numba). forward_tasks and backward_tasks run one thread's share of tasks; forward_parallel and
backward_parallel hand the shares to numba's threads (its OpenMP layer where it has one). A task is one
(batch element, group, block of R channels of the group).

Shapes: u, dl (delta before bias and softplus), gy: (batch, channels, L); Bm, Cm: (batch, groups, N, L).
These five are passed as flat float32 buffers with their strides (rows of `st`: u, dl, gy, B, C; the
token stride is 1), so the mixer's views are read in place; indexing them through slices keeps every
inner loop a contiguous one for LLVM. At: A transposed, (N, channels); D, bias: (channels,); states:
(batch, chunks, N, channels), the state entering each chunk of T tokens.

The vector loops run over the R channels of a block, which share their group's B_t and C_t: for token t
and state n, h[n, r] = exp(dt[t, r]·A[r, n])·h[n, r] + dt[t, r]·u[t, r]·B[n, t] for every channel r of
the block at once, the N states of each channel staying in cache. Each chunk's delta, u (and gy) are first
staged as (T, R) tiles (one transpose), delta's softplus running along a channel's tokens before the
transpose when the chunk has at least 16 of them (or as many as the block has channels), else along a
token's channels after it, so that it stays a vector loop however short the scan.

The transcendental helpers are written without calls (a polynomial exp with its exponent set through the
float's bits, a polynomial log1p on [0, 1]) so that LLVM vectorises the loops over the N states; they are
compiled without fast-math, so their range reductions keep their extra precision. The kernels themselves
allow reassociation (the sums over N become vector reductions) but not NaN/inf assumptions.
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

_F = np.float32
_LOG2E, _LN2_HI, _LN2_LO = _F(1.44269504088896341), _F(0.693359375), _F(-2.12194440e-4)
_XMIN, _XMAX = _F(-87.3), _F(88.7)
_E0, _E1, _E2, _E3, _E4, _E5 = (_F(1.9875691500e-4), _F(1.3981999507e-3), _F(8.3334519073e-3),
                                _F(4.1665795894e-2), _F(1.6666665459e-1), _F(5.0000001201e-1))
_L = tuple(_F(c) for c in (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
                           1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
                           3.3333331174e-1))
_SQRT2M1, _HALF, _ONE, _ZERO = _F(0.41421356), _F(0.5), _F(1.0), _F(0.0)
_FAST = {"reassoc", "contract", "nsz", "arcp"}
# explicit signatures: compiled (or loaded from the cache) once, at import
_F1, _ST = "float32[::1]", "int64[:, ::1]"
_SIG_FORWARD = (f"void(int64, int64, int64, int64, {_F1}, {_F1}, {_F1}, {_F1}, {_ST}, float32[:, ::1], "
                "float32[::1], float32[::1], boolean, int64, float32[:, :, ::1], float32[:, :, :, ::1])")
_SIG_BACKWARD = (f"void(int64, int64, int64, int64, int64, {_F1}, {_F1}, {_F1}, {_F1}, {_F1}, {_ST}, "
                 "float32[:, ::1], float32[::1], float32[::1], boolean, int64, float32[:, :, :, ::1], "
                 "float32[:, :, ::1], float32[:, :, ::1], float32[:, :, ::1], float32[:, :, :, :, ::1], "
                 "float32[:, :, :, :, ::1], float32[:, ::1], float32[:, ::1])")
_SIG_BACKWARD_PARALLEL = _SIG_BACKWARD.replace("void(int64, int64, int64, int64, int64,",
                                               "void(int64, int64, int64, int64,")


@intrinsic
def _as_float32(typingctx, bits):
    """The float32 whose bit pattern is the int32 `bits`."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@njit(cache=True, error_model="numpy")
def fexp(x):
    """exp(x) in float32 (Cephes' polynomial, about 1 ulp); arguments clamped to [-87.3, 88.7]."""
    x = min(max(x, _XMIN), _XMAX)
    k = np.floor(x * _LOG2E + _HALF)
    r = x - k * _LN2_HI
    r = r - k * _LN2_LO
    p = _E0 * r + _E1
    p = p * r + _E2
    p = p * r + _E3
    p = p * r + _E4
    p = p * r + _E5
    y = p * r * r + r + _ONE
    return y * _as_float32((np.int32(k) + np.int32(127)) << np.int32(23))


@njit(cache=True, error_model="numpy")
def flog1p_unit(e):
    """log1p(e) for e in [0, 1] (Cephes' logf polynomial on the reduced argument, computed exactly)."""
    big = e > _SQRT2M1
    f = (e - _ONE) * _HALF if big else e
    ex = _ONE if big else _ZERO
    z = f * f
    y = _L[0] * f + _L[1]
    y = y * f + _L[2]
    y = y * f + _L[3]
    y = y * f + _L[4]
    y = y * f + _L[5]
    y = y * f + _L[6]
    y = y * f + _L[7]
    y = y * f + _L[8]
    y = y * f * z
    y = y + _LN2_LO * ex
    y = y - _HALF * z
    return f + y + _LN2_HI * ex


@njit(cache=True, fastmath=_FAST, error_model="numpy")
def softplus_slope(z):
    """softplus(z) and its slope, sigmoid(z), from one exp."""
    e = fexp(-abs(z))
    inv = _ONE / (_ONE + e)
    return max(z, _ZERO) + flog1p_unit(e), inv * (_ONE if z >= _ZERO else e)


@njit(cache=True, fastmath=_FAST, error_model="numpy")
def delta_row(d, n_t, bias, softplus, dt, sig):
    """dt = softplus(d + bias) (or d + bias) for the n_t tokens of d, and d dt / d d."""
    if softplus:
        for t in range(n_t):
            dt[t], sig[t] = softplus_slope(d[t] + bias)
    else:
        for t in range(n_t):
            dt[t] = d[t] + bias
            sig[t] = _ONE


@njit(cache=True, fastmath=_FAST, error_model="numpy")
def delta_tile_row(d, r_n, bias, c0, softplus, sig):
    """In place over one token's r_n channels: d = softplus(d + bias) (or d + bias), and d dt / d d."""
    if softplus:
        for r in range(r_n):
            d[r], sig[r] = softplus_slope(d[r] + bias[c0 + r])
    else:
        for r in range(r_n):
            d[r] = d[r] + bias[c0 + r]
            sig[r] = _ONE


@njit(cache=True, fastmath=_FAST, error_model="numpy")
def stage_rows(b, c0, r_n, t0, n_t, u, dl, gy, st, bias, softplus, row_dt, row_sig, dt, dtu, sig, ut, gyt):
    """The (T, R) tiles of a chunk: dt, dt·u, d dt/d delta, u and (when gy is given) gy, delta's bias and
    softplus running along each channel's tokens before the transpose."""
    for r in range(r_n):
        c = c0 + r
        ou, od = b * st[0, 0] + c * st[0, 1] + t0, b * st[1, 0] + c * st[1, 1] + t0
        urow, drow = u[ou:ou + n_t], dl[od:od + n_t]
        delta_row(drow, n_t, bias[c], softplus, row_dt, row_sig)
        for t in range(n_t):
            x = urow[t]
            dt[t, r] = row_dt[t]
            dtu[t, r] = row_dt[t] * x
            sig[t, r] = row_sig[t]
            ut[t, r] = x
        if gy.shape[0]:
            og = b * st[2, 0] + c * st[2, 1] + t0
            grow = gy[og:og + n_t]
            for t in range(n_t):
                gyt[t, r] = grow[t]


@njit(cache=True, fastmath=_FAST, error_model="numpy")
def stage_tiles(b, c0, r_n, t0, n_t, u, dl, gy, st, bias, softplus, dt, dtu, sig, ut, gyt):
    """The same tiles, delta's bias and softplus running along each token's channels after the transpose."""
    for r in range(r_n):
        c = c0 + r
        ou, od = b * st[0, 0] + c * st[0, 1] + t0, b * st[1, 0] + c * st[1, 1] + t0
        for t in range(n_t):
            ut[t, r] = u[ou + t]
            dt[t, r] = dl[od + t]
        if gy.shape[0]:
            og = b * st[2, 0] + c * st[2, 1] + t0
            for t in range(n_t):
                gyt[t, r] = gy[og + t]
    for t in range(n_t):
        dtt, ust, dtut = dt[t], ut[t], dtu[t]
        delta_tile_row(dtt, r_n, bias, c0, softplus, sig[t])
        for r in range(r_n):
            dtut[r] = dtt[r] * ust[r]


@njit(cache=True, fastmath=_FAST, error_model="numpy")
def stage(b, c0, r_n, t0, n_t, u, dl, gy, st, bias, softplus, row_dt, row_sig, dt, dtu, sig, ut, gyt):
    """A chunk's tiles, delta's softplus along the tokens when there are at least 16 (a 512-bit vector) or as
    many as channels, else along the channels, so that it stays a vector loop however short the chunk (along
    the channels for 16 tokens or more measured 5-7% slower)."""
    if n_t >= min(r_n, 16):
        stage_rows(b, c0, r_n, t0, n_t, u, dl, gy, st, bias, softplus, row_dt, row_sig, dt, dtu, sig, ut, gyt)
    else:
        stage_tiles(b, c0, r_n, t0, n_t, u, dl, gy, st, bias, softplus, dt, dtu, sig, ut, gyt)


@njit(cache=True, error_model="numpy")
def task_block(k, blocks, groups, per_group, R, st, At, D, Ab, Db):
    """Task k's batch element b, group g, first channel c0 and channel count r_n, and the offsets of its B
    and C rows; its channels' A (transposed) and D copied into Ab, Db."""
    p = k % blocks
    b = (k // blocks) // groups
    g = (k // blocks) % groups
    c0 = g * per_group + p * R
    r_n = min(R, per_group - p * R)
    for i in range(At.shape[0]):  # explicit loops: numba's slice assignment costs more than the copy here
        for r in range(r_n):
            Ab[i, r] = At[i, c0 + r]
    for r in range(r_n):
        Db[r] = D[c0 + r]
    return b, g, c0, r_n, b * st[3, 0] + g * st[3, 1], b * st[4, 0] + g * st[4, 1]


@njit(_SIG_FORWARD, cache=True, nogil=True, fastmath=_FAST, error_model="numpy")
def forward_tasks(k0, k1, R, groups, u, dl, Bm, Cm, st, At, D, bias, softplus, T, y, states):
    """Tasks k0..k1: y and the chunk-start states."""
    length, channels = y.shape[2], y.shape[1]
    n = At.shape[0]
    per_group = channels // groups
    blocks = -(-per_group // R)
    row_dt, row_sig = np.empty(T, np.float32), np.empty(T, np.float32)
    dt, dtu, sig, ut, acc = (np.empty((T, R), np.float32), np.empty((T, R), np.float32),
                             np.empty((T, R), np.float32), np.empty((T, R), np.float32),
                             np.empty((T, R), np.float32))
    h, Ab = np.empty((n, R), np.float32), np.empty((n, R), np.float32)
    Db = np.empty(R, np.float32)
    no_gy = np.empty(0, np.float32)
    for k in range(k0, k1):
        b, _, c0, r_n, ob, oc = task_block(k, blocks, groups, per_group, R, st, At, D, Ab, Db)
        h.fill(_ZERO)
        j = 0
        for t0 in range(0, length, T):
            n_t = min(T, length - t0)
            for i in range(n):
                sj, hi = states[b, j, i], h[i]
                for r in range(r_n):
                    sj[c0 + r] = hi[r]
            j += 1
            stage(b, c0, r_n, t0, n_t, u, dl, no_gy, st, bias, softplus, row_dt, row_sig, dt, dtu, sig, ut, acc)
            for t in range(n_t):
                dtt, dtut, acct = dt[t], dtu[t], acc[t]
                for r in range(r_n):
                    acct[r] = Db[r] * ut[t, r]
                for i in range(n):
                    bti = Bm[ob + i * st[3, 2] + t0 + t]
                    cti = Cm[oc + i * st[4, 2] + t0 + t]
                    hi, Ai = h[i], Ab[i]
                    for r in range(r_n):
                        hv = fexp(dtt[r] * Ai[r]) * hi[r] + dtut[r] * bti
                        hi[r] = hv
                        acct[r] += cti * hv
            for r in range(r_n):
                yr = y[b, c0 + r]
                for t in range(n_t):
                    yr[t0 + t] = acc[t, r]


@njit(_SIG_BACKWARD, cache=True, nogil=True, fastmath=_FAST, error_model="numpy")
def backward_tasks(k0, k1, R, slot, groups, u, dl, gy, Bm, Cm, st, At, D, bias, softplus, T, states,
                   du, ddl, dAt, dB, dC, dD, dbias):
    """Tasks k0..k1: the adjoint recurrence of each block, chunk by chunk from the end, recomputing the
    chunk's states from its start state. du, ddl: (batch, channels, L); the sums over channels and batch go
    to this thread's own partials: dAt[slot] (N, channels), dB[slot], dC[slot] (batch, groups, N, L),
    dD[slot], dbias[slot] (channels,), zeroed by the caller."""
    batch, channels, length = du.shape
    n = At.shape[0]
    per_group = channels // groups
    blocks = -(-per_group // R)
    row_dt, row_sig = np.empty(T, np.float32), np.empty(T, np.float32)
    dt, dtu, sig, ut, gyt = (np.empty((T, R), np.float32), np.empty((T, R), np.float32),
                             np.empty((T, R), np.float32), np.empty((T, R), np.float32),
                             np.empty((T, R), np.float32))
    dut, ddt = np.empty((T, R), np.float32), np.empty((T, R), np.float32)
    hs = np.empty((T + 1, n, R), np.float32)  # hs[t + 1]: the states after token t; hs[0]: the chunk's start
    dec = np.empty((T, n, R), np.float32)
    carry, Ab, dAb = np.empty((n, R), np.float32), np.empty((n, R), np.float32), np.empty((n, R), np.float32)
    sgb, sqa, Db = np.empty(R, np.float32), np.empty(R, np.float32), np.empty(R, np.float32)
    dDb, dbb = np.empty(R, np.float32), np.empty(R, np.float32)
    chunks = states.shape[1]
    for k in range(k0, k1):
        b, g, c0, r_n, ob, oc = task_block(k, blocks, groups, per_group, R, st, At, D, Ab, Db)
        carry.fill(_ZERO)
        dAb.fill(_ZERO)
        dDb.fill(_ZERO)
        dbb.fill(_ZERO)
        for j in range(chunks - 1, -1, -1):
            t0 = j * T
            n_t = min(T, length - t0)
            stage(b, c0, r_n, t0, n_t, u, dl, gy, st, bias, softplus, row_dt, row_sig, dt, dtu, sig, ut, gyt)
            for i in range(n):
                sj, h0 = states[b, j, i], hs[0, i]
                for r in range(r_n):
                    h0[r] = sj[c0 + r]
            for t in range(n_t):
                dtt, dtut = dt[t], dtu[t]
                for i in range(n):
                    bti = Bm[ob + i * st[3, 2] + t0 + t]
                    Ai, dti, h0, h1 = Ab[i], dec[t, i], hs[t, i], hs[t + 1, i]
                    for r in range(r_n):
                        e = fexp(dtt[r] * Ai[r])
                        dti[r] = e
                        h1[r] = e * h0[r] + dtut[r] * bti
            for t in range(n_t - 1, -1, -1):
                tt = t0 + t
                dtt, dtut, gyr = dt[t], dtu[t], gyt[t]
                for r in range(r_n):
                    sgb[r] = _ZERO
                    sqa[r] = _ZERO
                for i in range(n):
                    bti = Bm[ob + i * st[3, 2] + tt]
                    cti = Cm[oc + i * st[4, 2] + tt]
                    Ai, dAi, ci, dti, h0, h1 = Ab[i], dAb[i], carry[i], dec[t, i], hs[t, i], hs[t + 1, i]
                    sdc = _ZERO
                    sdb = _ZERO
                    for r in range(r_n):
                        gv = gyr[r] * cti + ci[r]
                        sdc += gyr[r] * h1[r]
                        sdb += gv * dtut[r]
                        sgb[r] += gv * bti
                        q = gv * dti[r] * h0[r]
                        sqa[r] += q * Ai[r]
                        dAi[r] += q * dtt[r]
                        ci[r] = dti[r] * gv
                    dC[slot, b, g, i, tt] += sdc
                    dB[slot, b, g, i, tt] += sdb
                dur, ddr = dut[t], ddt[t]
                for r in range(r_n):
                    dur[r] = dtt[r] * sgb[r] + Db[r] * gyr[r]
                    x = (sqa[r] + ut[t, r] * sgb[r]) * sig[t, r]
                    ddr[r] = x
                    dDb[r] += gyr[r] * ut[t, r]
                    dbb[r] += x
            for r in range(r_n):
                a, d_ = du[b, c0 + r], ddl[b, c0 + r]
                for t in range(n_t):
                    a[t0 + t] = dut[t, r]
                    d_[t0 + t] = ddt[t, r]
        # explicit loops: numba's `slice += slice` allocates a temporary each time
        for i in range(n):
            dAi, dAs = dAb[i], dAt[slot, i]
            for r in range(r_n):
                dAs[c0 + r] += dAi[r]
        for r in range(r_n):
            dD[slot, c0 + r] += dDb[r]
            dbias[slot, c0 + r] += dbb[r]


@njit(_SIG_FORWARD, cache=True, nogil=True, parallel=True)
def forward_parallel(shares, tasks, R, groups, u, dl, Bm, Cm, st, At, D, bias, softplus, T, y, states):
    """forward_tasks over all tasks, in `shares` parts on numba's threads."""
    for s in prange(shares):
        forward_tasks(tasks * s // shares, tasks * (s + 1) // shares, R, groups, u, dl, Bm, Cm, st, At, D, bias,
                      softplus, T, y, states)


@njit(_SIG_BACKWARD_PARALLEL, cache=True, nogil=True, parallel=True)
def backward_parallel(shares, tasks, R, groups, u, dl, gy, Bm, Cm, st, At, D, bias, softplus, T, states,
                      du, ddl, dAt, dB, dC, dD, dbias):
    """backward_tasks over all tasks, in `shares` parts on numba's threads, part s summing into slot s."""
    for s in prange(shares):
        backward_tasks(tasks * s // shares, tasks * (s + 1) // shares, R, s, groups, u, dl, gy, Bm, Cm, st, At, D,
                       bias, softplus, T, states, du, ddl, dAt, dB, dC, dD, dbias)
