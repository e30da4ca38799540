"""What runs on a GPU besides the kernel: analyses, the browser demo and the trainer, checked against the CPU.

    python benchmarks/gpu_smoke.py                 # on a CUDA machine (mamba-ssm optional)
    python benchmarks/gpu_smoke.py --device cpu    # a dry run of the same checks on the CPU

Each check prints PASS, FAIL or SKIP (a package it needs is not installed) with its numbers; the exit
status is the number of failures.
- receptive fields, hidden attention and saliency of a seeded tiny model: on the device against the CPU
  (relative error max|diff| / max|ref|, float32; the device may run mamba-ssm's kernel);
- the browser demo configured for the device: every named endpoint answers with its defaults;
- the trainer: a few steps with mixed precision (bf16 autocast on a GPU), finite losses, and a checkpoint
  that loads back.
"""
from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from evmamba.agreement import rel_err

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = []


def check(name):
    def wrap(fn):
        def run(*args):
            t = time.perf_counter()
            try:
                detail, verdict = fn(*args) or "", "PASS"
            except ModuleNotFoundError as e:  # a bare GPU machine may lack the app's or the analyses' packages
                detail, verdict = f"needs {e.name}, which is not installed here", "SKIP"
            except Exception as e:  # noqa: BLE001 - a failed check is reported, the others still run
                detail, verdict = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}", "FAIL"
            RESULTS.append((name, verdict))
            print(f"{verdict} {name} ({time.perf_counter() - t:.1f} s) {detail}", flush=True)
        return run
    return wrap


def both(make, device):
    """make(model) on the CPU and on `device`, for the same seeded tiny model."""
    from evmamba import build_model
    out = []
    for d in ("cpu", device):
        model = build_model("tiny", seed=0).to(d).eval()
        out.append(make(model))
    return out


@check("receptive fields (network to stage 0, every route)")
def erf_check(device):
    from evmamba.analysis.erf import effective_receptive_fields
    cpu, dev = both(lambda m: effective_receptive_fields(m, "stage", stage=0, num_inputs=2, bar=False), device)
    errs = [rel_err(b.contribution, a.contribution) for a, b in zip(cpu.all(), dev.all())]
    assert max(errs) < 1e-3, errs
    return f"max relative error {max(errs):.1e}"


@check("hidden attention (first mixer, every route)")
def attention_check(device):
    from evmamba.analysis.hidden_attention import model_hidden_attention
    cpu, dev = both(lambda m: model_hidden_attention(m, "chelsea", reduce="mean", bar=False), device)
    errs = [rel_err(b.matrix, a.matrix) for a, b in zip(cpu, dev)]
    assert max(errs) < 1e-3, errs
    return f"max relative error {max(errs):.1e}"


@check("saliency and per-route logit contributions")
def attribution_check(device):
    from evmamba.analysis.attribution import attributions, route_contributions
    cpu, dev = both(lambda m: (attributions(m, "chelsea", methods=("saliency",), bar=False),
                               route_contributions(m, "chelsea", bar=False)), device)
    e1 = rel_err(dev[0].maps["saliency"], cpu[0].maps["saliency"])
    num = cpu[1].select_dtypes("number").columns
    e2 = rel_err(dev[1][num].to_numpy(), cpu[1][num].to_numpy())
    assert e1 < 1e-3 and e2 < 1e-3, (e1, e2)
    return f"saliency {e1:.1e}, contributions {e2:.1e}"


@check("browser demo: every named endpoint with its defaults")
def app_check(device):
    from gradio_client import Client

    import app
    app.configure(app.parse_args(["--device", device]))
    demo = app.build_demo()
    demo.queue(default_concurrency_limit=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        times = {}
        for api in ("/partition", "/erf", "/attribution", "/hidden_attention", "/ablation_table", "/measure_row"):
            t = time.perf_counter()
            client.predict(api_name=api)
            times[api] = round(time.perf_counter() - t, 1)
        model, _ = app.get_model("tiny", "ES2D", 2, True, True, "", 0)
        assert next(model.parameters()).device.type == torch.device(device).type
    finally:
        demo.close()
    return f"seconds per endpoint {times}"


@check("trainer: mixed precision steps and a checkpoint that loads back")
def train_check(device):
    import evmamba
    from ablations.train import TrainConfig, train
    out = Path(tempfile.mkdtemp())
    result = train(TrainConfig(data="markers", steps=6, batch_size=16, train_images=128, test_images=32,
                               image_size=32, lr=2e-3, bn_batches=1), out, device=device, bar=False)
    losses = [entry[1] for entry in result["history"]]  # (step, loss, learning rate)
    assert all(np.isfinite(losses)), losses
    model = evmamba.model_from_checkpoint(out / "final.pth")
    return f"amp {result['amp']}, losses {', '.join(f'{v:.3f}' for v in losses)}, checkpoint loads: " \
           f"{type(model).__name__}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device visible to torch", file=sys.stderr)
        return 1
    from evmamba.scan import resolve_backend
    print(f"device {args.device}; the scan backend auto picks {resolve_backend('auto', args.device)!r}", flush=True)
    for fn in (erf_check, attention_check, attribution_check, app_check, train_check):
        fn(args.device)
    failed = [name for name, verdict in RESULTS if verdict == "FAIL"]
    skipped = [name for name, verdict in RESULTS if verdict == "SKIP"]
    print(f"\n{sum(v == 'PASS' for _, v in RESULTS)} of {len(RESULTS)} checks passed"
          + (f"; skipped (packages missing): {skipped}" if skipped else "") + (f"; failed: {failed}" if failed else ""))
    return len(failed)


if __name__ == "__main__":
    sys.exit(main())
