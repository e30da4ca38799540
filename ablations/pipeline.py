"""`python -m ablations all`: measure, train, and write every table and figure, reusing what is already done.

    1. timing      throughput, latency and the resolution sweep, in this process, one at a time (nothing
                   else of ours runs meanwhile)
    2. items       FLOPs and parameters, memory, ERFs at initialisation and the training runs, in a pool of
                   worker processes (one thread each on a CPU), longest first
    3. artifacts   tables (CSV, Markdown, LaTeX) and figures (PNG, PDF), then OUT/manifest.json and
                   OUT/index.md (every table and figure on one page)

Every item is stored in the cache under a hash of its configuration and reused by later runs (unless
forced); every file is written to a temporary name and renamed into place. A figure or table is rendered
again only when the data it shows changed (its key, a hash of that data, is kept in the manifest).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tqdm.auto import tqdm

from evmamba.files import atomic_path, atomic_write_text
from evmamba.model import VARIANTS, ModelConfig

from .config import Mode, design, load_grid, load_paper_numbers, slug
from .items import CostItem, ErfItem, Item, MemoryItem, ScalingItem, SpeedItem, TrainItem, run_items
from .store import (
    ResultStore,
    config_hash,
    device_description,
    file_digest,
    git_revision,
    package_versions,
    save_figure,
)
from .study.tasks import TASKS

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "evmamba" / "ablations"
PNG_DPI = 150
TIMING_THREADS = 1


@dataclass
class Options:
    out: Path
    quick: bool = False
    grid: Path | None = None
    cache: Path = DEFAULT_CACHE
    force: bool = False
    jobs: int = 2
    device: str = "cpu"
    tables: bool = True
    figures: bool = True
    train: bool = True
    bar: bool = True
    command: str = ""


@dataclass
class Artifact:
    path: str
    kind: str  # table or figure
    format: str
    key: str
    reused: bool
    seconds: float
    sha256: str = ""
    bytes: int = 0
    seeds: list = field(default_factory=list)
    shows: str = ""
    revision: str = ""
    generated: str = ""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---- the run ------------------------------------------------------------------------------------------
class Pipeline:
    def __init__(self, options: Options, progress=None):
        self.o = options
        self.progress = progress
        self.grid = load_grid(options.grid)
        self.mode: Mode = self.grid.mode("quick" if options.quick else "full")
        self.paper = load_paper_numbers()
        self.store = ResultStore(options.cache)
        self.rows = self.grid.rows()
        self.device_long = device_description(options.device)
        import torch
        if options.device.startswith("cuda"):
            self.threads = torch.get_num_threads()
            self.device_short = torch.cuda.get_device_name(torch.device(options.device))
        else:
            # One thread: on a CPU shared with other work, several threads wait for each other at every
            # operator and the timings swing by 10x; one thread gives the same number run after run.
            self.threads = TIMING_THREADS
            self.device_short = f"CPU, {self.threads} thread" + ("s" if self.threads > 1 else "")
        self.results = {"cost": {}, "speed": {}, "memory": {}, "erf": {}, "runs": {}, "scaling": {},
                        "rows": {slug(r): r for r in self.rows}, "device_short": self.device_short,
                        "device_type": "cuda" if options.device.startswith("cuda") else "cpu",
                        "heads": self.heads(), "failed": {}}
        self.failures: list[str] = []
        self.artifacts: list[Artifact] = []
        self.revision = git_revision()
        self.previous = self._previous_manifest()

    def heads(self) -> list[str]:
        out = []
        for t in self.mode.tasks:
            for h in TASKS[t].head_names:
                if h not in out:
                    out.append(h)
        return out

    def _previous_manifest(self) -> dict:
        p = self.o.out / "manifest.json"
        try:
            return {a["path"]: a for a in json.loads(p.read_text())["artifacts"]}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def _report(self, fraction: float, desc: str):
        if self.progress is not None:
            self.progress(fraction, desc=desc)

    def scans(self) -> list[str]:
        """The scans the grid compares, in the order they first appear."""
        return list(dict.fromkeys(r.scan for r in self.rows))

    # ---- 1. timing ----------------------------------------------------------------------------------
    def timing_items(self) -> list[Item]:
        m = self.mode
        where = dict(device=self.o.device, where=self.device_long, threads=self.threads)
        todo: list[Item] = [SpeedItem(r, m.speed_batch, m.speed_repeats, size=m.speed_size, **where)
                            for r in self.rows if m.selects("speed", r)]
        todo += [ScalingItem(design(scan=scan), m.scaling_batch, m.scaling_repeats, sizes=tuple(m.scaling_sizes),
                             **where) for scan in self.scans()]
        return todo

    def timing(self):
        import torch
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            todo = self.timing_items()
            for i, item in enumerate(tqdm(todo, desc="timing", disable=not self.o.bar)):
                res = None if self.o.force else self.store.get(item.kind, item.key(), item.name)
                if res is None:
                    res = item.run()
                    self.store.put(item.kind, item.key(), res, item.name)
                self._keep(item, res)
                self._report((i + 1) / len(todo), "timing")
        finally:
            torch.set_num_threads(before)

    # ---- 2. items -----------------------------------------------------------------------------------
    def train_config(self, row: ModelConfig, task: str, seed: int) -> dict:
        from .train import TrainConfig
        m = self.mode
        cfg = TrainConfig(model=row, data=task, image_size=m.image_size, train_images=m.train_images,
                          test_images=m.test_images, steps=m.steps, batch_size=m.batch_size, lr=m.lr,
                          min_lr=m.min_lr, warmup_steps=m.warmup_steps, weight_decay=m.weight_decay,
                          label_smoothing=m.label_smoothing, ema_decay=m.ema_decay, bn_batches=m.bn_batches,
                          seed=seed)
        return cfg.validate().to_dict()

    def run_dir(self, row: ModelConfig, task: str, seed: int) -> Path:
        return self.o.cache / "runs" / f"{slug(row)}-{task}-s{seed}-{config_hash(self.train_config(row, task, seed))}"

    def items(self) -> list[Item]:
        """Every item of phase 2: cost, memory and ERF per row as the mode selects, and the training runs
        (always listed; with train=False only their stored results are used)."""
        m = self.mode
        out: list[Item] = []
        for r in self.rows:
            out.append(CostItem(r))
            if m.selects("memory", r):
                out.append(MemoryItem(r, m.speed_size, m.memory_batch, self.o.device, self.device_long))
            if m.selects("erf", r):
                out.append(ErfItem(r, m.erf_stage, m.erf_size, m.erf_inputs, seed=0))
        first = m.seeds[0]
        for r in self.rows:
            if m.selects("train", r):
                out += [TrainItem(r, task, seed, self.train_config(r, task, seed), str(self.run_dir(r, task, seed)),
                                  self.o.device, keep=seed == first) for task in m.tasks for seed in m.seeds]
        return out

    def _keep(self, item: Item, res):
        key = slug(item.row)
        if isinstance(item, TrainItem):
            self.results["runs"].setdefault(key, []).append(res)
        elif isinstance(item, ScalingItem):
            self.results["scaling"][item.row.scan] = res
        else:
            self.results[item.kind][key] = res

    def _stored(self, item: Item):
        res = None if self.o.force else self.store.get(item.kind, item.key(), item.name)
        if res is not None and isinstance(item, TrainItem) and item.keep and self.o.train and self.o.figures \
                and not Path(res["checkpoint"]).exists():
            return None  # the first seed's weights are needed for the trained-ERF figure
        return res

    def compute_items(self):
        todo = []
        for item in self.items():
            res = self._stored(item)
            if res is None and isinstance(item, TrainItem) and not self.o.train:
                continue
            if res is None:
                todo.append(item)
            else:
                self._keep(item, res)
        todo.sort(key=lambda item: -item.estimate)  # longest first
        if not todo:
            return
        threads = 1 if self.o.device == "cpu" else self.threads
        bar = tqdm(total=len(todo), desc="items (train, cost, memory, ERF)", disable=not self.o.bar)

        def finish(item: Item, res, error=None):
            if error is not None:
                self.failures.append(f"{item.kind} {item.name}: {error}")
                self.results["failed"].setdefault(item.kind, set()).add(slug(item.row))
            else:
                self.store.put(item.kind, item.key(), res, item.name)
                self._keep(item, res)
            bar.update(1)
            bar.set_postfix_str(f"{item.kind} {item.name}"[:60])
            self._report(bar.n / len(todo), "items")

        run_items(todo, finish, jobs=self.o.jobs, threads=threads)
        bar.close()
        # seeds in order, whatever order the pool finished them in
        for runs in self.results["runs"].values():
            runs.sort(key=lambda r: (r["config"]["data"], r["config"]["seed"]))

    # ---- 3. artifacts ------------------------------------------------------------------------------
    def _artifact(self, rel: str, kind: str, key: str, render, seeds=(), shows: str = "") -> None:
        """Write OUT/rel with render(path) unless the manifest has it with the same key and the file is
        unchanged; record it."""
        path = self.o.out / rel
        fmt = path.suffix.lstrip(".")
        prev = self.previous.get(rel)
        if (not self.o.force and prev and prev.get("key") == key and path.exists()
                and file_digest(path) == prev.get("sha256")):
            self.artifacts.append(Artifact(**{**prev, "reused": True}))
            return
        t = time.perf_counter()
        render(path)
        self.artifacts.append(Artifact(rel, kind, fmt, key, False, round(time.perf_counter() - t, 3),
                                       file_digest(path), path.stat().st_size, list(seeds), shows, self.revision,
                                       _now()))

    def _caption(self, extra: str = "") -> str:
        m = self.mode
        parts = [f"Mode: {'--quick' if self.o.quick else 'full'}.",
                 f"Timing on {self.device_long} ({self.device_short}), float32, median of {m.speed_repeats} runs.",
                 f"Memory: one training step (forward + backward) at {m.speed_size}², "
                 + ("growth of a fresh process's resident set." if self.results["device_type"] == "cpu"
                    else "CUDA allocator peak."),
                 f"ERF: network to the end of stage {m.erf_stage + 1}, {m.erf_size}² random inputs "
                 f"({m.erf_inputs}), seed 0; area ratio: the smallest centred square holding more than that share "
                 "of the contribution, in RepLKNet's convention (log10(1 + x) map, odd squares around the map's "
                 "centre pixel, as their analyze_erf.py) and in the cell-centred one (raw map, squares around "
                 "the output cell's centre).",
                 f"Accuracy: {', '.join(m.tasks)} at {m.image_size}², {m.steps} steps of batch {m.batch_size} "
                 f"(AdamW, lr {m.lr:g}, cosine, {m.warmup_steps} warm-up steps, label smoothing "
                 f"{m.label_smoothing:g}"
                 + (f", BatchNorm statistics re-estimated on {m.bn_batches} batches" if m.bn_batches else "")
                 + f"), tested on {m.test_images} held-out images; mean ± std over seeds "
                 f"{', '.join(map(str, m.seeds))}.",
                 "Columns marked [paper] or [authors' code] are reference numbers from the paper "
                 "(arXiv 2403.09977) and the authors' code, not measured here."]
        return " ".join(parts) + (" " + extra if extra else "")

    def write_tables(self):
        from . import tables as T
        m = self.mode
        frames = {}
        for name, table in self.grid.tables.items():
            frames[name] = (T.ablation_table(table, self.results, m, self.paper), table.title, table.question)
        if self.results["erf"]:
            frames["erf_init"] = (T.erf_table(self.results, m), "Effective receptive field area at initialisation",
                                  "How local is each design before training?")
        if self.results["scaling"]:
            frames["scaling"] = (T.scaling_table(self.results),
                                 f"Cost against input resolution, tiny model, batch {m.scaling_batch}, "
                                 f"{self.device_short}", "Does the cost grow linearly with the number of tokens?")
        self.tables = {}
        for name, (df, title, question) in frames.items():
            bad = T.check_filled(df)
            if bad:
                raise AssertionError(f"table {name} has empty cells: {', '.join(bad[:5])}")
            caption = f"{title}. {question}".strip()
            key = config_hash({"table": name, "caption": caption, "note": self._caption(),
                               "data": json.loads(df.to_json(orient="split"))})
            seeds = m.seeds if name in self.grid.tables else []
            shows = f"{title}"
            note = self._caption()
            self._artifact(f"tables/{name}.csv", "table", key, lambda p, df=df: atomic_write_text(p, T.to_csv(df)),
                           seeds, shows)
            self._artifact(f"tables/{name}.md", "table", key,
                           lambda p, df=df, c=caption, n=note:
                           atomic_write_text(p, T.to_markdown(df, f"**{c}**\n\n{n}")),
                           seeds, shows)
            self._artifact(f"tables/{name}.tex", "table", key,
                           lambda p, df=df, c=caption, n=name, t=note:
                           atomic_write_text(p, T.to_latex(df, f"{c} {t}", f"tab:{n}")),
                           seeds, shows)
            self.tables[name] = (df, caption)

    def _figure(self, name: str, key_data, make, seeds=(), shows: str = ""):
        key = config_hash({"figure": name, "data": key_data})
        holder = {}

        def fig():
            if "fig" not in holder:
                holder["fig"] = make()
            return holder["fig"]

        self._artifact(f"figures/{name}.png", "figure", key, lambda p: save_png(fig(), p), seeds, shows)
        self._artifact(f"figures/{name}.pdf", "figure", key, lambda p: save_figure(fig(), p), seeds, shows)

    def write_figures(self):
        from . import figures as F
        from .tables import HEAD_TITLES, accuracy_by_head
        m = self.mode
        steps = tqdm(total=7, desc="figures", disable=not self.o.bar)

        self._figure("scan_ss2d_vs_es2d", {"grid": [8, 8], "step": 2}, lambda: F.scan_figure(8, 8, 2),
                     shows="SS2D's four routes and ES2D's four sub-map routes on an 8x8 grid, from the model's routes")
        steps.update(1)
        self._figure("tasks", {"tasks": list(TASKS), "size": m.image_size},
                     lambda: F.task_examples_figure(list(TASKS), m.image_size),
                     shows="examples of the procedural tasks")
        steps.update(1)

        measured = {}
        for v in VARIANTS:
            c = self.results["cost"].get(slug(design(variant=v)))
            if c:
                measured[v] = c["flops"] / 1e9
        self._figure("accuracy_vs_flops", {"measured": measured, "paper": self.paper["table2"]},
                     lambda: F.accuracy_flops_figure(self.paper, measured),
                     shows="ImageNet top-1 [paper] against FLOPs: the paper's and ours")
        steps.update(1)

        if self.results["scaling"]:
            pts = self.results["scaling"]
            self._figure("scaling", {"points": pts, "device": self.device_long},
                         lambda: F.scaling_figure(pts, self.device_short,
                                                  note=f"tiny, released design, batch {m.scaling_batch}, float32; "
                                                       f"{self.device_long}"),
                         shows="time per image and activation memory against tokens, ES2D and SS2D")
        steps.update(1)

        # accuracy bars and training curves for the first table that has trained rows
        trained = [r for r in self.grid.tables[next(iter(self.grid.tables))].rows if slug(r) in self.results["runs"]]
        if trained:
            groups, curves = [], []
            for r in trained:
                runs = self.results["runs"][slug(r)]
                name = f"{r.scan.upper()} {'+' if r.conv_branch else '-'}conv {'+' if r.gate else '-'}gate"
                groups.append({"label": name, "scan": r.scan, "conv": r.conv_branch, "gate": r.gate,
                               "acc": accuracy_by_head(runs)})
                for task in m.tasks:
                    curves.append({"task": task, "label": name, "scan": r.scan, "conv": r.conv_branch,
                                   "gate": r.gate, "losses": [[h[1] for h in run["history"]] for run in runs
                                                              if run["config"]["data"] == task]})
            classes = {h: n for t in m.tasks for h, n in zip(TASKS[t].head_names, TASKS[t].heads)}
            note = (f"{trained[0].variant}, {', '.join(m.tasks)} at {m.image_size}², {m.steps} steps, "
                    f"seeds {', '.join(map(str, m.seeds))}; bar: mean, whisker: std, dots: seeds")
            self._figure("ablation_accuracy", {"groups": groups, "note": note},
                         lambda: F.ablation_bars_figure(groups, self.heads(), HEAD_TITLES, classes, note),
                         seeds=m.seeds, shows="task accuracy per design, mean ± std over seeds")
            self._figure("training_curves", {"curves": curves},
                         lambda: F.training_curves_figure(curves, note=note.split(";")[0]),
                         seeds=m.seeds, shows="training loss per design, mean over seeds")
        steps.update(2)

        erf_key, erf_make = self._trained_erf()
        if erf_make is not None:
            self._figure("erf_routes", erf_key, erf_make, seeds=m.seeds[:1],
                         shows="ERF of all routes and each route, ES2D and SS2D, at initialisation and trained")
        steps.update(1)
        steps.close()

    def _trained_erf(self):
        """(key, maker) of the per-route ERF figure: the scan mixer of the last block of stage 1, ES2D and SS2D
        (released design, first seed, first task), at initialisation and after training, on the features it
        receives from held-out task images at the training size; (None, None) without trained runs."""
        m = self.mode
        # the global task when there is one: its ERFs show what training did to the long-range routes
        task = next((t for t in m.tasks if TASKS[t].kind == "global"), m.tasks[0])
        seed = m.seeds[0]
        entries = []
        for scan in self.scans():
            r = design(scan=scan)
            if not m.selects("train", r) or slug(r) not in self.results["runs"]:
                continue
            run = next((x for x in self.results["runs"][slug(r)]
                        if x["config"]["data"] == task and x["config"]["seed"] == seed), None)
            if run is None or not Path(run["checkpoint"]).exists():
                continue
            entries.append((r, run))
        if not entries:
            return None, None
        key = {"runs": [config_hash(run["config"]) for _, run in entries], "inputs": m.trained_erf_inputs, "v": 2}

        def make():
            import torch

            from evmamba import create
            from evmamba.analysis.erf import captured_inputs, mixer_erf

            from .data import TaskDataset
            test = TaskDataset(task, m.trained_erf_inputs, m.image_size, seed, start=m.train_images)
            images = torch.stack([test[i][0] for i in range(len(test))])
            results = {}
            for r, run in entries:
                config = dataclasses.replace(ModelConfig(**run["config"]["model"]), num_classes=sum(run["heads"]))
                torch.manual_seed(run["config"]["seed"])  # the trainer's initialisation
                init = create(config).eval()
                trained = create(config, weights=run["checkpoint"]).eval()
                for when, model in (("initialisation", init), ("trained", trained)):
                    block = len(model.layers[0].blocks) - 1
                    mixer = model.layers[0].blocks[block].op
                    features = captured_inputs(model, mixer, images, 0)
                    results[f"{r.scan.upper()}, {when}"] = mixer_erf(
                        mixer, features, bar=False, method="autograd", name=f"layers.0.blocks.{block}.op",
                        inputs=f"features of {len(images)} {task} test images")
            return F.erf_figure(results, title=f"Per-route effective receptive fields of the last scan mixer of "
                                               f"stage 1 (tiny, {task} at {m.image_size}², seed {seed}): "
                                               "all routes, then each route alone")

        from . import figures as F
        return key, make

    def write_index(self):
        """OUT/index.md: every table (Markdown) and figure (PNG) on one page."""
        m = self.mode
        lines = [f"# Ablations ({'--quick' if self.o.quick else 'full'} mode)", "",
                 f"Regenerate with `{self.o.command}`. Device: {self.device_long}. "
                 f"Revision: {self.revision}. Provenance of every file: [manifest.json](manifest.json).", "",
                 "Cost columns (parameters, FLOPs at 224² in the paper's convention, time, memory, receptive "
                 "fields) are measured by this project. Accuracy columns come from short runs on procedural "
                 f"tasks ({', '.join(m.tasks)}; see `ablations/study/tasks.py`) at {m.image_size}², {m.steps} steps, "
                 f"seeds {', '.join(map(str, m.seeds))}: they compare designs on local and long-range ability, "
                 "not ImageNet accuracy. "
                 + ("In the quick mode the runs are very short: differences smaller than the standard "
                    "deviations are noise; `python -m ablations all` (without --quick) trains longer, with more "
                    "seeds and more rows. " if self.o.quick else "")
                 + "Columns marked [paper] or [authors' code] are reference numbers, not measured here.", ""]
        for a in self.artifacts:
            if a.kind == "figure" and a.format == "png":
                lines += [f"## {a.shows or a.path}", "", f"![{a.shows}]({a.path})", ""]
        for name in getattr(self, "tables", {}):
            lines += [f"## Table: {name}", "", (self.o.out / f"tables/{name}.md").read_text(), ""]
        atomic_write_text(self.o.out / "index.md", "\n".join(lines))

    def run(self) -> dict:
        started, t0 = _now(), time.perf_counter()
        self.o.out.mkdir(parents=True, exist_ok=True)
        phases = {}
        steps = [("timing", self.timing), ("items", self.compute_items)]
        if self.o.tables:
            steps.append(("tables", self.write_tables))
        if self.o.figures:
            steps.append(("figures", self.write_figures))
        if self.o.tables and self.o.figures:
            steps.append(("index", self.write_index))
        for name, step in steps:
            t = time.perf_counter()
            step()
            phases[name] = round(time.perf_counter() - t, 1)
        elapsed = time.perf_counter() - t0
        manifest = {
            "command": self.o.command,
            "git_revision": self.revision,
            "device": self.device_long,
            "device_short": self.device_short,
            "threads": self.threads,
            "workers": self.o.jobs,
            "mode": "quick" if self.o.quick else "full",
            "grid": {"file": self.grid.source, "sha256": file_digest(self.grid.source)},
            "settings": self.mode.settings,
            "seeds": self.mode.seeds,
            "packages": package_versions(),
            "started": started,
            "finished": _now(),
            "elapsed_s": round(elapsed, 1),
            "phases_s": phases,
            "cache": str(self.o.cache),
            "failures": self.failures,
            "artifacts": [a.__dict__ for a in self.artifacts],
        }
        atomic_write_text(self.o.out / "manifest.json", json.dumps(manifest, indent=1, default=str))
        return manifest


def save_png(fig, path: Path):
    """A small PNG: rendered at PNG_DPI, then reduced to a 256-colour palette (plots have few colours)."""
    import io

    from PIL import Image
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PNG_DPI)
    buf.seek(0)
    with Image.open(buf) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        with atomic_path(path) as tmp:
            small.save(tmp, format="png", optimize=True)


def run_all(options: Options, progress=None) -> dict:
    """Run the pipeline; returns the manifest. Raises RuntimeError (after writing what it could) when some
    items failed."""
    manifest = Pipeline(options, progress).run()
    if manifest["failures"]:
        raise RuntimeError("some items failed (their cells are marked in the tables):\n  "
                           + "\n  ".join(manifest["failures"]))
    return manifest


def command_line(argv) -> str:
    return "python -m ablations " + " ".join(shlex.quote(a) for a in argv)


__all__ = ["DEFAULT_CACHE", "Options", "Pipeline", "command_line", "run_all", "save_png"]
