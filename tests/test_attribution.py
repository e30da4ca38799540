"""Top classes, captum attributions against plain autograd, and per-direction logit contributions."""
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from evmamba import Weights, build_model, probes
from evmamba.analysis.attribution import (
    ATTRIBUTION_METHODS,
    RANDOM_NOTE,
    attributions,
    image_input,
    predict,
    route_contributions,
)
from evmamba.analysis.attribution_figures import attribution_figure, prediction_figure, route_contribution_figure
from evmamba.imagenet import class_names

SIZE = 64


@pytest.fixture(scope="module")
def tiny():
    return build_model("tiny", seed=0).eval()


def _grad(model, x, target):
    x = x.clone().requires_grad_(True)
    model(x)[0, target].backward()
    return x.grad[0]


def test_predict_names_and_random_note(tiny):
    pred = predict(tiny, "chelsea", image_size=SIZE)
    df = pred.classes
    assert list(df.columns) == ["rank", "class", "name", "probability", "logit"]
    assert list(df["rank"]) == [1, 2, 3, 4, 5]
    assert list(df["probability"]) == sorted(df["probability"], reverse=True)
    names = class_names()
    assert list(df["name"]) == [names[c] for c in df["class"]]
    assert pred.top_class == int(pred.logits.argmax())
    assert not pred.pretrained and pred.note == RANDOM_NOTE
    x, _ = image_input("chelsea", SIZE)
    with torch.no_grad():
        np.testing.assert_allclose(df["logit"], tiny(x)[0, df["class"]].numpy(), rtol=1e-5)
    assert predict(tiny, "chelsea", 3, pretrained=True, image_size=SIZE).note is None


def test_pretrained_is_inferred_from_the_weights_record():
    model = build_model("tiny", seed=1).eval()
    # what build_model(pretrained=True) and load_checkpoint record
    model.weights = Weights(source="a checkpoint", class_names=tuple(f"thing {i}" for i in range(1000)))
    pred = predict(model, "rocket", image_size=SIZE)
    assert pred.pretrained and pred.note is None
    assert pred.classes["name"].iloc[0] == f"thing {pred.top_class}"
    small = build_model("tiny", num_classes=10).eval()
    assert predict(small, "rocket", 2, image_size=SIZE).classes["name"].str.startswith("class ").all()
    with pytest.raises(ValueError, match="no classifier head"):
        predict(build_model("tiny", num_classes=0), "rocket", image_size=SIZE)


def test_saliency_and_input_x_gradient_are_the_gradient(tiny):
    x, _ = image_input("coffee", SIZE)
    att = attributions(tiny, "coffee", 7, methods=["saliency", "input_x_gradient"], image_size=SIZE, bar=False)
    g = _grad(tiny, x, 7)
    np.testing.assert_allclose(att.raw["saliency"], g.abs().numpy(), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(att.raw["input_x_gradient"], (x[0] * g).numpy(), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(att.maps["saliency"], g.abs().max(0).values.numpy(), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(att.maps["input_x_gradient"], (x[0] * g).sum(0).numpy(), rtol=1e-4, atol=1e-8)
    assert att.target == 7 and att.target_name == class_names()[7]
    assert att.signed == {"saliency": False, "input_x_gradient": True}


def test_integrated_gradients_are_complete(tiny):
    """Sum of IG attributions = f(x) - f(baseline) up to the quadrature error it reports."""
    x, _ = image_input("astronaut", SIZE)
    att = attributions(tiny, "astronaut", methods="integrated_gradients", image_size=SIZE, n_steps=16,
                       baseline="mean", bar=False)
    with torch.no_grad():
        gap = float(tiny(x)[0, att.target] - tiny(torch.zeros_like(x))[0, att.target])
    assert att.target == int(predict(tiny, "astronaut", image_size=SIZE).top_class)
    total = float(att.raw["integrated_gradients"].sum())
    assert abs(total - gap) == pytest.approx(att.convergence_delta, rel=1e-3, abs=1e-6)
    assert abs(total - gap) < 0.05 * abs(gap) + 1e-4
    assert att.maps["integrated_gradients"].shape == (SIZE, SIZE)
    assert att.picture.shape == (SIZE, SIZE, 3)


def test_every_method_runs_and_reports_progress(tiny):
    calls = []
    att = attributions(tiny, "rocket", methods=ATTRIBUTION_METHODS, image_size=SIZE, n_steps=4,
                       smoothgrad_samples=2, progress=lambda f, desc=None: calls.append(f), bar=False)
    assert set(att.maps) == set(ATTRIBUTION_METHODS)
    assert all(np.isfinite(m).all() and m.shape == (SIZE, SIZE) for m in att.maps.values())
    assert calls[-1] == 1.0
    assert att.note == RANDOM_NOTE


def test_attribution_errors(tiny):
    valid = "valid methods are integrated_gradients, saliency, input_x_gradient, smoothgrad"
    with pytest.raises(ValueError, match=valid):
        attributions(tiny, "rocket", methods=["gradcam"], image_size=SIZE)
    with pytest.raises(ValueError, match=r"target must be a class id in 0..999"):
        attributions(tiny, "rocket", 1000, methods=["saliency"], image_size=SIZE)
    with pytest.raises(ValueError, match="valid baselines are black, mean"):
        attributions(tiny, "rocket", methods=["integrated_gradients"], baseline="blur", image_size=SIZE)
    with pytest.raises(ValueError, match="one image at a time"):
        attributions(tiny, ["rocket", "coffee"], image_size=SIZE)
    with pytest.raises(ValueError, match="sample names are astronaut"):
        predict(tiny, "no-such-image", image_size=SIZE)


# ---- per-direction contributions ------------------------------------------------------------------------------
def test_route_contributions_match_a_manual_removal(tiny):
    df = route_contributions(tiny, "chelsea", image_size=SIZE, bar=False)
    blocks = ["layers.0.blocks.0", "layers.0.blocks.1", "layers.1.blocks.0", "layers.1.blocks.1", "all chosen"]
    assert list(dict.fromkeys(df["block"])) == blocks
    assert len(df) == len(blocks) * 5 and list(df["route"][:5]) == [0, 1, 2, 3, "all"]
    assert df["route name"][1] == "sub-map (1,0) column-major"
    target, full = df.attrs["target"], df.attrs["full_logit"]
    np.testing.assert_allclose(df["change"], df["logit without"] - full, rtol=1e-6, atol=1e-7)
    assert df.attrs["pretrained"] is False and df.attrs["note"] == RANDOM_NOTE
    assert probes.active() is None
    # by hand: route 1 removed in layers.1.blocks.0 alone
    x, _ = image_input("chelsea", SIZE)
    mixer = tiny.layers[1].blocks[0].op
    with torch.no_grad(), probes.probe(route_weights={mixer: torch.tensor([1.0, 0.0, 1.0, 1.0])}):
        expected = float(tiny(x)[0, target])
    row = df[(df["block"] == "layers.1.blocks.0") & (df["route"] == 1)]
    assert float(row["logit without"].iloc[0]) == pytest.approx(expected, rel=1e-6)
    assert abs(float(row["change"].iloc[0])) > 0


def test_removing_every_route_everywhere_is_removing_the_scan(tiny, monkeypatch):
    df = route_contributions(tiny, "rocket", image_size=SIZE, bar=False)
    x, _ = image_input("rocket", SIZE)
    for _, m in tiny.mixers():
        monkeypatch.setattr(m, "scan_map", lambda t, probe=None: torch.zeros_like(t))
    with torch.no_grad():
        no_scan = float(tiny(x)[0, df.attrs["target"]])
    row = df[(df["block"] == "all chosen") & (df["route"] == "all")]
    assert float(row["logit without"].iloc[0]) == pytest.approx(no_scan, rel=1e-5, abs=1e-6)


def test_route_contribution_block_choice(tiny):
    df = route_contributions(tiny, "rocket", blocks=["layers.0.blocks.1", 2], image_size=SIZE, bar=False)
    assert list(dict.fromkeys(df["block"])) == ["layers.0.blocks.1", "layers.1.blocks.0", "all chosen"]
    one = route_contributions(tiny, "rocket", blocks="layers.1.blocks.1.op", image_size=SIZE, bar=False)
    assert set(one["block"]) == {"layers.1.blocks.1"}
    with pytest.raises(ValueError, match=r"no EVSS block or mixer named 'layers.2.blocks.0'"):
        route_contributions(tiny, "rocket", blocks=["layers.2.blocks.0"], image_size=SIZE)
    with pytest.raises(ValueError, match=r"mixer indices in 0..3"):
        route_contributions(tiny, "rocket", blocks=[4], image_size=SIZE)
    with pytest.raises(ValueError, match="no scan mixers"):
        route_contributions(build_model("tiny", stages="all-ir").eval(), "rocket", image_size=SIZE)


def test_figures_carry_the_random_weights_note(tiny):
    pred = predict(tiny, "coffee", image_size=SIZE)
    att = attributions(tiny, "coffee", methods=["saliency", "input_x_gradient"], image_size=SIZE, bar=False)
    df = route_contributions(tiny, "coffee", blocks=[0, 1], image_size=SIZE, bar=False)
    for fig in (prediction_figure(pred), attribution_figure(att), route_contribution_figure(df)):
        assert isinstance(fig, Figure)
        (note,) = [t for t in fig.texts if t.get_gid() == "note"]
        assert "randomly initialised" in note.get_text()
    fig = attribution_figure(att)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["input", "Saliency (|gradient|)", "Input × Gradient"]
    bars = [p for ax in route_contribution_figure(df).axes for p in ax.patches if p.get_gid() == "route-1"]
    assert len(bars) == 3  # two blocks and "all chosen"
    pred.pretrained, pred.note = True, None
    assert not [t for t in prediction_figure(pred).texts if t.get_gid() == "note"]
    with pytest.raises(ValueError, match="takes the DataFrame returned by route_contributions"):
        route_contribution_figure(pred.classes)
