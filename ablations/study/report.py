"""The study's command and report: `python -m ablations study` trains what the cache lacks, then writes

    OUT/study.md            the tables: per task, each design's accuracy per seed, mean ± std, its paired
                            difference to the released design with a 95% interval, convergence, the control
    OUT/study.json          every number of the tables, the runs' curves and configurations
    OUT/figures/*.png       training curves, trained vs initial per-route ERFs, route contributions
    OUT/manifest.json       device, time, seeds, versions, the command
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from evmamba.files import atomic_write_text

from .runner import TAIL_POINTS, binomial_se, load_study, run_study, summarise

SMOKE = {"steps": 4, "train_images": 64, "test_images": 32, "curve_images": 16, "eval_every": 2, "batch_size": 8,
         "bn_batches": 1, "save_every": 0, "warmup_steps": 1, "workers": 0}
REPO = Path(__file__).resolve().parents[2]


def smoke_mode(mode):
    """The mode with every run cut to a few steps on a few images (to check the study runs end to end)."""
    return dataclasses.replace(mode, name=mode.name + "-smoke", train={**mode.train, **SMOKE}, erf_images=2)


def study_command(args, argv) -> int:
    import torch

    from ..pipeline import command_line
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    study = load_study(args.study)
    mode = study.mode(args.mode or ("gpu" if device.startswith("cuda") else "pilot"))
    if args.smoke:
        mode = smoke_mode(mode)
    cpu = not device.startswith("cuda")
    jobs = args.jobs if args.jobs is not None else (min(os.cpu_count() or 1, 8) if cpu else 4)
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    out = args.out or REPO / "assets" / "study" / mode.name
    started = time.perf_counter()
    try:
        results = run_study(mode, cache=args.cache, device=device, jobs=jobs, force=args.force,
                            train=not args.no_train, bar=not args.no_bar)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    trained = time.perf_counter() - started
    summary = summarise(mode, results)
    write_report(out, mode, summary, results, device=device, command=command_line(argv), train_seconds=trained,
                 bar=not args.no_bar, ship=args.ship)
    print(f"study {mode.name}: {len(results)} runs, report in {out} ({time.perf_counter() - started:.0f} s)")
    return 0


def write_report(out: Path, mode, summary: dict, results: dict, *, device: str, command: str,
                 train_seconds: float, bar: bool = True, ship=None):
    """Write the study's tables, figures, numbers and manifest to `out` (and, with `ship`, its shipped
    models)."""
    from tqdm.auto import tqdm

    from ..pipeline import save_png
    from ..store import device_description, git_revision, package_versions
    started = time.perf_counter()
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=5 + bool(ship), desc="study report", disable=not bar)
    save_png(curves_figure(mode, results), out / "figures" / "curves.png")
    steps.update(1)
    analysis = trained_analysis(mode, results)
    for level, fields in analysis["erfs"].items():
        from evmamba.analysis.erf_figures import erf_figure
        save_png(erf_figure(fields, convention=ERF_CONVENTION[level],
                            title=f"Per-route effective receptive fields, {ERF_LEVELS[level]} "
                                  f"(tiny, {mode.ship_task} test images at {mode.train['image_size']}², "
                                  f"seed {mode.seeds[0]}): initialisation and trained"),
                 out / "figures" / f"erf_{level}.png")
    steps.update(1)
    save_png(route_effects_figure(analysis["effects"], mode), out / "figures" / "route_effects.png")
    steps.update(1)
    seed_ratios = erf_over_seeds(mode, results, bar=bar)
    steps.update(1)
    shipped = ship_models(mode, results, ship) if ship else None
    if ship:
        steps.update(1)
    data = {"mode": mode.name, "reference": mode.reference, "device": device_description(device),
            "command": command, "settings": mode.train, "summary": summary, "erf_ratios": analysis["ratios"],
            "erf_over_seeds": seed_ratios,
            "effects": analysis["effects"],
            "runs": {f"{d}|{t}|{s}": {"curve": r.get("curve", []), "test": r["test"], "seconds": r["seconds"],
                                      "weights_sha256": r["weights_sha256"], "config": r["config"]}
                     for (d, t, s), r in sorted(results.items())}}
    atomic_write_text(out / "study.json", json.dumps(data, indent=1, default=str))
    atomic_write_text(out / "study.md", report_markdown(data))
    atomic_write_text(out / "excerpt.md", excerpt_markdown(data))
    manifest = {"command": command, "mode": mode.name, "device": device_description(device),
                "git_revision": git_revision(), "packages": package_versions(), "seeds": list(mode.seeds),
                "runs": len(results), "train_seconds": round(train_seconds, 1),
                "report_seconds": round(time.perf_counter() - started, 1),
                "run_seconds": round(sum(r["seconds"] for r in results.values()), 1),
                "settings": mode.train, "designs": {n: {**mode.designs[n].model.options(),
                                                        **({"scan_free": True} if mode.designs[n].scan_free else {})}
                                                    for names in mode.runs.values() for n in names},
                "shipped": shipped, "written": datetime.now(UTC).isoformat(timespec="seconds")}
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1, default=str))
    steps.update(1)
    steps.close()


ERF_LEVELS = {"block": "the last EVSS block of the first stage (stage 0) on the features it receives",
              "stage": "the network from the image to the end of the first stage (stage 0)"}
# RepLKNet's odd centred squares on the image-sized stage-level maps; on the block's 8x8 feature grid they
# come in three sizes only (3, 5, 7), so the block level uses the cell-centred squares (every side)
ERF_CONVENTION = {"block": "cell-centred", "stage": "replknet"}


def _kept(mode, results, task):
    """(design, run) of the kept first-seed runs of `task`, in the order of mode.keep."""
    out = []
    for name in mode.keep:
        run = results.get((name, task, mode.seeds[0]))
        if run is not None and Path(run["checkpoint"]).exists():
            out.append((name, run))
    return out


def trained_analysis(mode, results) -> dict:
    """ERFs (block and stage level, all routes and each route) of the kept models of the ship task at
    initialisation and trained, their area ratios, and route effects on test images."""
    from evmamba.analysis.erf_maps import THRESHOLDS

    from .analysis import LEVELS, erfs, initial_model, route_effects, test_images, trained_model
    task = mode.ship_task
    kept = _kept(mode, results, task)
    fields = {level: {} for level in LEVELS}
    ratios, effects = [], {}
    for name, run in kept:
        images, labels = test_images(run, mode.erf_images)
        what = f"{len(images)} {task} test images"
        for when, model in (("initialisation", initial_model(run)), ("trained", trained_model(run))):
            for level in LEVELS:
                r = erfs(model, images, level, inputs=what)
                fields[level][f"{name}, {when}"] = r
                for e in r.all():
                    ratios.append({"design": name, "when": when, "level": level,
                                   "route": "all" if e.route is None else e.route_name,
                                   "convention": ERF_CONVENTION[level],
                                   **{f"{t:g}": e.area_ratios((t,), ERF_CONVENTION[level])[t] for t in THRESHOLDS}})
        eval_images, eval_labels = test_images(run, min(EFFECT_IMAGES, run["config"]["test_images"]))
        effects[name] = route_effects(trained_model(run), eval_images, eval_labels)
    return {"erfs": fields, "ratios": ratios, "effects": effects}


EFFECT_IMAGES = 1024  # test images for the route effects
# the ERFs measured on every seed of mode.erf_designs: (level, stage) by name
SEED_LEVELS = {"block, stage 0": ("block", 0), "stage 0": ("stage", 0), "stage 1": ("stage", 1)}
SEED_THRESHOLDS = ("0.2", "0.5", "0.99")


def erf_over_seeds(mode, results, bar: bool = False) -> list[dict]:
    """Area ratios of the ERFs (all routes, and each route alone except for a scan-free design) of every seed
    of mode.erf_designs on the ship task's test images, at initialisation and trained, at the levels of
    SEED_LEVELS: one row per (design, level, route, when) with each threshold's values over the seeds and
    their mean and std (NaN where some seed's square does not qualify)."""
    from tqdm.auto import tqdm

    from .analysis import as_run, erfs, initial_model, test_images, trained_model
    from .runner import mean_std
    values = {}
    pairs = [(name, seed) for name in mode.erf_designs for seed in mode.seeds]
    for name, seed in tqdm(pairs, desc="ERFs over seeds", disable=not bar or not pairs):
        run = results[(name, mode.ship_task, seed)]
        scan_free = bool(run["config"].get("scan_free"))
        images, _ = test_images(run, mode.erf_images)
        for when, model in (("initialisation", initial_model(run)), ("trained", trained_model(run))):
            with as_run(model, run):
                for level, (kind, stage) in SEED_LEVELS.items():
                    convention = ERF_CONVENTION[kind]
                    r = erfs(model, images, kind, stage=stage, routes=not scan_free)
                    for e in r.all():
                        got = e.area_ratios(tuple(float(t) for t in SEED_THRESHOLDS), convention)
                        key = (name, level, "all" if e.route is None else e.route_name, when)
                        values.setdefault(key, {"convention": convention, "seeds": []})["seeds"].append(
                            {t: got[float(t)] for t in SEED_THRESHOLDS})
    rows = []
    for (name, level, route, when), v in values.items():
        row = {"design": name, "level": level, "route": route, "when": when, "convention": v["convention"],
               "seeds": len(v["seeds"])}
        for t in SEED_THRESHOLDS:
            xs = [s[t] for s in v["seeds"]]
            m, sd = mean_std(xs) if all(x == x for x in xs) else (float("nan"), float("nan"))
            row[t] = {"values": xs, "mean": m, "std": sd}
        rows.append(row)
    return rows


def curves_figure(mode, results):
    """Test accuracy against step, one panel per task, one line per design (mean over seeds, band min-max)."""
    import numpy as np
    from matplotlib.figure import Figure

    from evmamba.analysis.style import paper_style, route_colour
    with paper_style():
        tasks = list(mode.runs)
        fig = Figure(figsize=(3.3 * len(tasks) + 0.4, 3.0), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(tasks), squeeze=False)[0])
        names = list(dict.fromkeys(n for v in mode.runs.values() for n in v))
        for ax, task in zip(axes, tasks):
            for name in mode.runs[task]:
                curves = [results[(name, task, s)].get("curve", []) for s in mode.seeds]
                if not all(curves):
                    continue
                steps = np.array([p[0] for p in curves[0]])
                acc = 100 * np.array([[p[1] for p in c] for c in curves])
                colour = route_colour(names.index(name))
                ax.plot(steps, acc.mean(0), lw=1.0, color=colour, label=name)
                ax.fill_between(steps, acc.min(0), acc.max(0), color=colour, alpha=0.2, lw=0)
            ax.axvline(0.8 * mode.train["steps"], color="#8c8c8c", lw=0.6, ls=":")
            ax.set_xlabel("optimiser step")
            ax.set_ylabel(f"test accuracy (%), first {mode.train['curve_images']} test images")
            ax.set_title(task)
        handles = {}
        for ax in axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=len(handles),
                   frameon=False, fontsize=6)
        fig.suptitle(f"Training curves (mean over seeds {', '.join(map(str, mode.seeds))}, band: min to max); "
                     "dotted: the last fifth, where the curve must be flat", fontsize=7)
    return fig


def route_effects_figure(effects: dict, mode):
    """Accuracy with each route removed from every mixer, per kept design."""
    import numpy as np
    from matplotlib.figure import Figure

    from evmamba.analysis.style import paper_style, route_colour
    with paper_style():
        fig = Figure(figsize=(2.2 + 2.4 * max(len(effects), 1), 2.9), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, max(len(effects), 1), squeeze=False)[0])
        for ax, (name, rows) in zip(axes, effects.items()):
            labels = [r["removed"] for r in rows]
            colours = ["#444444"] + [route_colour(k) for k in range(len(rows) - 2)] + ["#8c8c8c"]
            ax.bar(np.arange(len(rows)), [r["accuracy"] for r in rows], color=colours[:len(rows)])
            ax.set_xticks(np.arange(len(rows)))
            ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=6)
            ax.set_ylim(0, 100)
            ax.axhline(50, color="#8c8c8c", lw=0.6, ls="--")
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(f"{name}: routes removed", fontsize=8)
        fig.suptitle(f"Route contributions (trained, {mode.ship_task}, seed {mode.seeds[0]}, {EFFECT_IMAGES} "
                     "test images): each route's scan output removed from every mixer", fontsize=7)
    return fig


def ship_models(mode, results, folder) -> dict:
    """Store the kept models of the ship task in 8 bits (evmamba.compact) in `folder`, with what loading
    them needs, and the full-precision and stored test accuracy on the whole fixed test set."""
    import copy

    import torch

    from evmamba.compact import compacted, save_compact
    from evmamba.model import ModelConfig
    from evmamba.study_models import TASK_MEAN, TASK_STD

    from ..train import evaluate, setup_distributed
    from .analysis import test_images, trained_model
    from .tasks import TASKS
    folder = Path(folder)
    task = mode.ship_task
    info = TASKS[task]
    shipped = {}
    for name, run in _kept(mode, results, task):
        model = trained_model(run)
        stored = copy.deepcopy(model)
        stored.load_state_dict(compacted(model.state_dict()))  # what the file will hold
        images, labels = test_images(run, run["config"]["test_images"])
        acc = evaluate(stored, torch.utils.data.TensorDataset(images, labels), tuple(run["heads"]),
                       batch_size=256, ddp=setup_distributed("cpu"))["accuracy"][0]
        with torch.no_grad():
            pred = stored(images[:SUBSET]).argmax(1)
        design = mode.designs[name].model
        stem = task if design.scan == "es2d" and name == mode.reference else f"{task}-{design.scan}"
        meta = {"design": name, "model": {**ModelConfig(**run["config"]["model"]).options(),
                                          "num_classes": sum(run["heads"])},
                "task": task, "kind": info.kind, "class_names": list(info.class_names[0]),
                "image_size": run["config"]["image_size"], "normalisation": [TASK_MEAN, TASK_STD],
                "test_seed": run["config"].get("test_seed"), "test_images": run["config"]["test_images"],
                "accuracy_full_precision": run["test"]["accuracy"][0], "train_config": run["config"],
                "weights_sha256": run["weights_sha256"], "accuracy_stored": acc, "subset_images": SUBSET,
                "subset_accuracy": (pred == labels[:SUBSET, 0]).float().mean().item(),
                "subset_predictions": "".join(map(str, pred.tolist()))}
        path = folder / f"{stem}.pt"
        save_compact(model.state_dict(), path, meta)
        shipped[stem] = {k: meta[k] for k in ("design", "accuracy_full_precision", "accuracy_stored",
                                              "subset_accuracy")} | {"bytes": path.stat().st_size}
    return shipped


SUBSET = 512  # test images whose predictions the shipped file records (a test reproduces them)


def _pm(m, s) -> str:
    return f"{m:.1f} ± {s:.1f}"


def _init_and_trained(rows):
    """((design, level, route), its row at initialisation, its trained row or None) for ERF-ratio rows."""
    index = {(r["design"], r["level"], r["route"], r["when"]): r for r in rows}
    return [(key[:3], r, index.get((*key[:3], "trained"))) for key, r in index.items()
            if key[3] == "initialisation"]


def _pm_ratio(v: dict) -> str:
    return "-" if v["mean"] != v["mean"] else f"{v['mean']:.3f} ± {v['std']:.3f}"


def _ratio(v) -> str:
    return "-" if v is None or v != v else f"{v:.3f}"


def _converged(row: dict) -> str:
    if row["converged"] is None:
        return f"not judged ({min(c['points'] for c in row['curves'])} curve points in the last fifth)"
    return "yes" if row["converged"] else "no"


def accuracy_tables(data: dict) -> list[str]:
    """The per-task accuracy tables of a study.json, with each task's control verdict."""
    lines = []
    ref = data["reference"]
    for task, t in data["summary"].items():
        lines += [f"**{task}** ({t['kind']}): test accuracy (%) on {t['test_images']} fixed test images, "
                  f"seeds {', '.join(map(str, t['seeds']))}", "",
                  f"| design | per seed | mean ± std | paired difference to {ref} (95% interval) | converged |",
                  "|---|---|---|---|---|"]
        for name, r in t["rows"].items():
            diff = r.get("difference")
            dtext = "-" if diff is None else f"{diff[0]:+.1f} ({diff[1]:+.1f} to {diff[2]:+.1f})"
            lines.append(f"| {name} | {', '.join(f'{a:.1f}' for a in r['accuracy'])} | {_pm(r['mean'], r['std'])} "
                         f"| {dtext} | {_converged(r)} |")
        se = max(r["test_se"] for r in t["rows"].values())
        worst = 100 * binomial_se(0.5, t["test_images"])
        lines += ["", f"Binomial standard error of one accuracy on these {t['test_images']} test images: at most "
                      f"{se:.2f} points at the accuracies measured, {worst:.2f} at 50%."]
        c = t["control"]
        if c is not None:
            lines.append(f"Control ({c['rule']}): **{'passed' if c['passed'] else 'failed'}**, gap "
                         f"{c['gap']:+.1f} points" + ("" if c["passed"] else
                                                      f"; the {task} task is not evidence for what the scan does"
                                                      if t["kind"] != "local" else
                                                      f"; the {task} task does not isolate local ability") + ".")
        lines.append("")
    return lines


def excerpt_markdown(data: dict) -> str:
    """The README's excerpt: the accuracy tables (generated from study.json, checked by a test)."""
    m = data["settings"]
    head = (f"tiny, {m['image_size']}x{m['image_size']}, {m['steps']} steps of batch {m['batch_size']}, "
            f"{data['device']}")
    return "\n".join([f"Study mode `{data['mode']}` ({head}):", "", *accuracy_tables(data)]).rstrip() + "\n"


def report_markdown(data: dict) -> str:
    m = data["settings"]
    lines = [f"# The trained study, mode {data['mode']}", "",
             f"Written by `{data['command']}` on {data['device']}. Every run: tiny in the released layout (unless "
             f"the design says otherwise), {m['image_size']}x{m['image_size']} images, {m['steps']} AdamW steps of "
             f"batch {m['batch_size']} (lr {m['lr']:g}, cosine to {m['min_lr']:g} after {m['warmup_steps']} warm-up "
             f"steps, weight decay {m['weight_decay']:g}, label smoothing {m['label_smoothing']:g}) on "
             f"{m['train_images']} training images per seed, BatchNorm statistics re-estimated on {m['bn_batches']} "
             f"batches, tested on {m['test_images']} images of the fixed test seed {m['test_seed']}. "
             "Designs of one seed read the same images in the same order, so differences are paired by seed; "
             "the interval is Student's t over the seeds. Converged: every seed's curve (the test accuracy on "
             f"the first {m['curve_images']} test images every {m['eval_every']} steps) has at least {TAIL_POINTS} "
             "points in the last fifth of training, all within max(1 point, 2 binomial standard errors) of their "
             "mean.", "",
             "## Accuracy", "", *accuracy_tables(data),
             "![training curves](figures/curves.png)", ""]
    if data["erf_ratios"]:
        lines += ["## Receptive fields, initialisation and trained", "",
                  "Area ratios of the ERF of all routes and of each route alone: the smallest centred square "
                  "holding the fraction t of the contribution, as a fraction of the map; at the stage level in "
                  "RepLKNet's convention (odd sides around the centre pixel; - where none qualifies), at the "
                  "block level (an 8x8 grid) in the cell-centred one (every side):", "",
                  "| design | level | route | init t=0.2 | init t=0.5 | init t=0.99 | trained t=0.2 | trained t=0.5 "
                  "| trained t=0.99 |", "|---|---|---|---|---|---|---|---|---|"]
        for (design, level, route), r, t in _init_and_trained(data["erf_ratios"]):
            lines.append(f"| {design} | {level} | {route} | " + " | ".join(
                _ratio((x or {}).get(k)) for x in (r, t) for k in ("0.2", "0.5", "0.99")) + " |")
        lines += ["", "![block-level ERFs](figures/erf_block.png)", "", "![stage-level ERFs](figures/erf_stage.png)",
                  ""]
    if data.get("erf_over_seeds"):
        lines += ["## Receptive fields over seeds", "",
                  f"Area ratios (mean ± std over {max(r['seeds'] for r in data['erf_over_seeds'])} seeds) of the "
                  "ERF of all routes and of each route alone, on each seed's own trained network and on "
                  "the same network at initialisation; conventions as above (the block level on the stage-0 "
                  "grid, cell-centred; the stage levels over pixels, RepLKNet's):", "",
                  "| design | level | route | init t=0.2 | trained t=0.2 | init t=0.5 | trained t=0.5 | init t=0.99 "
                  "| trained t=0.99 |", "|---|---|---|---|---|---|---|---|---|"]
        for (design, level, route), r, t in _init_and_trained(data["erf_over_seeds"]):
            cells = [_pm_ratio(x[k]) if x else "-" for k in SEED_THRESHOLDS for x in (r, t)]
            lines.append(f"| {design} | {level} | {route} | " + " | ".join(cells) + " |")
        lines.append("")
    if data["effects"]:
        lines += ["## Route contributions", "", "Accuracy (%) and mean correct-class logit margin with each route's "
                  "scan output removed from every mixer (trained, first seed):", "",
                  "| design | removed | accuracy | margin | margin change |", "|---|---|---|---|---|"]
        for design, rows in data["effects"].items():
            for r in rows:
                lines.append(f"| {design} | {r['removed']} | {r['accuracy']:.1f} | {r['margin']:.2f} | "
                             f"{r['margin change']:+.2f} |")
        lines += ["", "![route contributions](figures/route_effects.png)", ""]
    return "\n".join(lines)


__all__ = ["excerpt_markdown", "report_markdown", "smoke_mode", "study_command", "write_report"]
