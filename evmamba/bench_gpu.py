"""GPU check and throughput: the mamba_ssm kernel against the torch backend, then images/s per variant.

    python -m evmamba.bench_gpu --out gpu_results.json          # on a CUDA machine with mamba-ssm
    python -m evmamba.bench_gpu --device cpu --batch 2 --quick  # a dry run of the same code on a CPU

1. Correctness: for tiny, small and base, ES2D and SS2D, the `mamba_ssm` backend against the `torch`
   backend on the same GPU in float32: logits and every parameter gradient, relative error max|diff|/max|ref|.
2. Throughput at batch 128, 224x224 (the authors' setting): inference in fp32 and in bf16 autocast, a bf16
   autocast training step (forward, backward, AdamW step), images/s as the median over timed runs, and the
   peak memory of the training step; printed next to the authors' code measured on an H200
   (PAPER_NUMBERS), with the card named, and written in full to --out.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from .timing import cpu_name, median_seconds

# The authors' code (mamba-ssm 2.3.2 kernel) on one NVIDIA H200, batch 128, 224x224: images/s and peak GiB.
AUTHORS_H200 = {
    ("tiny", "es2d"): (4989, 5454, 1724, 6.3), ("tiny", "ss2d"): (2543, 2631, 673, 10.2),
    ("small", "es2d"): (4034, 4512, 1527, 8.3), ("small", "ss2d"): (1983, 2095, 612, 13.3),
    ("base", "es2d"): (2526, 3050, 990, 14.3), ("base", "ss2d"): (1284, 1403, 408, 21.6),
}


def rel_err(a, b) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def check_kernel(variant: str, scan: str, device, batch: int = 2, size: int = 64) -> dict:
    """mamba_ssm vs torch backend on one device: logits and parameter gradients, float32."""
    from . import build_model
    torch.manual_seed(0)
    model = build_model(variant, scan=scan).to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)
    results = {}
    for backend in ("torch", "mamba_ssm"):
        model.set_scan_backend(backend)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # same stochastic-depth draws (drop_path is 0 here anyway)
        out = model(x)
        out.float().pow(2).mean().backward()
        results[backend] = (out.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()})
    (ref, gref), (out, gout) = results["torch"], results["mamba_ssm"]
    grad_errs = {n: rel_err(gout[n], gref[n]) for n in gref}
    worst = max(grad_errs, key=grad_errs.get)
    return {"variant": variant, "scan": scan, "logits_rel_err": rel_err(out, ref),
            "grad_rel_err_max": grad_errs[worst], "grad_worst": worst}


def _images_per_second(step, batch, device, warmup, runs) -> float:
    return batch / median_seconds(step, runs, device, warmup=warmup)


def throughput(variant: str, scan: str, device, batch: int, size: int = 224, warmup: int = 5, runs: int = 20,
               backend: str = "auto") -> dict:
    from . import build_model
    cuda = torch.device(device).type == "cuda"
    model = build_model(variant, scan=scan, backend=backend).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    out = {"variant": variant, "scan": scan, "batch": batch, "size": size}

    model.eval()
    with torch.no_grad():
        out["inference_fp32"] = _images_per_second(lambda: model(x), batch, device, warmup, runs)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            out["inference_bf16"] = _images_per_second(lambda: model(x), batch, device, warmup, runs)

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    target = torch.randint(0, 1000, (batch,), device=device)

    def train_step():
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    out["train_step_bf16"] = _images_per_second(train_step, batch, device, warmup, runs)
    out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    return out


def device_name(device) -> str:
    d = torch.device(device)
    if d.type == "cuda":
        return torch.cuda.get_device_name(d)
    return f"CPU ({cpu_name()})"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m evmamba.bench_gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--variants", nargs="+", default=["tiny", "small", "base"])
    p.add_argument("--scans", nargs="+", default=["es2d", "ss2d"])
    p.add_argument("--quick", action="store_true", help="fewer timed runs (2 warm-up, 5 timed)")
    p.add_argument("--skip-check", action="store_true", help="skip the kernel-vs-torch correctness check")
    p.add_argument("--out", help="write every number to this JSON file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    from .scan import available_backends, resolve_backend
    name = device_name(device)
    print(f"device: {name}; torch {torch.__version__}; backends here: {', '.join(available_backends(device))}; "
          f"auto picks {resolve_backend('auto', device)!r}", flush=True)

    report = {"device": name, "torch": torch.__version__, "batch": args.batch, "checks": [], "throughput": []}
    if not args.skip_check:
        if "mamba_ssm" not in available_backends(device):
            print("mamba_ssm backend not available on this device: correctness check skipped", flush=True)
        else:
            for v in args.variants:
                for s in args.scans:
                    r = check_kernel(v, s, device)
                    report["checks"].append(r)
                    ok = r["logits_rel_err"] < 1e-4 and r["grad_rel_err_max"] < 1e-4
                    print(f"check {v:5s} {s}: logits {r['logits_rel_err']:.1e}, worst gradient "
                          f"{r['grad_rel_err_max']:.1e} ({r['grad_worst']}) {'ok' if ok else 'FAIL'}", flush=True)

    warmup, runs = (2, 5) if args.quick else (5, 20)
    for v in args.variants:
        for s in args.scans:
            r = throughput(v, s, device, args.batch, warmup=warmup, runs=runs)
            report["throughput"].append(r)
            print(f"timed {v} {s}", file=sys.stderr, flush=True)

    print(f"\nimages/s at batch {args.batch}, 224x224, on {name} (medians); "
          "authors' code measured on an NVIDIA H200 in brackets\n")
    print("| model | scan | inference fp32 | inference bf16 | train step bf16 | peak GiB |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in report["throughput"]:
        a = AUTHORS_H200.get((r["variant"], r["scan"]))
        ref = (lambda i: f" ({a[i]:,})") if a else (lambda i: "")
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "n/a"
        print(f"| {r['variant']} | {r['scan'].upper()} | {r['inference_fp32']:,.0f}{ref(0)} | "
              f"{r['inference_bf16']:,.0f}{ref(1)} | {r['train_step_bf16']:,.0f}{ref(2)} | {peak}"
              f"{f' ({a[3]})' if a else ''} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
