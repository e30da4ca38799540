"""Selective-scan backends: the torch and cpu_fused backends against the plain reference loop, gradients,
errors, and the fallback when the fused kernel cannot be built."""
import logging
import os
import subprocess
import sys

import pytest
import torch
from conftest import rel_err

from evmamba.scan import available_backends, cpu_fused, resolve_backend, selective_scan

# the fast CPU backends, each held to the reference by the same tests
FAST = ["torch", "cpu_fused"]


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


def shape_id(s):
    return "b{}k{}d{}n{}l{}{}".format(*s[:5], "g" if s[5] else "")


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize("backend", FAST)
def test_backend_matches_reference(shape, softplus, backend):
    *dims, grouped = shape
    inputs = make(*dims, grouped=grouped)
    if not softplus:
        inputs["delta"] = inputs["delta"].abs()
        inputs["delta_bias"] = inputs["delta_bias"].abs()
    assert_matches_reference(inputs, softplus, backend)


def assert_matches_reference(inputs, softplus, backend, tolerance=1e-5):
    """Output and all seven gradients of `backend` within `tolerance` of the reference loop's (relative)."""
    outs, grads = {}, {}
    for name in ("reference", backend):
        x = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        y = selective_scan(**x, delta_softplus=softplus, backend=name)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        (y * w).sum().backward()
        outs[name], grads[name] = y.detach(), {k: v.grad for k, v in x.items()}
    assert torch.isfinite(outs[backend]).all()
    assert rel_err(outs[backend], outs["reference"]) < tolerance
    for name in inputs:
        assert torch.isfinite(grads[backend][name]).all(), name
        assert rel_err(grads[backend][name], grads["reference"][name]) < tolerance, name


def _random_shapes(count=10, seed=7):
    """Random odd-sized shapes: batch 1 or 64, K = 1, 4 or 9 routes, any d, N and L, grouped or shared B, C."""
    g = torch.Generator().manual_seed(seed)

    def pick(*options):
        return options[int(torch.randint(len(options), (1,), generator=g))]

    def between(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    out = []
    for _ in range(count):
        batch = pick(1, 64)
        k = pick(1, 4, 9)
        out.append((batch, k, between(1, 13), between(1, 20), between(1, 300 if batch == 1 else 40), pick(True, False)))
    return out


@pytest.mark.parametrize("shape", _random_shapes(), ids=shape_id)
@pytest.mark.parametrize("backend", FAST)
def test_random_shapes_match_reference(shape, backend):
    *dims, grouped = shape
    assert_matches_reference(make(*dims, grouped=grouped, seed=sum(shape)), True, backend)


@pytest.mark.parametrize("backend", FAST)
def test_optional_arguments(backend):
    x = make(2, 4, 3, 5, 20)
    ref = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], backend="reference")
    out = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], backend=backend)
    assert rel_err(out, ref) < 1e-5
    with_d = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], backend=backend)
    assert rel_err(with_d, ref + x["u"] * x["D"][:, None]) < 1e-5


@pytest.mark.parametrize("backend", FAST)
def test_shared_bc_equals_repeated_groups(backend):
    x = make(2, 1, 6, 4, 30, grouped=False)
    shared = selective_scan(**x, backend=backend)
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


def test_cpu_fused_runs_float64_on_the_torch_backend(caplog):
    x = make(1, 2, 3, 4, 40, dtype=torch.float64)
    with caplog.at_level(logging.INFO, logger="evmamba"):
        out = selective_scan(**x, delta_softplus=True, backend="cpu_fused")
        assert resolve_backend("auto", "cpu", torch.float64) == "torch"
    assert out.dtype == torch.float64
    assert torch.equal(out, selective_scan(**x, delta_softplus=True, backend="torch"))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_give_half_outputs_computed_in_float32(backend, dtype):
    x = make(1, 2, 3, 4, 40)
    ref = selective_scan(**x, delta_softplus=True, backend="reference")
    half = {k: (v.to(dtype) if k in ("u", "delta", "B", "C") else v) for k, v in x.items()}
    out = selective_scan(**half, delta_softplus=True, backend=backend)
    assert out.dtype == dtype
    assert rel_err(out.float(), ref) < 5e-2


def test_auto_on_cpu_is_the_fused_kernel():
    assert resolve_backend("auto", "cpu") == "cpu_fused"
    assert available_backends("cpu") == ["reference", "torch", "cpu_fused"]


@pytest.fixture
def numba_hidden(monkeypatch):
    """This process as on a machine without numba: importing it fails, the kernel is loaded afresh."""
    import evmamba.scan as scan_module
    monkeypatch.setitem(sys.modules, "numba", None)
    monkeypatch.setattr(scan_module, "_announced", set())
    cpu_fused.kernels.cache_clear()
    yield
    cpu_fused.kernels.cache_clear()


def test_without_numba_auto_falls_back_to_torch_with_one_message(numba_hidden, caplog):
    x = make(1, 4, 3, 16, 20)
    with caplog.at_level(logging.INFO, logger="evmamba"):
        assert resolve_backend("auto", "cpu") == "torch"
        y = selective_scan(**x, delta_softplus=True)
        selective_scan(**x, delta_softplus=True)
    assert torch.equal(y, selective_scan(**x, delta_softplus=True, backend="torch"))
    messages = [r.getMessage() for r in caplog.records if "cpu_fused" in r.getMessage()]
    assert len(messages) == 1 and "numba could not be imported" in messages[0] and "torch backend" in messages[0]
    assert available_backends("cpu") == ["reference", "torch"]
    with pytest.raises(RuntimeError, match="cpu_fused backend is unavailable: numba could not be imported"):
        selective_scan(**x, backend="cpu_fused")


# a fresh interpreter in which numba cannot be imported, as on a machine where it is not installed
WITHOUT_NUMBA = """
import importlib.abc, logging, sys
class NoNumba(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("numba", "llvmlite"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, NoNumba())
logging.basicConfig(level=logging.INFO, format="%(message)s")
import torch, evmamba
from evmamba.scan import resolve_backend
model = evmamba.build_model("tiny", num_classes=3)
print(resolve_backend("auto", "cpu"), tuple(model(torch.randn(2, 3, 32, 32)).shape))
"""


def test_a_fresh_process_without_numba_runs_the_model_on_the_torch_backend():
    out = subprocess.run([sys.executable, "-c", WITHOUT_NUMBA], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "torch (2, 3)"
    said = [line for line in out.stderr.splitlines() if "cpu_fused" in line]
    assert len(said) == 1, out.stderr
    assert "unavailable (numba could not be imported (ModuleNotFoundError" in said[0] and "torch backend" in said[0]


LOAD_KERNEL = """
import logging
logging.basicConfig(level=logging.INFO, format="%(message)s")
from evmamba.scan import cpu_fused
print(cpu_fused.kernels() is not None, cpu_fused.cache_dir())
"""


def test_the_kernel_compiles_once_into_a_fresh_user_cache(tmp_path):
    """A new machine: no cache yet. The first process says it is compiling and fills the user's cache
    folder (created on the way); the next one loads the kernel from it without compiling."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    runs = [subprocess.run([sys.executable, "-c", LOAD_KERNEL], capture_output=True, text=True, env=env,
                           timeout=600) for _ in range(2)]
    folder = tmp_path / "cache" / "evmamba" / "numba"
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == ["True", str(folder)]
    assert "compiling the cpu_fused kernel" in runs[0].stderr and "kernel ready in" in runs[0].stderr
    assert "compiling" not in runs[1].stderr
    assert list(folder.rglob("_cpu_kernels.*.nbi"))


def test_errors_name_the_problem():
    x = make(2, 4, 3, 5, 20)
    with pytest.raises(ValueError, match="unknown selective-scan backend 'fast': valid backends are auto, "
                                         "reference, torch, cpu_fused, mamba_ssm"):
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
    with pytest.raises(ValueError, match="cpu_fused backend runs on CPU tensors only"):
        selective_scan(**{k: v.to("meta") for k, v in x.items()}, backend="cpu_fused")


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


@pytest.mark.parametrize("backend", FAST)
def test_float32_against_a_float64_loop(backend):
    x = make(1, 4, 24, 16, 784)
    ref = selective_scan(**{k: v.double() for k, v in x.items()}, delta_softplus=True, backend="reference")
    assert rel_err(selective_scan(**x, delta_softplus=True, backend=backend).double(), ref) < 1e-5


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_cpu_fused_is_exact_across_chunk_boundaries(monkeypatch, chunk):
    monkeypatch.setattr(cpu_fused, "CHUNK", chunk)
    assert_matches_reference(make(2, 4, 3, 5, 150), True, "cpu_fused")


def test_cpu_fused_states_are_for_the_backward_only():
    x = {k: v.requires_grad_() for k, v in make(2, 4, 3, 5, 150).items()}
    y, states = cpu_fused.cpu_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["delta_bias"], True, 64)
    assert y.requires_grad and not states.requires_grad and states.shape == (2, 3, 5, 12)
    y.sum().backward()
    assert all(torch.isfinite(v.grad).all() for v in x.values())


def test_cpu_fused_blocks_give_every_thread_a_task():
    assert cpu_fused._block(96, 96, pairs=256, threads=2) == 96  # a batch of 64 x 4 routes: whole groups
    assert cpu_fused._block(96, 96, pairs=4, threads=16) == 24  # batch 1: 4 routes split for 16 threads
    assert cpu_fused._block(40, 96, pairs=1, threads=8) == 20  # no block below MIN_BLOCK = 16 channels
    assert cpu_fused._block(12, 96, pairs=1, threads=8) == 12
    assert cpu_fused._block(192, 96) == 96 and cpu_fused._block(40, 16) == 14


def test_cpu_fused_is_exact_with_several_uneven_blocks_a_group(monkeypatch):
    # 40 channels a group in blocks of at most 16: 14, 14 and 12 channels, forward and backward
    monkeypatch.setattr(cpu_fused, "FORWARD_BLOCK", 16)
    monkeypatch.setattr(cpu_fused, "BACKWARD_BLOCK", 16)
    assert_matches_reference(make(3, 2, 40, 16, 70, seed=5), True, "cpu_fused")


@pytest.mark.parametrize("length", [9, 133])
@pytest.mark.parametrize("softplus", [True, False])
def test_cpu_fused_short_chunks_of_wide_blocks_match_reference(length, softplus):
    # 48 channels a group: chunks shorter than 16 tokens take delta's softplus along the channels (all of
    # L=9; the last 5 tokens of L=133), full chunks along the tokens
    inputs = make(2, 2, 48, 16, length, seed=length)
    if not softplus:
        inputs["delta"] = inputs["delta"].abs()
        inputs["delta_bias"] = inputs["delta_bias"].abs()
    assert_matches_reference(inputs, softplus, "cpu_fused")


@pytest.mark.parametrize("length", [16384])
@pytest.mark.parametrize("backend", FAST)
def test_long_sequences_and_large_steps_stay_finite(length, backend):
    # delta·|A| up to 20 per step: decays as small as exp(-20); 16k tokens.
    g = torch.Generator().manual_seed(3)
    ch, n = 8, 16
    x = dict(u=torch.randn(1, ch, length, generator=g), delta=20 * torch.rand(1, ch, length, generator=g),
             A=-torch.rand(ch, n, generator=g) - 1e-3, B=torch.randn(1, 2, n, length, generator=g),
             C=torch.randn(1, 2, n, length, generator=g), D=torch.ones(ch))
    x = {k: v.requires_grad_() for k, v in x.items()}
    y = selective_scan(**x, backend=backend)
    grads = torch.autograd.grad((y * y).mean(), list(x.values()))
    assert torch.isfinite(y).all() and all(torch.isfinite(t).all() for t in grads)
    ref = selective_scan(**{k: v.detach().double() for k, v in x.items()}, backend="reference")
    assert rel_err(y.double(), ref) < 1e-5
    # tiny steps over a long sequence: the state integrates almost without decay
    small = dict(x, delta=1e-4 * torch.rand(1, ch, length, generator=g))
    y = selective_scan(**{k: v.detach() for k, v in small.items()}, backend=backend)
    ref = selective_scan(**{k: v.detach().double() for k, v in small.items()}, backend="reference")
    assert torch.isfinite(y).all() and rel_err(y.double(), ref) < 1e-5


THREADS = """
import torch
torch.set_num_threads({n})
assert torch.get_num_threads() == {n}  # read before the kernels load: what a training worker does
from evmamba.scan import selective_scan
g = torch.Generator().manual_seed(0)
b, d, n, L = 2, 64, 4, 32
u, delta = (torch.randn(b, 2 * d, L, generator=g).requires_grad_() for _ in range(2))
A = -torch.rand(2 * d, n, generator=g)
B, C = (torch.randn(b, 2, n, L, generator=g) for _ in range(2))
for _ in range(2):
    selective_scan(u, delta, A, B, C, delta_softplus=True, backend="cpu_fused").sum().backward()
print(torch.get_num_threads())
"""


@pytest.mark.parametrize("torch_threads,numba_threads", [(1, 2), (2, 4)])
def test_cpu_fused_leaves_torchs_thread_count_as_it_was(torch_threads, numba_threads):
    """Numba's OpenMP layer sets the OpenMP thread count torch reads when it starts its threads: a scan must
    not leave torch (a training worker of one thread, say) on numba's count."""
    env = {**os.environ, "NUMBA_NUM_THREADS": str(numba_threads)}
    out = subprocess.run([sys.executable, "-c", THREADS.format(n=torch_threads)], capture_output=True, text=True,
                         env=env, check=True)
    assert int(out.stdout.split()[-1]) == torch_threads
