"""The difficulty ladder: which long-range task separates the designs, measured by the scan-free control alone.

    python -m ablations calibrate                  every rung of study.toml's [calibration], in order
    python -m ablations calibrate --rungs "maze-6 32px"
    python -m ablations calibrate --ladder gpu     the longer ladder of [calibration-gpu], for one GPU

Each rung (a task at an image size, with optional training overrides) trains the reference design (ES2D)
and the scan-free control, for every calibration seed, with the same settings. A rung *separates* when the
control is below the reference by at least SEPARATION points (and by more than GLOBAL_CONTROL_SIGMAS times
its seed std, at least its test-set standard error) while the reference is neither at chance nor saturated
(REFERENCE_RANGE). The study's rung is the first rung in ladder order that separates: chosen before any
other design is trained on it, and never by how another design does there.

Runs are cached like the study's (the same folder and keys), so an interrupted ladder resumes, and the
table (calibration.md, calibration.json, written after every rung) shows rung by rung how far each came.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from evmamba.files import atomic_write_text

from .runner import GLOBAL_CONTROL_SIGMAS, TAIL_POINTS, TRAIN_KEYS, StudyMode, load_study, run_study, summarise
from .tasks import TASKS

SEPARATION = 10.0  # points the control must lose
REFERENCE_RANGE = (60.0, 97.0)  # the reference's accuracy on a separating rung (not chance, not saturated)
RUNG_KEYS = {"task": str, "image_size": int, **TRAIN_KEYS}
LADDERS = {"cpu": "calibration", "gpu": "calibration-gpu"}  # a ladder's section of the study file, and its
# table's folder under assets/study


@dataclass(frozen=True)
class Rung:
    name: str
    task: str
    mode: StudyMode  # the rung's runs: the reference and the control, every calibration seed


@dataclass(frozen=True)
class Ladder:
    reference: str
    control: str
    seeds: tuple
    rungs: tuple  # of Rung, easiest first
    name: str = "cpu"  # which of LADDERS


def load_ladder(path=None, ladder: str = "cpu") -> Ladder:
    """Read a ladder of a study file (default: ablations/study/study.toml): "cpu", its [calibration]
    section, or "gpu", its [calibration-gpu] section."""
    from ..config import read_toml
    from .runner import STUDY_FILE
    if ladder not in LADDERS:
        raise ValueError(f"unknown ladder {ladder!r}: valid ladders are {', '.join(map(repr, LADDERS))}")
    section = LADDERS[ladder]
    path = Path(path) if path is not None else STUDY_FILE
    study = load_study(path)
    spec = read_toml(path, "study").get(section)
    if spec is None:
        raise ValueError(f"{path} has no [{section}] section")
    control = spec.get("control", "scan-free")
    if control not in study.designs or not study.designs[control].scan_free:
        raise ValueError(f"{path} [{section}]: control {control!r} must be a scan-free design of [designs]")
    settings = {k: spec[k] for k in TRAIN_KEYS if k in spec}
    seeds = tuple(spec.get("seeds", (0, 1)))
    rungs, names = [], set()
    for i, r in enumerate(spec.get("rungs", [])):
        unknown = [k for k in r if k not in RUNG_KEYS]
        if unknown:
            raise ValueError(f"{path} [{section}] rung {i + 1}: unknown setting(s) {', '.join(unknown)}; "
                             f"valid settings are {', '.join(RUNG_KEYS)}")
        if r.get("task") not in TASKS:
            raise ValueError(f"{path} [{section}] rung {i + 1}: unknown task {r.get('task')!r} "
                             f"(tasks: {', '.join(TASKS)})")
        train = {**settings, **{k: v for k, v in r.items() if k != "task"}}
        name = f"{r['task']} {train['image_size']}px"
        if any(k in r for k in TRAIN_KEYS if k != "image_size"):
            name += " (" + ", ".join(f"{k} {r[k]}" for k in TRAIN_KEYS if k in r and k != "image_size") + ")"
        if name in names:
            raise ValueError(f"{path} [{section}]: rung {name!r} appears twice")
        names.add(name)
        mode = StudyMode(f"calibration {name}", study.designs, study.reference, seeds,
                         {r["task"]: (study.reference, control)}, train, 0, (), "")
        mode.configs()  # every run's configuration validates
        rungs.append(Rung(name, r["task"], mode))
    if not rungs:
        raise ValueError(f"{path} [{section}]: no rungs")
    return Ladder(study.reference, control, seeds, tuple(rungs), ladder)


def verdict(row_ref: dict, row_control: dict) -> dict:
    """Does this rung separate? The gap, the rule, and each condition."""
    gap = row_ref["mean"] - row_control["mean"]
    noise = GLOBAL_CONTROL_SIGMAS * max(row_control["std"], row_control["test_se"])
    lo, hi = REFERENCE_RANGE
    conditions = {"wide_gap": gap >= SEPARATION and gap > noise, "in_range": lo <= row_ref["mean"] <= hi}
    return {"gap": gap, "noise": noise, "separates": all(conditions.values()), **conditions}


def earlier_rows(out, ladder: Ladder) -> dict:
    """{rung name: row} of the table already in `out` for this ladder (none if there is none), each row with
    where it was made ("made": device, revision, command, the task generator's version)."""
    path = Path(out) / "calibration.json"
    if not path.exists():
        return {}
    table = json.loads(path.read_text())
    if table.get("ladder", "cpu") != ladder.name or table.get("seeds") != list(ladder.seeds):
        return {}
    whole = {k: table.get(k) for k in ("device", "revision", "command")}
    return {r["name"]: {**r, "made": r.get("made", whole)} for r in table.get("rungs", []) if "rows" in r}


def carried(row: dict | None, rung: Rung) -> bool:
    """May an earlier table's row stand for this rung? Only one made with the same settings, seeds and
    drawing (its runs are in some other cache: an earlier session's, or another machine's)."""
    return (row is not None and row["settings"] == rung.mode.train
            and row["made"].get("task_version") == TASKS[rung.task].version)


def same_runs(a: dict, b: dict) -> bool:
    """Whether two rows' designs have the same per-seed test accuracies (the same runs, read twice)."""
    return set(a) == set(b) and all(a[n]["accuracy"] == b[n]["accuracy"] for n in a)


def calibrate(ladder: Ladder, *, cache, out, device: str = "cpu", jobs: int = 1, names=None, bar: bool = True,
              command: str = "", train: bool = True) -> dict:
    """Train the ladder's rungs (those named, else all) in order, writing the table after each; returns it.
    The table has every rung: those not named (or not trained) from finished runs in `cache`, else from the
    table already in `out` where that row was made with the same settings (it keeps where it was made), else
    marked pending. A row read from `cache` that the earlier table has with the same accuracies keeps where
    the earlier table says it was made (not where this table is written)."""
    from ..store import device_description, git_revision
    unknown = sorted(set(names or ()) - {r.name for r in ladder.rungs})
    if unknown:
        raise ValueError(f"unknown rung(s) {', '.join(map(repr, unknown))}; rungs are "
                         f"{', '.join(repr(r.name) for r in ladder.rungs)}")
    earlier = earlier_rows(out, ladder)
    here = {"device": device_description(device), "revision": git_revision(), "command": command}
    table = {"ladder": ladder.name, "reference": ladder.reference, "control": ladder.control,
             "seeds": list(ladder.seeds),
             "separation": SEPARATION, "reference_range": list(REFERENCE_RANGE), "command": command, "rungs": []}
    for rung in ladder.rungs:
        trains = train and (names is None or rung.name in names)
        base = {"name": rung.name, "task": rung.task, "settings": rung.mode.train}
        try:
            results = run_study(rung.mode, cache=cache, device=device, jobs=jobs, train=trains, bar=bar)
        except RuntimeError as e:
            if not trains and carried(earlier.get(rung.name), rung):
                table["rungs"].append(earlier[rung.name])
            else:
                table["rungs"].append({**base, **({"error": str(e)} if trains else {"pending": True})})
            continue
        s = summarise(rung.mode, results)[rung.task]
        ref, control = s["rows"][ladder.reference], s["rows"][ladder.control]
        rows = {n: {k: row[k] for k in ("accuracy", "mean", "std", "test_se", "converged", "seconds")}
                for n, row in s["rows"].items()}
        made = {**here, "task_version": TASKS[rung.task].version}
        old = earlier.get(rung.name)
        if not trains and carried(old, rung) and same_runs(old["rows"], rows):
            made = old["made"]  # the runs in the cache are the earlier table's: they were made where it says
        table["rungs"].append({**base, "test_images": s["test_images"], "rows": rows,
                               "verdict": verdict(ref, control), "made": made})
        write_table(out, table, device)
    chosen = next((r["name"] for r in table["rungs"] if r.get("verdict", {}).get("separates")), None)
    table["chosen"] = chosen
    write_table(out, table, device)
    return table


def write_table(out, table: dict, device: str):
    from ..store import device_description, git_revision, package_versions
    out = Path(out)
    table = {**table, "device": device_description(device), "revision": git_revision(),
             "versions": package_versions()}
    atomic_write_text(out / "calibration.json", json.dumps(table, indent=1))
    atomic_write_text(out / "calibration.md", markdown(table))


def _cell(row: dict) -> str:
    flag = {True: "", False: " (not flat)", None: " (too few curve points)"}[row["converged"]]
    return f"{row['mean']:.1f} ± {row['std']:.1f}{flag}"


def markdown(table: dict) -> str:
    ref, control = table["reference"], table["control"]
    lo, hi = table["reference_range"]
    lines = [
        "# Calibration: which long-range rung separates the designs"
        + (f" ({table['ladder'].upper()} ladder)" if table.get("ladder", "cpu") != "cpu" else ""),
        "",
        f"Each rung trains {ref} and the {control} control on the same images, seeds "
        f"{', '.join(map(str, table['seeds']))}; test accuracy (%) mean ± seed std. A rung separates when "
        f"{control} is at least {table['separation']:g} points below {ref} (and by more than "
        f"{GLOBAL_CONTROL_SIGMAS:g} times its seed std, at least its test-set standard error) with {ref} between "
        f"{lo:g}% and {hi:g}%. \"not flat\": some seed's curve moved over the last fifth of training (judged on at "
        f"least {TAIL_POINTS} curve points there).",
        "",
        f"| rung | steps | train images | {ref} | {control} | gap | separates | training minutes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table["rungs"]:
        head = f"| {r['name']} | {r['settings']['steps']} | {r['settings']['train_images']} |"
        if "error" in r or r.get("pending"):
            lines.append(f"{head} {'failed: ' + r['error'][:80] if 'error' in r else 'not run yet'} | | | | |")
            continue
        v, rows = r["verdict"], r["rows"]
        failed = [t for t, ok in (("gap too small", v["wide_gap"]), (f"{ref} outside {lo:g}-{hi:g}", v["in_range"]))
                  if not ok]
        why = "yes" if v["separates"] else f"no ({', '.join(failed)})"
        minutes = sum(sum(row["seconds"]) for row in rows.values()) / 60
        lines.append(f"{head} {_cell(rows[ref])} | {_cell(rows[control])} | {v['gap']:+.1f} | {why} | "
                     f"{minutes:.0f} |")
    chosen = table.get("chosen")
    lines += ["", f"Chosen rung: **{chosen}**." if chosen else
              "No rung separates: the study has no rung to run on (see the rows for how far each came).", ""]
    return "\n".join(lines + _provenance(table) + [""])


def _provenance(table: dict) -> list:
    """Where the measured rows were made: one line when one session made them all, else one per (device,
    revision, command) with its rungs."""
    whole = {k: table.get(k) for k in ("device", "revision", "command")}
    groups = {}
    for r in table["rungs"]:
        if "rows" in r:
            made = r.get("made", whole)
            groups.setdefault((made["device"], made["revision"], made["command"]), []).append(r["name"])
    if len(groups) <= 1:
        device, revision, command = next(iter(groups), (whole["device"], whole["revision"], whole["command"]))
        return [f"Device: {device}. Revision {revision}. Command: `{command}`."]
    return [f"Rows {', '.join(names)}: device {device}, revision {revision}, command `{command}`."
            for (device, revision, command), names in groups.items()]


def excerpt_markdown(table: dict) -> str:
    """The README's excerpt: the table without its title (checked against the committed table by a test)."""
    return markdown(table).split("\n", 2)[2]


def smoke_ladder(ladder: Ladder) -> Ladder:
    """Every rung for a few steps on a few images (checks the ladder runs; its numbers mean nothing)."""
    small = {"steps": 4, "train_images": 64, "test_images": 64, "batch_size": 16, "warmup_steps": 1,
             "eval_every": 2, "curve_images": 32, "save_every": 0, "bn_batches": 1}
    rungs = tuple(dataclasses.replace(r, mode=dataclasses.replace(r.mode, train={**r.mode.train, **small}))
                  for r in ladder.rungs)
    return dataclasses.replace(ladder, rungs=rungs)


__all__ = ["LADDERS", "Ladder", "REFERENCE_RANGE", "Rung", "SEPARATION", "calibrate", "carried", "earlier_rows",
           "excerpt_markdown", "load_ladder", "markdown", "same_runs", "smoke_ladder", "verdict"]
