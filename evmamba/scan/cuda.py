"""The `mamba_ssm` backend: mamba-ssm's fused CUDA selective-scan kernel (GPU tensors only).

Install it with `pip install -r requirements-gpu.txt` on a machine with CUDA (see the README).

The kernel's compiled extension (`selective_scan_cuda`: `fwd` and `bwd`) is called through two registered
operators, `evmamba::mamba_scan` and `evmamba::mamba_scan_backward`, with their output shapes declared, so
torch.compile captures a whole model around the scan instead of breaking its graph there. u, delta and
out may have any batch and channel strides (the kernel takes strides); only the token axis must be
contiguous, so the mixer's layouts reach the kernel without copies.
"""
import functools

import torch

CHUNK = 2048  # the kernel keeps the state at every CHUNK-th token for its backward pass


@functools.lru_cache(maxsize=1)
def extension():
    """mamba-ssm's compiled `selective_scan_cuda` module, or None when mamba-ssm (or an extension built
    for this torch and CUDA) is missing."""
    try:
        import selective_scan_cuda
    except Exception:  # noqa: BLE001 - ImportError, or an extension built for another torch/CUDA (undefined symbols)
        return None
    return selective_scan_cuda


def _token_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _like(t):
    """What the kernel allocates for an output shaped like t: empty_like of what it was given."""
    return torch.empty_like(_token_contiguous(t))


# The kernel allocates its outputs like its inputs (empty_like), so compiled code must hand it inputs with
# exactly the strides it traced with (recent torch does so for custom operators by default; the tag says
# it where the tag exists).
_EXACT_STRIDES = tuple(t for t in (getattr(torch.Tag, "needs_exact_strides", None),) if t is not None)


torch.library.define("evmamba::mamba_scan", "(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor D, "
                     "Tensor delta_bias, bool delta_softplus) -> (Tensor, Tensor)", tags=_EXACT_STRIDES)
torch.library.define("evmamba::mamba_scan_backward", "(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, "
                     "Tensor D, Tensor delta_bias, Tensor x, Tensor dout, bool delta_softplus) "
                     "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)", tags=_EXACT_STRIDES)


@torch.library.impl("evmamba::mamba_scan", "CompositeExplicitAutograd")
def _mamba_scan(u, delta, A, B, C, D, delta_bias, delta_softplus):
    """y (like delta) and the kernel's saved states x (batch, channels, ⌈L/2048⌉, 2N) in float32."""
    out, x, *_ = extension().fwd(_token_contiguous(u), _token_contiguous(delta), A, _token_contiguous(B),
                                 _token_contiguous(C), D, None, delta_bias, delta_softplus)
    return out, x


@torch.library.register_fake("evmamba::mamba_scan")
def _(u, delta, A, B, C, D, delta_bias, delta_softplus):
    batch, channels, length = u.shape
    chunks = -(-length // CHUNK)
    return _like(delta), u.new_empty((batch, channels, chunks, 2 * A.shape[1]), dtype=A.dtype)


@torch.library.impl("evmamba::mamba_scan_backward", "CompositeExplicitAutograd")
def _mamba_scan_backward(u, delta, A, B, C, D, delta_bias, x, dout, delta_softplus):
    """Gradients for u, delta, A, B, C, D, delta_bias (the kernel recomputes the scan from x)."""
    du, ddelta, dA, dB, dC, dD, dbias, *_ = extension().bwd(
        _token_contiguous(u), _token_contiguous(delta), A, _token_contiguous(B), _token_contiguous(C), D,
        None, delta_bias, _token_contiguous(dout), x, None, None, delta_softplus, False)
    return du, ddelta, dA, dB, dC, dD, dbias


@torch.library.register_fake("evmamba::mamba_scan_backward")
def _(u, delta, A, B, C, D, delta_bias, x, dout, delta_softplus):
    return _like(u), _like(delta), _like(A), _like(B), _like(C), _like(D), _like(delta_bias)


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, delta_softplus = inputs
    ctx.delta_softplus = delta_softplus
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, output[1])


def _backward(ctx, dout, _dx):
    u, delta, A, B, C, D, delta_bias, x = ctx.saved_tensors
    grads = mamba_scan_backward(u, delta, A, B, C, D, delta_bias, x, dout, ctx.delta_softplus)
    return (*grads, None)


torch.library.register_autograd("evmamba::mamba_scan", _backward, setup_context=_setup_context)
mamba_scan = torch.ops.evmamba.mamba_scan
mamba_scan_backward = torch.ops.evmamba.mamba_scan_backward


def selective_scan_mamba_ssm(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    if not u.is_cuda:
        raise ValueError("the mamba_ssm backend runs on CUDA tensors only; these are on "
                         f"{u.device}: move them to a GPU or use backend='torch'")
    if extension() is None:
        raise RuntimeError("the mamba_ssm backend needs mamba-ssm: install it with "
                           "`pip install -r requirements-gpu.txt` on a CUDA machine, or use backend='torch'")
    return run_kernel(u, delta, A, B, C, D, delta_bias, delta_softplus)


def run_kernel(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """The kernel call itself, on whatever device the extension serves (tests give it a CPU stand-in)."""
    # The kernel reads u, delta, B, C in one dtype (fp32, fp16 or bf16) and computes in float32; A, D and
    # delta_bias are float32. A missing D or delta_bias is a zero one (the same result).
    dtype = u.dtype if u.dtype in (torch.float16, torch.bfloat16) else torch.float32

    def f32(t):
        return (u.new_zeros(u.shape[1]) if t is None else t).to(torch.float32)

    delta, B, C = (t.to(dtype) for t in (delta, B, C))
    if B.dim() == 3:  # shared B, C: one group
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    y, _ = mamba_scan(u.to(dtype), delta, A.to(torch.float32).contiguous(), B, C, f32(D).contiguous(),
                      f32(delta_bias).contiguous(), delta_softplus)
    return y
