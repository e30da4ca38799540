"""The small-map paths of the depthwise 3x3 and pointwise 1x1 convolutions against the ordinary convolution."""
import pytest
import torch
from conftest import rel_err

from evmamba.depthwise import SMALL_MAP, DepthwiseConv3x3, PointwiseConv2d, depthwise_as_matrices


@pytest.mark.parametrize("shape", [(3, 5, 1, 1), (2, 4, 2, 2), (2, 3, 1, 4), (2, 3, 4, 1), (1, 2, 2, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_matrices_equal_the_convolution_with_their_gradients(shape, bias):
    torch.manual_seed(0)
    conv = DepthwiseConv3x3(shape[1], bias=bias)
    x = torch.randn(shape, requires_grad=True)
    ref = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1, groups=shape[1])
    got = depthwise_as_matrices(x, conv.weight, conv.bias)
    assert rel_err(got, ref) < 1e-6
    g = torch.randn_like(ref)
    grads_ref = torch.autograd.grad(ref, [x, conv.weight], g)
    grads = torch.autograd.grad(got, [x, conv.weight], g)
    for a, b in zip(grads, grads_ref):
        assert rel_err(a, b) < 1e-5


def test_the_module_takes_the_matrix_path_only_to_train_on_small_maps(monkeypatch):
    import evmamba.depthwise as dw
    calls = []
    monkeypatch.setattr(dw, "depthwise_as_matrices", lambda *a: calls.append(a[0].shape) or torch.zeros(a[0].shape))
    conv = DepthwiseConv3x3(4).train()
    conv(torch.randn(2, 4, 2, 2))
    conv(torch.randn(2, 4, 8, 8))  # larger than SMALL_MAP positions
    with torch.no_grad():
        conv(torch.randn(2, 4, 2, 2))
    conv.eval()(torch.randn(2, 4, 1, 1))
    assert calls == [torch.Size([2, 4, 2, 2])] and SMALL_MAP < 64
    assert isinstance(conv, torch.nn.Conv2d) and set(conv.state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize("shape", [(3, 6, 1, 1), (2, 4, 2, 2), (2, 5, 1, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_matrix_product_equals_the_convolution_with_its_gradients(shape, bias):
    torch.manual_seed(0)
    conv = PointwiseConv2d(shape[1], 7, bias=bias).train()
    x = torch.randn(shape, requires_grad=True)
    params = [x, conv.weight] + ([conv.bias] if bias else [])
    ref = torch.nn.functional.conv2d(x, conv.weight, conv.bias)
    got = conv(x)
    assert got.shape == ref.shape and rel_err(got, ref) < 1e-6
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(ref, params, g)):
        assert a.shape == b.shape and rel_err(a, b) < 1e-5


def test_the_pointwise_module_takes_the_matrix_path_only_to_train_on_small_maps(monkeypatch):
    import evmamba.depthwise as dw
    calls = []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(dw.F, "linear", lambda x, *a: calls.append(tuple(x.shape)) or linear(x, *a))
    conv = PointwiseConv2d(4, 3).train()
    conv(torch.randn(2, 4, 1, 1))
    conv(torch.randn(2, 4, 8, 8))  # larger than SMALL_MAP positions
    with torch.no_grad():
        conv(torch.randn(2, 4, 2, 2))
    conv.eval()(torch.randn(2, 4, 1, 1))
    assert calls == [(2, 1, 1, 4)]
    assert isinstance(conv, torch.nn.Conv2d) and set(conv.state_dict()) == {"weight", "bias"}
