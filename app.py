"""The evmamba browser demo: how EfficientVMamba's atrous scan partitions patches, what each scan direction
sees, what the classifier looks at, and the ablation tables.

    python app.py                         # http://127.0.0.1:7860, GPU when there is one
    python app.py --device cpu --port 8080 --variant small
    python app.py --host 0.0.0.0 --weights-dir /srv/checkpoints      # shared with a lab

The usual Gradio environment variables (GRADIO_SERVER_NAME, GRADIO_SERVER_PORT, ...) still apply when the
matching flag is not given. The page is built in webapp/ (layout, handlers, the model cache, the budget
of a request); every picture and number comes from a function of `evmamba` or `ablations`.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from pathlib import Path

import torch

import evmamba
from webapp import jobs, memory, models, views
from webapp.layout import build_demo
from webapp.settings import MAX_UPLOAD, SETTINGS


def _loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="The evmamba browser demo.")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on (0.0.0.0: every network interface)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--variant", default="tiny", choices=list(evmamba.VARIANTS))
    p.add_argument("--weights", default="", help="the model panel's starting weights (one of its choices)")
    p.add_argument("--weights-dir", action="append", default=[], type=Path, metavar="DIR",
                   help="a folder whose checkpoint files web users may load (repeatable; none by default)")
    p.add_argument("--allow-hub-downloads", action=argparse.BooleanOptionalAction, default=None,
                   help="let web users name other Hub repositories than the authors' (default: on when "
                        "listening on loopback only, off otherwise)")
    p.add_argument("--ablations", default="", help="folder of an ablation run (default: assets/ablations)")
    p.add_argument("--concurrency", type=int, default=2, help="requests computing at once (default 2)")
    p.add_argument("--max-cost", type=float, default=SETTINGS.max_cost,
                   help="refuse requests estimated above this many seconds of compute (0: no limit)")
    p.add_argument("--time-limit", type=float, default=SETTINGS.time_limit,
                   help="stop a request after this many seconds (0: no limit)")
    p.add_argument("--mmap-threshold", type=int, default=memory.MMAP_THRESHOLD // 1024, metavar="KIB",
                   help="allocations from this many KiB up are mapped on their own and returned when freed "
                        f"(default {memory.MMAP_THRESHOLD // 1024}: a lower peak memory; 0: glibc's adaptive "
                        "threshold, faster analyses at 224x224 for about 100 MB more peak)")
    return p.parse_args(argv)


def configure(args):
    if args.mmap_threshold < 0:
        raise SystemExit(f"--mmap-threshold {args.mmap_threshold}: give a size in KiB, or 0 for glibc's own")
    memory.limit_fragmentation(args.mmap_threshold * 1024)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch; use --device cpu or auto")
    SETTINGS.device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    SETTINGS.variant = args.variant
    SETTINGS.weights = args.weights
    for folder in args.weights_dir:
        if not folder.is_dir():
            raise SystemExit(f"--weights-dir {folder}: not a folder")
    SETTINGS.weights_dirs = tuple(folder.resolve() for folder in args.weights_dir)
    hub = args.allow_hub_downloads
    SETTINGS.allow_hub_downloads = _loopback(args.host) if hub is None else hub
    SETTINGS.ablations = args.ablations
    SETTINGS.compute_slots = max(1, args.concurrency)
    SETTINGS.max_cost, SETTINGS.time_limit = args.max_cost, args.time_limit
    views.ablation_tables.cache_clear()
    models.clear()
    jobs.reset_slots()


def launch(demo, args, **options):
    demo.queue(default_concurrency_limit=max(1, args.concurrency), max_size=32)
    return demo.launch(server_name=args.host, server_port=args.port, show_error=True, max_file_size=MAX_UPLOAD,
                       **options)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    configure(args)
    launch(build_demo(), args)


__all__ = ["build_demo", "configure", "launch", "main", "parse_args"]

if __name__ == "__main__":
    main()
