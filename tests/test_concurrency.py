"""Analyses share a model: what they ask of its layers travels with each call (evmamba.probes), so two
different analyses running at the same time on one model give exactly what each gives alone, and the
model is left as it was."""
import copy
import threading

import numpy as np
import pytest
import torch

from evmamba import build_model, probes
from evmamba.analysis.attribution import route_contributions
from evmamba.analysis.erf import effective_receptive_fields
from evmamba.analysis.hidden_attention import model_hidden_attention
from evmamba.analysis.interventions import for_inference, keep_only_route, scan_replaced_by_identity


def erf_maps(model):
    r = effective_receptive_fields(model, "stage", stage=1, num_inputs=2, image_size=64, method="autograd",
                                   bar=False)
    return [e.contribution for e in r.all()]


def contributions(model):
    return route_contributions(model, "rocket", image_size=64, bar=False)["logit without"].to_numpy()


def attention(model):
    return [a.matrix for a in model_hidden_attention(model, "chelsea", mixer=1, image_size=64, bar=False)]


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, {n: dict(vars(m)) for n, m in
                                                                  model.named_modules()}


def test_two_analyses_at_once_on_one_model_give_their_solo_results():
    model = build_model("tiny", seed=0).eval()
    before = state(model)
    alone = {"erf": erf_maps(model), "routes": contributions(model), "attention": attention(model)}
    got, errors = {}, []
    barrier = threading.Barrier(3)

    def run(name, fn):
        try:
            barrier.wait()
            got[name] = [fn(model) for _ in range(2)]  # twice, so the runs overlap for a while
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=a) for a in
               (("erf", erf_maps), ("routes", contributions), ("attention", attention))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for name, runs in got.items():
        for result in runs:
            for a, b in zip(result if isinstance(result, list) else [result],
                            alone[name] if isinstance(alone[name], list) else [alone[name]]):
                np.testing.assert_array_equal(a, b, err_msg=name)
    after = state(model)
    assert all(torch.equal(v, before[0][k]) for k, v in after[0].items())
    assert {n: {k for k in d} for n, d in after[1].items()} == {n: {k for k in d} for n, d in before[1].items()}
    assert probes.active() is None


def test_a_probe_is_seen_only_by_the_thread_that_opened_it():
    model = build_model("tiny", seed=1).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain = model(x)
    inside, outside = {}, {}
    opened, done = threading.Event(), threading.Event()

    def analysis():
        with scan_replaced_by_identity(model), torch.no_grad():
            inside["logits"] = model(x)
            opened.set()
            done.wait(30)

    t = threading.Thread(target=analysis)
    t.start()
    opened.wait(30)
    with torch.no_grad():
        outside["logits"] = model(x)  # while the other thread's probe is open
    done.set()
    t.join()
    assert torch.equal(outside["logits"], plain)
    assert not torch.allclose(inside["logits"], plain)


def test_an_evaluation_copy_carries_the_callers_probe():
    model = build_model("tiny", seed=2)  # training mode: BatchNorm on batch statistics
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = copy.deepcopy(model).eval()(x)  # an evaluation copy, without any probe
    with keep_only_route(model, 1):
        with for_inference(model) as twin, torch.no_grad():
            assert twin is not model and not twin.training
            routed = twin(x)  # route 1 alone in every mixer: the caller's probe followed the copy
    assert model.training  # the caller's model kept its mode
    assert not torch.allclose(routed, expected)
    with torch.no_grad(), for_inference(model) as twin, keep_only_route(twin, 1):
        np.testing.assert_allclose(twin(x).numpy(), routed.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("level", ["mixer", "block", "stage"])
def test_a_model_in_training_mode_is_analysed_as_in_evaluation_mode_and_left_training(level):
    model = build_model("tiny", seed=3)
    kwargs = dict(stage=1, num_inputs=2, image_size=64, method="autograd", bar=False)
    trained_mode = effective_receptive_fields(model, level, **kwargs)
    assert all(m.training for m in model.modules())
    evaluated = effective_receptive_fields(model.eval(), level, **kwargs)
    for a, b in zip(trained_mode.all(), evaluated.all()):
        np.testing.assert_array_equal(a.contribution, b.contribution)
