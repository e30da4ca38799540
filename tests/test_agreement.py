"""The one measure of agreement between two sets of gradients: not fooled by gradients that are zero by
construction, and not blind to a real error in any tensor, large or small."""
import pytest
import torch

from evmamba.agreement import grad_agreement, rel_err


def gradients(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"weight": torch.randn(8, 8, generator=g, dtype=torch.float64),
            "small": 1e-5 * torch.randn(4, generator=g, dtype=torch.float64),
            # the rounding noise of a gradient that is zero by construction
            "zero": 1e-9 * torch.randn(4, generator=g, dtype=torch.float64)}


def test_rounding_noise_on_a_zero_gradient_passes():
    ref = gradients()
    other = {k: v.clone() for k, v in ref.items()}
    other["zero"] = 1e-9 * torch.randn(4, generator=torch.Generator().manual_seed(5))  # another noise
    assert rel_err(other["zero"], ref["zero"]) > 0.5  # per tensor, the noise looks like a 50%+ error
    a = grad_agreement(other, ref)
    assert a.error < 1e-5 and a.worst == "zero"


@pytest.mark.parametrize("name, change", [
    ("weight", lambda v: v * 1.001),  # 0.1% on the largest tensor
    ("small", lambda v: v * 1.5),  # 50% on a tensor 1e-5 the size of the largest
    ("zero", lambda v: v + 1e-6),  # a value 1e-6 of the largest gradient where the reference is zero
])
def test_real_errors_fail_at_the_checks_tolerance(name, change):
    ref = gradients()
    a = grad_agreement({k: change(v) if k == name else v for k, v in ref.items()}, ref)
    assert a.worst == name and a.error > 1e-4


def test_each_tensor_is_measured_on_its_own_scale_or_the_floor():
    ref = gradients()
    top = ref["weight"].abs().max().item()
    a = grad_agreement({**ref, "weight": ref["weight"] * (1 + 1e-6), "small": ref["small"] * 1.01}, ref)
    assert a.errors["weight"] == pytest.approx(1e-6, rel=1e-3)  # the largest: its own scale
    assert a.errors["small"] == pytest.approx(0.01 * ref["small"].abs().max().item() / (1e-3 * top), rel=1e-3)
    assert a.scale == top and a.ok(1e-4)


def test_names_and_shapes_must_agree():
    ref = gradients()
    with pytest.raises(ValueError, match="name different tensors: zero"):
        grad_agreement({k: v for k, v in ref.items() if k != "zero"}, ref)
    with pytest.raises(ValueError, match="gradient 'small' has shape"):
        grad_agreement({**ref, "small": torch.zeros(5)}, ref)
    with pytest.raises(ValueError, match="None on one side only"):
        grad_agreement({**ref, "small": None}, ref)
    assert grad_agreement([torch.ones(2)], [torch.ones(2)]).worst == "0"
