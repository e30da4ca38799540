"""evmamba.fit: the one place that decides which design runs with given weights, or names what does not fit."""
import pytest
import torch

import evmamba
from evmamba import DesignMismatchError, build, fit


def test_fresh_weights_take_every_option():
    f = fit(None, variant="small", scan="ss2d", num_classes=7)
    assert (f.config.variant, f.config.scan, f.config.num_classes, f.image_size) == ("small", "ss2d", 7, 224)
    model = build(f, seed=3)
    assert not model.weights.trained
    assert torch.equal(model.patch_embed[0].weight, evmamba.build_model("small", scan="ss2d", num_classes=7,
                                                                       seed=3).patch_embed[0].weight)


def test_a_study_model_runs_its_own_design_and_inputs():
    f = fit("study:markers-ss2d", backend="torch")
    assert f.config.scan == "ss2d" and f.config.backend == "torch" and f.image_size == 32
    model = build(f)
    assert model.weights.source == "study:markers-ss2d" and model.weights.inputs.size == 32
    assert model.num_classes == 2 and not model.training


def test_a_study_model_refuses_each_option_it_cannot_honour_by_name():
    with pytest.raises(DesignMismatchError) as e:
        fit("study:markers", variant="base", scan="ss2d", drop_path=0.1)
    assert str(e.value) == ("study:markers was trained as another design: variant='base' (weights: 'tiny'), "
                            "scan='ss2d' (weights: 'es2d')")
    assert len(e.value.differences) == 2  # drop_path changes no parameter: any weights take it
    fit("study:markers", variant="tiny", scan="es2d")  # the same values as the weights: fine


def test_a_checkpoint_fixes_what_its_tensors_say(tmp_path):
    path = tmp_path / "small.pth"
    torch.save({"model": evmamba.build_model("small", num_classes=5).state_dict()}, path)
    with pytest.raises(DesignMismatchError, match=r"small.pth holds another design \(build_model\('small', "
                                                  r"num_classes=5\)\): variant='tiny' \(weights: 'small'\)"):
        fit(str(path), variant="tiny", label="small.pth")
    f = fit(str(path), variant="small")
    assert f.config.num_classes == 5  # left out: the checkpoint's
    assert build(f).weights.trained
    with pytest.raises(DesignMismatchError, match="9 routes; the weights' mixers have 4"):
        fit(str(path), variant="small", scan="es2d", step=3)


def test_build_model_says_which_options_to_drop():
    with pytest.raises(ValueError, match=r"scan='ss2d' \(weights: 'es2d'\): drop those options"):
        evmamba.build_model("tiny", weights="study:markers", scan="ss2d")
