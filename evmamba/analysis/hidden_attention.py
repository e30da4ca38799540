"""The hidden (implicit) attention of a selective-scan route: Mamba read as attention (Ali, Zimerman and
Wolf, "The Hidden Attention of Mamba Models", 2024).

Unrolling the S6 recurrence h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, y_t = C_t . h_t + D u_t gives,
per channel c,

    y_t = sum_{s <= t} alpha[t, s] u_s + D u_t,
    alpha[t, s] = sum_n C_t[n] exp(sum_{r = s+1..t} delta_r A[n]) delta_s B_s[n]          (s <= t; 0 for s > t)

an L x L lower-triangular matrix per channel: how much token s (key) feeds the output at token t (query)
along the route's reading order.

Computing it: with S_t = sum_{r <= t} delta_r A (per channel and state; A < 0 so S falls), the decay is
exp(S_t - S_s). Forming exp(S_t) and exp(-S_s) separately would overflow (S reaches -10^5 on long routes),
so the differences are taken in float64. The matrix is built in column blocks [i0, i1) with b = i1 - 1:
for rows below a block, exp(S_t - S_s) = exp(S_t - S_b) exp(S_b - S_s), both factors <= 1, so that part is
a product of two small matrices. Inside the block the same product is used with the block's first token
as reference when the decay across the block stays within e^600 (float64's safe range), and otherwise the
pairwise differences (<= 0 where s <= t) are exponentiated directly. There is no division anywhere, so
nothing divides by an underflowed number, and nothing overflows. The average over channels accumulates
block by block and never holds (channels, L, L).

    att = hidden_attention(mixer, x_conv, route=0)        # x_conv: the mixer's SiLU(conv2d(.)) output
    atts = model_hidden_attention(model, "chelsea", mixer=0)   # every route of the first mixer
    att.matrix            # (L, L) in the route's reading order
    att.image_order()     # the same, rows and columns sorted by position on the image
    att.row_map(28, 28)   # one query's attention over the image grid
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..checks import integer
from ..mixer import SelectiveScan2D
from .interventions import capturing, check_route, on_inference_copy
from .progress import track

REDUCTIONS = ("abs", "mean", None)
SAFE_EXPONENT = 600.0  # |exponents| float64 takes without overflow or underflow to subnormals (e^±708)
MAX_PER_CHANNEL = 50_000_000  # entries of a (channels, L, L) result before we ask for a reduction
FACTOR_BYTES = 24e6  # the float64 factors one chunk of channels holds (c x L x N each, three of them)


def _check_inputs(delta, A, B, C):
    for name, t in (("delta", delta), ("A", A), ("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor")
    if delta.dim() != 2:
        raise ValueError(f"delta must be (channels, L) after bias and softplus, got {tuple(delta.shape)}")
    d, length = delta.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (channels={d}, N), got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (n, length):
            raise ValueError(f"{name} must be (N={n}, L={length}), got {tuple(t.shape)}")
    if (delta < 0).any():
        raise ValueError("delta must be non-negative (after softplus): the step sizes of the scan")
    if (A > 0).any():
        raise ValueError("A must be <= 0 (A = -exp(A_log)): a positive A makes the scan grow without bound")
    return d, length, n


def implicit_attention(delta, A, B, C, *, reduce: str | None = "abs", block: int = 128, dtype=torch.float32,
                       progress=None, bar: bool = True) -> torch.Tensor:
    """The implicit attention of one route (see the module docstring).

    delta: (d, L) step sizes after bias and softplus; A: (d, N), <= 0; B, C: (N, L).
    reduce: "abs" -> (L, L) mean over channels of |alpha|; "mean" -> (L, L) mean of alpha (signed);
        None -> (d, L, L), every channel (small cases only).
    Blocks of `block` columns; float64 exponents, results in `dtype`."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce {reduce!r}: valid values are 'abs', 'mean' and None (every channel)")
    block = integer(block, "block", low=1)
    d, length, n = _check_inputs(delta, A, B, C)
    if reduce is None and d * length * length > MAX_PER_CHANNEL:
        raise ValueError(f"every channel of a {length}-token route is {d}x{length}x{length} numbers: average "
                         f"over channels with reduce='abs' or 'mean', or pass fewer channels")
    dev = delta.device
    f64 = torch.float64
    out = torch.zeros((d, length, length) if reduce is None else (length, length), dtype=dtype, device=dev)
    # channels at a time, so the float64 factors stay near FACTOR_BYTES
    chunk = max(1, min(d, int(FACTOR_BYTES // (8 * 3 * n * max(length, block)))))
    Ct = C.to(f64).t().contiguous()  # (L, N)
    steps = [(c0, i0) for c0 in range(0, d, chunk) for i0 in range(0, length, block)]
    tril = torch.ones(block, block, dtype=torch.bool, device=dev).tril()
    S = dB = None
    for c0, i0 in track(steps, len(steps), "hidden attention", progress, bar):
        c1, i1 = min(c0 + chunk, d), min(i0 + block, length)
        if i0 == 0:  # a new chunk of channels
            dl = delta[c0:c1].to(f64)
            # S[c, t, n] = sum_{r <= t} delta_r A[n]: falling, <= 0
            S = (dl[:, :, None] * A[c0:c1].to(f64)[:, None, :]).cumsum(1)  # (c, L, N)
            dB = dl[:, :, None] * B.to(f64).t()[None]  # (c, L, N): delta_s B_s
        T = i1 - i0
        Sblk = S[:, i0:i1]
        if float((Sblk[:, 0] - Sblk[:, -1]).max()) <= SAFE_EXPONENT:
            # inside the block, with its first token a as reference: exp(S_t - S_a) exp(S_a - S_s), both
            # factors within e^±SAFE_EXPONENT, so a product of two small matrices is exact in float64
            Sa = Sblk[:, :1]
            left = (Sblk - Sa).exp() * Ct[None, i0:i1]
            right = (Sa - Sblk).exp() * dB[:, i0:i1]
            w = torch.bmm(left, right.transpose(1, 2)).tril_().to(dtype)
        else:
            # the state forgets more than e^SAFE_EXPONENT across the block: exp(S_t - S_s) pair by pair for
            # s <= t (the masked entries would be > 0 and are never formed)
            diff = Sblk[:, :, None, :] - Sblk[:, None, :, :]  # (c, t, s, N)
            decay = diff.masked_fill_(~tril[:T, :T, None], float("-inf")).exp_()
            w = torch.einsum("tn,ctsn,csn->cts", Ct[i0:i1], decay, dB[:, i0:i1]).to(dtype)  # (c, T, T)
        _accumulate(out, w, reduce, c0, c1, i0, i1, i0, d)
        if i1 < length:
            Sb = S[:, i1 - 1:i1]  # (c, 1, N)
            right = ((Sb - Sblk).exp_() * dB[:, i0:i1]).to(dtype)  # (c, T, N): exp(S_b - S_s) delta_s B_s
            left = (S[:, i1:] - Sb).exp_().mul_(Ct[None, i1:]).to(dtype)  # (c, L - i1, N): C_t exp(S_t - S_b)
            if reduce == "mean":  # the channel sum is part of the product: one matrix product over (c, n)
                below = left.transpose(0, 1).reshape(length - i1, -1) @ right.transpose(0, 1).reshape(T, -1).t()
                out[i1:, i0:i1] += below / d
            else:
                below = torch.bmm(left, right.transpose(1, 2))  # (c, L - i1, T)
                _accumulate(out, below, reduce, c0, c1, i1, length, i0, d)
    return out


def _accumulate(out, w, reduce, c0, c1, r0, r1, s0, d):
    """Add per-channel rows r0:r1, columns s0:s0+w.shape[-1] of alpha to `out` as `reduce` asks."""
    s1 = s0 + w.shape[-1]
    if reduce is None:
        out[c0:c1, r0:r1, s0:s1] = w
    elif reduce == "abs":
        out[r0:r1, s0:s1] += torch.linalg.vector_norm(w, 1, dim=0) / d
    else:
        out[r0:r1, s0:s1] += w.sum(0) / d


def implicit_attention_reference(delta, A, B, C) -> torch.Tensor:
    """The slow twin of `implicit_attention(..., reduce=None)`: (d, L, L) in float64 from the product of
    per-step decays exp(delta_r A), one (t, s) pair at a time. Tiny cases only."""
    d, length, n = _check_inputs(delta, A, B, C)
    delta, A, B, C = (t.to(torch.float64) for t in (delta, A, B, C))
    out = torch.zeros(d, length, length, dtype=torch.float64)
    for c in range(d):
        for t in range(length):
            decay = torch.ones(n, dtype=torch.float64)  # prod_{r = s+1..t} exp(delta_r A), built as s falls
            for s in range(t, -1, -1):
                out[c, t, s] = (C[:, t] * decay * delta[c, s] * B[:, s]).sum()
                decay = decay * torch.exp(delta[c, s] * A[c])
    return out


# ---- one mixer, one route --------------------------------------------------------------------------------
@dataclass
class HiddenAttention:
    """The implicit attention of one route of one mixer, for one input."""

    matrix: np.ndarray  # (L, L): row = query step t, column = key step s, in the route's reading order
    positions: np.ndarray  # (L, 2): (row, col) on the padded grid of each step
    route: int
    route_name: str
    scan: str
    step: int
    grid: tuple[int, int]  # the H x W map the mixer scans
    padded_shape: tuple[int, int]
    reduce: str  # abs: mean over channels of |alpha|; mean: signed mean
    module: str
    channels: int  # how many channels were averaged
    picture: np.ndarray | None = None  # the model's input image (H, W, 3) in [0, 1], when there is one

    @property
    def length(self) -> int:
        return self.matrix.shape[0]

    def image_order(self):
        """(matrix, positions) with steps sorted by position on the image (raster order): the route's
        tokens in the order a reader of the image meets them."""
        order = self.raster_order()
        return self.matrix[np.ix_(order, order)], self.positions[order]

    def raster_order(self) -> np.ndarray:
        """The route's steps sorted by position on the image (raster order): image_order's permutation."""
        flat = self.positions[:, 0] * self.padded_shape[1] + self.positions[:, 1]
        return np.argsort(flat, kind="stable")

    def query(self, row: int, col: int) -> tuple[int, tuple[int, int]]:
        """(step, (row, col)): the step at which the route reads the position nearest (row, col) that it
        reads (for ES2D: on its own sub-map)."""
        h, w = self.grid
        if not (0 <= row < h and 0 <= col < w):
            raise ValueError(f"query ({row}, {col}) is outside the {h}x{w} map: rows 0..{h - 1}, cols 0..{w - 1}")
        inside = (self.positions[:, 0] < h) & (self.positions[:, 1] < w)
        dist = (self.positions[:, 0] - row) ** 2 + (self.positions[:, 1] - col) ** 2
        dist = np.where(inside, dist, np.iinfo(np.int64).max)
        t = int(np.argmin(dist))
        return t, (int(self.positions[t, 0]), int(self.positions[t, 1]))

    def row_map(self, row: int, col: int):
        """(map, (row, col) used): the attention of that query over the H x W map; NaN at positions the
        route does not read."""
        t, used = self.query(row, col)
        hp, wp = self.padded_shape
        out = np.full((hp, wp), np.nan)
        out[self.positions[:, 0], self.positions[:, 1]] = self.matrix[t]
        return out[: self.grid[0], : self.grid[1]], used


@on_inference_copy
def conv_activations(mixer: SelectiveScan2D, x: torch.Tensor) -> torch.Tensor:
    """The scan's input for the mixer input x (B, H, W, C): SiLU(conv2d(x-half of in_proj(x))), (B, d, H, W),
    recorded from the mixer's own forward pass (a per-call probe; the mixer is not changed)."""
    with torch.no_grad(), capturing(mixer) as probe:
        mixer(x)
    return probe.captured[mixer, "scan_input"][0]


def route_ssm(mixer: SelectiveScan2D, x_conv: torch.Tensor, route: int, sample: int = 0):
    """(routes, u, delta, A, B, C, D) of one route for one sample of the conv activations (B, d, H, W):
    u and delta (d, L) (delta after bias and softplus), A (d, N), B and C (N, L), D (d,)."""
    route = check_route(mixer, route)
    with torch.no_grad():
        routes, u, dt, Bs, Cs = mixer.ssm_inputs(x_conv[sample:sample + 1])
        A, D, bias = mixer.ssm_parameters(u.dtype)
        d = mixer.d_inner
        sl = slice(route * d, (route + 1) * d)
        delta = F.softplus(dt[0, sl] + bias[sl, None])
        return routes, u[0, sl], delta, A[sl], Bs[0, route], Cs[0, route], D[sl]


def hidden_attention(mixer: SelectiveScan2D, x_conv: torch.Tensor, route: int = 0, *, reduce: str = "abs",
                     sample: int = 0, channels=None, block: int = 64, name: str = "mixer", progress=None,
                     bar: bool = True) -> HiddenAttention:
    """The implicit attention of route `route` of `mixer` for sample `sample` of its conv activations
    x_conv (B, d, H, W) (see `conv_activations`), averaged over `channels` (all, or a list of channel
    indices) as `reduce` says ("abs" or "mean")."""
    if reduce not in ("abs", "mean"):
        raise ValueError(f"reduce must be 'abs' or 'mean' for a map over the image, got {reduce!r}; "
                         "implicit_attention(..., reduce=None) gives every channel")
    if not isinstance(x_conv, torch.Tensor) or x_conv.dim() != 4 or x_conv.shape[1] != mixer.d_inner:
        shape = tuple(x_conv.shape) if isinstance(x_conv, torch.Tensor) else type(x_conv).__name__
        raise ValueError(f"x_conv must be the mixer's conv activations (B, d={mixer.d_inner}, H, W), got {shape}: "
                         "get them with conv_activations(mixer, x)")
    if not 0 <= sample < x_conv.shape[0]:
        raise ValueError(f"sample must be in 0..{x_conv.shape[0] - 1}, got {sample}")
    routes, _, delta, A, B, C, _ = route_ssm(mixer, x_conv, route, sample)
    if channels is not None:
        idx = torch.as_tensor(list(channels), dtype=torch.long)
        if idx.numel() == 0 or idx.min() < 0 or idx.max() >= mixer.d_inner:
            raise ValueError(f"channels must be indices in 0..{mixer.d_inner - 1}, got {list(channels)!r}")
        delta, A = delta[idx], A[idx]
    matrix = implicit_attention(delta, A, B, C, reduce=reduce, block=block, progress=progress, bar=bar)
    return HiddenAttention(matrix.cpu().numpy(), routes.positions(route).numpy(), route, routes.routes[route].name,
                           mixer.scan, mixer.step, (routes.height, routes.width), routes.padded_shape, reduce,
                           name, delta.shape[0])


def _pick_mixer(model, mixer):
    mixers = model.mixers()
    if not mixers:
        raise ValueError("this model has no scan mixers (every stage is inverted-residual)")
    names = [n for n, _ in mixers]
    if isinstance(mixer, str):
        if mixer not in names:
            raise ValueError(f"no mixer named {mixer!r}: the mixers are {', '.join(names)}")
        return mixers[names.index(mixer)]
    return mixers[integer(mixer, "mixer", 0, len(mixers) - 1, what="an index",
                          note=f" or a name ({', '.join(names)})")]


@on_inference_copy
def model_hidden_attention(model, image="chelsea", *, mixer=0, routes=None, reduce: str = "abs",
                           image_size: int | None = None,
                           seed: int = 0, channels=None, block: int = 64, progress=None,
                           bar: bool = True) -> list[HiddenAttention]:
    """The implicit attention of each route (or the routes listed in `routes`) of one mixer of `model`
    (an index into model.mixers() or its name, e.g. "layers.0.blocks.0.op") for one image.

    image: a sample name, a path or an array (see images.load_image; prepared as the weights expect,
    model.weights.inputs, at image_size when given), an already normalised tensor (1, 3, H, W), or "random"
    (a standard-normal image, seeded by `seed`)."""
    from .images import input_spec, model_batch, model_picture
    name, m = _pick_mixer(model, mixer)
    device = next(model.parameters()).device
    if isinstance(image, torch.Tensor):
        x = image if image.dim() == 4 else image[None]
    elif isinstance(image, str) and image == "random":
        size = input_spec(model, image_size).size
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    else:
        x, _ = model_batch(model, [image] if not isinstance(image, (list, tuple)) else image[:1], size=image_size)
    with torch.no_grad(), capturing(m) as probe:
        model.forward_stages(x[:1].to(device), upto=int(name.split(".")[1]))
    x_conv = probe.captured[m, "scan_input"][0]
    picture = None if isinstance(image, str) and image == "random" else model_picture(model, x[:1])
    wanted = range(m.num_routes) if routes is None else [routes] if isinstance(routes, int) else list(routes)
    wanted = [check_route(m, k) for k in wanted]
    out = []
    for k in track(wanted, len(wanted), f"hidden attention of {name}", progress, bar=False):
        att = hidden_attention(m, x_conv, k, reduce=reduce, channels=channels, block=block, name=name, bar=bar)
        att.picture = picture
        out.append(att)
    return out


__all__ = ["HiddenAttention", "REDUCTIONS", "conv_activations", "hidden_attention", "implicit_attention",
           "implicit_attention_reference", "model_hidden_attention", "route_ssm"]
