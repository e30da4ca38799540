"""A first look from the command line: the model, what its scan reads, and a prediction.

    python -m evmamba                                   # tiny, ES2D, random weights, a sample image
    python -m evmamba --scan ss2d --variant small
    python -m evmamba --checkpoint efficientvmamba_tiny.pth --image cat.jpg
    python -m evmamba routes --size 56                  # every scan family's locality numbers on a 56x56 map
"""
from __future__ import annotations

import argparse
import sys
import time

import torch


def route_grid(routes) -> str:
    """The route that reads each position of a small grid, as text (ES2D), or route 0's order (SS2D)."""
    if routes.readers == 1:
        grid = routes.route_map()
    else:
        grid = routes.reading_order(0)
    width = max(len(str(int(grid.max()))), 1)
    return "\n".join("    " + " ".join(str(int(v)).rjust(width) for v in row) for row in grid)


def test_pattern(size: int = 256):
    """A colour test picture made here (hue ramps and a checkerboard), for when no sample image is installed."""
    import numpy as np
    ramp = np.linspace(0, 1, size)
    board = ((np.arange(size)[:, None] // 32 + np.arange(size)[None, :] // 32) % 2).astype(float)
    rgb = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1), 0.25 + 0.5 * board], axis=-1)
    return (255 * rgb).astype(np.uint8)


def load_image(path: str | None):
    if path is None:
        try:
            from skimage import data
        except ImportError:  # scikit-image comes with the app extra, not with evmamba itself
            return test_pattern(), "a generated test pattern (pip install scikit-image for a sample photograph)"
        return data.astronaut(), "scikit-image's astronaut sample"
    from PIL import Image, UnidentifiedImageError
    try:
        return Image.open(path), path
    except (FileNotFoundError, UnidentifiedImageError, IsADirectoryError) as e:
        raise SystemExit(f"cannot read the image {path!r} ({e.__class__.__name__}): pass a PNG or JPEG file") from None


def routes_main(argv) -> int:
    from .locality import format_table, routes_table
    p = argparse.ArgumentParser(prog="python -m evmamba routes", description="Every registered scan family on "
                                "one map: routes, tokens read, padding, jumps between consecutive tokens, and "
                                "the share of position pairs within a distance that a route reads close together.")
    p.add_argument("--size", type=int, default=56, help="map side in tokens (default 56: stage 1 at 224x224)")
    p.add_argument("--width", type=int, help="map width, when not square")
    p.add_argument("--distance", type=float, default=1.0, help="pairs at most this far apart (default 1)")
    p.add_argument("--tokens", type=int, default=1, help="read within this many tokens (default 1)")
    p.add_argument("--step", type=int, default=2, help="ES2D's step (default 2)")
    p.add_argument("--window", type=int, default=7, help="the windows family's side (default 7)")
    args = p.parse_args(argv)
    try:
        rows = routes_table(args.size, args.width, distance=args.distance, tokens=args.tokens,
                            params={"es2d": args.step, "windows": args.window})
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.size}x{args.width or args.size} map\n{format_table(rows)}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["routes"]:
        return routes_main(argv[1:])
    from . import build_model, count_parameters, load_checkpoint, scan_routes
    from .checkpoint import CheckpointError
    from .imagenet import class_names, preprocess
    from .routes import scan_label

    p = argparse.ArgumentParser(prog="python -m evmamba", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="tiny", help="tiny, small or base (default tiny)")
    p.add_argument("--scan", default="es2d", help="es2d (the paper's), ss2d (VMamba's), zigzag, windows, "
                   "hilbert or diagonal")
    p.add_argument("--step", type=int, default=2, help="ES2D skip step p, or the windows' side (default 2)")
    p.add_argument("--checkpoint", help="a checkpoint file (the authors' or ours), or hf:OWNER/REPO[/FILE]")
    p.add_argument("--image", help="an image file (default: a sample image bundled with scikit-image)")
    p.add_argument("--backend", default="auto",
                   help="selective-scan backend: auto, reference, torch, cpu_fused, mamba_ssm")
    p.add_argument("--size", type=int, default=224, help="input resolution (default 224)")
    args = p.parse_args(argv)

    try:
        model = build_model(args.variant, scan=args.scan, step=args.step, backend=args.backend).eval()
        if args.checkpoint:
            load_checkpoint(model, args.checkpoint)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    cfg = model.config
    print(f"EfficientVMamba-{cfg.variant}: {count_parameters(model):,} parameters, scan {cfg.scan.upper()}"
          + (f" ({scan_label(cfg.scan, cfg.step).split(' ', 1)[1]})" if cfg.applies("step") else "")
          + f", stages {', '.join(cfg.stages)}")
    print(f"\nWhat each stage's scan reads for a {args.size}x{args.size} input:")
    for i, ((h, w), kind) in enumerate(zip(model.stage_grids(args.size, args.size), cfg.stages)):
        if kind != "evss":
            print(f"  stage {i + 1}: {h}x{w} tokens, inverted-residual blocks (no scan)")
            continue
        r = scan_routes(cfg.scan, h, w, cfg.step)
        ss2d = scan_routes("ss2d", h, w)
        print(f"  stage {i + 1}: {h}x{w} tokens, {r.num_routes} routes x {r.length} tokens = {r.tokens_read} "
              f"read (SS2D would read {ss2d.tokens_read})")
    small = scan_routes(cfg.scan, 6, 8, cfg.step)
    what = "the route reading each position" if small.readers == 1 else "the order in which route 0 reads"
    print(f"\nOn a 6x8 grid, {what}:\n{route_grid(small)}")

    image, name = load_image(args.image)
    x = preprocess(image, size=args.size)
    with torch.no_grad():
        model(x)  # the first call sets up kernels and caches: time the second
        t = time.perf_counter()
        probs = model(x).softmax(-1)[0]
    elapsed = time.perf_counter() - t
    names = class_names()
    print(f"\nTop-5 for {name} ({elapsed * 1e3:.0f} ms on {x.device.type.upper()}):")
    for p_, i in zip(*probs.topk(5)):
        print(f"  {p_.item():6.1%}  {names[int(i)]}")
    if not args.checkpoint:
        print("  (random weights: these predictions mean nothing; pass --checkpoint for the trained model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
