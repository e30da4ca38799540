"""Training speed on this machine: img/s of one optimiser step (forward, backward, AdamW) of tiny at a small
size, per scan, with the 3x3 depthwise convolutions of small maps as oneDNN convolutions and as per-channel
matrices (evmamba.depthwise), medians of interleaved repeats in one process, the ratio, and (with
--profile) where the time goes.

    python benchmarks/train_speed.py [--size 32] [--batch 64] [--steps 12] [--threads 2] [--profile]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ablations.train import parameter_groups
from evmamba import ModelConfig, create


def stepper(scan: str, size: int, batch: int, scan_free: bool = False):
    model = create(ModelConfig(scan=scan, num_classes=2), seed=0).train()
    opt = torch.optim.AdamW(parameter_groups(model, 0.05), lr=1e-3)
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
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=12, help="timed steps per scan (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--scans", nargs="+", default=["es2d", "ss2d"])
    p.add_argument("--profile", action="store_true", help="the 15 operators with the most self CPU time")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import evmamba.depthwise as depthwise
    steps = {s: stepper(s, args.size, args.batch) for s in args.scans}
    for fn in steps.values():
        for _ in range(2):
            fn()
    ways = {"oneDNN": 0, "matrices": depthwise.SMALL_MAP}
    times = {(s, w): [] for s in steps for w in ways}
    for _ in range(args.steps):  # interleaved, so a busy moment of the machine hits every case alike
        for (s, w), ts in times.items():
            depthwise.SMALL_MAP = ways[w]
            t = time.perf_counter()
            steps[s]()
            ts.append(time.perf_counter() - t)
    depthwise.SMALL_MAP = ways["matrices"]
    print(f"tiny, {args.size}x{args.size}, batch {args.batch}, {args.threads} thread(s), median of {args.steps}; "
          f"depthwise 3x3 on maps of at most {ways['matrices']} positions as:")
    for s in steps:
        m = {w: statistics.median(times[s, w]) for w in ways}
        print(f"  {s.upper():6s} " + "  ".join(f"{w} {1e3 * t:5.0f} ms/step {args.batch / t:5.1f} img/s"
                                            for w, t in m.items()) + f"  speed-up {m['oneDNN'] / m['matrices']:.2f}x")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        for s, fn in steps.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    fn()
            print(f"\n{s.upper()}:")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
