"""The trained study: its file, its statistics, its runs end to end (a few steps), the scan-free control,
and the compact weight files."""
import json
import math

import pytest
import torch

import evmamba
from ablations.study import (
    binomial_se,
    flat_tail,
    load_study,
    mean_std,
    paired_interval,
    run_study,
    summarise,
    t95,
)
from ablations.study.report import SMOKE, excerpt_markdown, report_markdown, write_report
from evmamba.compact import compacted, dequantize, quantize, read_compact, save_compact

STUDY = """
reference = "ES2D"
[designs]
"ES2D" = {}
"scan-free" = { scan_free = true }
[pilot]
seeds = [0, 1]
runs.markers = ["ES2D", "scan-free"]
image_size = 32
train_images = 32
test_images = 16
test_seed = 1000
steps = 3
batch_size = 8
lr = 0.002
min_lr = 0.00001
warmup_steps = 1
weight_decay = 0.05
label_smoothing = 0.1
bn_batches = 1
eval_every = 1
curve_images = 8
erf_images = 2
keep = ["ES2D"]
erf_designs = ["ES2D", "scan-free"]
ship_task = "markers"
"""


def test_the_committed_study_file_loads_and_each_mode_has_the_controls():
    study = load_study()
    for name in ("pilot", "gpu"):
        mode = study.mode(name)
        assert len(mode.seeds) >= 3
        for task, designs in mode.runs.items():
            assert "ES2D" in designs and "scan-free" in designs, (name, task)
        configs = mode.configs()
        assert {c.test_seed for *_, c in configs} == {1000}
        assert not {c.seed for *_, c in configs} & {1000}  # the test seed is never a training seed
    pilot = study.mode("pilot")
    assert {"ES2D", "SS2D"} <= set(pilot.runs["markers"])


@pytest.mark.parametrize("text, message", [
    ('reference = "X"\n[designs]\n"A" = {}', "reference 'X' is not one of the designs"),
    ('reference = "A"\n[designs]\n"A" = { colour = 1 }', "unknown field.*colour"),
    ('reference = "A"\n[designs]\n"A" = {}\n[pilot]\nruns.markers = ["B"]', "unknown design.*'B'"),
    ('reference = "A"\n[designs]\n"A" = {}\n"B" = {}\n[pilot]\nruns.markers = ["B"]',
     "reference design 'A' must be run"),
    ('reference = "A"\n[designs]\n"A" = {}\n[pilot]\nruns.mnist = ["A"]', "unknown task 'mnist'"),
    ('reference = "A"\n[designs]\n"A" = {}\n[pilot]\nspeed = 3', "unknown setting.*speed"),
])
def test_study_file_errors_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "study.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_study(path)


def test_statistics_against_values_worked_by_hand():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)
    # differences 1, 2, 3: mean 2, sd 1, half-width t(2) / sqrt(3)
    m, lo, hi = paired_interval([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    assert m == 2.0 and math.isclose(hi - m, 4.303 / math.sqrt(3)) and math.isclose(m - lo, hi - m)
    assert t95(2) == 4.303 and t95(12) == t95(10) and t95(100) == 1.96
    assert math.isclose(binomial_se(0.5, 400), 0.025)
    curve = [[s, 0.9 + (0.001 if s % 2 else 0.0)] for s in range(1, 26)]  # 5 points after step 20 of 25
    assert flat_tail(curve, 25, 512) == {"flat": True, "points": 5, "spread": pytest.approx(0.1),
                                         "tolerance": pytest.approx(100 * 2 * binomial_se(0.9006, 512))}
    rising = [[s, 0.5 + 0.02 * s] for s in range(1, 26)]
    assert flat_tail(rising, 25, 512)["flat"] is False
    assert flat_tail(curve[:10], 10, 512)["flat"] is None  # 2 points in the last fifth: too few to judge


def test_a_small_study_runs_resumes_and_reports(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(STUDY)
    mode = load_study(path).mode("pilot")
    cache = tmp_path / "cache"
    results = run_study(mode, cache=cache, device="cpu", jobs=1, bar=False)
    assert len(results) == 4
    es2d, free = results[("ES2D", "markers", 0)], results[("scan-free", "markers", 0)]
    assert [p[0] for p in es2d["curve"]] == [1, 2, 3]  # a curve point every step
    assert es2d["test"]["images"] == 16 and es2d["test_data"].endswith("images 0..15 of seed 1000")
    # the same seed reads the same data: the two designs differ, the data do not
    assert es2d["train_data"] == free["train_data"] and es2d["weights_sha256"] != free["weights_sha256"]
    again = run_study(mode, cache=cache, device="cpu", jobs=1, train=False, bar=False)  # all from the cache
    assert again[("ES2D", "markers", 1)]["weights_sha256"] == results[("ES2D", "markers", 1)]["weights_sha256"]
    # the kept run's weights are there, and its initial model is the trainer's (training changed it)
    from ablations.study.analysis import initial_model, trained_model
    kept = results[("ES2D", "markers", 0)]
    assert not torch.equal(trained_model(kept).layers[0].blocks[0].op.x_proj_weight,
                           initial_model(kept).layers[0].blocks[0].op.x_proj_weight)

    summary = summarise(mode, results)
    row = summary["markers"]["rows"]["scan-free"]
    assert len(row["accuracy"]) == 2 and len(row["difference"]) == 3
    assert summary["markers"]["control"]["control"] == "scan-free"
    out = tmp_path / "report"
    write_report(out, mode, summary, results, device="cpu", command="test", train_seconds=1.0, bar=False,
                 ship=tmp_path / "ship")
    data = json.loads((out / "study.json").read_text())
    assert (out / "excerpt.md").read_text() == excerpt_markdown(data)
    assert (out / "study.md").read_text() == report_markdown(data)
    for name in ("curves", "erf_block", "erf_stage", "route_effects"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    levels = {(r["level"], r["when"]) for r in data["erf_ratios"]}
    assert levels == {(lv, w) for lv in ("block", "stage") for w in ("initialisation", "trained")}
    # every seed of the ERF designs: ES2D all routes and each of its 4, scan-free all routes only
    over = {(r["design"], r["level"], r["route"], r["when"]): r for r in data["erf_over_seeds"]}
    es2d_routes = [r.name for r in evmamba.scan_routes("es2d", 8, 8, 2).routes]
    assert sorted({(d, r) for d, _, r, _ in over}) == sorted([("ES2D", "all"), *(("ES2D", r) for r in es2d_routes),
                                                              ("scan-free", "all")])
    assert len(over) == 6 * 3 * 2  # those routes, 3 levels, initialisation and trained
    for r in over.values():
        assert r["seeds"] == 2 and len(r["0.5"]["values"]) == 2
        assert (r["0.5"]["mean"], r["0.5"]["std"]) == pytest.approx(mean_std(r["0.5"]["values"]), nan_ok=True)
    # a scan-free run is analysed as it was trained: its scans replaced by the identity
    from ablations.study.analysis import as_run
    model, x = initial_model(results[("scan-free", "markers", 0)]), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        with as_run(model, results[("scan-free", "markers", 0)]):
            free_out = model(x)
        with as_run(model, results[("ES2D", "markers", 0)]):
            assert torch.equal(model(x), plain)
    assert not torch.allclose(free_out, plain)
    assert {lv for _, lv, _, _ in over} == {"block, stage 0", "stage 0", "stage 1"}
    assert "## Receptive fields over seeds" in (out / "study.md").read_text()
    shipped = json.loads((out / "manifest.json").read_text())["shipped"]
    assert list(shipped) == ["markers"]
    state, meta = read_compact(tmp_path / "ship" / "markers.pt")
    assert meta["design"] == "ES2D" and meta["class_names"] == ["different", "same"]
    assert len(meta["subset_predictions"]) == 16  # the subset is the whole (small) test set here


def test_scan_free_training_leaves_the_scan_untouched(tmp_path):
    from ablations.train import TrainConfig, train
    from evmamba import ModelConfig, create
    config = TrainConfig(ModelConfig(), data="markers", scan_free=True, steps=2, batch_size=4, train_images=8,
                         test_images=4, warmup_steps=1)
    result = train(config, tmp_path / "run", bar=False)
    initial = create(ModelConfig(num_classes=2), seed=0)
    trained = create(ModelConfig(num_classes=2), weights=result["checkpoint"])
    before, after = initial.state_dict(), trained.state_dict()
    scan = [k for k in before if k.endswith(("x_proj_weight", "dt_projs_weight", "A_logs", "Ds"))]
    assert scan and all(torch.equal(before[k], after[k]) for k in scan)
    assert not torch.equal(before["patch_embed.0.weight"], after["patch_embed.0.weight"])


def test_the_test_seed_draws_the_same_test_images_for_every_training_seed(tmp_path):
    from ablations.train import TrainConfig
    with pytest.raises(ValueError, match="test_seed"):
        TrainConfig(steps=1, test_seed=-1).validate()
    assert "test_seed" not in TrainConfig(steps=1).to_dict()  # runs keyed before it existed keep their key
    assert TrainConfig(steps=1, test_seed=7).to_dict()["test_seed"] == 7


def test_quantized_weights_are_within_half_a_step_of_each_channel():
    g = torch.Generator().manual_seed(0)
    for shape in [(64, 32), (16, 1, 3, 3), (4, 40, 96)]:
        w = torch.randn(shape, generator=g) * torch.linspace(0.01, 3, shape[0]).view(-1, *[1] * (len(shape) - 1))
        q, scale = quantize(w)
        assert q.dtype == torch.int8 and scale.numel() == (shape[0] * shape[1] if len(shape) == 3 else shape[0])
        err = (dequantize(q, scale) - w).abs().reshape(scale.numel(), -1).amax(1)
        assert (err <= scale / 2 + 1e-7).all()


def test_compact_files_round_trip_and_refuse_other_files(tmp_path):
    state = {"a.weight": torch.randn(64, 64), "a.bias": torch.randn(64), "op.A_logs": torch.randn(64, 16) + 2,
             "n.num_batches_tracked": torch.tensor(3)}
    save_compact(state, tmp_path / "m.pt", {"task": "x"})
    back, meta = read_compact(tmp_path / "m.pt")
    assert meta == {"task": "x"}
    assert all(torch.equal(v, back[k]) for k, v in compacted(state).items())  # the round trip without a file
    for k in ("a.bias", "op.A_logs", "n.num_batches_tracked"):  # kept as they are
        assert torch.equal(back[k], state[k])
    assert not torch.equal(back["a.weight"], state["a.weight"])
    assert (back["a.weight"] - state["a.weight"]).abs().max() < state["a.weight"].abs().max() / 127
    torch.save({"model": state}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match="not a compact weights file"):
        read_compact(tmp_path / "ckpt.pt")


def test_smoke_settings_stay_inside_what_the_trainer_accepts():
    from ablations.study.report import smoke_mode
    mode = smoke_mode(load_study().mode("gpu"))
    assert mode.train["steps"] == SMOKE["steps"] and mode.name == "gpu-smoke"
    assert all(c.validate() for *_, c in mode.configs())
