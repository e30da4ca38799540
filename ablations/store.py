"""Where results live: items keyed by a hash of their configuration, files written atomically, the manifest.

An item (a training run, a set of measurements, a figure) is computed once per configuration: its result
is stored under a name that contains the hash of the configuration, and a later run with the same
configuration reads it back instead of computing it again (unless forced). Every file is written to a
temporary file in the same folder and renamed into place, so an interrupted run never leaves a
half-written file behind: a file is either the old one, the new one, or absent.
"""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from pathlib import Path

from evmamba.files import atomic_path, atomic_write_text

# Part of every hash: bump it when a change to the code changes what an item computes.
CODE_VERSION = 1


def canonical(obj) -> str:
    """A JSON text of `obj` that is the same for equal configurations (sorted keys, tuples as lists)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(o):
    if isinstance(o, (tuple, set, frozenset)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot hash a {type(o).__name__} in a configuration: use plain numbers, strings, lists, dicts")


def config_hash(config) -> str:
    """16 hex digits of the SHA-256 of the canonical configuration (and CODE_VERSION)."""
    return hashlib.sha256(canonical({"v": CODE_VERSION, "config": config}).encode()).hexdigest()[:16]


def save_figure(fig, path, **savefig_options) -> Path:
    """Save a matplotlib figure atomically; the format comes from the suffix of `path`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."), **savefig_options)
    return path


def file_digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ResultStore:
    """JSON results under ROOT/<kind>/<name>-<hash>.json, for configurations hashed by `config_hash`."""

    def __init__(self, root):
        self.root = Path(root)

    def path(self, kind: str, config, name: str = "") -> Path:
        key = config_hash(config)
        return self.root / kind / (f"{name}-{key}.json" if name else f"{key}.json")

    def get(self, kind: str, config, name: str = ""):
        p = self.path(kind, config, name)
        if not p.exists():
            return None
        try:
            stored = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # unreadable: compute again (and overwrite)
        if stored.get("config") != json.loads(canonical(config)):
            return None
        return stored.get("result")

    def put(self, kind: str, config, result, name: str = "") -> Path:
        return atomic_write_text(self.path(kind, config, name),
                                 json.dumps({"config": json.loads(canonical(config)), "result": result}, indent=1,
                                            default=_json_default))


# ---- provenance ---------------------------------------------------------------------------------------
def git_revision(cwd=None) -> str:
    """The checkout's commit, with "+changes" when tracked files differ from it; "unknown" outside git."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


PACKAGES = ("torch", "numpy", "matplotlib", "pandas", "captum", "tqdm", "evmamba", "mamba_ssm")


def package_versions(names=PACKAGES) -> dict:
    from importlib import metadata
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            mod = sys.modules.get(name)
            out[name] = getattr(mod, "__version__", "not installed") if mod else "not installed"
    return out


def device_description(device: str = "cpu") -> str:
    """What ran the measurements: the CPU model and core count and torch's thread count, or the GPU."""
    import torch
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda})"
    from evmamba.timing import cpu_name
    return f"CPU: {cpu_name()}"


__all__ = ["CODE_VERSION", "ResultStore", "atomic_path", "atomic_write_text", "canonical",
           "config_hash", "device_description", "file_digest", "git_revision", "package_versions", "save_figure"]
