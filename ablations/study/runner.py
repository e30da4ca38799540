"""The trained study: designs trained to convergence on the procedural tasks, several seeds, paired
comparisons to the released design, controls that say whether a task tests what it claims.

    study = load_study()                       # ablations/study/study.toml
    mode = study.mode("pilot")                 # or "gpu"
    runs = run_study(mode, cache=..., device="cpu", jobs=2)    # trains what the cache lacks
    summary = summarise(mode, runs)            # per task: mean ± std, paired differences, controls

`python -m ablations study` runs this and writes the report (ablations/study/report.py).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from evmamba.model import ModelConfig

from ..config import FIELDS, design, read_toml
from ..items import TrainItem, run_items
from ..store import ResultStore, config_hash
from .tasks import TASKS

STUDY_FILE = Path(__file__).with_name("study.toml")
MODES = ("pilot", "gpu")
TRAIN_KEYS = {"image_size": int, "train_images": int, "test_images": int, "test_seed": int, "steps": int,
              "batch_size": int, "lr": float, "min_lr": float, "warmup_steps": int, "weight_decay": float,
              "label_smoothing": float, "bn_batches": int, "eval_every": int, "curve_images": int, "save_every": int,
              "workers": int}
MODE_KEYS = {"seeds": list, "runs": dict, "erf_images": int, "keep": list, "ship_task": str, "erf_designs": list,
             **TRAIN_KEYS}
# how near "near the full model" is, for the conv-only control on a local task (accuracy points)
LOCAL_CONTROL_MARGIN = 2.0
# a control is "clearly worse" when below the full model by more than this many of its seed std
GLOBAL_CONTROL_SIGMAS = 3.0
# two-sided 95% quantiles of Student's t by degrees of freedom (the paired intervals over seeds)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       15: 2.131, 20: 2.086, 30: 2.042}


@dataclass(frozen=True)
class Design:
    name: str
    model: ModelConfig
    scan_free: bool = False


@dataclass(frozen=True)
class StudyMode:
    name: str
    designs: dict  # name -> Design (every design of the study)
    reference: str
    seeds: tuple
    runs: dict  # task -> tuple of design names
    train: dict  # TrainConfig fields shared by every run
    erf_images: int
    keep: tuple  # designs whose first-seed weights are kept
    ship_task: str
    erf_designs: tuple = ()  # designs whose every seed's weights are kept: ERF ratios over seeds (ship task)

    def configs(self):
        """(design, task, seed, TrainConfig) for every run of this mode, task by task, seed by seed."""
        from ..train import TrainConfig
        out = []
        for task, names in self.runs.items():
            for seed in self.seeds:
                for name in names:
                    d = self.designs[name]
                    cfg = TrainConfig(model=d.model, data=task, scan_free=d.scan_free, seed=seed, ema_decay=0.0,
                                      **self.train).validate()
                    out.append((d, task, seed, cfg))
        return out


@dataclass(frozen=True)
class Study:
    designs: dict
    reference: str
    modes: dict  # name -> raw settings

    def mode(self, name: str) -> StudyMode:
        if name not in self.modes:
            raise ValueError(f"unknown study mode {name!r}: valid modes are {', '.join(self.modes)}")
        s = self.modes[name]
        return StudyMode(name, self.designs, self.reference, tuple(s["seeds"]),
                         {t: tuple(v) for t, v in s["runs"].items()}, {k: s[k] for k in TRAIN_KEYS if k in s},
                         s.get("erf_images", 16), tuple(s.get("keep", ())), s.get("ship_task", ""),
                         tuple(s.get("erf_designs", ())))


def _design(name: str, spec) -> Design:
    if not isinstance(spec, dict):
        raise ValueError(f"study design {name!r}: expected a table of ModelConfig fields, got {spec!r}")
    spec = dict(spec)
    scan_free = spec.pop("scan_free", False)
    unknown = [k for k in spec if k not in FIELDS]
    if unknown:
        raise ValueError(f"study design {name!r}: unknown field(s) {', '.join(unknown)}; valid fields are "
                         f"{', '.join(FIELDS)} and scan_free")
    if not isinstance(scan_free, bool):
        raise ValueError(f"study design {name!r}: scan_free must be true or false, got {scan_free!r}")
    return Design(name, design(**spec), scan_free)


def load_study(path=None) -> Study:
    """Read and check a study file (default: ablations/study/study.toml)."""
    path = Path(path) if path is not None else STUDY_FILE
    spec = read_toml(path, "study")
    designs = {n: _design(n, s) for n, s in spec.get("designs", {}).items()}
    reference = spec.get("reference")
    if reference not in designs:
        raise ValueError(f"{path}: reference {reference!r} is not one of the designs ({', '.join(designs)})")
    modes = {}
    for name in MODES:
        if name not in spec:
            continue
        s = spec[name]
        unknown = [k for k in s if k not in MODE_KEYS]
        if unknown:
            raise ValueError(f"{path} [{name}]: unknown setting(s) {', '.join(unknown)}; valid settings are "
                             f"{', '.join(MODE_KEYS)}")
        for task, names in s.get("runs", {}).items():
            if task not in TASKS:
                raise ValueError(f"{path} [{name}] runs: unknown task {task!r} (tasks: {', '.join(TASKS)})")
            missing = [n for n in names if n not in designs]
            if missing:
                raise ValueError(f"{path} [{name}] runs.{task}: unknown design(s) {', '.join(map(repr, missing))}; "
                                 f"designs are {', '.join(map(repr, designs))}")
            if reference not in names:
                raise ValueError(f"{path} [{name}] runs.{task}: the reference design {reference!r} must be run")
        shipped = s.get("runs", {}).get(s.get("ship_task", ""), ())
        absent = [n for n in s.get("erf_designs", ()) if n not in shipped]
        if absent:
            raise ValueError(f"{path} [{name}] erf_designs: {', '.join(map(repr, absent))} not run on the ship task "
                             f"{s.get('ship_task', '')!r} (its designs: {', '.join(map(repr, shipped))})")
        modes[name] = s
    study = Study(designs, reference, modes)
    for name in modes:
        study.mode(name).configs()  # every run's configuration validates
    return study


# ---- running ----------------------------------------------------------------------------------------------
def items(mode: StudyMode, cache: Path, device: str) -> list[TrainItem]:
    """The mode's runs as training items, each in its own folder of `cache` (named and keyed by its run)."""
    out = []
    for d, task, seed, cfg in mode.configs():
        config = cfg.to_dict()
        keep = (d.name in mode.keep and seed == mode.seeds[0]) or (d.name in mode.erf_designs
                                                                  and task == mode.ship_task)
        item = StudyItem(d.model, task, seed, config, "", device, keep=keep, design=d.name)
        folder = Path(cache) / "runs" / f"{item.name}-{config_hash(config)}"
        out.append(dataclasses.replace(item, folder=str(folder)))
    return out


@dataclass(frozen=True)
class StudyItem(TrainItem):
    design: str = dataclasses.field(default="", metadata={"key": None})

    @property
    def name(self) -> str:
        return f"{'scanfree-' if self.config.get('scan_free') else ''}{super().name}"


def run_study(mode: StudyMode, *, cache, device: str = "cpu", jobs: int = 1, threads: int | None = None,
              force: bool = False, train: bool = True, bar: bool = True) -> dict:
    """Train every run of `mode` the cache lacks (`jobs` processes of `threads` threads each) and return
    {(design, task, seed): result}. Finished runs are reused; an interrupted run resumes from its last
    checkpoint (the trainer saves every `eval_every` steps here)."""
    from tqdm.auto import tqdm
    store = ResultStore(cache)
    results, todo = {}, []
    for item in items(mode, cache, device):
        res = None if force else store.get(item.kind, item.key(), item.name)
        if res is not None and item.keep and not Path(res["checkpoint"]).exists():
            res = None  # its weights are needed (trained ERFs, shipped models)
        if res is None:
            todo.append(item)
        else:
            results[(item.design, item.task, item.seed)] = res
    if todo and not train:
        raise RuntimeError(f"{len(todo)} of the study's runs are not in {cache} and training is off")
    todo.sort(key=lambda item: -item.estimate)  # longest first
    warm_images(todo, jobs=jobs, bar=bar)
    threads = threads or (1 if device == "cpu" else 4)
    failures = []
    with tqdm(total=len(todo), desc=f"{mode.name} runs", disable=not bar or not todo) as pbar:
        def finish(item, res, error=None):
            if error is not None:
                failures.append(f"{item.name}: {error}")
            else:
                store.put(item.kind, item.key(), res, item.name)
                results[(item.design, item.task, item.seed)] = res
            pbar.update(1)
            pbar.set_postfix_str(item.name[:50])

        run_items(todo, finish, jobs=1 if len(todo) <= 1 else jobs, threads=threads)
    if failures:
        raise RuntimeError("some study runs failed:\n  " + "\n  ".join(failures))
    return results


def warm_images(todo, *, jobs: int = 1, bar: bool = True) -> None:
    """Draw into the image cache every training and test image the items will read, before training (so
    the runs do not draw, and the drawing shows its progress)."""
    from ..train import TrainConfig
    from .cache import warm
    ranges = set()
    for item in todo:
        c = TrainConfig.from_dict(item.config)
        if c.data in TASKS:
            test_seed, test_start = c.test_split()
            ranges.add((c.data, c.image_size, c.seed, 0, c.train_images))
            ranges.add((c.data, c.image_size, test_seed, test_start, c.test_images))
    for name, size, seed, start, count in sorted(ranges):
        warm(name, size, seed, start, count, bar=bar, jobs=jobs)


# ---- statistics ---------------------------------------------------------------------------------------------
def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one value)."""
    n = len(values)
    m = sum(values) / n
    return m, (math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)


def t95(df: int) -> float:
    """The two-sided 95% quantile of Student's t with `df` degrees of freedom (1.96 beyond the table)."""
    if df < 1:
        return math.nan
    below = [k for k in T95 if k <= df]
    return T95[max(below)] if df <= 30 else 1.96


def paired_interval(a, b) -> tuple[float, float, float]:
    """Mean of the paired differences a_i - b_i and its 95% interval (Student's t over the pairs)."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    m, s = mean_std(d)
    half = t95(len(d) - 1) * s / math.sqrt(len(d)) if len(d) > 1 else math.nan
    return m, m - half, m + half


def binomial_se(p: float, n: int) -> float:
    """The standard error of an accuracy p measured on n independent test images."""
    return math.sqrt(max(p * (1 - p), 0.0) / n)


TAIL_POINTS = 5  # curve points a run needs in its last fifth before it can be judged converged


def flat_tail(curve, steps: int, images: int, head: int = 0) -> dict:
    """Is the training curve flat over the last fifth of training? It needs at least TAIL_POINTS points there
    (step > 4/5 of the steps; fewer: "flat" is None, not judged), all within max(1 point, 2 binomial standard
    errors of the curve's test images) of their mean. Returns {"flat", "points", "spread" (max - min,
    points), "tolerance"}."""
    tail = [p[1 + head] for p in curve if p[0] > 0.8 * steps]
    if len(tail) < TAIL_POINTS:
        return {"flat": None, "points": len(tail), "spread": math.nan, "tolerance": math.nan}
    m = sum(tail) / len(tail)
    tol = max(0.01, 2 * binomial_se(m, images))
    return {"flat": all(abs(v - m) <= tol for v in tail), "points": len(tail),
            "spread": 100 * (max(tail) - min(tail)), "tolerance": 100 * tol}


def converged(flats) -> bool | None:
    """Every run flat: True; some run moving: False; else (some run with too few tail points) None."""
    return False if False in flats else None if None in flats else True


def summarise(mode: StudyMode, results: dict) -> dict:
    """Per task and design: accuracies per seed (points), mean ± std, the paired difference to the
    reference with its 95% interval, convergence of every run, and the control's verdict."""
    out = {}
    for task, names in mode.runs.items():
        info = TASKS[task]
        rows = {}
        ref = [100 * results[(mode.reference, task, s)]["test"]["accuracy"][0] for s in mode.seeds]
        n_test = mode.train["test_images"]
        for name in names:
            accs = [100 * results[(name, task, s)]["test"]["accuracy"][0] for s in mode.seeds]
            m, sd = mean_std(accs)
            flats = [flat_tail(results[(name, task, s)].get("curve", []), mode.train["steps"],
                               mode.train["curve_images"]) for s in mode.seeds]
            row = {"accuracy": accs, "mean": m, "std": sd, "test_se": 100 * binomial_se(m / 100, n_test),
                   "converged": converged([f["flat"] for f in flats]), "curves": flats,
                   "seconds": [results[(name, task, s)]["seconds"] for s in mode.seeds]}
            if name != mode.reference:
                row["difference"] = paired_interval(accs, ref)
            rows[name] = row
        control = next((n for n in names if mode.designs[n].scan_free), None)
        verdict = None
        if control is not None:
            c, r = rows[control], rows[mode.reference]
            if info.kind == "local":
                passed = abs(c["mean"] - r["mean"]) <= LOCAL_CONTROL_MARGIN
                rule = (f"the scan-free (conv-only) network within {LOCAL_CONTROL_MARGIN:g} points of "
                        f"{mode.reference}")
            else:
                sd = max(c["std"], c["test_se"])
                passed = r["mean"] - c["mean"] > GLOBAL_CONTROL_SIGMAS * sd
                rule = (f"the scan-free network below {mode.reference} by more than {GLOBAL_CONTROL_SIGMAS:g} "
                        "times its seed std (at least its test-set standard error)")
            verdict = {"control": control, "passed": passed, "rule": rule,
                       "gap": r["mean"] - c["mean"]}
        out[task] = {"kind": info.kind, "head": info.head_names[0], "rows": rows, "control": verdict,
                     "test_images": n_test, "seeds": list(mode.seeds)}
    return out


__all__ = ["Design", "STUDY_FILE", "Study", "StudyMode", "TAIL_POINTS", "binomial_se", "converged", "flat_tail",
           "items", "load_study", "mean_std", "paired_interval", "run_study", "summarise", "t95"]
