"""The committed study (assets/study/pilot) and the trained models shipped with evmamba: the README shows
the committed table, the table's numbers follow from its runs, and the shipped models give the committed
test predictions."""
import json
import re
from pathlib import Path

import pytest
import torch

import evmamba
from ablations.study import GLOBAL_CONTROL_SIGMAS, flat_tail, mean_std, paired_interval
from ablations.study.report import excerpt_markdown, report_markdown
from ablations.study.runner import converged
from ablations.study.tasks import pictures
from evmamba.study_models import STUDY_DIR, study_models

REPO = Path(__file__).resolve().parents[1]
PILOT = REPO / "assets" / "study" / "pilot"
CHECKED = 128  # test images whose recorded predictions the shipped models must reproduce here


@pytest.fixture(scope="module")
def study():
    return json.loads((PILOT / "study.json").read_text())


def test_the_readme_excerpt_is_the_committed_table(study):
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- study excerpt: generated from assets/study/pilot/study.json -->\n(.*?)<!-- end of "
                      r"study excerpt -->", readme, re.S)
    assert block, "the README has no study excerpt block"
    assert block.group(1) == (PILOT / "excerpt.md").read_text() == excerpt_markdown(study)
    assert (PILOT / "study.md").read_text() == report_markdown(study)


def test_the_committed_numbers_follow_from_the_runs(study):
    ref = study["reference"]
    for task, t in study["summary"].items():
        for name, row in t["rows"].items():
            runs = [study["runs"][f"{name}|{task}|{s}"] for s in t["seeds"]]
            accs = [100 * r["test"]["accuracy"][0] for r in runs]
            assert accs == row["accuracy"] and all(r["test"]["images"] == t["test_images"] for r in runs)
            assert (row["mean"], row["std"]) == pytest.approx(mean_std(accs))
            assert row["std"] <= 2.0, f"{task} {name}: seed std {row['std']:.2f} > 2 points"
            m = study["settings"]
            assert row["converged"] == converged([flat_tail(r["curve"], m["steps"], m["curve_images"])["flat"]
                                                  for r in runs])
            if name != ref:
                assert row["difference"] == pytest.approx(list(paired_interval(accs, t["rows"][ref]["accuracy"])))
        c = t["control"]
        if t["kind"] != "local":
            free, full = t["rows"][c["control"]], t["rows"][ref]
            gap = full["mean"] - free["mean"]
            assert c["passed"] == (gap > GLOBAL_CONTROL_SIGMAS * max(free["std"], free["test_se"]))


def test_trained_receptive_fields_are_shown_beside_the_initial_ones_and_differ_at_the_stage_level(study):
    ratios = {}
    for r in study["erf_ratios"]:
        ratios.setdefault((r["design"], r["level"]), {})[(r["route"], r["when"])] = [r[k] for k in ("0.2", "0.5",
                                                                                                    "0.99")]
    assert set(ratios) == {(d, lv) for d in ("ES2D", "SS2D") for lv in ("block", "stage")}
    for (design, level), by in ratios.items():
        routes = {route for route, _ in by}
        assert len(routes) == 5 and all((r, w) in by for r in routes for w in ("trained", "initialisation"))
        if level == "stage":  # (one block's are dominated by its residual path: the report shows them unchanged)
            assert by[("all", "trained")] != by[("all", "initialisation")], design


def test_the_shipped_models_fit_in_16_mb():
    files = sorted(STUDY_DIR.glob("*.pt"))
    assert [p.stem for p in files] == ["markers-ss2d", "markers"]
    assert sum(p.stat().st_size for p in files) <= 16 * 2**20


@pytest.mark.parametrize("name, scan", [("markers", "es2d"), ("markers-ss2d", "ss2d")])
def test_a_shipped_model_gives_its_committed_test_predictions(study, name, scan):
    meta = study_models()[name]
    model = evmamba.build_model("tiny", weights=f"study:{name}")
    assert model.config.scan == scan and model.weights.class_names == ("different", "same")
    # the 8-bit weights lose at most half a point of test accuracy on the whole fixed test set
    assert abs(meta["accuracy_stored"] - meta["accuracy_full_precision"]) <= 0.005
    run = study["runs"][f"{meta['design']}|{meta['task']}|0"]
    assert meta["accuracy_full_precision"] == run["test"]["accuracy"][0]
    assert meta["weights_sha256"] == run["weights_sha256"]
    # the stored model reproduces its recorded predictions on the first test images, through the
    # preprocessing it carries (pictures in [0, 1] -> the task's normalisation)
    assert len(meta["subset_predictions"]) == meta["subset_images"] == 512
    images = pictures(meta["task"], CHECKED, meta["image_size"], meta["test_seed"])  # the first of them
    with torch.no_grad():
        predicted = "".join(map(str, model(model.weights.preprocess(images)).argmax(1).tolist()))
    assert predicted == meta["subset_predictions"][:CHECKED]
