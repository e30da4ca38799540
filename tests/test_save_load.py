"""save_checkpoint -> load: identical logits for .pth and .safetensors, files the authors' code reads, and no
half-written file when a save is interrupted."""
import pytest
import torch

from evmamba import (
    build_model,
    describe_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    read_checkpoint,
    save_checkpoint,
)

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def logits(model):
    with torch.no_grad():
        return model.eval()(X)


@pytest.fixture(scope="module")
def trained(official_weights):
    """A tiny model with non-trivial weights in every tensor (a freshly initialised one has zero biases)."""
    model = build_model("tiny")
    model.load_state_dict(official_weights("tiny", 2))
    return model.eval()


@pytest.fixture(scope="module")
def expected(trained):
    return logits(trained)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_round_trip_gives_identical_logits(tmp_path, trained, expected, suffix):
    path = save_checkpoint(trained, tmp_path / "sub" / f"tiny{suffix}")
    assert path == tmp_path / "sub" / f"tiny{suffix}" and path.is_file()
    model = build_model("tiny")
    report = load_checkpoint(model, path)
    assert report.ok
    assert torch.equal(logits(model), expected)
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_round_trip_keeps_the_design(tmp_path, suffix):
    torch.manual_seed(0)
    original = build_model("tiny", scan="es2d", step=3, gate=False, num_classes=7).eval()
    path = save_checkpoint(original, tmp_path / f"ablation{suffix}")
    assert describe_checkpoint(path)["step"] == 3
    rebuilt = model_from_checkpoint(path)
    assert rebuilt.config.step == 3 and rebuilt.config.gate is False and rebuilt.config.num_classes == 7
    assert torch.equal(logits(rebuilt), logits(original))


def test_pth_is_what_the_authors_code_reads(tmp_path, trained, expected):
    path = save_checkpoint(trained, tmp_path / "tiny.pth", extra={"epoch": 300, "max_accuracy": 76.5})
    # The authors' loader: torch.load(path, map_location="cpu")["model"], then load_state_dict.
    obj = torch.load(path, map_location="cpu", weights_only=True)
    assert obj["epoch"] == 300 and obj["max_accuracy"] == 76.5
    sd = obj["model"]
    assert list(sd) == list(trained.state_dict())
    model = build_model("tiny")
    model.load_state_dict(sd, strict=True)
    assert torch.equal(logits(model), expected)
    assert read_checkpoint(path).wrapper_key == "model"


def test_safetensors_holds_plain_tensors(tmp_path, trained, expected):
    from safetensors.torch import load_file
    path = save_checkpoint(trained, tmp_path / "tiny.safetensors")
    sd = load_file(str(path))
    assert set(sd) == set(trained.state_dict())
    model = build_model("tiny")
    model.load_state_dict(sd, strict=True)
    assert torch.equal(logits(model), expected)


def test_saving_does_not_change_the_model(tmp_path, trained):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    save_checkpoint(trained, tmp_path / "a.pth")
    save_checkpoint(trained, tmp_path / "a.safetensors")
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())


class Interrupted(KeyboardInterrupt):
    pass


def half_write(real):
    """A writer that starts writing like `real` would, then is interrupted (Ctrl-C, a full disk, a kill)."""
    def write(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 partial")
        raise Interrupted()
    return write


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_interrupted_save_leaves_no_half_written_file(tmp_path, trained, monkeypatch, suffix):
    import safetensors.torch
    target = tmp_path / f"tiny{suffix}"
    monkeypatch.setattr(torch, "save", half_write(torch.save))
    monkeypatch.setattr(safetensors.torch, "save_file", half_write(safetensors.torch.save_file))
    with pytest.raises(Interrupted):
        save_checkpoint(trained, target)
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary file


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_interrupted_overwrite_keeps_the_previous_file(tmp_path, trained, expected, monkeypatch, suffix):
    import safetensors.torch
    target = save_checkpoint(trained, tmp_path / f"tiny{suffix}")
    before = target.read_bytes()
    monkeypatch.setattr(torch, "save", half_write(torch.save))
    monkeypatch.setattr(safetensors.torch, "save_file", half_write(safetensors.torch.save_file))
    with pytest.raises(Interrupted):
        save_checkpoint(build_model("tiny"), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    monkeypatch.undo()
    model = build_model("tiny")
    load_checkpoint(model, target)
    assert torch.equal(logits(model), expected)


def test_saved_files_get_the_usual_permissions(tmp_path):
    import os

    from evmamba import build_model, save_checkpoint
    mask = os.umask(0o022)
    try:
        path = save_checkpoint(build_model("tiny", num_classes=2), tmp_path / "m.pth")
    finally:
        os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o644
