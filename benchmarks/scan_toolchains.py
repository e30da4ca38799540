"""The two toolchains measured for the fused CPU scan: the numba kernel (evmamba/scan/_cpu_kernels.py, what
the `cpu_fused` backend runs) against the same algorithm as a C++ extension built by
torch.utils.cpp_extension.load (benchmarks/toolchains/scan_kernel.cpp: g++ -O3 -march=native, torch's
threads through at::parallel_for), with the `torch` backend for scale. Kernel calls only (no autograd
glue), interleaved, medians.

    python benchmarks/scan_toolchains.py [--repeats 9]

Needs a C++ compiler and ninja (pip install ninja); the C++ build lands in a temporary folder.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from evmamba.bench import machine, scan_inputs
from evmamba.scan import cpu_fused, selective_scan

SHAPES = [(64, 96, 16), (64, 96, 64), (64, 192, 16), (64, 192, 64), (1, 96, 784), (1, 96, 3136)]  # batch, d, L


def build_cxx():
    from torch.utils.cpp_extension import load
    src = Path(__file__).parent / "toolchains" / "scan_kernel.cpp"
    started = time.perf_counter()
    flags = ["-O3", "-march=native", "-fopenmp-simd", "-ffp-contract=fast"]
    module = load("evmamba_scan_cxx", [str(src)], extra_cflags=flags, build_directory=tempfile.mkdtemp(),
                  verbose=False)
    return module, time.perf_counter() - started


def prepared(batch, d, length):
    x = scan_inputs(length, batch=batch, d=d)
    return x, tuple(x[k] for k in ("u", "delta", "A", "B", "C", "D", "delta_bias"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args(argv)
    started = time.perf_counter()
    if cpu_fused.kernels() is None:
        print(f"numba kernel unavailable: {cpu_fused.unavailable_reason}")
        return 1
    numba_s = time.perf_counter() - started
    cxx, cxx_s = build_cxx()
    print(f"machine: {machine()}")
    print(f"load or build: numba {numba_s:.1f} s (this process; cold compiles are timed by the test suite), "
          f"C++ {cxx_s:.1f} s (cold build)\n")
    print("| batch, d, L | pass | torch (ms) | numba (ms) | C++ (ms) | numba vs torch | C++ vs numba |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    chunk = cpu_fused.CHUNK
    for batch, d, length in SHAPES:
        x, args_ = prepared(batch, d, length)

        def torch_fwd(x=x):
            with torch.no_grad():
                selective_scan(**x, delta_softplus=True, backend="torch")

        def torch_both(x=x):
            y = {k: v.clone().requires_grad_() for k, v in x.items()}
            selective_scan(**y, delta_softplus=True, backend="torch").sum().backward()

        def numba_fwd(a=args_):
            return cpu_fused.cpu_scan(*a, True, chunk)

        def numba_both(a=args_):
            y, states = numba_fwd()
            cpu_fused.cpu_scan_backward(*a, states, torch.ones_like(y), True, chunk)

        def cxx_fwd(a=args_):
            return cxx.fwd(*a, True, chunk)

        def cxx_both(a=args_):
            y, states = cxx_fwd()
            cxx.bwd(*a, states, torch.ones_like(y), True, chunk)

        # the two kernels agree (the numba one is tested against the reference)
        ref, states = numba_fwd()
        assert (cxx_fwd()[0] - ref).abs().max() <= 1e-5 * ref.abs().max()
        gy = torch.randn(ref.shape)
        for a, b in zip(cxx.bwd(*args_, states, gy, True, chunk),
                        cpu_fused.cpu_scan_backward(*args_, states, gy, True, chunk)):
            assert (a - b).abs().max() <= 1e-4 * b.abs().max()
        for name, fns in (("fwd", (torch_fwd, numba_fwd, cxx_fwd)), ("fwd+bwd", (torch_both, numba_both, cxx_both))):
            times = [[] for _ in fns]
            for fn in fns:
                fn()
            for _ in range(args.repeats):
                for ts, fn in zip(times, fns):
                    t = time.perf_counter()
                    fn()
                    ts.append(time.perf_counter() - t)
            m = [statistics.median(ts) * 1e3 for ts in times]
            print(f"| {batch}, {d}, {length} | {name} | {m[0]:.2f} | {m[1]:.2f} | {m[2]:.2f} | {m[0] / m[1]:.1f}x | "
                  f"{m[1] / m[2]:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
