"""The `mamba_ssm` backend: mamba-ssm's fused CUDA selective-scan kernel (GPU tensors only).

Install it with `pip install -r requirements-gpu.txt` on a machine with CUDA (see the README)."""
import functools


@functools.lru_cache(maxsize=1)
def kernel():
    """mamba-ssm's `selective_scan_fn`, or None when mamba-ssm (or its compiled extension) is missing."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or an extension built for another torch/CUDA
        return None
    return selective_scan_fn


def selective_scan_mamba_ssm(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    fn = kernel()
    if not u.is_cuda:
        raise ValueError("the mamba_ssm backend runs on CUDA tensors only; these are on "
                         f"{u.device}: move them to a GPU or use backend='torch'")
    if fn is None:
        raise RuntimeError("the mamba_ssm backend needs mamba-ssm: install it with "
                           "`pip install -r requirements-gpu.txt` on a CUDA machine, or use backend='torch'")
    f = lambda t: None if t is None else t.float().contiguous()  # noqa: E731  (kernel wants fp32 params)
    return fn(u.contiguous(), delta.contiguous(), f(A), B.contiguous(), C.contiguous(), f(D), z=None,
              delta_bias=f(delta_bias), delta_softplus=delta_softplus)
