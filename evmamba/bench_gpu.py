"""GPU check and throughput: the mamba_ssm kernel against the torch backend, then images/s per variant.

    python -m evmamba.bench_gpu --out gpu_results.json          # on a CUDA machine with mamba-ssm
    python -m evmamba.bench_gpu --device cpu --batch 2 --quick  # a dry run of the same code on a CPU

1. Correctness: for tiny, small and base, ES2D and SS2D, the `mamba_ssm` backend against the `torch`
   backend on the same GPU in float32: logits (relative error max|diff|/max|ref|) and every parameter
   gradient (evmamba.agreement.grad_agreement: not fooled by gradients that are zero by construction).
   With a compiled mode asked for, the compiled model against the eager one (first variant and scan).
2. Throughput at batch 128, 224x224 (the authors' setting), in one or more execution modes:
     eager            the model as it is
     compiled         torch.compile(model): the whole network is one graph around the scan kernel
     compiled-bf16    compiled, and the scans' inputs stay bfloat16 under autocast (set_scan_precision)
     graphs           compiled with CUDA graphs (mode="reduce-overhead"), scans' inputs in bfloat16
   For each: inference in bf16 autocast (and fp32 in eager mode), a bf16 autocast training step (forward,
   backward, fused AdamW step), images/s as the median over timed runs, and the training step's peak
   memory; printed next to the authors' code measured on an H200 (PAPER_NUMBERS), with the card named.
   Every finished row is written to --out at once, so a run cut short keeps what it measured; --budget
   stops starting new rows after that many seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from .agreement import grad_agreement, parameter_grads, rel_err
from .timing import cpu_name, median_seconds

# The authors' code (mamba-ssm 2.3.2 kernel) on one NVIDIA H200, batch 128, 224x224: images/s and peak GiB.
AUTHORS_H200 = {
    ("tiny", "es2d"): (4989, 5454, 1724, 6.3), ("tiny", "ss2d"): (2543, 2631, 673, 10.2),
    ("small", "es2d"): (4034, 4512, 1527, 8.3), ("small", "ss2d"): (1983, 2095, 612, 13.3),
    ("base", "es2d"): (2526, 3050, 990, 14.3), ("base", "ss2d"): (1284, 1403, 408, 21.6),
}


def _logits_and_grads(model, run, x) -> tuple[torch.Tensor, dict]:
    """run(x) (the model, or a compiled wrapper of it), then the gradients of a fixed loss."""
    model.zero_grad(set_to_none=True)
    out = run(x)
    out.float().pow(2).mean().backward()
    return out.detach(), parameter_grads(model)


def _agreement(variant, scan, reference, other) -> dict:
    """Relative errors of `other`'s logits and gradients against `reference`'s, and the worst gradient."""
    (ref, gref), (out, gout) = reference, other
    grads = grad_agreement(gout, gref)
    return {"variant": variant, "scan": scan, "logits_rel_err": rel_err(out, ref),
            "grad_err": grads.error, "grad_worst": grads.worst}


def _model_and_input(variant, scan, device, batch, size):
    from . import build_model
    torch.manual_seed(0)
    return build_model(variant, scan=scan).to(device), torch.randn(batch, 3, size, size, device=device)


def check_kernel(variant: str, scan: str, device, batch: int = 2, size: int = 64) -> dict:
    """mamba_ssm vs torch backend on one device: logits and parameter gradients, float32."""
    model, x = _model_and_input(variant, scan, device, batch, size)
    model.train()
    results = []
    for backend in ("torch", "mamba_ssm"):
        model.set_scan_backend(backend)
        torch.manual_seed(1)  # same stochastic-depth draws (drop_path is 0 here anyway)
        results.append(_logits_and_grads(model, model, x))
    return _agreement(variant, scan, *results)


MODES = {  # name: (torch.compile mode or None for eager, scan precision)
    "eager": (None, "float32"),
    "compiled": ("default", "float32"),
    "compiled-bf16": ("default", "autocast"),
    "graphs": ("reduce-overhead", "autocast"),
}


def check_compiled(variant: str, scan: str, device, batch: int = 2, size: int = 64,
                   compiler: str = "inductor") -> dict:
    """torch.compile(model) against the eager model on one device (float32, the backend `auto` picks):
    logits and parameter gradients. `compiler` is torch.compile's backend (inductor: what the timed
    modes run; aot_eager: the same graphs, forward and backward, without code generation)."""
    model, x = _model_and_input(variant, scan, device, batch, size)
    model.eval()
    model(x)  # builds the route tables the graph reads as constants
    torch._dynamo.reset()
    compiled = torch.compile(model, dynamic=False, backend=compiler)
    results = [_logits_and_grads(model, run, x) for run in (model, compiled)]
    return {**_agreement(variant, scan, *results), "compiled": True}


def _print_check(r: dict, what: str = "") -> None:
    print(f"check {r['variant']:5s} {r['scan']}{what}: logits {r['logits_rel_err']:.1e}, worst gradient "
          f"{r['grad_err']:.1e} ({r['grad_worst']}) {'ok' if check_passed(r) else 'FAIL'}", flush=True)


def check_passed(r: dict, tolerance: float = 1e-4) -> bool:
    """Logits within `tolerance` relative, and every gradient within it by grad_agreement's measure."""
    return r["logits_rel_err"] < tolerance and r["grad_err"] < tolerance


def _timed(step, batch, device, warmup, runs, reset_peak=False) -> tuple[float, float | None]:
    """(images/s as the median over `runs`, peak GiB during the timed runs on CUDA) after `warmup` calls."""
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
        if reset_peak:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    ips = batch / median_seconds(step, runs, device, warmup=0)
    return ips, (torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None)


def throughput(variant: str, scan: str, device, batch: int, size: int = 224, warmup: int = 5, runs: int = 20,
               backend: str = "auto", mode: str = "eager") -> dict:
    from . import build_model
    compile_mode, precision = MODES[mode]
    kind = torch.device(device).type
    torch.manual_seed(0)
    model = build_model(variant, scan=scan, backend=backend).to(device).set_scan_precision(precision)
    if compile_mode is not None:
        # a fresh compiler cache per row (rows would otherwise pile up recompilations of the same code until
        # dynamo gives up and runs eagerly), and static shapes: one batch size, one graph per mode
        torch._dynamo.reset()
    run = model if compile_mode is None else torch.compile(model, mode=compile_mode, dynamic=False)
    x = torch.randn(batch, 3, size, size, device=device)
    out = {"variant": variant, "scan": scan, "mode": mode, "batch": batch, "size": size,
           "inference_fp32": None, "inference_bf16": None, "train_step_bf16": None, "peak_gib": None}
    # compiled modes spend their compile time in the first (warm-up) calls; more warm-up lets CUDA graphs
    # record and the allocator settle
    warmup = warmup if compile_mode is None else max(warmup, 3)

    model.eval()
    with torch.no_grad():
        model(x[:1])  # one eager call builds the route tables, so compiled code is one graph
        if compile_mode is None:  # fp32 inference is timed eagerly only (compiling it too costs minutes)
            out["inference_fp32"], _ = _timed(lambda: run(x), batch, device, warmup, runs)
        with torch.autocast(kind, dtype=torch.bfloat16):
            out["inference_bf16"], _ = _timed(lambda: run(x), batch, device, warmup, runs)

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if kind == "cuda" else {}))
    target = torch.randint(0, 1000, (batch,), device=device)

    def train_step():
        with torch.autocast(kind, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(run(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    out["train_step_bf16"], out["peak_gib"] = _timed(train_step, batch, device, warmup, runs, reset_peak=True)
    return out  # the model, its optimizer and compiled code go with this frame (the caller empties the cache)


def device_name(device) -> str:
    d = torch.device(device)
    if d.type == "cuda":
        return torch.cuda.get_device_name(d)
    return f"CPU ({cpu_name()})"


def _fmt(v, ref=None, digits=0):
    if v is None:
        return "—"
    text = f"{v:,.{digits}f}"
    return text + (f" ({ref:,})" if ref is not None else "")


def table(report: dict) -> str:
    """The throughput rows as Markdown, the authors' H200 figures in brackets, and ratios to them."""
    size = report.get("size", 224)
    caveat = "" if size == 224 else f" (at 224x224: not comparable with these {size}x{size} rows)"
    lines = [f"images/s at batch {report['batch']}, {size}x{size}, on {report['device']} (medians); "
             f"authors' code measured on an NVIDIA H200 in brackets{caveat}, then our ratio to it", "",
             "| model | scan | mode | inference fp32 | inference bf16 | train step bf16 | peak GiB | "
             "bf16 inference ratio | train ratio |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["throughput"]:
        a = AUTHORS_H200.get((r["variant"], r["scan"]))

        def ratio(v, i, a=a):
            return "—" if v is None or a is None else f"{v / a[i]:.2f}x"

        lines.append(
            f"| {r['variant']} | {r['scan'].upper()} | {r['mode']} | {_fmt(r['inference_fp32'], a and a[0])} | "
            f"{_fmt(r['inference_bf16'], a and a[1])} | {_fmt(r['train_step_bf16'], a and a[2])} | "
            f"{_fmt(r['peak_gib'], a and a[3], 1)} | {ratio(r['inference_bf16'], 1)} | "
            f"{ratio(r['train_step_bf16'], 2)} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m evmamba.bench_gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=224, help="input resolution of the timed rows (default 224)")
    p.add_argument("--variants", nargs="+", default=["tiny", "small", "base"])
    p.add_argument("--scans", nargs="+", default=["es2d", "ss2d"])
    p.add_argument("--modes", nargs="+", default=["eager", "compiled", "compiled-bf16"], choices=list(MODES),
                   help="execution modes to time (default: eager compiled compiled-bf16)")
    p.add_argument("--quick", action="store_true", help="fewer timed runs (2 warm-up, 5 timed)")
    p.add_argument("--skip-check", action="store_true", help="skip the kernel-vs-torch correctness check")
    p.add_argument("--check-compiler", default="inductor", choices=["inductor", "aot_eager"],
                   help="torch.compile backend of the compiled-vs-eager check (aot_eager: no code generation)")
    p.add_argument("--budget", type=float, help="start no new throughput row after this many seconds")
    p.add_argument("--out", help="write every number to this JSON file (rewritten after each row)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    from .scan import available_backends, resolve_backend
    name = device_name(device)
    print(f"device: {name}; torch {torch.__version__}; backends here: {', '.join(available_backends(device))}; "
          f"auto picks {resolve_backend('auto', device)!r}", flush=True)

    start = time.perf_counter()
    report = {"device": name, "torch": torch.__version__, "batch": args.batch, "size": args.size, "checks": [],
              "throughput": [],
              "not_timed": []}

    def save():
        if args.out:
            tmp = args.out + ".tmp"
            with open(tmp, "w") as f:
                json.dump(report, f, indent=2)
            os.replace(tmp, args.out)

    if not args.skip_check:
        if "mamba_ssm" not in available_backends(device):
            print("mamba_ssm backend not available on this device: correctness check skipped", flush=True)
        else:
            for v in args.variants:
                for s in args.scans:
                    r = check_kernel(v, s, device)
                    report["checks"].append(r)
                    _print_check(r)
            save()
    if not args.skip_check and any(m != "eager" for m in args.modes):  # the compiled graph, once
        r = check_compiled(args.variants[0], args.scans[0], device, size=min(args.size, 64),
                           compiler=args.check_compiler)
        report["checks"].append(r)
        _print_check(r, " compiled vs eager")
        save()

    warmup, runs = (2, 5) if args.quick else (5, 20)
    # eager rows first, then ES2D's other modes variant by variant, then SS2D's: a budget cuts SS2D first
    jobs = [(m, s, v) for m in args.modes if m == "eager" for s in args.scans for v in args.variants]
    jobs += [(m, s, v) for s in args.scans for v in args.variants for m in args.modes if m != "eager"]
    for mode, s, v in jobs:
        if args.budget is not None and time.perf_counter() - start > args.budget:
            report["not_timed"].append({"variant": v, "scan": s, "mode": mode})
            print(f"not timed (past the {args.budget:.0f} s budget): {v} {s} {mode}", flush=True)
            continue
        t = time.perf_counter()
        r = throughput(v, s, device, args.batch, size=args.size, warmup=warmup, runs=runs, mode=mode)
        r["seconds"] = round(time.perf_counter() - t, 1)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the row's model and compiled code are gone: give their memory back
        report["throughput"].append(r)
        save()
        print(f"timed {v} {s} {mode} in {r['seconds']:.0f} s: bf16 inference {_fmt(r['inference_bf16'])}, "
              f"train step {_fmt(r['train_step_bf16'])} images/s", flush=True)

    print("\n" + table(report))
    report["elapsed_s"] = round(time.perf_counter() - start, 1)
    save()
    return report


if __name__ == "__main__":
    main()
