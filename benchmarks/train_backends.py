"""One run of the study's CPU pilot trained with each selective-scan backend: the same design, task, seed
and images (ablations/study/study.toml, [pilot]), once with `torch` and once with `cpu_fused`, and their test
accuracies with the binomial standard error of each. The two backends compute the same scan to float32
rounding, so the accuracies should agree within that error; the wall time of each run is printed too.

    python benchmarks/train_backends.py [--design ES2D] [--task markers] [--seed 0] [--threads 2]
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile

import torch

from ablations.study import load_study
from ablations.train import train
from evmamba.bench import machine


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--design", default="ES2D")
    p.add_argument("--task", default="markers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backends", nargs="+", default=["torch", "cpu_fused"])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    mode = load_study().mode("pilot")
    (cfg,) = [c for d, task, seed, c in mode.configs()
              if d.name == args.design and task == args.task and seed == args.seed]
    print(f"machine: {machine()}")
    print(f"pilot run: design {args.design}, task {args.task}, seed {args.seed}, {cfg.steps} steps of batch "
          f"{cfg.batch_size} at {cfg.image_size}x{cfg.image_size}, {cfg.test_images} test images")
    for backend in args.backends:
        run = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backend=backend))
        with tempfile.TemporaryDirectory() as out:
            result = train(run, out, resume=False, bar=False)
        acc, n = result["test"]["accuracy"][0], result["test"]["images"]
        se = math.sqrt(acc * (1 - acc) / n)
        print(f"  {backend:9s} test accuracy {100 * acc:.2f}% ± {100 * se:.2f} (binomial SE, n={n}), "
              f"final loss {result['final_loss']:.5f}, {result['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
