"""Selective-scan backends: the torch backend against the plain reference loop, gradients, errors."""
import pytest
import torch
from conftest import rel_err

from evmamba.scan import available_backends, resolve_backend, selective_scan


def make(batch, k, d, n, length, grouped=True, dtype=torch.float32, seed=0, delta_scale=0.5, a_scale=2.0):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=dtype)

    ch = k * d
    bc = (batch, k, n, length) if grouped else (batch, n, length)
    return dict(u=r(batch, ch, length), delta=delta_scale * r(batch, ch, length),
                A=-(a_scale * torch.rand(ch, n, generator=g, dtype=dtype) + 0.05), B=r(*bc), C=r(*bc),
                D=r(ch), delta_bias=0.3 * r(ch))


SHAPES = [  # (batch, K, d, N, L, grouped)
    (1, 4, 8, 16, 1, True),
    (2, 4, 6, 16, 37, True),
    (1, 1, 5, 4, 129, True),
    (3, 1, 7, 3, 50, False),
    (2, 4, 3, 16, 67, False),
    (1, 4, 12, 16, 301, True),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}k{}d{}n{}l{}{}".format(*s[:5], "g" if s[5] else ""))
@pytest.mark.parametrize("softplus", [True, False])
def test_torch_matches_reference(shape, softplus):
    *dims, grouped = shape
    inputs = make(*dims, grouped=grouped)
    if not softplus:
        inputs["delta"] = inputs["delta"].abs()
        inputs["delta_bias"] = inputs["delta_bias"].abs()
    outs, grads = {}, {}
    for backend in ("reference", "torch"):
        x = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        y = selective_scan(**x, delta_softplus=softplus, backend=backend)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        (y * w).sum().backward()
        outs[backend], grads[backend] = y.detach(), {k: v.grad for k, v in x.items()}
    assert rel_err(outs["torch"], outs["reference"]) < 1e-5
    for name in inputs:
        assert rel_err(grads["torch"][name], grads["reference"][name]) < 1e-5, name


def test_optional_arguments():
    x = make(2, 4, 3, 5, 20)
    ref = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], backend="reference")
    out = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], backend="torch")
    assert rel_err(out, ref) < 1e-5
    with_d = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], backend="torch")
    assert rel_err(with_d, ref + x["u"] * x["D"][:, None]) < 1e-5


def test_shared_bc_equals_repeated_groups():
    x = make(2, 1, 6, 4, 30, grouped=False)
    shared = selective_scan(**x, backend="torch")
    y = dict(x, B=x["B"][:, None].expand(2, 3, 4, 30), C=x["C"][:, None].expand(2, 3, 4, 30))
    assert rel_err(selective_scan(**y, backend="reference"), shared) < 1e-5


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("grouped", [True, False])
def test_gradcheck_float64(backend, grouped):
    x = make(1, 2, 2, 3, 9, grouped=grouped, dtype=torch.float64)
    x = {k: v.requires_grad_() for k, v in x.items()}
    names = list(x)

    def fn(*a):
        return selective_scan(**dict(zip(names, a)), delta_softplus=True, backend=backend)

    assert torch.autograd.gradcheck(fn, tuple(x.values()), eps=1e-6, atol=1e-7)


def test_float64_is_computed_in_float64():
    x = make(1, 2, 3, 4, 40, dtype=torch.float64)
    out = selective_scan(**x, delta_softplus=True, backend="torch")
    assert out.dtype == torch.float64
    ref = selective_scan(**x, delta_softplus=True, backend="reference")
    assert rel_err(out, ref) < 1e-12


def test_half_inputs_give_half_outputs_computed_in_float32():
    x = make(1, 2, 3, 4, 40)
    ref = selective_scan(**x, delta_softplus=True, backend="reference")
    half = {k: (v.bfloat16() if k in ("u", "delta", "B", "C") else v) for k, v in x.items()}
    out = selective_scan(**half, delta_softplus=True, backend="torch")
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), ref) < 5e-2


def test_auto_on_cpu_is_torch():
    assert resolve_backend("auto", "cpu") == "torch"
    assert available_backends("cpu") == ["reference", "torch"]


def test_errors_name_the_problem():
    x = make(2, 4, 3, 5, 20)
    with pytest.raises(ValueError, match="unknown selective-scan backend 'fast': valid backends are auto, "
                                         "reference, torch, mamba_ssm"):
        selective_scan(**x, backend="fast")
    with pytest.raises(ValueError, match="delta must have u's shape"):
        selective_scan(**dict(x, delta=x["delta"][:, :, :5]))
    with pytest.raises(ValueError, match=r"A must be \(channels=12, N\)"):
        selective_scan(**dict(x, A=x["A"][:3]))
    with pytest.raises(ValueError, match="groups dividing channels=12"):
        selective_scan(**dict(x, B=torch.randn(2, 5, 5, 20)))
    with pytest.raises(ValueError, match=r"D must be \(channels=12,\)"):
        selective_scan(**dict(x, D=torch.ones(3)))
    with pytest.raises(TypeError, match="u must be a floating-point tensor"):
        selective_scan(**dict(x, u=x["u"].long()))
    with pytest.raises(ValueError, match="mamba_ssm backend runs on CUDA tensors only"):
        selective_scan(**x, backend="mamba_ssm")


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_torch_backend_is_exact_across_chunk_boundaries(monkeypatch, chunk):
    from evmamba.scan import torch_scan
    monkeypatch.setattr(torch_scan, "chunk_length", lambda length, state: chunk)
    x = make(2, 4, 3, 5, 150, dtype=torch.float64)
    x = {k: v.requires_grad_() for k, v in x.items()}
    ref = selective_scan(**x, delta_softplus=True, backend="reference")
    gref = torch.autograd.grad(ref.sum(), list(x.values()))
    out = selective_scan(**x, delta_softplus=True, backend="torch")
    gout = torch.autograd.grad(out.sum(), list(x.values()))
    assert rel_err(out, ref) < 1e-12
    for a, b in zip(gout, gref):
        assert rel_err(a, b) < 1e-12


def test_float32_against_a_float64_loop():
    x = make(1, 4, 24, 16, 784)
    ref = selective_scan(**{k: v.double() for k, v in x.items()}, delta_softplus=True, backend="reference")
    assert rel_err(selective_scan(**x, delta_softplus=True, backend="torch").double(), ref) < 1e-5


@pytest.mark.parametrize("length", [16384])
def test_long_sequences_and_large_steps_stay_finite(length):
    # delta·|A| up to 20 per step: decays as small as exp(-20); 16k tokens.
    g = torch.Generator().manual_seed(3)
    ch, n = 8, 16
    x = dict(u=torch.randn(1, ch, length, generator=g), delta=20 * torch.rand(1, ch, length, generator=g),
             A=-torch.rand(ch, n, generator=g) - 1e-3, B=torch.randn(1, 2, n, length, generator=g),
             C=torch.randn(1, 2, n, length, generator=g), D=torch.ones(ch))
    x = {k: v.requires_grad_() for k, v in x.items()}
    y = selective_scan(**x, backend="torch")
    grads = torch.autograd.grad((y * y).mean(), list(x.values()))
    assert torch.isfinite(y).all() and all(torch.isfinite(t).all() for t in grads)
    ref = selective_scan(**{k: v.detach().double() for k, v in x.items()}, backend="reference")
    assert rel_err(y.double(), ref) < 1e-5
    # tiny steps over a long sequence: the state integrates almost without decay
    small = dict(x, delta=1e-4 * torch.rand(1, ch, length, generator=g))
    y = selective_scan(**{k: v.detach() for k, v in small.items()}, backend="torch")
    ref = selective_scan(**{k: v.detach().double() for k, v in small.items()}, backend="reference")
    assert torch.isfinite(y).all() and rel_err(y.double(), ref) < 1e-5
