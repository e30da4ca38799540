"""Training speed on this machine: img/s of one optimiser step (forward, backward, AdamW) of tiny at small
sizes, per scan and per selective-scan backend (by default `torch` against `cpu_fused`), medians of
interleaved repeats in one process, the ratio, and (with --profile) where the time goes. --depthwise also
compares the convolutions of small maps (3x3 depthwise and 1x1) as oneDNN convolutions and as the matrix
forms of evmamba.depthwise (the default).

    python benchmarks/train_speed.py [--sizes 32 64] [--batch 64] [--steps 12] [--threads 2]
                                     [--backends torch cpu_fused] [--depthwise] [--profile]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ablations.train import adamw
from evmamba import ModelConfig, create


def stepper(scan: str, size: int, batch: int, backend: str = "auto"):
    model = create(ModelConfig(scan=scan, num_classes=2, backend=backend), seed=0).train()
    opt = adamw(model, 0.05, 1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    y = torch.randint(0, 2, (batch,), generator=g)

    def step():
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=12, help="timed steps per case (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--scans", nargs="+", default=["es2d", "ss2d"])
    p.add_argument("--backends", nargs="+", default=["torch", "cpu_fused"], help="selective-scan backends")
    p.add_argument("--depthwise", action="store_true", help="also time small-map 3x3 and 1x1 convs as oneDNN")
    p.add_argument("--profile", action="store_true", help="the 15 operators with the most self CPU time")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import evmamba.depthwise as depthwise
    ways = {"matrices": depthwise.SMALL_MAP, **({"oneDNN": 0} if args.depthwise else {})}
    for size in args.sizes:
        steps = {(s, b): stepper(s, size, args.batch, b) for s in args.scans for b in args.backends}
        for fn in steps.values():
            for _ in range(2):
                fn()
        times = {(s, b, w): [] for s, b in steps for w in ways}
        for _ in range(args.steps):  # interleaved, so a busy moment of the machine hits every case alike
            for (s, b, w), ts in times.items():
                depthwise.SMALL_MAP = ways[w]
                t = time.perf_counter()
                steps[s, b]()
                ts.append(time.perf_counter() - t)
        depthwise.SMALL_MAP = ways["matrices"]
        print(f"tiny, {size}x{size}, batch {args.batch}, {args.threads} thread(s), median of {args.steps} "
              f"interleaved steps (forward, backward, AdamW)" + (", depthwise 3x3 and 1x1 convolutions on "
                                                                  "small maps as oneDNN or matrices"
                                                                  if args.depthwise else ""))
        for s in args.scans:
            m = {(b, w): statistics.median(times[s, b, w]) for b in args.backends for w in ways}
            cells = "  ".join(f"{b}{'' if len(ways) == 1 else ' ' + w} {1e3 * t:5.0f} ms/step "
                              f"{args.batch / t:5.1f} img/s" for (b, w), t in m.items())
            first, last = m[args.backends[0], "matrices"], m[args.backends[-1], "matrices"]
            ratio = f"  {args.backends[-1]} vs {args.backends[0]} {first / last:.2f}x" if len(args.backends) > 1 else ""
            print(f"  {s.upper():6s} {cells}{ratio}")
        if args.profile:
            from torch.profiler import ProfilerActivity, profile
            for (s, b), fn in steps.items():
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    for _ in range(3):
                        fn()
                print(f"\n{s.upper()} {size}x{size}, {b} backend:")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
