"""The long-range ladder: maze tasks checked against their pixels, the image cache, the calibration table."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ablations.data import TaskDataset
from ablations.study import cache as image_cache
from ablations.study import mean_std
from ablations.study.calibration import calibrate, excerpt_markdown, load_ladder, markdown, smoke_ladder, verdict
from ablations.study.tasks import MAZE_SIDES, TASKS, dots_connected, draw_image, maze_grid, maze_path, maze_tree


def _mark_pixel(details, which, size):
    pitch, offset, _ = maze_grid(size, details["cells"])
    i, j = details["marks"][which]
    return offset + i * pitch + 1, offset + j * pitch + 1


@pytest.mark.parametrize("name,size", [("maze-4", 32), ("maze-6", 32), ("maze-8", 32), ("maze-8", 64),
                                       ("maze-16", 64)])
def test_maze_labels_agree_with_a_flood_fill_of_the_pixels(name, size):
    """A mark reaches the other through the non-wall pixels exactly when the label says reachable; both
    classes have the same number of walls (a perfect maze plus one), so only the walls' places differ."""
    n = int(name.split("-")[1])
    labels = []
    for index in range(40):
        img, (label,), d = draw_image(name, size, 3, index)
        labels.append(label)
        free = ~d["wall"]
        assert dots_connected(free, _mark_pixel(d, 0, size), _mark_pixel(d, 1, size), bridge=0) == bool(label)
        # the wall pixels are the bright ones; the marks are red
        assert np.array_equal(d["wall"], (img[1] > 0.7) & (img[0] > 0.7))
        a, b = d["marks"]
        assert min(abs(c[0] - m[0]) + abs(c[1] - m[1]) for c in d["cut"] for m in (a, b)) >= 1
        assert d["path"] >= 2 and d["cells"] == n
    assert 0 < sum(labels) < len(labels)


@pytest.mark.parametrize("n", MAZE_SIDES)
def test_a_maze_tree_spans_every_cell_once(n):
    right, down = maze_tree(np.random.default_rng(n), n)
    assert right.sum() + down.sum() == n * n - 1  # a spanning tree: one fewer passage than cells
    corners = maze_path(right, down, (0, 0), (n - 1, n - 1))
    assert corners[0] == (0, 0) and corners[-1] == (n - 1, n - 1)
    assert all(abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for a, b in zip(corners, corners[1:]))


def test_the_cache_draws_once_and_training_reads_the_quantised_images(tmp_path):
    name, size, seed = "maze-5", 32, 4
    data = TaskDataset(name, 10, size, seed, start=image_cache.CHUNK - 4, cache=tmp_path)  # spans two chunks
    data[0]  # from the first chunk
    x, y = data[6]  # from the second
    img, labels, _ = draw_image(name, size, seed, image_cache.CHUNK + 2)
    assert torch.equal(x, (torch.from_numpy(image_cache.quantise(img).astype(np.float32)) / 255 - 0.5) / 0.25)
    assert y.tolist() == labels
    first, second = (image_cache.chunk_paths(name, size, seed, k, tmp_path)[0] for k in (0, 1))
    assert first.exists() and second.exists()
    assert f"{name}-v{TASKS[name].version}" in str(first)  # a changed generator reads none of these
    assert not list(tmp_path.rglob("*.tmp*"))  # written atomically: no temporary file left
    stamp = first.stat().st_mtime_ns
    assert image_cache.warm(name, size, seed, 0, 2 * image_cache.CHUNK, root=tmp_path, bar=False) == 0
    assert first.stat().st_mtime_ns == stamp
    assert image_cache.warm(name, size, seed, 0, 3 * image_cache.CHUNK, root=tmp_path, bar=False) == 1


def test_the_ladder_file_and_its_errors(tmp_path):
    ladder = load_ladder()
    assert ladder.reference == "ES2D" and ladder.control == "scan-free"
    assert [r.name for r in ladder.rungs][0] == "maze-4 32px"
    for rung in ladder.rungs:
        assert set(rung.mode.runs[rung.task]) == {"ES2D", "scan-free"}  # only these two, before the study
    gpu = load_ladder(ladder="gpu")  # the longer ladder: its own rungs and settings, the same two designs
    assert gpu.name == "gpu" and [r.name for r in gpu.rungs] == ["maze-5 32px", "maze-6 32px", "maze-8 64px",
                                                                  "maze-16 64px"]
    assert all(r.mode.train["steps"] > ladder.rungs[0].mode.train["steps"] for r in gpu.rungs)
    assert all(set(r.mode.runs[r.task]) == {"ES2D", "scan-free"} for r in gpu.rungs)
    with pytest.raises(ValueError, match="unknown ladder 'tpu': valid ladders are 'cpu', 'gpu'"):
        load_ladder(ladder="tpu")
    base = open(ladder_file := tmp_path / "s.toml", "w")
    from ablations.study import STUDY_FILE
    text = STUDY_FILE.read_text()
    base.write(text.replace('{ task = "maze-5" }', '{ task = "maze-5", colour = 3 }'))
    base.close()
    with pytest.raises(ValueError, match="rung 2: unknown setting.*colour"):
        load_ladder(ladder_file)
    ladder_file.write_text(text.replace('{ task = "maze-5" }', '{ task = "maze-50" }'))
    with pytest.raises(ValueError, match="unknown task 'maze-50'"):
        load_ladder(ladder_file)
    ladder_file.write_text(text.split("[calibration-gpu]")[0])
    with pytest.raises(ValueError, match=r"has no \[calibration-gpu\] section"):
        load_ladder(ladder_file, "gpu")


def test_a_rung_separates_only_with_a_wide_gap_and_a_reference_neither_at_chance_nor_saturated():
    def row(mean, std=1.0):
        return {"mean": mean, "std": std, "test_se": 1.0}
    assert verdict(row(80), row(65))["separates"]
    assert not verdict(row(80), row(75))["separates"]  # gap 5 < 10
    assert not verdict(row(99), row(60))["separates"]  # saturated
    assert not verdict(row(55), row(40))["separates"]  # near chance
    assert not verdict(row(80), row(68, std=5))["separates"]  # 12 points, but within 3 seed std


def test_the_table_says_what_each_rung_reached():
    rows = {"ES2D": {"mean": 81.0, "std": 1.0, "converged": True, "seconds": [60.0, 60.0]},
            "scan-free": {"mean": 66.0, "std": 2.0, "converged": False, "seconds": [30.0, 30.0]}}
    table = {"reference": "ES2D", "control": "scan-free", "seeds": [0, 1], "separation": 10.0,
             "reference_range": [60.0, 97.0], "command": "python -m ablations calibrate", "device": "CPU",
             "revision": "abc", "chosen": "maze-4 32px",
             "rungs": [{"name": "maze-4 32px", "settings": {"steps": 10, "train_images": 64}, "rows": rows,
                        "verdict": verdict({**rows["ES2D"], "test_se": 1}, {**rows["scan-free"], "test_se": 1})},
                       {"name": "maze-6 32px", "settings": {"steps": 10, "train_images": 64}, "pending": True}]}
    text = markdown(table)
    assert "| maze-4 32px | 10 | 64 | 81.0 ± 1.0 | 66.0 ± 2.0 (not flat) | +15.0 | yes | 3 |" in text
    assert "| maze-6 32px | 10 | 64 | not run yet |" in text
    assert "Chosen rung: **maze-4 32px**" in text


def test_a_table_keeps_an_earlier_sessions_rows_made_with_the_same_settings(tmp_path):
    """A rung whose runs are not in this cache keeps its row from the table already in the folder, with where
    that row was made, when its settings and the task's drawing are the same; otherwise it is pending."""
    ladder = smoke_ladder(load_ladder())
    first, second = ladder.rungs[:2]
    rows = {"ES2D": {"accuracy": [0.6, 0.6], "mean": 60.0, "std": 0.0, "test_se": 1.0, "converged": True,
                     "seconds": [1.0, 1.0]},
            "scan-free": {"accuracy": [0.5, 0.5], "mean": 50.0, "std": 0.0, "test_se": 1.0, "converged": True,
                          "seconds": [1.0, 1.0]}}
    made = {"device": "CPU: elsewhere", "revision": "abc", "command": "python -m ablations calibrate",
            "task_version": TASKS[first.task].version}
    row = {"name": first.name, "task": first.task, "settings": first.mode.train, "test_images": 64, "rows": rows,
           "verdict": verdict({**rows["ES2D"]}, {**rows["scan-free"]}), "made": made}
    stale = {**row, "name": second.name, "task": second.task, "settings": {**second.mode.train, "steps": 5}}
    earlier = {"ladder": "cpu", "seeds": list(ladder.seeds), "rungs": [row, stale]}
    (tmp_path / "calibration.json").write_text(json.dumps(earlier))
    table = calibrate(ladder, cache=tmp_path / "empty", out=tmp_path, bar=False, train=False, command="again")
    kept, pending = table["rungs"][:2]
    assert kept == row
    assert pending == {"name": second.name, "task": second.task, "settings": second.mode.train, "pending": True}
    assert markdown(table).endswith(  # where the one measured row was made, not where the table was written
        "Device: CPU: elsewhere. Revision abc. Command: `python -m ablations calibrate`.\n")
    table["rungs"][1] = {**row, "name": second.name, "made": {**made, "revision": "def"}}
    text = markdown(table)
    assert f"Rows {first.name}: device CPU: elsewhere, revision abc, command `python -m ablations calibrate`." in text
    assert f"Rows {second.name}: device CPU: elsewhere, revision def," in text


def test_a_row_read_back_from_the_cache_keeps_where_its_runs_were_made(tmp_path):
    ladder = smoke_ladder(load_ladder())
    first = ladder.rungs[0]
    cache, out = tmp_path / "cache", tmp_path / "out"
    trained = calibrate(ladder, cache=cache, out=out, bar=False, names=[first.name], command="first")
    assert trained["rungs"][0]["made"]["command"] == "first"
    elsewhere = {**trained["rungs"][0]["made"], "revision": "abc", "command": "elsewhere"}
    earlier = json.loads((out / "calibration.json").read_text())
    earlier["rungs"][0]["made"] = elsewhere
    (out / "calibration.json").write_text(json.dumps(earlier))
    again = calibrate(ladder, cache=cache, out=out, bar=False, train=False, command="again")
    assert again["rungs"][0]["rows"] == trained["rungs"][0]["rows"] and again["rungs"][0]["made"] == elsewhere
    # an earlier row with other numbers is other runs: the row read from the cache is stamped here
    earlier["rungs"][0]["rows"]["ES2D"]["accuracy"] = [0.0, 0.0]
    (out / "calibration.json").write_text(json.dumps(earlier))
    third = calibrate(ladder, cache=cache, out=out, bar=False, train=False, command="third")
    assert third["rungs"][0]["made"]["command"] == "third"


def test_the_committed_table_follows_from_its_runs_and_the_readme_shows_it():
    repo = Path(__file__).resolve().parents[1]
    folder = repo / "assets" / "study" / "calibration"
    table = json.loads((folder / "calibration.json").read_text())
    assert (folder / "calibration.md").read_text() == markdown(table)
    block = re.search(r"<!-- calibration excerpt: generated from assets/study/calibration/calibration.json -->\n"
                      r"(.*?)<!-- end of calibration excerpt -->", (repo / "README.md").read_text(), re.S)
    assert block and block.group(1) == excerpt_markdown(table)
    ladder = {r.name: r for r in load_ladder().rungs}
    assert [r["name"] for r in table["rungs"]] == list(ladder)  # the committed ladder, every rung in order
    ref, control = table["reference"], table["control"]
    for r in table["rungs"]:
        assert r["settings"] == ladder[r["name"]].mode.train  # made with the committed settings
        if "rows" not in r:
            continue
        for row in r["rows"].values():
            assert len(row["accuracy"]) == len(table["seeds"])
            assert (row["mean"], row["std"]) == pytest.approx(mean_std(row["accuracy"]))
        assert r["verdict"] == verdict(r["rows"][ref], r["rows"][control])
    separating = [r["name"] for r in table["rungs"] if r.get("verdict", {}).get("separates")]
    assert table["chosen"] == (separating[0] if separating else None)
