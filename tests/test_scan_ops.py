"""The scan's registered operators: shapes declared for torch.compile match what they compute, gradients
flow through them, and compiled code gives the eager results.

The mamba-ssm kernel itself needs a GPU; here a CPU stand-in with the extension's contract
(tests/mamba_ext_stand_in.py) sits behind the same operators, so their glue is tested on any machine."""
import mamba_ext_stand_in
import pytest
import torch
from test_scan import make

from evmamba.agreement import grad_agreement, rel_err
from evmamba.scan import cuda, selective_scan


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(cuda, "extension", lambda: mamba_ext_stand_in)


def core_args(batch=2, groups=4, d=3, n=5, length=40, chunk=16):
    g = torch.Generator().manual_seed(0)
    u, dt = torch.randn(length, batch, groups, d, generator=g), torch.rand(length, batch, groups, d, generator=g)
    A = -torch.rand(groups, d, n, generator=g) - 0.1
    B, C = (torch.randn(length, batch, groups, n, generator=g) for _ in range(2))
    return u, dt, A, B, C, chunk


def test_torch_scan_operator_passes_opcheck():
    args = core_args()
    torch.library.opcheck(torch.ops.evmamba.torch_scan.default, args)
    grad_args = tuple(t.requires_grad_() if isinstance(t, torch.Tensor) else t for t in core_args(length=33, chunk=8))
    torch.library.opcheck(torch.ops.evmamba.torch_scan.default, grad_args)
    # strided inputs, as the mixer's route-major layout gives them: outputs follow the real allocation
    u, dt, A, B, C, chunk = core_args(length=21, chunk=8)
    strided = (u.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(), dt.requires_grad_(), A,
               B.transpose(0, 1).contiguous().transpose(0, 1).requires_grad_(), C, chunk)
    torch.library.opcheck(torch.ops.evmamba.torch_scan.default, strided)
    with torch.no_grad():
        _, starts = torch.ops.evmamba.torch_scan(*strided)
    gy = torch.randn(u.shape).transpose(0, 2).contiguous().transpose(0, 2)
    backward_args = tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in strided[:5])
    torch.library.opcheck(torch.ops.evmamba.torch_scan_backward.default, (*backward_args, starts, gy, chunk))


def test_mamba_operator_passes_opcheck(stand_in):
    x = make(2, 4, 3, 5, 40)
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["delta_bias"], True)
    torch.library.opcheck(torch.ops.evmamba.mamba_scan.default, args)
    grad_args = tuple(t.clone().requires_grad_() if isinstance(t, torch.Tensor) else t for t in args)
    torch.library.opcheck(torch.ops.evmamba.mamba_scan.default, grad_args)
    # u and delta laid out (channels, batch, L), as the mixer's route-major tokens are
    strided = tuple(t.transpose(0, 1).contiguous().transpose(0, 1) if i < 2 else t for i, t in enumerate(args))
    torch.library.opcheck(torch.ops.evmamba.mamba_scan.default, strided)
    out, x_states = torch.ops.evmamba.mamba_scan(*strided)
    dout = torch.randn(out.shape).transpose(0, 1).contiguous().transpose(0, 1)
    torch.library.opcheck(torch.ops.evmamba.mamba_scan_backward.default, (*strided[:7], x_states, dout, True))


@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("optional", [True, False])
def test_mamba_operator_matches_reference(stand_in, grouped, optional):
    inputs = make(2, 4, 3, 5, 37, grouped=grouped)
    if not optional:
        inputs.pop("D"), inputs.pop("delta_bias")
    outs, grads = {}, {}
    for name, fn in (("reference", lambda **k: selective_scan(**k, delta_softplus=True, backend="reference")),
                     ("kernel", lambda **k: cuda.run_kernel(**k, delta_softplus=True))):
        x = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        y = fn(**x)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs[name], grads[name] = y.detach(), {k: v.grad for k, v in x.items()}
    assert rel_err(outs["kernel"], outs["reference"]) < 1e-5
    assert grad_agreement(grads["kernel"], grads["reference"]).ok(1e-5)


def test_mamba_operator_takes_strided_batch_and_channels(stand_in):
    # u laid out (channels, batch, L) in memory, viewed as (batch, channels, L): the token axis is contiguous
    x = make(3, 2, 4, 5, 30)
    u = x["u"].permute(1, 0, 2).contiguous().permute(1, 0, 2)
    assert not u.is_contiguous() and u.stride(-1) == 1
    ref = selective_scan(**x, delta_softplus=True, backend="reference")
    out = cuda.run_kernel(**dict(x, u=u), delta_softplus=True)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("backend", ["torch", "cpu_fused"])
def test_compiled_scan_equals_eager(backend):
    x = make(2, 4, 3, 5, 37)
    x = {k: v.requires_grad_() for k, v in x.items()}

    def fn(**k):
        return selective_scan(**k, delta_softplus=True, backend=backend)

    eager = fn(**x)
    geager = torch.autograd.grad(eager.square().sum(), list(x.values()))
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(**x)
    gcomp = torch.autograd.grad(compiled.square().sum(), list(x.values()))
    assert rel_err(compiled, eager) < 1e-6
    assert grad_agreement(gcomp, geager).ok(1e-6)



def test_compiled_kernel_operator_equals_eager(stand_in):
    # strided u and delta, as the mixer passes them; inductor must hand the kernel the strides it traced
    x = make(2, 4, 3, 5, 37)
    x["u"] = x["u"].transpose(0, 1).contiguous().transpose(0, 1)
    x = {k: v.requires_grad_() for k, v in x.items()}

    def fn(**k):
        return cuda.run_kernel(**k, delta_softplus=True) * 2

    eager = fn(**x)
    geager = torch.autograd.grad(eager.square().sum(), list(x.values()))
    compiled = torch.compile(fn, fullgraph=True)(**x)
    gcomp = torch.autograd.grad(compiled.square().sum(), list(x.values()))
    assert rel_err(compiled, eager) < 1e-5
    assert grad_agreement(gcomp, geager).ok(1e-5)


def outputs_and_grads(module, run, x):
    """run(x) (the module, or a compiled wrapper of it) and the gradients of its parameters for a fixed loss."""
    out = run(x)
    names, params = zip(*module.named_parameters())
    return out.detach(), dict(zip(names, torch.autograd.grad(out.square().mean(), params)))


def assert_same(module, compiled, x, tolerance=1e-4):
    (out, grads), (ref, ref_grads) = outputs_and_grads(module, compiled, x), outputs_and_grads(module, module, x)
    assert rel_err(out, ref) < tolerance
    agreement = grad_agreement(grads, ref_grads)
    assert agreement.ok(tolerance), agreement


def tiny(scan="es2d", **options):
    import evmamba
    torch.manual_seed(0)
    return evmamba.build_model("tiny", scan=scan, **options).eval()


# The smallest network with every kind of layer the released layout has (EVSS and inverted-residual stages,
# patch merging, head), one block per stage: what compiling proves (one graph, the same numbers, a new batch
# size) does not depend on depth or width, and tracing time grows with depth.
MICRO = dict(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1))


@pytest.fixture
def micro(monkeypatch):
    import evmamba
    from evmamba import model as model_module
    monkeypatch.setitem(model_module.VARIANTS, "micro", MICRO)

    def build(scan="es2d", **options):
        torch.manual_seed(0)
        return evmamba.build_model("micro", scan=scan, **options).eval()
    return build


# Graph capture (one graph, forward and backward, the same numbers) through aot_eager: dynamo and AOTAutograd
# trace exactly what inductor would compile, then run the traced graphs op by op, without code generation.
# Inductor itself compiles one EVSS block; on whole models (minutes each from a cold cache) it runs in the
# slow tests (python -m pytest -m slow).
COMPILERS = ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)]


@pytest.mark.parametrize("scan", ["es2d", "ss2d"])
def test_compiled_model_is_one_graph(micro, scan):
    model, x = micro(scan), torch.randn(2, 3, 32, 32)
    model(x)  # an eager call first builds the route tables the compiled graph reads
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


@pytest.mark.parametrize("compiler", COMPILERS)
@pytest.mark.parametrize("scan, kernel", [("es2d", False), ("ss2d", False), ("es2d", True)],
                         ids=["es2d", "ss2d", "es2d-kernel-operator"])
def test_compiled_model_equals_eager(stand_in, monkeypatch, micro, compiler, scan, kernel):
    # kernel: the whole model on the mamba_ssm path (here the CPU stand-in, whose outputs take their inputs'
    # strides as the kernel's do)
    if kernel:
        import evmamba.scan as scan_module
        monkeypatch.setitem(scan_module._IMPLEMENTATIONS, "mamba_ssm", cuda.run_kernel)
    model, x = micro(scan, backend="mamba_ssm" if kernel else "torch"), torch.randn(2, 3, 32, 32)
    model(x)
    torch._dynamo.reset()
    assert_same(model, torch.compile(model, fullgraph=True, backend=compiler), x)


@pytest.mark.parametrize("compiler", COMPILERS)
def test_compiled_model_follows_a_changing_batch_size(micro, compiler):
    # a second batch size makes dynamo recompile once, with a symbolic batch (dynamic shapes); inductor's
    # code for that graph gives wrong gradients in torch 2.13 (see test_inductor_dynamic_batch_gradients)
    model = micro()
    model(torch.randn(2, 3, 32, 32))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    dynamic = None if compiler == "aot_eager" else False  # inductor: one static graph per batch size
    compiled = torch.compile(model, fullgraph=True, backend=compiler, dynamic=dynamic)
    for batch in (2, 3):
        assert_same(model, compiled, torch.randn(batch, 3, 32, 32))
    if compiler == "aot_eager":
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # batch 2, then any batch


def test_inductor_compiles_a_mixer():
    # inductor's code generation, once, on the smallest piece holding what compiling this model involves
    # (the cross-scan's gathers, the route-major projections, the scan operator with its declared layout, the
    # merge, the norm and gate), on an odd map (ES2D pads); whole models, and a changing batch size, in the
    # slow tests
    mixer = tiny().layers[0].blocks[0].op
    x = torch.randn(2, 15, 17, 48)
    mixer(x)
    torch._dynamo.reset()
    assert_same(mixer, torch.compile(mixer, fullgraph=True), x)


def test_scan_precision_keeps_autocast_inputs_and_changes_nothing_outside_autocast(monkeypatch):
    import evmamba
    from evmamba import mixer as mixer_module
    model = evmamba.build_model("tiny").eval()
    x = torch.randn(1, 3, 64, 64)
    plain = model(x)
    seen = []
    real = mixer_module.selective_scan
    monkeypatch.setattr(mixer_module, "selective_scan", lambda u, *a, **k: seen.append(u.dtype) or real(u, *a, **k))
    for precision in ("float32", "autocast"):
        model.set_scan_precision(precision)
        assert torch.equal(model(x), plain)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            seen.clear()
            out = model(x)
        assert set(seen) == {torch.float32 if precision == "float32" else torch.bfloat16}
        assert rel_err(out.float(), plain) < 0.05
    with pytest.raises(ValueError, match="unknown scan precision 'half': valid scan precisions are float32, autocast"):
        model.set_scan_precision("half")


def _dynamic_batch(layout_optimization: bool):
    import torch._inductor.config as inductor
    model = tiny()
    model(torch.randn(2, 3, 64, 64))
    torch._dynamo.reset()
    with inductor.patch(layout_optimization=layout_optimization):
        compiled = torch.compile(model)  # automatic dynamic shapes: a second batch size recompiles symbolically
        for batch in (2, 3):
            assert_same(model, compiled, torch.randn(batch, 3, 64, 64))


@pytest.mark.slow
def test_inductor_follows_a_symbolic_batch_size_without_its_layout_optimization():
    _dynamic_batch(layout_optimization=False)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="torch 2.13 inductor: with a symbolic batch size and its layout optimization "
                                       "(convolutions made channels-last), the gradients of the first inverted-"
                                       "residual block's 1x1 convolution are wrong (3.6e-2 by grad_agreement); "
                                       "static shapes, the same graph through aot_eager, or "
                                       "layout_optimization=False are right")
def test_inductor_dynamic_batch_gradients_with_its_layout_optimization():
    _dynamic_batch(layout_optimization=True)


def fused_args(batch=2, groups=4, d=3, n=5, length=40, chunk=16, strided=False):
    x = make(batch, groups, d, n, length)
    if strided:  # u and delta laid out (channels, batch, L), B as (groups, N, batch, L): the mixer's views
        x["u"], x["delta"] = (t.transpose(0, 1).contiguous().transpose(0, 1) for t in (x["u"], x["delta"]))
        x["B"] = x["B"].permute(1, 2, 0, 3).contiguous().permute(2, 0, 1, 3)
    return (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["delta_bias"], True, chunk)


@pytest.mark.parametrize("strided", [False, True])
def test_cpu_fused_operators_pass_opcheck(strided):
    args = fused_args(length=37, chunk=8, strided=strided)
    torch.library.opcheck(torch.ops.evmamba.cpu_scan.default, args)
    grad_args = tuple(t.clone().requires_grad_() if isinstance(t, torch.Tensor) else t for t in args)
    torch.library.opcheck(torch.ops.evmamba.cpu_scan.default, grad_args)
    y, states = torch.ops.evmamba.cpu_scan(*args)
    gy = torch.randn(y.shape).transpose(0, 1).contiguous().transpose(0, 1)
    torch.library.opcheck(torch.ops.evmamba.cpu_scan_backward.default, (*args[:7], states, gy, *args[7:]))
