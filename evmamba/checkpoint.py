"""Checkpoints: read the authors' files (and ours), map their keys, load strictly, say what does not fit.

The authors' released files are PyTorch pickles whose state dict is bare or under `model`, `state_dict`,
`model_ema` or `state_dict_ema`, with keys possibly prefixed by `module.` (once or twice) or `backbone.`.
Their key names are this package's key names, so the only mapping is unwrapping and prefix stripping
(`normalise_state_dict`). Files are read with `torch.load(weights_only=True)`; training checkpoints that
also pickle foreign objects (a yacs config, say) are read with those objects replaced by inert
placeholders, so no code from the file is ever run.

`save_checkpoint` writes `{"model": state_dict, "evmamba": config}` (the authors' loader reads "model"),
or a .safetensors file with the config in its metadata.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .errors import CheckpointError, CheckpointMismatchError
from .files import atomic_path
from .hub import resolve
from .model import STAGE_KINDS, VARIANTS, EfficientVMamba, ModelConfig
from .routes import scan_label

WRAPPER_KEYS = ("model", "state_dict", "model_ema", "state_dict_ema")
PREFIXES = ("module.", "backbone.")
CONFIG_KEY = "evmamba"
SHOW = 4  # how many keys of each kind an error message names


@dataclass
class Checkpoint:
    """A state dict read from a file or object, with what was learnt while reading it."""

    state_dict: dict
    source: str = "<object>"
    wrapper_key: str | None = None  # the key the state dict was found under, if any
    config: dict | None = None  # build_model options stored by save_checkpoint, if any
    notes: list = field(default_factory=list)


@dataclass
class LoadReport:
    missing: list
    unexpected: list
    mismatched: list  # (key, checkpoint shape, model shape)
    checkpoint: Checkpoint

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


# ---- reading ------------------------------------------------------------------------------------
class _Opaque(dict):
    """Stands in for a pickled object whose class is not a tensor type (e.g. a training config)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state):
        self.state = state


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e) and "weights_only" not in str(e).lower():
            raise
    # Foreign classes in the pickle: replace each by an inert placeholder, still with weights_only=True.
    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    stubs = [(type(n.rsplit(".", 1)[-1], (_Opaque,), {}), n) for n in names]
    with torch.serialization.safe_globals(stubs):
        return torch.load(path, map_location="cpu", weights_only=True)


def _read_file(path: Path) -> tuple[object, dict | None]:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder: pass the checkpoint file inside it (.pth, .pt, .safetensors)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                obj = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({e}): download it again") from None
        config = json.loads(meta[CONFIG_KEY]) if CONFIG_KEY in meta else None
        return obj, config
    try:
        obj = _torch_load(path)
    except Exception as e:  # noqa: BLE001 - a corrupt zip, a truncated pickle, a text file: each becomes one message
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        detail = f"{type(e).__name__}: {text[:160]}" if len(text) > 8 else "neither a zip archive nor a pickle"
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({detail}); the file may be "
                              "truncated or of another kind: download it again or pass the right file") from None
    return obj, None


def normalise_state_dict(obj) -> tuple[dict, str | None]:
    """Unwrap the state dict (bare or under one of WRAPPER_KEYS) and strip `module.`/`backbone.` prefixes."""
    wrapper = None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj, wrapper = obj[key], key
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(map(str, list(obj)[:8])) or "none"
        raise CheckpointError(f"found no model weights: top-level keys are {keys}; expected a state dict, bare "
                              f"or under one of {', '.join(WRAPPER_KEYS)}")
    out = {}
    for k, v in tensors.items():
        while k.startswith(PREFIXES):
            k = k.split(".", 1)[1]
        out[k] = v
    return out, wrapper


def read_checkpoint(source, *, max_bytes: int | None = None) -> Checkpoint:
    """A `Checkpoint` from a file path, a Hub name (`hf:OWNER/REPO[/FILE]`, see evmamba.hub; a file larger
    than `max_bytes` is not downloaded), a loaded object (dict, state dict, module) or a Checkpoint."""
    if isinstance(source, Checkpoint):
        return source
    config, notes = None, []
    if isinstance(source, str) and source.startswith("hf:"):
        found = resolve(source, max_bytes=max_bytes)  # downloads or finds in the cache; says which file
        obj, config = _read_file(found.path)
        name, notes = str(found.name), list(found.notes)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        obj, config = _read_file(path)
        name = str(path)
    else:
        obj, name = source, "<object>"
    if config is None and isinstance(obj, Mapping) and isinstance(obj.get(CONFIG_KEY), Mapping):
        config = dict(obj[CONFIG_KEY])
    if config is not None and "se" in config:  # files written before the gate had its own name
        config["gate"] = config.pop("se")
    sd, wrapper = normalise_state_dict(obj)
    return Checkpoint(sd, name, wrapper, config, notes)


# ---- what a checkpoint is -----------------------------------------------------------------------
def describe_checkpoint(source) -> dict:
    """The `build_model` options a checkpoint fits, inferred from its keys and shapes (or stored in it).

    Returns a dict of build_model keyword arguments plus "variant"; "scan" is absent when the file cannot
    tell ES2D at step 2 from SS2D (same parameters). Raises CheckpointError when it is not this model."""
    ckpt = read_checkpoint(source)
    if ckpt.config:
        return dict(ckpt.config)
    sd = ckpt.state_dict
    if "patch_embed.0.weight" not in sd:
        raise CheckpointError("not an EfficientVMamba checkpoint: it has no patch_embed.0.weight "
                              f"(first keys: {', '.join(list(sd)[:SHOW])})")
    stages, depths, dims = [], [], []
    for i in range(4):
        evss = sorted({int(k.split(".")[3]) for k in sd if k.startswith(f"layers.{i}.blocks.")})
        ir = sorted({int(k.split(".")[2]) for k in sd if k.startswith(f"layers.{i}.") and ".conv_pw." in k})
        if evss:
            stages.append("evss")
            depths.append(len(evss))
            dims.append(sd[f"layers.{i}.blocks.0.norm.weight"].shape[0])
        elif ir:
            stages.append("ir")
            depths.append(len(ir))
            dims.append(sd[f"layers.{i}.1.conv_pw2.0.weight"].shape[0])
        else:
            raise CheckpointError(f"not an EfficientVMamba checkpoint: stage layers.{i} has no blocks")
    found = [v for v, spec in VARIANTS.items() if tuple(spec["dims"]) == tuple(dims)
             and tuple(spec["depths"]) == tuple(depths)]
    if not found:
        known = "; ".join(f"{v}: widths {s['dims']}, depths {s['depths']}" for v, s in VARIANTS.items())
        raise CheckpointError(f"this checkpoint's stages (widths {tuple(dims)}, depths {tuple(depths)}) match no "
                              f"variant ({known})")
    out = {"variant": found[0]}
    if tuple(stages) != ("evss", "evss", "ir", "ir"):
        out["stages"] = tuple(stages)
    xproj = [v for k, v in sd.items() if k.endswith("op.x_proj_weight")]
    if xproj:
        routes = xproj[0].shape[0]
        step = round(routes ** 0.5)
        if step * step != routes:
            raise CheckpointError(f"its mixers have {routes} routes, which no built-in scan has (ES2D: step², the "
                                  "others: 4); a model with a scan of your own loads it once that family is "
                                  "registered (evmamba.register_scan) and the model built with it")
        if step != 2:
            out.update(scan="es2d", step=step)
        out["conv_branch"] = any(".conv_branch." in k for k in sd)
        out["gate"] = any(".se.global_reduce." in k for k in sd)
    head = sd.get("classifier.head.weight")
    out["num_classes"] = head.shape[0] if head is not None else 0
    assert set(stages) <= set(STAGE_KINDS)
    return out


def _call(options: dict, keep=()) -> str:
    """A build_model(...) call for `options` (a variant and build_model options), defaults left out."""
    return ModelConfig(**options).call(keep)


def _model_options(model) -> dict:
    """The structural options of an EfficientVMamba (not the backend or stochastic depth), for files."""
    if not isinstance(model, EfficientVMamba):
        return {}
    d = dataclasses.asdict(model.config)
    d.pop("backend", None)
    d.pop("drop_path", None)
    return d


def _mismatch_message(model, report: LoadReport) -> str:
    parts = []
    for label, items, fmt in (
        ("missing from the checkpoint", report.missing, str),
        ("unexpected in the checkpoint", report.unexpected, str),
        ("with other shapes", report.mismatched,
         lambda m: f"{m[0]} (checkpoint {'x'.join(map(str, m[1]))}, model {'x'.join(map(str, m[2]))})"),
    ):
        if items:
            more = f", ... {len(items) - SHOW} more" if len(items) > SHOW else ""
            parts.append(f"{len(items)} keys {label}: {', '.join(fmt(i) for i in items[:SHOW])}{more}")
    mine = _model_options(model)
    what = _call(mine, keep=("scan", "step", "num_classes")) if mine else type(model).__name__
    routes = [(ck[0], mo[0]) for key, ck, mo in report.mismatched if key.endswith("op.x_proj_weight")]
    if routes and mine:
        ck, mo = routes[0]
        parts.insert(0, f"the checkpoint's mixers have {ck} routes (per-route parameter sets), the model's scan "
                        f"{scan_label(mine['scan'], mine['step'])} has {mo}")
    msg = f"checkpoint {report.checkpoint.source} does not fit the model {what}:\n  " + "\n  ".join(parts)
    try:
        fits = describe_checkpoint(report.checkpoint)
    except CheckpointError as e:
        msg += f"\n{e}"
    else:
        msg += f"\nThe checkpoint fits {_call(fits)}: build that model instead, or use evmamba.model_from_checkpoint."
    return msg


# ---- loading and saving -------------------------------------------------------------------------
def compare_state_dicts(model: nn.Module, sd: dict) -> tuple[list, list, list]:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own
                  if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, mismatched


def load_checkpoint(model: nn.Module, source, strict: bool = True) -> LoadReport:
    """Load `source` (a path, an `hf:OWNER/REPO[/FILE]` Hub name or a loaded object) into `model`.

    strict=True (default): every key must be present with its shape, or a CheckpointMismatchError names the
    missing, unexpected and mis-shaped keys and the model the checkpoint fits. strict=False loads the keys
    that fit and returns (and logs) what did not; it never loads a mis-shaped tensor."""
    ckpt = read_checkpoint(source)
    missing, unexpected, mismatched = compare_state_dicts(model, ckpt.state_dict)
    # BatchNorm's step counter is optional in old files; PyTorch fills it in itself.
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    report = LoadReport(missing, unexpected, mismatched, ckpt)
    if strict and not report.ok:
        raise CheckpointMismatchError(_mismatch_message(model, report))
    bad = {m[0] for m in mismatched}
    sd = {k: v for k, v in ckpt.state_dict.items() if k not in bad and k not in unexpected}
    model.load_state_dict(sd, strict=False)
    if isinstance(model, EfficientVMamba):
        model.weights = dataclasses.replace(model.weights, source=ckpt.source, seed=None)
    if not report.ok:
        import logging
        logging.getLogger("evmamba").warning(_mismatch_message(model, report).replace("does not fit", "partly fits"))
    return report


def save_checkpoint(model: nn.Module, path, extra: dict | None = None) -> Path:
    """Write the model's weights to `path` atomically (a temporary file, then rename).

    .safetensors: the tensors, with the build options as JSON metadata. Otherwise a PyTorch file
    {"model": state_dict, "evmamba": build options, **extra} that the authors' code also reads."""
    path = Path(path).expanduser()
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    options = _model_options(model)
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file
            meta = {CONFIG_KEY: json.dumps(options)} if options else None
            save_file(sd, str(tmp), metadata=meta)
        else:
            obj = {"model": sd, **({CONFIG_KEY: options} if options else {}), **(extra or {})}
            torch.save(obj, tmp)
    return path
