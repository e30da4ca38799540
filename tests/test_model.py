"""The model: parameter counts, official keys, switches, input sizes, forward and backward."""
import itertools

import pytest
import torch
from parity_weights import read_manifest

from evmamba import STAGE_LAYOUTS, build_model, count_parameters
from evmamba.blocks import DropPath, EVSSBlock, InvertedResidual


@pytest.mark.parametrize("variant,count", [("tiny", 6_493_660), ("small", 11_273_688), ("base", 33_717_136)])
def test_parameter_counts_and_official_keys(variant, count, manifest_path):
    model = build_model(variant)
    assert count_parameters(model) == count
    manifest = read_manifest(manifest_path(variant))
    sd = model.state_dict()
    assert list(sd) == list(manifest)  # same keys, in the same order
    assert {k: tuple(v.shape) for k, v in sd.items()} == manifest


def test_switches_change_the_structure():
    assert count_parameters(build_model("tiny", scan="ss2d")) == 6_493_660  # same weights, other routes
    no_conv = build_model("tiny", conv_branch=False)
    assert not any("conv_branch" in k for k in no_conv.state_dict())
    no_gate = build_model("tiny", gate=False)
    assert not any(".se." in k for k in no_gate.state_dict() if k.startswith(("layers.0", "layers.1")))
    step3 = build_model("tiny", step=3)
    assert step3.state_dict()["layers.0.blocks.0.op.x_proj_weight"].shape[0] == 9
    all_evss = build_model("tiny", stages="all-evss")
    assert sum(isinstance(m, EVSSBlock) for m in all_evss.modules()) == 10
    all_ir = build_model("tiny", stages=("ir",) * 4)
    assert sum(isinstance(m, InvertedResidual) for m in all_ir.modules()) == 10 and not all_ir.mixers()
    assert build_model("tiny", num_classes=10).classifier.head.out_features == 10
    features = build_model("tiny", num_classes=0).eval()
    assert features(torch.randn(1, 3, 64, 64)).shape == (1, 384)


def test_drop_path_rises_linearly():
    model = build_model("base", drop_path=0.2)
    rates = [m.p for m in model.modules() if isinstance(m, DropPath)]
    assert len(rates) == 15 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.2)
    assert rates == sorted(rates)


@pytest.mark.parametrize("kwargs,message", [
    (dict(variant="huge"), "unknown variant 'huge': valid variants are tiny, small, base"),
    (dict(scan="es3d"), "unknown scan 'es3d': registered scans are es2d, ss2d, zigzag"),
    (dict(step=0), "step must be an integer >= 1"),
    (dict(scan="ss2d", step=3), r"step only applies to scans with a parameter \(es2d: step, windows: size\); ss2d "
                                r"takes none"),
    (dict(stages="evss-first"), "unknown stage layout 'evss-first': valid names are released, all-evss, "
                                "ir-first, all-ir"),
    (dict(stages=("evss", "ir", "ir")), "stages must be four of evss, ir"),
    (dict(stages=("evss", "mlp", "ir", "ir")), "stages must be four of evss, ir"),
    (dict(num_classes=-1), "num_classes must be an integer >= 0"),
    (dict(drop_path=1.5), r"drop_path must be a number in \[0, 1\)"),
    (dict(conv_branch="yes"), "conv_branch must be True or False"),
    (dict(backend="cuda"), "valid backends are auto, reference, torch, cpu_fused, mamba_ssm"),
    (dict(se_ratio=0.25), "unknown build_model option.*'se_ratio'.*valid options are scan, step"),
])
def test_bad_options_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(**kwargs)


@pytest.mark.parametrize("size", [(32, 32), (37, 45), (33, 100), (64, 48)])
def test_any_size_from_32_works(size):
    model = build_model("tiny").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 1000)


@pytest.mark.parametrize("x,error,message", [
    (torch.randn(1, 3, 31, 64), ValueError, "needs at least 32x32"),
    (torch.randn(3, 64, 64), ValueError, "add a batch dimension"),
    (torch.randn(1, 4, 64, 64), ValueError, r"shape \(batch, 3, H, W\)"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), ValueError, "floating-point"),
    ([[1.0]], TypeError, "expected an image tensor"),
])
def test_bad_inputs_raise_clear_errors(x, error, message):
    with pytest.raises(error, match=message):
        build_model("tiny")(x)


def test_stage_grids():
    assert build_model("tiny").stage_grids(224, 224) == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert build_model("tiny").stage_grids(72, 56) == [(18, 14), (9, 7), (5, 4), (3, 2)]


COMBOS = [dict(scan=s, conv_branch=c, gate=g, stages=layout)
          for s, c, g, layout in itertools.product(("es2d", "ss2d"), (True, False), (True, False), STAGE_LAYOUTS)]
COMBOS += [dict(step=p) for p in (1, 3, 4)]


def _name(c):
    return "-".join(f"{k}={v}" for k, v in c.items())


@pytest.mark.parametrize("options", COMBOS, ids=_name)
def test_forward_backward_train_and_eval(options):
    torch.manual_seed(0)
    model = build_model("tiny", num_classes=7, drop_path=0.1, **options)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    model(x).logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("variant", ["small", "base"])
@pytest.mark.parametrize("scan", ["es2d", "ss2d"])
def test_larger_variants_train(variant, scan):
    model = build_model(variant, scan=scan, num_classes=3).train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_set_scan_backend():
    model = build_model("tiny").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = model.set_scan_backend("reference")(x)
        b = model.set_scan_backend("torch")(x)
    assert all(m.backend == "torch" for _, m in model.mixers())
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="valid backends"):
        model.set_scan_backend("gpu")
