"""CPU speed of the selective scan and of the whole model: the `cpu_fused` and `torch` backends against the
`reference` loop.

    python -m evmamba.bench            # the full table (a few minutes on 2 cores)
    python -m evmamba.bench --quick    # fewer repetitions
    python -m evmamba.bench --compile  # also tiny's forward compiled against eager

The backends run in one process, the fast ones interleaved repetition by repetition and the reference
loop after them (see `compare`), and the table reports medians and their ratios, with the machine it ran
on: the scan at the study's training shapes (batch 64, K=4, d=96 and 192, L=16 and 64: tiny's stages at
32x32) and at 224x224 (batch 1, L=784 and 3136), and the tiny model at 224x224. Accuracy is the relative
error (max |diff| / max |ref|) of each fast backend in float32 against the reference loop in float64. Peak
memory is the resident-set peak of a fresh process that runs one forward+backward of the model, and how
much of it the pass adds.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from tqdm import tqdm

from .timing import cpu_name


def machine() -> str:
    return (f"{cpu_name()}, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"Python {platform.python_version()}")


def _load() -> str:
    """The 1-minute load average: other work on the machine slows the two-thread torch backend more than
    the single-threaded reference loop, so a busy machine shows in the ratios."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def scan_inputs(length, batch=1, routes=4, d=96, n=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ch = routes * d
    return dict(u=torch.randn(batch, ch, length, generator=g), delta=0.5 * torch.randn(batch, ch, length, generator=g),
                A=-torch.exp(torch.log(torch.arange(1, n + 1.0)).expand(ch, n) + 0.1 * torch.randn(ch, n, generator=g)),
                B=torch.randn(batch, routes, n, length, generator=g),
                C=torch.randn(batch, routes, n, length, generator=g),
                D=torch.ones(ch), delta_bias=-4 + 0.5 * torch.randn(ch, generator=g))


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


APART = ("reference",)


def compare(cases: dict, repeats: int, bar, apart=APART) -> dict:
    """Median seconds of each case (name -> {backend: fn}). The backends not in `apart` are interleaved per
    repetition, their order rotated from one repetition to the next; those in `apart` (the reference loop)
    are timed after them, in a block of their own: a cpu_fused forward+backward just after the reference
    loop took 11.8-16.2 ms against 8.1-8.8 ms after the torch backend (batch 64, d=96, L=16, 2 cores),
    while the torch backend showed no such effect, so interleaving the reference skewed the ratio between
    the fast backends. `bar` moves once per repetition of each block."""
    times = {name: {b: [] for b in fns} for name, fns in cases.items()}
    for name, fns in cases.items():
        for block in _blocks(fns, apart):
            for backend in block:  # warm-up
                fns[backend]()
            for rep in range(repeats):
                for backend in block[rep % len(block):] + block[:rep % len(block)]:
                    times[name][backend].append(_timed(fns[backend]))
                bar.update(1)
    return {name: {b: statistics.median(ts) for b, ts in per.items()} for name, per in times.items()}


def _blocks(fns: dict, apart) -> list:
    """The backends of one case in the blocks `compare` times: those interleaved, then those apart."""
    return [block for block in ([b for b in fns if b not in apart], [b for b in fns if b in apart]) if block]


def blocks(cases: dict, apart=APART) -> int:
    """How many timed blocks `compare` runs over `cases` (the progress bar's total is this times repeats)."""
    return sum(len(_blocks(fns, apart)) for fns in cases.values())


FAST = ("torch", "cpu_fused")
STUDY_SHAPES = [(64, 96, 16), (64, 96, 64), (64, 192, 16), (64, 192, 64)]  # batch, d, L


def backends() -> tuple:
    """reference, torch, and cpu_fused where its kernel runs here."""
    from .scan import available_backends
    return ("reference",) + tuple(b for b in FAST if b in available_backends("cpu"))


def scan_cases(lengths, study_shapes=STUDY_SHAPES):
    """Forward and forward+backward of the scan (K=4, N=16): the study's (batch, d, L) shapes, then batch 1,
    d=96 at each of `lengths`."""
    from .scan import selective_scan
    cases = {}
    shapes = list(study_shapes) + [(1, 96, length) for length in lengths]
    for batch, d, length in shapes:
        x = scan_inputs(length, batch=batch, d=d)

        def fwd(backend, x=x):
            with torch.no_grad():
                selective_scan(**x, delta_softplus=True, backend=backend)

        def fwd_bwd(backend, x=x):
            y = {k: v.clone().requires_grad_() for k, v in x.items()}
            selective_scan(**y, delta_softplus=True, backend=backend).sum().backward()

        label = f"scan L={length}" if batch == 1 and d == 96 else f"scan batch {batch} d={d} L={length}"
        cases[f"{label} forward"] = {b: (lambda b=b, f=fwd: f(b)) for b in backends()}
        cases[f"{label} forward+backward"] = {b: (lambda b=b, f=fwd_bwd: f(b)) for b in backends()}
    return cases


def model_cases(variant="tiny", scans=("es2d",), size=224):
    from .factory import build_model
    cases = {}
    x = torch.randn(1, 3, size, size)
    for scan in scans:
        model = build_model(variant, scan=scan).eval()

        def fwd(backend, model=model):
            model.set_scan_backend(backend)
            with torch.no_grad():
                model(x)

        def fwd_bwd(backend, model=model):
            model.set_scan_backend(backend)
            model(x.clone().requires_grad_()).sum().backward()

        label = f"{variant} {scan.upper()} {size}x{size} batch 1"
        cases[f"{label} forward"] = {b: (lambda b=b, f=fwd: f(b)) for b in backends()}
        cases[f"{label} forward+backward"] = {b: (lambda b=b, f=fwd_bwd: f(b)) for b in backends()}
    return cases


def compile_cases(batches=(1, 8), size=224, compiler: str = "inductor"):
    """Tiny ES2D forward, eager against torch.compile (torch backend), per batch size. `compiler` is
    torch.compile's backend: inductor is what is timed; the tests use aot_eager (no code generation)."""
    from .factory import build_model
    model = build_model("tiny", backend="torch").eval()
    # one static graph per batch size, as a server would use
    compiled = torch.compile(model, dynamic=False, backend=compiler)
    cases = {}
    for batch in batches:
        x = torch.randn(batch, 3, size, size)

        def fwd(m, x=x):
            with torch.no_grad():
                m(x)

        fwd(model)  # an eager call first: the compiled graph reads the route tables it builds
        cases[f"tiny ES2D {size}x{size} batch {batch} forward"] = {
            "eager": (lambda f=fwd: f(model)), "compiled": (lambda f=fwd: f(compiled))}
    return cases


def table(medians: dict, base: str, other: str) -> str:
    lines = [f"| case | {base} (ms) | {other} (ms) | speed-up |", "| --- | ---: | ---: | ---: |"]
    for name, m in medians.items():
        lines.append(f"| {name} | {m[base] * 1e3:.1f} | {m[other] * 1e3:.1f} | {m[base] / m[other]:.1f}x |")
    return "\n".join(lines)


def comparison(medians: dict, columns, ratios) -> str:
    """A table of medians (ms) for each backend in `columns`, and each ratio (slow, fast) as slow / fast."""
    lines = ["| case | " + " | ".join(f"{c} (ms)" for c in columns) + " | "
             + " | ".join(f"{fast} vs {slow}" for slow, fast in ratios) + " |",
             "| --- |" + " ---: |" * (len(columns) + len(ratios))]
    for name, m in medians.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[c] * 1e3:.1f}" for c in columns) + " | "
                     + " | ".join(f"{m[slow] / m[fast]:.1f}x" for slow, fast in ratios) + " |")
    return "\n".join(lines)


def accuracy(lengths, names=FAST) -> dict:
    """{(backend, L): relative error of the backend in float32 against the reference loop in float64}."""
    from .scan import selective_scan
    out = {}
    for length in lengths:
        x = scan_inputs(length)
        ref = selective_scan(**{k: v.double() for k, v in x.items()}, delta_softplus=True, backend="reference")
        for name in names:
            y = selective_scan(**x, delta_softplus=True, backend=name)
            out[name, length] = ((y.double() - ref).abs().max() / ref.abs().max()).item()
    return out


def peak_memory_mb(variant="tiny", size=224, scan="es2d", backend="torch") -> tuple[float, float]:
    """(resident memory before the pass, peak resident memory) in MB of a fresh process that builds the
    model, loads `backend` (for cpu_fused: numba and its compiled kernels) and runs one forward+backward."""
    code = ("import torch, evmamba;"
            "from evmamba.bench import peak_rss_mb, rss_mb;"
            "from evmamba.scan import cpu_fused;"
            f"m = evmamba.build_model({variant!r}, scan={scan!r}, backend={backend!r});"
            f"{backend!r} == 'cpu_fused' and cpu_fused.kernels();"
            "before = rss_mb();"
            f"m(torch.randn(1, 3, {size}, {size}, requires_grad=True)).sum().backward();"
            "print(before, peak_rss_mb())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, peak = out.stdout.split()
    return float(before), float(peak)


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024
    except (OSError, StopIteration):
        return None


def rss_mb() -> float:
    """This process's resident memory now, in MB (Linux; elsewhere its peak so far)."""
    now = _status_mb("VmRSS:")
    return peak_rss_mb() if now is None else now


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB. Linux's VmHWM starts afresh at exec; getrusage's maxrss
    (the fallback elsewhere) would also count the pages a parent held when it forked this process."""
    peak = _status_mb("VmHWM:")
    if peak is None:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return peak


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m evmamba.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions instead of 9")
    parser.add_argument("--lengths", type=int, nargs="+", default=[784, 3136], help="scan lengths (tokens)")
    parser.add_argument("--ss2d", action="store_true", help="also time the tiny model with SS2D")
    parser.add_argument("--compile", action="store_true",
                        help="also time tiny's forward compiled against eager (compiling takes a minute or two)")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 9

    load_before = _load()
    names = backends()
    cases = {**scan_cases(args.lengths), **model_cases(scans=("es2d", "ss2d") if args.ss2d else ("es2d",))}
    extra = compile_cases() if args.compile else {}
    with tqdm(total=repeats * (blocks(cases) + blocks(extra)), desc="timing", unit="rep", file=sys.stderr) as bar:
        medians = compare(cases, repeats, bar)
        compiled = compare(extra, repeats, bar)
    errors = accuracy(args.lengths, names[1:])
    peaks = {name: peak_memory_mb(backend=name) for name in names[1:]}

    print(f"machine: {machine()}; load average before/after: {load_before} / {_load()}")
    print(f"median of {repeats} repetitions, {' and '.join(names[1:])} interleaved (their order rotated), the "
          "reference loop timed after them; scans with K=4, N=16 (batch 1 and d=96 unless named)\n")
    ratios = [("reference", "torch")] + ([("torch", "cpu_fused")] if "cpu_fused" in names else [])
    print(comparison(medians, names, ratios))
    print()
    for (name, length), err in errors.items():
        print(f"relative error, {name} float32 vs reference float64, L={length}: {err:.1e}")
    for name, (before, peak) in peaks.items():
        print(f"peak resident memory, tiny 224x224 forward+backward, {name} backend: {peak:.0f} MB for the whole "
              f"process, {peak - before:.0f} MB above its {before:.0f} MB before the pass")
    if compiled:
        print("\ntorch.compile (inductor) against eager, torch backend, same interleaving\n")
        print(table(compiled, "eager", "compiled"))
    return medians


if __name__ == "__main__":
    main()
