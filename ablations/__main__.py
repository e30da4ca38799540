"""python -m ablations {all,table,figures,train,grid,study} ...

    python -m ablations all --quick --out assets/ablations    every table and figure, in minutes on a CPU
    python -m ablations all --out results/full                 the full study (longer runs, more seeds)
    python -m ablations table --quick --out DIR --no-train      the tables' cost columns only
    python -m ablations figures --quick --out DIR               the figures only
    python -m ablations grid [--quick]                          the rows and what each mode measures
    python -m ablations train --data texture --scan ss2d --steps 200 --out runs/x
    python -m ablations study [--mode pilot|gpu]                trained designs, seeds, controls, report
    python -m ablations calibrate [--ladder gpu]                the long-range ladder: ES2D vs scan-free
    torchrun --nproc_per_node 4 -m ablations train --data /data/imagenet --epochs 300 --image-size 224 ...
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from evmamba.model import ModelConfig

from .config import label, load_grid


def _bool(text: str) -> bool:
    v = text.lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected on/off (or true/false), got {text!r}")


def _stages(text: str):
    """A stage layout name, or one kind per stage separated by commas (evss,evss,ir,ir)."""
    return tuple(s.strip() for s in text.split(",")) if "," in text else text


SET_BY_THE_DATA = ("num_classes",)


def _pipeline_parser(sub, name, help_text):
    from .pipeline import DEFAULT_CACHE
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--quick", action="store_true", help="the quick mode of the grid (minutes on a CPU)")
    p.add_argument("--out", type=Path, required=True, help="folder for tables/, figures/, manifest.json")
    p.add_argument("--grid", type=Path, default=None, help="grid file (default: ablations/grid.toml)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                   help=f"where finished items and training runs are kept (default: {DEFAULT_CACHE})")
    p.add_argument("--force", action="store_true", help="recompute everything, ignoring the cache")
    p.add_argument("--jobs", type=int, default=None,
                   help="worker processes (default: one per CPU core, at most 8; 1 on a GPU)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-train", action="store_true", help="skip training runs (accuracy from the cache only)")
    p.add_argument("--no-bar", action="store_true", help="no progress bars")
    return p


def _train_parser(sub):
    from .train import AMP_MODES, TrainConfig
    d = TrainConfig()
    p = sub.add_parser("train", help="train one model (procedural task or ImageFolder); torchrun for many processes",
                       description="Train one model. Run again with the same --out to resume.")
    p.add_argument("--out", type=Path, required=True, help="folder for last.pth, final.pth, result.json")
    g = p.add_argument_group("model (evmamba.ModelConfig's fields; num_classes comes from the data)")
    model = ModelConfig()
    for f in dataclasses.fields(ModelConfig):
        if f.name in SET_BY_THE_DATA:
            continue
        kind = {"bool": _bool, "int": int, "float": float, "tuple": _stages}.get(str(f.type), str)
        g.add_argument("--" + f.name.replace("_", "-"), type=kind, default=getattr(model, f.name),
                       metavar="on|off" if kind is _bool else None, help=f.metadata.get("doc"))
    g = p.add_argument_group("data")
    g.add_argument("--data", default=d.data, help="texture, markers, texture+markers, or an ImageFolder path "
                                                  "(PATH/train and PATH/val, or PATH and --val-data)")
    g.add_argument("--val-data", default=None)
    g.add_argument("--image-size", type=int, default=d.image_size)
    g.add_argument("--train-images", type=int, default=d.train_images, help="procedural tasks only")
    g.add_argument("--test-images", type=int, default=d.test_images, help="procedural tasks only")
    g.add_argument("--test-seed", type=int, default=d.test_seed,
                   help="draw the test set from this seed (default: the run's seed, after its training images)")
    g.add_argument("--scan-free", action="store_true",
                   help="the control: every scan replaced by the identity (only the convolutions mix positions)")
    g.add_argument("--workers", type=int, default=d.workers, help="data-loading processes")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--min-lr", type=float, default=d.min_lr)
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g.add_argument("--clip-grad", type=float, default=d.clip_grad)
    g.add_argument("--ema-decay", type=float, default=d.ema_decay, help="0 turns EMA off")
    g.add_argument("--bn-batches", type=int, default=d.bn_batches,
                   help="re-estimate BatchNorm statistics on this many training batches before testing")
    g.add_argument("--amp", default=d.amp, choices=AMP_MODES)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="every N steps, the test accuracy on --curve-images test images (the training curve)")
    g.add_argument("--curve-images", type=int, default=d.curve_images)
    g.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint every N steps (0: at the end)")
    g.add_argument("--no-resume", action="store_true", help="start again even if OUT/last.pth exists")
    g.add_argument("--device", default=None)
    return p


def _study_parser(sub):
    from .pipeline import DEFAULT_CACHE
    text = ("train the study's designs to convergence (ablations/study/study.toml) and write its report: "
            "the CPU pilot, or every design and task on a GPU")
    p = sub.add_parser("study", help=text, description=text + ". Run again to resume; finished runs are reused.")
    p.add_argument("--mode", choices=("pilot", "gpu"), default=None,
                   help="pilot (2 CPU cores, at most 90 minutes) or gpu (one H200, at most 8 minutes); "
                        "default: gpu on a GPU, else pilot")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: assets/study/MODE)")
    p.add_argument("--study", type=Path, default=None, help="study file (default: ablations/study/study.toml)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"finished runs (default: {DEFAULT_CACHE})")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--jobs", type=int, default=None,
                   help="training processes (default: one per CPU core, at most 8; on a GPU 4)")
    p.add_argument("--force", action="store_true", help="train again, ignoring finished runs")
    p.add_argument("--no-train", action="store_true", help="report from finished runs only")
    p.add_argument("--smoke", action="store_true",
                   help="every run of the mode for a few steps on a few images (checks the whole study "
                        "runs; its numbers mean nothing)")
    p.add_argument("--ship", type=Path, default=None,
                   help="also store the kept models of the mode's ship_task, 8-bit, in this folder "
                        "(the package's is evmamba/data/study)")
    p.add_argument("--no-bar", action="store_true", help="no progress bars")
    return p


def _calibrate_parser(sub):
    from .pipeline import DEFAULT_CACHE
    text = ("train ES2D and the scan-free control on each rung of the long-range ladder (study.toml's "
            "[calibration], or [calibration-gpu] with --ladder gpu) and write the calibration table")
    p = sub.add_parser("calibrate", help=text, description=text + ". Run again to resume; finished runs are reused.")
    p.add_argument("--ladder", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: the ladder sized for 2 CPU cores (default); gpu: the longer one sized for one GPU")
    p.add_argument("--rungs", nargs="+", default=None, metavar="NAME", help="only these rungs (default: all)")
    p.add_argument("--out", type=Path, default=None,
                   help="table folder (default: assets/study/calibration, or assets/study/calibration-gpu)")
    p.add_argument("--study", type=Path, default=None, help="study file (default: ablations/study/study.toml)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"finished runs (default: {DEFAULT_CACHE})")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--jobs", type=int, default=None, help="training processes (default: one per CPU core, at most 8)")
    p.add_argument("--no-train", action="store_true", help="table from finished runs only")
    p.add_argument("--smoke", action="store_true", help="every rung for a few steps (its numbers mean nothing)")
    p.add_argument("--no-bar", action="store_true", help="no progress bars")
    return p


def _calibrate(args, argv) -> int:
    import os

    import torch

    from .pipeline import command_line
    from .study.calibration import LADDERS, calibrate, load_ladder, smoke_ladder
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    jobs = args.jobs if args.jobs is not None else min(os.cpu_count() or 1, 8)
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    ladder = load_ladder(args.study, args.ladder)
    if args.smoke:
        ladder = smoke_ladder(ladder)
    out = args.out or Path(__file__).resolve().parent.parent / "assets" / "study" / LADDERS[args.ladder]
    started = time.perf_counter()
    table = calibrate(ladder, cache=args.cache, out=out, device=device, jobs=jobs, names=args.rungs,
                      bar=not args.no_bar, command=command_line(argv), train=not args.no_train)
    print(f"calibration: {len(table['rungs'])} rungs, chosen: {table['chosen'] or 'none'}; table in {out} "
          f"({time.perf_counter() - started:.0f} s)")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m ablations", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _pipeline_parser(sub, "all", "measure, train, and write every table and figure")
    _pipeline_parser(sub, "table", "measure and write the tables")
    _pipeline_parser(sub, "figures", "measure and write the figures")
    g = sub.add_parser("grid", help="list the grid's rows and what each mode measures")
    g.add_argument("--quick", action="store_true")
    g.add_argument("--grid", type=Path, default=None)
    _train_parser(sub)
    _study_parser(sub)
    _calibrate_parser(sub)
    args = parser.parse_args(argv)

    try:
        if args.command == "grid":
            return _show_grid(args)
        if args.command == "train":
            return _train(args)
        if args.command == "study":
            from .study.report import study_command
            return study_command(args, argv)
        if args.command == "calibrate":
            return _calibrate(args, argv)
        return _pipeline(args, argv)
    except ValueError as e:
        parser.exit(2, f"python -m ablations {args.command}: error: {e}\n")


def _show_grid(args) -> int:
    grid = load_grid(args.grid)
    mode = grid.mode("quick" if args.quick else "full")
    for t in grid.tables.values():
        print(f"{t.name}: {t.title} ({len(t.rows)} rows)")
        for r in t.rows:
            cols = [c for c in ("train", "speed", "memory", "erf") if mode.selects(c, r)]
            print(f"  {label(r):48s} {', '.join(cols) or '-'}")
    rows = grid.rows()
    runs = sum(mode.selects("train", r) for r in rows) * len(mode.tasks) * len(mode.seeds)
    print(f"{len(rows)} distinct rows; {runs} training runs in the {mode.name} mode")
    return 0


def _pipeline(args, argv) -> int:
    import torch

    from .pipeline import Options, command_line, run_all
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    import os
    jobs = args.jobs if args.jobs is not None else (1 if device.startswith("cuda") else min(os.cpu_count() or 1, 8))
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    options = Options(out=args.out, quick=args.quick, grid=args.grid, cache=args.cache, force=args.force, jobs=jobs,
                      device=device, tables=args.command in ("all", "table"),
                      figures=args.command in ("all", "figures"), train=not args.no_train, bar=not args.no_bar,
                      command=command_line(argv))
    t = time.perf_counter()
    try:
        manifest = run_all(options)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    made = sum(not a["reused"] for a in manifest["artifacts"])
    print(f"{len(manifest['artifacts'])} files in {args.out} ({made} written, "
          f"{len(manifest['artifacts']) - made} unchanged) in {time.perf_counter() - t:.0f} s; "
          f"provenance in {args.out / 'manifest.json'}")
    return 0


def _train(args) -> int:
    import json

    from .train import TrainConfig, train
    if args.steps is None and args.epochs is None:
        raise ValueError("give --steps N or --epochs N")
    model = ModelConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ModelConfig)
                           if f.name not in SET_BY_THE_DATA})
    training = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    config = TrainConfig(model=model, **{**training, "clip_grad": args.clip_grad or None})
    result = train(config, args.out, resume=not args.no_resume, device=args.device)
    if result is not None and int(__import__("os").environ.get("RANK", "0")) == 0:
        summary = {k: result[k] for k in ("test", "test_ema", "steps", "processes", "device", "amp", "seconds",
                                          "checkpoint")}
        print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
