"""Timing helpers shared by the benchmarks and the ablation measurements: the machine's name, device
synchronisation, and the median time of repeated runs."""
from __future__ import annotations

import os
import platform
import statistics
import time

import torch


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where there is one) and its core count."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def sync(device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so wall-clock times are honest."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, repeats: int, device="cpu", warmup: int = 1) -> float:
    """Median wall-clock seconds of `repeats` calls of fn() after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)
