"""The `cpu_fused` backend: the whole selective scan as one fused CPU kernel, forward and backward.

Each (batch, channel) row runs its recurrence over all L tokens with its N states in cache, rows in
parallel over the cores (numba's threads), the channels of a route side by side in vector lanes (they
share the route's B_t and C_t): exp(delta·A), the drive delta·u·B, the output <C, h>, the D skip and
delta's bias and softplus all happen in one pass; no (L, d, N) tensor is ever written. The forward keeps
only the state entering each chunk of CHUNK tokens; the backward runs the adjoint recurrence in reverse
from those, recomputing each chunk's states (in cache) first, and produces all seven gradients (u, delta,
A, B, C, D, delta_bias). dB and dC sum over the channels of a route and dA, dD, d delta_bias over the
batch: each thread sums into its own partials, and one sum after the kernel adds them (no locks).

The kernels are numba functions (evmamba/scan/_cpu_kernels.py), compiled on first use and cached on disk
(under $NUMBA_CACHE_DIR, else $XDG_CACHE_HOME/evmamba/numba or ~/.cache/evmamba/numba); numba ships
wheels for Linux, macOS and Windows, so no compiler is needed. Without numba, `auto` uses the `torch`
backend and says so once. The kernel computes in float32: float16/bfloat16 inputs are computed in float32
and returned in their dtype (as every backend does); float64 inputs run the `torch` backend, with a notice.

The kernel is called through two registered operators, `evmamba::cpu_scan` and
`evmamba::cpu_scan_backward`, so autograd calls its backward and torch.compile sees one opaque node.
"""
from __future__ import annotations

import functools
import glob
import logging
import os
import threading
import time

import torch

CHUNK = 64  # tokens between the states the forward keeps for the backward (1/4 of u's size at N=16)
log = logging.getLogger("evmamba")


def cache_dir() -> str:
    """Where numba keeps the compiled kernels: $NUMBA_CACHE_DIR if set, else under the user's cache."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "evmamba", "numba")


_load_lock = threading.Lock()
unavailable_reason: str | None = None  # why the kernel could not be loaded, when it could not


@functools.lru_cache(maxsize=1)
def _kernels_cached():
    global unavailable_reason
    path = cache_dir()
    try:
        os.makedirs(path, exist_ok=True)
        os.environ.setdefault("NUMBA_CACHE_DIR", path)
        import numba
        numba.config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]
        if "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:  # OpenMP first: workqueue measured 2x slower
            numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
    except Exception as e:  # noqa: BLE001 - ImportError, or a numba that cannot load its LLVM library
        unavailable_reason = f"numba could not be imported ({type(e).__name__}: {e})"
        return None
    cached = glob.glob(os.path.join(numba.config.CACHE_DIR, "**", "_cpu_kernels.*.nbi"), recursive=True)
    if not cached:
        log.info(f"selective scan: compiling the cpu_fused kernel (once, about 10 s; cached in {path})")
    started = time.perf_counter()
    threads = torch.get_num_threads()
    try:
        from . import _cpu_kernels  # compiles, or loads from the cache, at import
    except Exception as e:  # noqa: BLE001 - any failure to compile means: run the torch backend instead
        unavailable_reason = f"its kernel could not be compiled ({type(e).__name__}: {e})"
        return None
    finally:
        _keep_torch_threads(threads)
    if not cached:
        log.info(f"selective scan: cpu_fused kernel ready in {time.perf_counter() - started:.1f} s")
    return _cpu_kernels


_UNSET = object()
_loaded = _UNSET  # the kernels module or None, once kernels() has run: compiled code reads only this


def kernels():
    """The compiled kernels module, or None when numba is missing or cannot compile them
    (`unavailable_reason` says why)."""
    global _loaded
    with _load_lock:
        _loaded = _kernels_cached()
    return _loaded


def available() -> bool:
    """Whether the kernel runs here (loading it on the first call; torch.compile traces a plain flag)."""
    return (kernels() if _loaded is _UNSET else _loaded) is not None


def _cache_clear():  # tests: load again (with numba hidden, say)
    global _loaded
    _kernels_cached.cache_clear()
    _loaded = _UNSET


kernels.cache_clear = _cache_clear


_launch_lock = threading.Lock()


def _threads(k) -> int:
    """Threads for one kernel call: torch's intra-op count, at most numba's."""
    import numba
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def _keep_torch_threads(threads: int):
    """Numba's OpenMP layer sets the calling thread's OpenMP thread count (to all of numba's threads when it
    starts them, as loading the kernels does), and that count is torch's too: put torch's back."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _launch(fn, serial, shares, tasks, *args):
    """fn(shares, tasks, *args) on `shares` of numba's threads, torch's thread count kept; one share runs
    serial(0, tasks, *args) in this thread instead (no parallel region, whose idle threads would spin beside
    other work). One launch at a time: numba's fallback threading layer (workqueue) must not be entered from
    two threads at once, and each launch uses every core."""
    import numba
    if shares == 1:
        serial(0, tasks, *args)
        return
    with _launch_lock:
        threads = torch.get_num_threads()
        try:
            numba.set_num_threads(shares)
            fn(shares, tasks, *args)
        finally:
            _keep_torch_threads(threads)


def _block(per_group: int, most: int, pairs: int = 1, threads: int = 1) -> int:
    """Channels per block: at most `most`, the group's channels split evenly, and split further (to blocks
    of at least MIN_BLOCK channels) until the (batch element, group) pairs give every thread a task."""
    split = max(-(-per_group // most), min(-(-threads // pairs), max(1, per_group // MIN_BLOCK)))
    return -(-per_group // split)


# Channels per task. A whole 96-channel group as one block measured faster than two blocks of 48 (batch 64,
# K=4, d=96, 2 cores: forward 2.17 against 2.43 ms at L=16, backward 4.15 against 4.46 ms; at d=192, L=16
# and 64, and at batch 1, L=3136, blocks of 96 were within 7% of the fastest of 48 to 192, forward and
# backward); blocks of 16 took twice as long as 48 in the backward.
FORWARD_BLOCK = BACKWARD_BLOCK = 96
MIN_BLOCK = 16


def _np(t):
    return t.detach().numpy()


torch.library.define("evmamba::cpu_scan", "(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor D, "
                     "Tensor delta_bias, bool delta_softplus, int chunk) -> (Tensor, Tensor)")
torch.library.define("evmamba::cpu_scan_backward", "(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, "
                     "Tensor D, Tensor delta_bias, Tensor states, Tensor gy, bool delta_softplus, int chunk) "
                     "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")


# Shapes: u, delta (batch, channels, L); A (channels, N); B, C (batch, groups, N, L); D, delta_bias
# (channels,); all float32, u, delta, B, C with any strides (read in place). Returns y (batch, channels, L)
# and the state entering each chunk, (batch, chunks, N, channels).
def _states_shape(u, A, chunk):
    batch, channels, length = u.shape
    return (batch, -(-length // chunk), A.shape[1], channels)


def _tasks(u, B, most, threads):
    pairs, per_group = u.shape[0] * B.shape[1], u.shape[1] // B.shape[1]
    block = _block(per_group, most, pairs, threads)
    return block, pairs * -(-per_group // block)


def _flat(tensors):
    """Each tensor as a flat buffer from its first element (its token axis made contiguous where it is not),
    and the strides of all of them, one row each (the last column: the third axis of B and C)."""
    flats, strides = [], torch.zeros((len(tensors), 3), dtype=torch.int64)
    for row, t in enumerate(tensors):
        if t.stride(-1) != 1:
            t = t.contiguous()
        span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
        flats.append(_np(t.as_strided((span,), (1,))))
        strides[row, : t.dim() - 1] = torch.tensor(t.stride()[:-1])
    return flats, strides.numpy()


@torch.library.impl("evmamba::cpu_scan", "CompositeExplicitAutograd")
def _cpu_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, chunk):
    k = kernels()
    y = u.new_empty(u.shape)
    states = u.new_empty(_states_shape(u, A, chunk))
    threads = _threads(k)
    block, tasks = _tasks(u, B, FORWARD_BLOCK, threads)
    (fu, fd, _, fB, fC), st = _flat((u, delta, u, B, C))
    _launch(k.forward_parallel, k.forward_tasks, min(tasks, threads), tasks, block, B.shape[1], fu, fd, fB,
            fC, st, _np(A.t().contiguous()), _np(D.contiguous()), _np(delta_bias.contiguous()),
            bool(delta_softplus), int(chunk), _np(y), _np(states))
    return y, states


@torch.library.register_fake("evmamba::cpu_scan")
def _(u, delta, A, B, C, D, delta_bias, delta_softplus, chunk):
    return u.new_empty(u.shape), u.new_empty(_states_shape(u, A, chunk))


@torch.library.impl("evmamba::cpu_scan_backward", "CompositeExplicitAutograd")
def _cpu_scan_backward(u, delta, A, B, C, D, delta_bias, states, gy, delta_softplus, chunk):
    k = kernels()
    threads = _threads(k)
    block, tasks = _tasks(u, B, BACKWARD_BLOCK, threads)
    slots = min(tasks, threads)
    du, ddelta = u.new_empty(u.shape), u.new_empty(u.shape)
    dAt = u.new_zeros((slots,) + A.shape[::-1])
    dB, dC = (u.new_zeros((slots,) + B.shape) for _ in range(2))
    dD, dbias = (u.new_zeros((slots, u.shape[1])) for _ in range(2))
    (fu, fd, fg, fB, fC), st = _flat((u, delta, gy, B, C))
    def serial(k0, k1, R, *rest):  # one share: every task, summing into slot 0
        k.backward_tasks(k0, k1, R, 0, *rest)
    _launch(k.backward_parallel, serial, slots, tasks, block, B.shape[1], fu, fd, fg, fB, fC, st,
            _np(A.t().contiguous()), _np(D.contiguous()), _np(delta_bias.contiguous()), bool(delta_softplus),
            int(chunk), _np(states.contiguous()), _np(du), _np(ddelta), _np(dAt), _np(dB), _np(dC), _np(dD),
            _np(dbias))
    # one sum of the per-thread partials
    dA, dB, dC, dD, dbias = (t.sum(0) if slots > 1 else t[0] for t in (dAt, dB, dC, dD, dbias))
    return du, ddelta, dA.t().contiguous(), dB, dC, dD, dbias


@torch.library.register_fake("evmamba::cpu_scan_backward")
def _(u, delta, A, B, C, D, delta_bias, states, gy, delta_softplus, chunk):
    return (u.new_empty(u.shape), u.new_empty(u.shape), A.new_empty(A.shape), B.new_empty(B.shape),
            C.new_empty(C.shape), D.new_empty(D.shape), delta_bias.new_empty(delta_bias.shape))


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, delta_softplus, chunk = inputs
    ctx.delta_softplus, ctx.chunk = delta_softplus, chunk
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, output[1])
    # the states are for the backward only: no gradient flows into them, and autograd does not fill one with
    # zeros for each backward (a (batch, chunks, N, channels) fill: 0.33 ms of an 8.9 ms batch-64, L=16 pass)
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _backward(ctx, gy, _gstates):
    if gy is None:  # y took no part in what is differentiated
        return (None,) * 9
    u, delta, A, B, C, D, delta_bias, states = ctx.saved_tensors
    grads = cpu_scan_backward(u, delta, A, B, C, D, delta_bias, states, gy, ctx.delta_softplus, ctx.chunk)
    return (*grads, None, None)


torch.library.register_autograd("evmamba::cpu_scan", _backward, setup_context=_setup_context)
cpu_scan = torch.ops.evmamba.cpu_scan
cpu_scan_backward = torch.ops.evmamba.cpu_scan_backward


def run_kernel(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, chunk=None):
    """The fused scan in float32 (inputs cast to it), returned in u's dtype; B, C (batch, groups, N, L) or
    (batch, N, L); states kept every `chunk` tokens (default CHUNK)."""
    chunk = CHUNK if chunk is None else chunk
    out_dtype = u.dtype
    f32 = torch.float32
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    zeros = u.new_zeros(u.shape[1], dtype=f32)
    D = zeros if D is None else D.to(f32)
    delta_bias = zeros if delta_bias is None else delta_bias.to(f32)
    y, _ = cpu_scan(u.to(f32), delta.to(f32), A.to(f32), B.to(f32), C.to(f32), D, delta_bias,
                    bool(delta_softplus), chunk)
    return y.to(out_dtype)


def selective_scan_cpu_fused(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    if u.device.type != "cpu":
        raise ValueError(f"the cpu_fused backend runs on CPU tensors only; these are on {u.device}: use "
                         "backend='auto' or 'torch'")
    if not available():
        raise RuntimeError(f"the cpu_fused backend is unavailable: {unavailable_reason}; "
                           "`pip install -r requirements.txt` installs numba, or use backend='torch'")
    if u.dtype == torch.float64:
        from . import _announce
        from .torch_scan import selective_scan_torch
        _announce("cpu_fused-f64", "selective scan: the cpu_fused kernel computes in float32; float64 tensors "
                  "run the torch backend")
        return selective_scan_torch(u, delta, A, B, C, D, delta_bias, delta_softplus)
    return run_kernel(u, delta, A, B, C, D, delta_bias, delta_softplus)
