"""Which checkpoints a web user may name: the boundary between the page and the server's files.

A web user chooses among what the app offers: random weights; the study's trained models shipped with
evmamba (`study:NAME`, evmamba.study_models); the authors' ImageNet-1K weights for each
variant (their Hub repositories); the checkpoint files in folders the operator allowed (--weights-dir);
or a file they upload. Any other server path, and any other Hub repository unless the operator allowed
Hub downloads (--allow-hub-downloads), is refused with one message that says nothing about the path:
whether it exists, is a folder or is unreadable is never checked, so the reply cannot tell. Messages about
a file's contents only ever concern uploaded files and files in allowed folders. (The Python API,
evmamba.load_checkpoint, takes any path: this boundary is the web page's.)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evmamba.factory import PRETRAINED
from evmamba.hub import CHECKPOINT_SUFFIXES, is_hub_name

from .settings import SETTINGS

RANDOM = "random"
NOT_ALLOWED = "not an allowed checkpoint: upload the file, or start the app with --weights-dir"


@dataclass(frozen=True)
class Weights:
    """A checkpoint a web user may load: `source` for evmamba.load_checkpoint, `label` for people."""

    source: str
    label: str
    kind: str  # "authors", "study", "folder" or "upload"

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.source}"


def _folder_files() -> list[Path]:
    out = []
    for folder in SETTINGS.weights_dirs:
        folder = Path(folder)
        if folder.is_dir():
            out += sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    return out


def _study() -> dict:
    """{"study:NAME": metadata} of the study's trained models shipped with evmamba."""
    from evmamba.study_models import PREFIX, study_models
    return {PREFIX + name: meta for name, meta in study_models().items()}


def study_label(name: str, meta: dict) -> str:
    return (f"{name}: {meta['design']} trained on the {meta['task']} task ({meta['image_size']}x"
            f"{meta['image_size']}), test accuracy {100 * meta['accuracy_stored']:.1f}%")


def default() -> str:
    """The panel's starting weights: the operator's --weights, else the first study model, else random."""
    if SETTINGS.weights and SETTINGS.weights in [v for _, v in choices()]:
        return SETTINGS.weights
    return next(iter(_study()), RANDOM)


def study_design(choice):
    """(ModelConfig, input side) of a study model's choice (its own design, not the panel's), else None."""
    text = choice.strip() if isinstance(choice, str) else ""
    meta = _study().get(text)
    if meta is None:
        return None
    from evmamba.model import ModelConfig
    return ModelConfig(**meta["model"]).settled(), meta["image_size"]


def choices() -> list[tuple[str, str]]:
    """(label, value) of every weights choice the model panel offers."""
    out = [("random weights (the seed below)", RANDOM)]
    out += [(study_label(name, meta), name) for name, meta in _study().items()]
    out += [(f"the authors' ImageNet-1K weights, {variant} ({name})", name) for variant, name in PRETRAINED.items()]
    out += [(f"{p.name} (in {p.parent})", str(p)) for p in _folder_files()]
    return out


def _inside_allowed_folder(text: str) -> Path | None:
    """The path `text` names when it lies inside an allowed folder, else None; decided on the names alone
    (symbolic links resolved), never by looking at the file."""
    try:
        path = Path(text).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    for folder in SETTINGS.weights_dirs:
        if path.is_relative_to(Path(folder).expanduser().resolve()):
            return path
    return None


def resolve(choice, upload=None) -> Weights | None:
    """The checkpoint a web user's choice names (None: random weights), or a ValueError with NOT_ALLOWED.

    choice: a value of `choices()` or text typed into the field; upload: the path Gradio saved an uploaded
    file to (it takes precedence)."""
    if upload:
        path = upload if isinstance(upload, str) else getattr(upload, "name", str(upload))
        return Weights(str(path), Path(path).name, "upload")
    text = (choice or "").strip() if isinstance(choice, str) else ""
    if text in ("", RANDOM):
        return None
    if text in _study():
        return Weights(text, text, "study")
    if text in PRETRAINED.values():
        return Weights(text, text, "authors")
    if is_hub_name(text):
        if SETTINGS.allow_hub_downloads:
            return Weights(text, text, "hub")
        raise ValueError(NOT_ALLOWED)
    path = _inside_allowed_folder(text)
    if path is None:
        raise ValueError(NOT_ALLOWED)
    return Weights(str(path), f"{path.name} (in {path.parent})", "folder")


__all__ = ["NOT_ALLOWED", "RANDOM", "Weights", "choices", "default", "resolve", "study_design", "study_label"]
