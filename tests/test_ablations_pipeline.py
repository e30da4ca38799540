"""The grid file, the table builders, config-hash reuse, atomic writes and the manifest of `python -m ablations`."""
import json
import os

import pytest

from ablations import tables as T
from ablations.config import design, expand_table, load_grid, load_paper_numbers, slug
from ablations.store import ResultStore, atomic_path, atomic_write_text, config_hash

# ---- the grid ------------------------------------------------------------------------------------------


def test_the_shipped_grid_answers_the_papers_questions_and_ours():
    grid = load_grid()
    fusion = grid.tables["scan_fusion"].rows
    assert len(fusion) == 3 * 2 * 2 * 2
    tiny = [r for r in fusion if r.variant == "tiny"]
    assert {(r.scan, r.conv_branch, r.gate) for r in tiny} == {(s, c, g) for s in ("es2d", "ss2d")
                                                             for c in (True, False) for g in (True, False)}
    t5 = grid.tables["paper_table5"].rows
    assert all(r.conv_branch == r.gate for r in t5)  # fusion switched as one, as in the paper
    assert {r.layout_name for r in grid.tables["stage_layout"].rows} == {"released", "all-evss", "ir-first",
                                                                          "all-ir"}
    steps = grid.tables["scan_step"].rows
    assert {r.step for r in steps if r.scan == "es2d"} == {2, 3, 4}
    assert [r.step for r in steps if r.scan == "ss2d"] == [2]  # SS2D has no step: one row
    quick = grid.mode("quick")
    trained = [r for r in grid.rows() if quick.selects("train", r)]
    assert len(trained) == 8 and len(quick.seeds) >= 3  # ES2D/SS2D x conv x gate, three seeds
    assert grid.mode("full").seeds != quick.seeds


def test_grid_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown scan 'ss3d'"):
        expand_table({"name": "x", "scan": ["ss3d"]})
    with pytest.raises(ValueError, match="unknown keys colour"):
        expand_table({"name": "x", "colour": ["red"]})
    bad = tmp_path / "grid.toml"
    bad.write_text("[[table]]\nname = 'x'\n[quick]\nseeds = [0]\n")
    with pytest.raises(ValueError, match=r"\[quick\]: missing tasks"):
        load_grid(bad)


# ---- tables --------------------------------------------------------------------------------------------
def _fake_results(grid, mode, trained_rows):
    rows = grid.rows()
    cost = {slug(r): {"params": 6_000_000, "flops": 800_000_000} for r in rows}
    speed = {slug(r): {"throughput": 10.0, "latency_ms": 90.0} for r in rows if mode.selects("speed", r)}
    memory = {slug(r): {"bytes": 100 * 2**20} for r in rows if mode.selects("memory", r)}
    ratios = {"all": {"0.2": 0.01, "0.3": 0.02, "0.5": 0.05, "0.99": None}}  # None: RepLKNet's has no value
    erf = {slug(r): {"replknet": ratios, "cell-centred": {"all": {**ratios["all"], "0.99": 0.4}}, "stage": 1,
                     "size": 224, "inputs": 2} for r in rows if mode.selects("erf", r)}
    runs = {slug(r): [{"head_names": ["orientation", "match"], "test": {"accuracy": [0.9 + s / 100, 0.5]}}
                       for s in range(3)] for r in trained_rows}
    failed = design(scan="ss2d", gate=False)
    speed.pop(slug(failed))
    return {"cost": cost, "speed": speed, "memory": memory, "erf": erf, "runs": runs, "scaling": {},
            "rows": {slug(r): r for r in rows}, "device_short": "CPU, 2 threads", "device_type": "cpu",
            "heads": ["orientation", "match"], "failed": {"speed": {slug(failed)}}}


def test_tables_have_the_expected_rows_and_every_cell_filled_or_marked():
    grid = load_grid()
    mode = grid.mode("quick")
    paper = load_paper_numbers()
    trained = [r for r in grid.rows() if mode.selects("train", r)]
    results = _fake_results(grid, mode, trained)
    for name, table in grid.tables.items():
        df = T.ablation_table(table, results, mode, paper)
        assert len(df) == len(table.rows)
        assert T.check_filled(df) == [], name
        for col in ("params (M)", "FLOPs (G, 224²)", "texture (local) accuracy (%)", "markers (global) accuracy (%)",
                    "ImageNet top-1 (%) [paper]", "throughput bf16 (img/s)"):
            assert col in df.columns, (name, col)
        assert any("throughput (img/s, CPU, 2 threads, batch" in c for c in df.columns)
        assert (df["throughput bf16 (img/s)"] == T.NOT_ON_DEVICE).all()  # a CPU cannot measure it
    df = T.ablation_table(grid.tables["scan_fusion"], results, mode, paper)
    by = {(r["variant"], r["scan"], r["conv branch"], r["gate"]): r for r in df.to_dict("records")}
    assert by["tiny", "ES2D", "yes", "yes"]["texture (local) accuracy (%)"] == "91.0 ± 1.0 (n=3)"
    assert by["small", "ES2D", "yes", "yes"]["texture (local) accuracy (%)"] == "not run in --quick"
    assert by["base", "ES2D", "yes", "yes"]["ImageNet top-1 (%) [paper]"] == "81.8"
    assert by["tiny", "SS2D", "yes", "yes"]["ImageNet top-1 (%) [paper]"] == T.NO_PAPER_ROW
    assert by["tiny", "SS2D", "yes", "no"][f"latency (ms, CPU, 2 threads, batch 1, {mode.speed_size}²)"] == T.FAILED
    assert by["tiny", "SS2D", "yes", "yes"]["throughput fp32 (img/s) [authors' code, H200, batch 128]"] == "2543"
    t5 = T.ablation_table(grid.tables["paper_table5"], results, mode, paper)
    shrunk = t5[(t5["variant"] == "tiny") & (t5["scan"] == "SS2D") & (t5["stages"] == "all-evss")
                & (t5["conv branch"] == "no")].iloc[0]
    assert shrunk["ImageNet top-1 (%) [paper]"] == "72.1" and "other widths" in shrunk["paper row"]
    layout = T.ablation_table(grid.tables["stage_layout"], results, mode, paper)
    assert list(layout["ImageNet top-1 (%) [paper]"]) == ["76.5", "75.1", "75.6", "76.0"]


def test_writers():
    import pandas as pd
    df = pd.DataFrame({"a_b": ["1 ± 2", "x|y"], "c%": ["3²", "4"]})
    md = T.to_markdown(df, "cap")
    assert md.splitlines()[2] == "| a_b | c% |" and "x\\|y" in md
    tex = T.to_latex(df, "50% done", "tab:x")
    assert r"a\_b & c\%" in tex and r"1 $\pm$ 2" in tex and r"3$^2$" in tex and r"\caption{50\% done}" in tex
    assert T.to_csv(df).splitlines()[0] == "a_b,c%"
    assert T.mean_std([0.5, 0.7]) == "60.0 ± 14.1 (n=2)"
    assert T.check_filled(pd.DataFrame({"a": ["", "x"], "b": [float("nan"), 1.0]})) == \
        ["row 0, column 'a'", "row 0, column 'b'"]


# ---- hashes and atomic writes ----------------------------------------------------------------------------
def test_config_hash_is_stable_and_sensitive():
    a = {"row": {"scan": "es2d", "step": 2}, "sizes": (32, 64)}
    assert config_hash(a) == config_hash({"sizes": [32, 64], "row": {"step": 2, "scan": "es2d"}})
    assert config_hash(a) != config_hash({**a, "sizes": [32, 65]})
    assert len(config_hash(a)) == 16


def test_store_reuses_by_hash(tmp_path):
    store = ResultStore(tmp_path)
    cfg = {"row": "tiny", "batch": 4}
    assert store.get("speed", cfg) is None
    path = store.put("speed", cfg, {"throughput": 3.5}, "tiny")
    assert path.name == f"tiny-{config_hash(cfg)}.json"
    assert store.get("speed", cfg, "tiny") == {"throughput": 3.5}
    assert store.get("speed", {**cfg, "batch": 8}, "tiny") is None
    path.write_text("{ truncated")  # an unreadable file is computed again, not trusted
    assert store.get("speed", cfg, "tiny") is None


def test_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path):
    target = tmp_path / "table.md"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]  # no temporary left behind
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


# ---- the whole command ----------------------------------------------------------------------------------
GRID = """
[[table]]
name = "scan_fusion"
title = "Scan and conv branch"
question = "Which costs what?"
variant = ["tiny"]
scan = ["es2d", "ss2d"]
conv_branch = [true, false]

[quick]
tasks = ["texture", "markers"]
train = { conv_branch = [true] }
seeds = [0, 1, 2]
image_size = 32
train_images = 64
test_images = 16
steps = 1
batch_size = 4
lr = 0.001
min_lr = 0.00001
warmup_steps = 0
weight_decay = 0.05
label_smoothing = 0.1
ema_decay = 0.0
bn_batches = 2
speed = { conv_branch = [true] }
speed_size = 64
speed_batch = 1
speed_repeats = 1
memory = { scan = ["es2d"], conv_branch = [true] }
memory_batch = 1
erf = { conv_branch = [true] }
erf_stage = 0
erf_size = 32
erf_inputs = 1
scaling_sizes = [32, 64]
scaling_batch = 1
scaling_repeats = 1
trained_erf_inputs = 1
"""


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from ablations.pipeline import Options, run_all
    root = tmp_path_factory.mktemp("ablations")
    grid = root / "grid.toml"
    grid.write_text(GRID)
    options = Options(out=root / "out", quick=True, grid=grid, cache=root / "cache", jobs=1, bar=False,
                      command="python -m ablations all --quick")
    first = run_all(options)
    return root, options, first


def test_all_writes_every_table_and_figure_with_a_manifest(quick_run):
    root, options, manifest = quick_run
    out = root / "out"
    paths = {a["path"] for a in manifest["artifacts"]}
    for name in ("scan_fusion", "erf_init", "scaling"):
        assert {f"tables/{name}.csv", f"tables/{name}.md", f"tables/{name}.tex"} <= paths
    for name in ("scan_ss2d_vs_es2d", "tasks", "accuracy_vs_flops", "scaling", "ablation_accuracy", "training_curves",
                 "erf_routes"):
        assert {f"figures/{name}.png", f"figures/{name}.pdf"} <= paths
    for a in manifest["artifacts"]:
        assert (out / a["path"]).stat().st_size == a["bytes"] > 0
        assert a["revision"] and a["generated"] and a["key"] and a["sha256"]
    assert manifest["command"] == "python -m ablations all --quick"
    assert manifest["git_revision"] and manifest["device"].startswith("CPU") and manifest["seeds"] == [0, 1, 2]
    assert {"torch", "numpy", "matplotlib", "python"} <= set(manifest["packages"])
    assert manifest["elapsed_s"] > 0 and manifest["failures"] == []
    assert json.loads((out / "manifest.json").read_text())["artifacts"] == manifest["artifacts"]
    assert not list(out.rglob("*.tmp*"))  # nothing half-written
    md = (out / "tables" / "scan_fusion.md").read_text()
    assert "SS2D" in md and "ES2D" in md and "(n=3)" in md and "not run in --quick" in md
    index = (out / "index.md").read_text()
    assert "figures/erf_routes.png" in index and "Table: scan_fusion" in index


def test_second_run_reuses_every_item_and_file(quick_run, monkeypatch):
    from ablations import pipeline
    root, options, first = quick_run

    def no_work(*args, **kwargs):
        raise AssertionError("an item was computed again")

    monkeypatch.setattr("ablations.items.run_item", no_work)
    monkeypatch.setattr("ablations.measure.speed", no_work)
    monkeypatch.setattr("ablations.measure.scaling", no_work)
    second = pipeline.run_all(options)
    assert all(a["reused"] for a in second["artifacts"])
    assert [a["sha256"] for a in second["artifacts"]] == [a["sha256"] for a in first["artifacts"]]
