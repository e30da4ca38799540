"""Memory: the torch backend never materialises the whole (batch, channels, L, N) state, and the tiny model's
forward+backward at 224x224 stays well under 2 GB. Measured as resident-set peaks of fresh processes."""
import subprocess
import sys

SCAN = """
import torch
from evmamba.bench import peak_rss_mb
from evmamba.scan import selective_scan
torch.manual_seed(0)
b, ch, n, L = 1, 96, 64, 8192
x = dict(u=torch.randn(b, ch, L), delta=torch.randn(b, ch, L), A=-torch.rand(ch, n), B=torch.randn(b, 4, n, L),
         C=torch.randn(b, 4, n, L), D=torch.ones(ch), delta_bias=torch.zeros(ch))
x = {k: v.requires_grad_() for k, v in x.items()}
selective_scan(**{k: v[..., :64] if k in ("u", "delta", "B", "C") else v for k, v in x.items()},
               delta_softplus=True, backend="torch").sum().backward()  # warm-up: load kernels
before = peak_rss_mb()
selective_scan(**x, delta_softplus=True, backend="torch").sum().backward()
print(peak_rss_mb() - before)
"""

def run(code: str) -> float:
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def test_long_scan_does_not_hold_the_whole_state():
    state_mb = 96 * 8192 * 64 * 4 / 2**20  # 192 MB for one float32 copy of the state
    grown = run(SCAN)  # inputs, outputs and gradients of (batch, channels, L) alone are ~4 MB each
    assert grown < state_mb / 2, f"peak grew by {grown:.0f} MB during a scan whose state is {state_mb:.0f} MB"


def test_tiny_model_forward_backward_under_2gb():
    from evmamba.bench import peak_memory_mb  # a fresh process: tiny at 224x224, forward and backward
    before, peak = peak_memory_mb()
    assert peak < 2048


def test_the_mmap_threshold_is_the_apps_setting():
    import pytest

    import app
    from webapp import memory
    assert app.parse_args([]).mmap_threshold * 1024 == memory.MMAP_THRESHOLD == 256 * 1024
    assert app.parse_args(["--mmap-threshold", "0"]).mmap_threshold == 0
    with pytest.raises(SystemExit, match="--mmap-threshold -1: give a size in KiB, or 0 for glibc's own"):
        app.configure(app.parse_args(["--mmap-threshold", "-1"]))
