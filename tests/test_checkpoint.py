"""Checkpoint reading: the authors' wrappers and prefixes, strict loading, errors that say what to do."""
import pickle
import types

import pytest
import torch

from evmamba import (
    CheckpointError,
    CheckpointMismatchError,
    build_model,
    describe_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    read_checkpoint,
)

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def logits(model):
    with torch.no_grad():
        return model.eval()(X)


@pytest.fixture(scope="module")
def tiny_sd(official_weights):
    return official_weights("tiny", 2)


@pytest.fixture(scope="module")
def expected(tiny_sd):
    model = build_model("tiny")
    model.load_state_dict(tiny_sd)
    return logits(model)


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"model": sd, "epoch": 300, "max_accuracy": 76.5},
    lambda sd: {"state_dict": sd},
    lambda sd: {"model_ema": sd},
    lambda sd: {"state_dict_ema": sd},
    lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
    lambda sd: {f"module.module.{k}": v for k, v in sd.items()},
    lambda sd: {f"backbone.{k}": v for k, v in sd.items()},
], ids=["bare", "model", "state_dict", "model_ema", "state_dict_ema", "module", "module-twice", "backbone"])
def test_wrappers_and_prefixes_from_a_file(tmp_path, tiny_sd, expected, wrap):
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(tiny_sd), path)
    model = build_model("tiny")
    report = load_checkpoint(model, path)
    assert report.ok
    assert torch.equal(logits(model), expected)


def test_missing_batchnorm_counters_are_fine(tiny_sd, expected):
    sd = {k: v for k, v in tiny_sd.items() if not k.endswith("num_batches_tracked")}
    model = build_model("tiny")
    load_checkpoint(model, sd)
    assert torch.equal(logits(model), expected)


class ForeignConfig:
    """Stands for a training config pickled into a checkpoint; unpickling it must never run its code."""

    ran = False

    def __setstate__(self, state):
        ForeignConfig.ran = True


def test_foreign_objects_in_the_file_are_not_executed(tmp_path, tiny_sd, expected):
    path = tmp_path / "train.pth"
    torch.save({"model": tiny_sd, "config": ForeignConfig(), "optimizer": {"lr": 1e-3}}, path)
    model = build_model("tiny")
    load_checkpoint(model, path)
    assert torch.equal(logits(model), expected)
    assert not ForeignConfig.ran


def test_wrong_variant_names_keys_and_the_fitting_model(official_weights):
    with pytest.raises(CheckpointMismatchError) as e:
        load_checkpoint(build_model("tiny"), official_weights("small", 1))
    msg = str(e.value)
    assert "does not fit the model build_model('tiny', scan='es2d', step=2, num_classes=1000)" in msg
    assert "keys with other shapes: patch_embed.0.weight (checkpoint 64x3x4x4, model 48x3x4x4)" in msg
    assert "The checkpoint fits build_model('small'" in msg


def test_wrong_layout_and_classes_are_described(official_weights):
    sd = dict(official_weights("tiny", 1))
    sd["classifier.head.weight"] = torch.zeros(10, 384)
    sd["classifier.head.bias"] = torch.zeros(10)
    with pytest.raises(CheckpointMismatchError, match=r"fits build_model\('tiny', .*num_classes=10\)"):
        load_checkpoint(build_model("tiny"), sd)
    ir_first = build_model("tiny", stages="ir-first", step=3, conv_branch=False).state_dict()
    with pytest.raises(CheckpointMismatchError) as e:
        load_checkpoint(build_model("tiny"), ir_first)
    msg = str(e.value)
    assert "keys missing from the checkpoint" in msg and "keys unexpected in the checkpoint" in msg
    assert describe_checkpoint(ir_first) == dict(variant="tiny", stages=("ir", "ir", "evss", "evss"), scan="es2d",
                                                 step=3, conv_branch=False, gate=True, num_classes=1000)


def test_non_strict_loads_what_fits_and_reports_the_rest(official_weights):
    sd = dict(official_weights("tiny", 1))
    sd["classifier.head.weight"] = torch.zeros(10, 384)
    del sd["classifier.norm.bias"]
    sd["extra.weight"] = torch.zeros(1)
    model = build_model("tiny")
    before = model.classifier.head.weight.clone()
    report = load_checkpoint(model, sd, strict=False)
    assert report.missing == ["classifier.norm.bias"] and report.unexpected == ["extra.weight"]
    assert report.mismatched == [("classifier.head.weight", (10, 384), (1000, 384))]
    assert torch.equal(model.classifier.head.weight, before)
    assert torch.equal(model.patch_embed[0].weight, sd["patch_embed.0.weight"])


@pytest.mark.parametrize("content,message", [
    (b"", "not a readable PyTorch checkpoint"),
    (b"hello, I am a text file\n", "not a readable PyTorch checkpoint"),
    (pickle.dumps([1, 2, 3]), "not a readable PyTorch checkpoint|expected a state dict"),
])
def test_corrupt_or_foreign_files(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(build_model("tiny"), path)


def test_truncated_checkpoint(tmp_path, tiny_sd):
    path = tmp_path / "cut.pth"
    torch.save(tiny_sd, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(build_model("tiny"), path)


def test_other_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        load_checkpoint(build_model("tiny"), tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(build_model("tiny"), tmp_path)
    torch.save({"optimizer": {"lr": 0.1}, "epoch": 3}, tmp_path / "opt.pth")
    with pytest.raises(CheckpointError, match="found no model weights: top-level keys are optimizer, epoch"):
        load_checkpoint(build_model("tiny"), tmp_path / "opt.pth")
    with pytest.raises(CheckpointError, match="not an EfficientVMamba checkpoint"):
        describe_checkpoint({"conv.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="expected a state dict"):
        read_checkpoint(types.SimpleNamespace())


def test_model_from_checkpoint_builds_the_fitting_model(tmp_path):
    original = build_model("small", step=3, stages="all-evss", num_classes=5).eval()
    torch.save({"model": original.state_dict()}, tmp_path / "s.pth")
    model = model_from_checkpoint(tmp_path / "s.pth")
    assert model.config.variant == "small" and model.config.step == 3 and model.num_classes == 5
    assert torch.equal(logits(model), logits(original))
