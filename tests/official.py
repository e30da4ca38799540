"""A second, literal reading of the authors' forward pass, for tests only.

Written straight from the written semantics of the released model (shared with the checkpoint manifests
in tests/data), as a function of a state dict, and deliberately unlike the package: the cross-scan is
built from strided slices, flips and transposes (as the authors' code does), the merge from their inverse
copies, and the selective scan is its own loop. The package's route-index gather/scatter, blocks and
backends are checked against this, for both scans and for odd stage sizes, which the one parity case
from the authors' code (parity_tiny_es2d_64.pt) does not cover.
"""
import math

import torch
import torch.nn.functional as F


def ln(x, sd, key):
    return F.layer_norm(x, x.shape[-1:], sd[key + ".weight"], sd[key + ".bias"], 1e-5)


def bn(x, sd, key):
    return F.batch_norm(x, sd[key + ".running_mean"], sd[key + ".running_var"], sd[key + ".weight"],
                        sd[key + ".bias"], False, 0.0, 1e-5)


def s6(u, delta, A, B, C, D):
    """u, delta: (b, K, d, L); A: (K, d, N); B, C: (b, K, N, L); D: (K, d)."""
    b, K, d, L = u.shape
    h = u.new_zeros(b, K, d, A.shape[-1])
    ys = []
    for t in range(L):
        h = torch.exp(delta[..., t, None] * A) * h + (delta[..., t] * u[..., t])[..., None] * B[:, :, None, :, t]
        ys.append(torch.einsum("bkdn,bkn->bkd", h, C[..., t]))
    return torch.stack(ys, -1) + D[None, :, :, None] * u


def cross_scan(x, scan):
    """x: (b, d, H, W) -> (b, 4, d, L), plus what cross_merge needs."""
    b, d, H, W = x.shape
    if scan == "ss2d":
        hw = x.flatten(2)
        wh = x.transpose(2, 3).flatten(2)
        return torch.stack([hw, wh, hw.flip(-1), wh.flip(-1)], 1), (H, W)
    Hp, Wp = H + H % 2, W + W % 2
    x = F.pad(x, (0, Wp - W, 0, Hp - H))
    parts = [x[:, :, 0::2, 0::2].flatten(2), x[:, :, 1::2, 0::2].transpose(2, 3).flatten(2),
             x[:, :, 0::2, 1::2].flatten(2), x[:, :, 1::2, 1::2].transpose(2, 3).flatten(2)]
    return torch.stack(parts, 1), (H, W)


def cross_merge(y, scan, size):
    b, K, d, L = y.shape
    H, W = size
    if scan == "ss2d":
        def col(t):  # a column-major route's outputs back to row-major positions
            return t.view(b, d, W, H).transpose(2, 3).reshape(b, d, H * W)

        out = y[:, 0] + y[:, 2].flip(-1) + col(y[:, 1]) + col(y[:, 3].flip(-1))
        return out.view(b, d, H, W)
    Hs, Ws = (H + 1) // 2, (W + 1) // 2
    out = y.new_zeros(b, d, 2 * Hs, 2 * Ws)
    out[:, :, 0::2, 0::2] = y[:, 0].view(b, d, Hs, Ws)
    out[:, :, 1::2, 0::2] = y[:, 1].view(b, d, Ws, Hs).transpose(2, 3)
    out[:, :, 0::2, 1::2] = y[:, 2].view(b, d, Hs, Ws)
    out[:, :, 1::2, 1::2] = y[:, 3].view(b, d, Ws, Hs).transpose(2, 3)
    return out[:, :, :H, :W]


def mixer(x, sd, key, scan):
    C = x.shape[-1]
    d, N, R = 2 * C, 16, math.ceil(C / 16)
    xz = x @ sd[key + ".in_proj.weight"].t()
    x, z = xz[..., :d], F.silu(xz[..., d:])
    x = F.silu(F.conv2d(x.permute(0, 3, 1, 2), sd[key + ".conv2d.weight"], sd[key + ".conv2d.bias"], padding=1,
                        groups=d))
    xs, size = cross_scan(x, scan)
    dbl = torch.einsum("bkdl,kcd->bkcl", xs, sd[key + ".x_proj_weight"])
    dt, Bs, Cs = dbl[:, :, :R], dbl[:, :, R:R + N], dbl[:, :, R + N:]
    dt = torch.einsum("bkrl,kdr->bkdl", dt, sd[key + ".dt_projs_weight"])
    delta = F.softplus(dt + sd[key + ".dt_projs_bias"][None, :, :, None])
    A = -torch.exp(sd[key + ".A_logs"]).view(4, d, N)
    y = s6(xs, delta, A, Bs, Cs, sd[key + ".Ds"].view(4, d))
    y = cross_merge(y, scan, size).permute(0, 2, 3, 1)
    return (ln(y, sd, key + ".out_norm") * z) @ sd[key + ".out_proj.weight"].t()


def gate(t, sd, key):
    g = ln(t, sd, key + ".norm").mean((1, 2), keepdim=True)
    g = F.gelu(F.linear(g, sd[key + ".global_reduce.weight"], sd[key + ".global_reduce.bias"]))
    g = F.linear(g, sd[key + ".channel_select.weight"], sd[key + ".channel_select.bias"])
    return t * torch.sigmoid(g)


def evss(x, sd, key, scan):
    n = ln(x, sd, key + ".norm")
    g = mixer(n, sd, key + ".op", scan)
    C = x.shape[-1]
    loc = F.conv2d(n.permute(0, 3, 1, 2), sd[key + ".conv_branch.0.weight"], sd[key + ".conv_branch.0.bias"],
                   padding=1, groups=C)
    loc = F.gelu(bn(loc, sd, key + ".conv_branch.1"))
    loc = F.conv2d(loc, sd[key + ".conv_branch.3.weight"], sd[key + ".conv_branch.3.bias"]).permute(0, 2, 3, 1)
    return x + gate(g, sd, key + ".se") + gate(loc, sd, key + ".se")


def inverted_residual(x, sd, key):
    m = sd[key + ".conv_pw.0.weight"].shape[0]
    y = F.relu(bn(F.conv2d(x, sd[key + ".conv_pw.0.weight"]), sd, key + ".conv_pw.1"))
    y = F.relu(bn(F.conv2d(y, sd[key + ".conv_dw.0.weight"], padding=1, groups=m), sd, key + ".conv_dw.1"))
    s = F.relu(F.conv2d(y.mean((2, 3), keepdim=True), sd[key + ".se.conv_reduce.weight"],
                        sd[key + ".se.conv_reduce.bias"]))
    y = y * torch.sigmoid(F.conv2d(s, sd[key + ".se.conv_expand.weight"], sd[key + ".se.conv_expand.bias"]))
    y = bn(F.conv2d(y, sd[key + ".conv_pw2.0.weight"]), sd, key + ".conv_pw2.1")
    return x + y


def merge(x, sd, key):
    H, W = x.shape[1:3]
    x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
    x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    return ln(x, sd, key + ".norm") @ sd[key + ".reduction.weight"].t()


@torch.no_grad()
def forward(sd, img, scan="es2d"):
    """Logits of the released architecture (EVSS, EVSS, IR, IR) with state dict `sd`, in eval mode."""
    x = F.conv2d(img, sd["patch_embed.0.weight"], sd["patch_embed.0.bias"], stride=4).permute(0, 2, 3, 1)
    x = ln(x, sd, "patch_embed.2")
    for i in (0, 1):
        j = 0
        while f"layers.{i}.blocks.{j}.norm.weight" in sd:
            x = evss(x, sd, f"layers.{i}.blocks.{j}", scan)
            j += 1
        x = merge(x, sd, f"layers.{i}.downsample")
    for i in (2, 3):
        x = x.permute(0, 3, 1, 2)
        j = 1
        while f"layers.{i}.{j}.conv_pw.0.weight" in sd:
            x = inverted_residual(x, sd, f"layers.{i}.{j}")
            j += 1
        x = x.permute(0, 2, 3, 1)
        if f"layers.{i}.{j + 1}.reduction.weight" in sd:
            x = merge(x, sd, f"layers.{i}.{j + 1}")
    x = ln(x, sd, "classifier.norm").mean((1, 2))
    return F.linear(x, sd["classifier.head.weight"], sd["classifier.head.bias"])
