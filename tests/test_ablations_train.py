"""The trainer: the loss falls, an interrupted run resumes to the same weights, checkpoints load in evmamba,
ImageFolder data, the schedule, EMA and the configuration checks."""
import json
import math
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

import evmamba
from ablations.train import EMA, Interrupted, TrainConfig, adamw, learning_rate, parameter_groups, train, weights_digest
from evmamba import ModelConfig

MODEL = ModelConfig(backend="torch")
SMALL = dict(model=MODEL, image_size=32, train_images=256, test_images=32, batch_size=8, eval_batch_size=32)


def test_loss_falls_on_a_tiny_run(tmp_path):
    config = TrainConfig(**SMALL, data="texture", steps=24, lr=2e-3, warmup_steps=3, label_smoothing=0.0)
    result = train(config, tmp_path, bar=False)
    losses = [h[1] for h in result["history"]]
    assert len(losses) == 24
    assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6]), losses
    assert np.mean(losses[:3]) == pytest.approx(math.log(4), rel=0.25)  # four classes: starts near chance
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["test"]["accuracy"] == result["test"]["accuracy"]
    assert saved["head_names"] == ["orientation"] and saved["heads"] == [4]


def test_interrupted_run_resumes_to_the_same_state(tmp_path):
    config = TrainConfig(**{**SMALL, "model": replace(MODEL, drop_path=0.1)}, data="texture+markers", steps=7,
                         save_every=2, ema_decay=0.9,
                         lr=1e-3, warmup_steps=2, bn_batches=2)
    whole = train(config, tmp_path / "whole", bar=False)

    with pytest.raises(Interrupted):
        train(config, tmp_path / "cut", bar=False, stop=lambda step: step == 5)
    cut = torch.load(tmp_path / "cut" / "last.pth", weights_only=True)
    assert cut["step"] == 4
    assert not (tmp_path / "cut" / "final.pth").exists()
    began = time.perf_counter()
    resumed = train(config, tmp_path / "cut", bar=False)
    session = time.perf_counter() - began
    # the run's time counts both sessions: the first up to its checkpoint, then the resumed one
    assert cut["seconds"] > 0
    assert cut["seconds"] + 0.5 * session < resumed["seconds"] <= cut["seconds"] + session

    assert resumed["weights_sha256"] == whole["weights_sha256"]  # bit for bit, drop-path included
    assert resumed["history"] == whole["history"]
    assert resumed["test"] == whole["test"] and resumed["test_ema"] == whole["test_ema"]
    a = torch.load(tmp_path / "whole" / "final.pth", weights_only=True)
    b = torch.load(tmp_path / "cut" / "final.pth", weights_only=True)
    for key in a["model_ema"]:
        assert torch.equal(a["model_ema"][key], b["model_ema"][key])


def test_resume_refuses_another_configuration(tmp_path):
    config = TrainConfig(**SMALL, data="texture", steps=2, save_every=1)
    with pytest.raises(Interrupted):
        train(config, tmp_path, bar=False, stop=lambda step: step == 1)
    other = TrainConfig(**{**SMALL, "batch_size": 4}, data="texture", steps=2, save_every=1)
    with pytest.raises(ValueError, match="different configuration.*resume=False"):
        train(other, tmp_path, bar=False)


def test_checkpoint_is_in_the_authors_format(tmp_path):
    config = TrainConfig(**{**SMALL, "model": replace(MODEL, scan="ss2d", conv_branch=False)},
                         data="texture+markers", steps=1)
    train(config, tmp_path, bar=False)
    raw = torch.load(tmp_path / "final.pth", weights_only=True)
    assert set(raw) >= {"model"} and "layers.0.blocks.0.op.A_logs" in raw["model"]
    model = evmamba.model_from_checkpoint(tmp_path / "final.pth")  # builds the right design by itself
    assert model.config.scan == "ss2d" and not model.config.conv_branch and model.num_classes == 6
    fresh = evmamba.build_model("tiny", scan="ss2d", conv_branch=False, num_classes=6)
    evmamba.load_checkpoint(fresh, tmp_path / "final.pth")  # strict


def test_imagefolder_training(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k, name in enumerate(("dark", "light")):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(6):
                level = 40 + 150 * k
                a = np.clip(level + rng.normal(0, 10, size=(40 + 7 * i, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(folder / f"{i}.png")
    config = TrainConfig(**{**SMALL, "batch_size": 4}, data=str(tmp_path / "data"), steps=3)
    result = train(config, tmp_path / "run", bar=False)
    assert result["heads"] == [2] and result["test"]["images"] == 12
    assert "ImageFolder" in result["train_data"]

    from ablations.data import ImageFolder
    ds = ImageFolder(tmp_path / "data" / "train", size=32, train=True, seed=0)
    x1, y1 = ds[3]
    x2, _ = ds[3]
    assert x1.shape == (3, 32, 32) and torch.equal(x1, x2)  # augmentation seeded by (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(ds[3][0], x1)
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolder(tmp_path / "data" / "train" / "dark", size=32)


def test_schedule_warms_up_then_follows_a_cosine():
    lrs = [learning_rate(s, 100, 1.0, 0.1, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert learning_rate(100, 100, 1.0, 0.1, 10) == pytest.approx(0.1)


def test_no_weight_decay_on_norms_biases_and_scan_parameters():
    model = evmamba.build_model("tiny", num_classes=2)
    decay, no_decay = parameter_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() >= 2 for p in decay["params"])
    skipped = {names[id(p)].rsplit(".", 1)[-1] for p in no_decay["params"]}
    assert {"A_logs", "Ds", "bias", "weight"} <= skipped  # LayerNorm weights are 1-D
    assert not any(names[id(p)].endswith(("A_logs", "Ds")) for p in decay["params"])


def test_the_fused_adamw_makes_the_loops_steps():
    torch.manual_seed(0)
    model = evmamba.build_model("tiny", num_classes=2)
    twin = evmamba.build_model("tiny", num_classes=2)
    twin.load_state_dict(model.state_dict())
    start = [p.detach().clone() for p in model.parameters()]
    fused = adamw(model, 0.05, 1e-3)
    loop = torch.optim.AdamW(parameter_groups(twin, 0.05), lr=1e-3, foreach=False)
    assert fused.defaults["fused"]
    assert [len(g["params"]) for g in fused.param_groups] == [len(g["params"]) for g in loop.param_groups]
    for _ in range(3):
        for p, q in zip(model.parameters(), twin.parameters()):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        fused.step()
        loop.step()
    for (name, p), q, p0 in zip(model.named_parameters(), twin.parameters(), start):
        assert (p - p0).abs().max() > 1e-4, name  # three steps of lr 1e-3 moved every parameter
        assert torch.allclose(p, q, rtol=0, atol=1e-6), name


def test_ema_follows_the_weights():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, 0.5)
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, before + 1.0)
    assert weights_digest(ema.module) != weights_digest(model)


def test_configuration_errors_say_what_to_do():
    with pytest.raises(ValueError, match="exactly one of steps"):
        TrainConfig(steps=3, epochs=2).validate()
    with pytest.raises(ValueError, match="unknown variant"):
        TrainConfig(ModelConfig(variant="huge"), steps=1).validate()
    with pytest.raises(ValueError, match="amp=bf16 needs a GPU"):
        from ablations.train import amp_dtype
        amp_dtype("bf16", torch.device("cpu"))
    with pytest.raises(ValueError, match="give a task name"):
        train(TrainConfig(data="/no/such/folder", steps=1), "/tmp/unused-run", bar=False)
