"""The selective-scan mixer (`op` in the authors' checkpoints): VMamba's SS2D layer with a choice of scan.

    x, z = in_proj(x)                       C -> 2d, d = 2C
    x = SiLU(depthwise 3x3 conv(x))
    tokens = routes.cross_scan(x)            cross-scan: K routes of L tokens, (K, d, B, L) (see routes.py)
    dt_low, B, C = x_proj[k](tokens)         per route k: R + N + N values per token (one bmm over K)
    dt = dt_proj[k](dt_low)
    y = S6(tokens, dt, A, B, C, D)           selective scan, float32 at least (see scan/)
    y = routes.cross_merge(y)                cross-merge: back to the positions read, summed, channels-last
    out = out_proj(LayerNorm(y) * SiLU(z))
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import probes
from .depthwise import DepthwiseConv3x3
from .routes import RouteTables, cross_merge, cross_scan, num_routes, route_tables, scan_routes
from .scan import check_backend, selective_scan
from .scan.common import compute_dtype


class SelectiveScan2D(nn.Module):
    def __init__(self, dim: int, scan: str = "es2d", step: int = 2, d_state: int = 16, expand: int = 2,
                 backend: str = "auto"):
        super().__init__()
        self.scan, self.step, self.backend = scan, step, check_backend(backend)
        self.d_inner = d = expand * dim
        self.d_state = n = d_state
        self.dt_rank = r = math.ceil(dim / 16)
        self.num_routes = k = num_routes(scan, step)
        # "float32": the scan's inputs are cast to float32 at least, as the authors do. "autocast": under
        # autocast they stay bfloat16/float16 (half the memory traffic and saved activations); the scan
        # still computes in float32 and returns that dtype. Identical outside autocast.
        self.scan_precision = "float32"

        # Per-route projections and S6 parameters; parameter (and so checkpoint key) order as the authors'.
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, d))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d))
        self.A_logs = nn.Parameter(torch.empty(k * d, n))
        self.Ds = nn.Parameter(torch.empty(k * d))
        self.out_norm = nn.LayerNorm(d)
        self.in_proj = nn.Linear(dim, 2 * d, bias=False)
        self.conv2d = DepthwiseConv3x3(d, bias=True)
        self.out_proj = nn.Linear(d, dim, bias=False)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min=1e-3, dt_max=0.1, dt_floor=1e-4):
        """Mamba's initialisation: dt log-uniform in [dt_min, dt_max] through the bias, A = -(1..N), D = 1."""
        d, r = self.d_inner, self.dt_rank
        nn.init.uniform_(self.x_proj_weight, -d ** -0.5, d ** -0.5)
        nn.init.uniform_(self.dt_projs_weight, -r ** -0.5, r ** -0.5)
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def routes(self, height: int, width: int):
        """The scan routes this mixer uses on a height×width map."""
        return scan_routes(self.scan, height, width, self.step)

    def tables(self, height: int, width: int, device) -> RouteTables:
        """What the cross-scan and cross-merge need on a height×width map (cached per grid and device)."""
        return route_tables(self.scan, height, width, self.step, device)

    def ssm_inputs(self, x: torch.Tensor):
        """Cross-scan and per-route projections of the conv output x (B, d, H, W).

        Returns (routes, u, dt, B, C): u and dt (before bias and softplus) as (B, K·d, L); B and C as
        (B, K, N, L); all in the scan's compute dtype (float32 at least). They are views of route-major
        (K, ·, B, L) tensors: the token axis is contiguous, the others are strided."""
        h, w = x.shape[2:]
        return (self.routes(h, w), *self._projections(x, self.tables(h, w, x.device)))

    def _projections(self, x: torch.Tensor, t: RouteTables):
        b, d = x.shape[:2]
        k, length, n = t.num_routes, t.length, self.d_state
        xs = cross_scan(x, t)  # (K, d, B, L)
        x_dbl = torch.bmm(self.x_proj_weight, xs.view(k, d, b * length))  # (K, R+2N, B·L)
        dts = torch.bmm(self.dt_projs_weight, x_dbl[:, : self.dt_rank])  # (K, d, B·L)
        ct = compute_dtype(x.dtype) if self.scan_precision == "float32" else x.dtype

        def batch_first(m):  # (K, c, B·L) -> (B, K, c, L), a view
            return m.view(k, -1, b, length).permute(2, 0, 1, 3).to(ct)

        Bs, Cs = (batch_first(x_dbl[:, self.dt_rank + i * n: self.dt_rank + (i + 1) * n]) for i in range(2))
        u, dt = (batch_first(m).reshape(b, k * d, length) for m in (xs, dts))
        return u, dt, Bs, Cs

    def ssm_parameters(self, dtype=torch.float32):
        """(A, D, delta_bias) as the scan takes them: A = -exp(A_logs)."""
        return (-torch.exp(self.A_logs.to(dtype)), self.Ds.to(dtype), self.dt_projs_bias.reshape(-1).to(dtype))

    def merge(self, y: torch.Tensor, t: RouteTables, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-merge the scan output y (B, K·d, L) to (B, d, H, W), a view of channels-last memory;
        `weights` (K,) scale each route's outputs (an analysis's probe keeps or drops routes with them)."""
        y = y.reshape(y.shape[0], t.num_routes, self.d_inner, t.length).permute(1, 2, 0, 3)  # (K, d, B, L)
        return cross_merge(y, t, keep=weights).permute(0, 3, 1, 2)

    def scan_map(self, x: torch.Tensor, probe: probes.Probe | None = None) -> torch.Tensor:
        """Cross-scan, selective scan, cross-merge: (B, d, H, W) -> (B, d, H, W). An analysis's `probe` may
        replace the whole map or weight the routes in the merge (see evmamba.probes)."""
        replaced = probe.scan_for(self) if probe is not None else None
        if replaced is not None:
            return replaced(self, x)
        t = self.tables(x.shape[2], x.shape[3], x.device)
        u, dt, Bs, Cs = self._projections(x, t)
        A, D, bias = self.ssm_parameters(u.dtype)
        y = selective_scan(u, dt, A, Bs, Cs, D, delta_bias=bias, delta_softplus=True, backend=self.backend)
        return self.merge(y, t, probe.weights_for(self) if probe is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, H, W, C)
        probe = probes.active()  # None but inside an analysis
        if probe is not None:
            probe.record(self, "input", x)
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))
        if probe is not None:
            probe.record(self, "scan_input", x)
        y = self.scan_map(x, probe).permute(0, 2, 3, 1)  # channels-last: contiguous after the merge
        # under autocast the norm's float32 output is cast to the gate's dtype before the product, so the
        # product saves a bfloat16 copy for backward (out_proj would cast it there anyway); a no-op otherwise
        return self.out_proj(self.out_norm(y).to(z.dtype) * F.silu(z))

    def extra_repr(self):
        return f"scan={self.scan!r}, step={self.step}, routes={self.num_routes}, d_inner={self.d_inner}, " \
               f"d_state={self.d_state}, dt_rank={self.dt_rank}, backend={self.backend!r}"
