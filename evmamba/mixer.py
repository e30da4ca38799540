"""The selective-scan mixer (`op` in the authors' checkpoints): VMamba's SS2D layer with a choice of scan.

    x, z = in_proj(x)                       C -> 2d, d = 2C
    x = SiLU(depthwise 3x3 conv(x))
    tokens = routes.gather(x)                cross-scan: K routes of L tokens (see routes.py)
    dt_low, B, C = x_proj[k](tokens)         per route k: R + N + N values per token
    dt = dt_proj[k](dt_low)
    y = S6(tokens, dt, A, B, C, D)           selective scan, float32 at least (see scan/)
    y = routes.scatter(y)                    cross-merge: back to the positions read, summed
    out = out_proj(LayerNorm(y) * SiLU(z))
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .routes import num_routes, scan_routes
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
        self.keep_routes = None  # optional (K,) mask: analyses keep only some routes' outputs in the merge

        # Per-route projections and S6 parameters; parameter (and so checkpoint key) order as the authors'.
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, d))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d))
        self.A_logs = nn.Parameter(torch.empty(k * d, n))
        self.Ds = nn.Parameter(torch.empty(k * d))
        self.out_norm = nn.LayerNorm(d)
        self.in_proj = nn.Linear(dim, 2 * d, bias=False)
        self.conv2d = nn.Conv2d(d, d, 3, padding=1, groups=d, bias=True)
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

    def ssm_inputs(self, x: torch.Tensor):
        """Cross-scan and per-route projections of the conv output x (B, d, H, W).

        Returns (routes, u, dt, B, C): u and dt (before bias and softplus) as (B, K·d, L); B and C as
        (B, K, N, L); all in the scan's compute dtype (float32 at least)."""
        b, d, h, w = x.shape
        routes = self.routes(h, w)
        k, length, n = routes.num_routes, routes.length, self.d_state
        xs = routes.gather(x)  # (B, K, d, L)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dt_low, Bs, Cs = torch.split(x_dbl, [self.dt_rank, n, n], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dt_low, self.dt_projs_weight)
        ct = compute_dtype(x.dtype)
        u = xs.reshape(b, k * d, length).to(ct)
        return routes, u, dts.reshape(b, k * d, length).to(ct), Bs.to(ct).contiguous(), Cs.to(ct).contiguous()

    def ssm_parameters(self, dtype=torch.float32):
        """(A, D, delta_bias) as the scan takes them: A = -exp(A_logs)."""
        return (-torch.exp(self.A_logs.to(dtype)), self.Ds.to(dtype), self.dt_projs_bias.reshape(-1).to(dtype))

    def scan_map(self, x: torch.Tensor) -> torch.Tensor:
        """Cross-scan, selective scan, cross-merge: (B, d, H, W) -> (B, d, H, W)."""
        routes, u, dt, Bs, Cs = self.ssm_inputs(x)
        A, D, bias = self.ssm_parameters(u.dtype)
        y = selective_scan(u, dt, A, Bs, Cs, D, delta_bias=bias, delta_softplus=True, backend=self.backend)
        b = x.shape[0]
        return routes.scatter(y.view(b, routes.num_routes, self.d_inner, routes.length), keep=self.keep_routes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, H, W, C)
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))
        y = self.scan_map(x).permute(0, 2, 3, 1)
        y = self.out_norm(y) * F.silu(z)
        return self.out_proj(y)

    def extra_repr(self):
        return f"scan={self.scan!r}, step={self.step}, routes={self.num_routes}, d_inner={self.d_inner}, " \
               f"d_state={self.d_state}, dt_rank={self.dt_rank}, backend={self.backend!r}"
