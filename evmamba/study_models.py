"""The trained models of the study (`python -m ablations study`), shipped with the package in 8-bit form
(evmamba.compact) under evmamba/data/study, and loaded by name:

    model = build_model("tiny", weights="study:markers")        # the released design (ES2D)
    model = build_model("tiny", weights="study:markers-ss2d")   # SS2D, same task, same seed and data
    study_models()                                              # {name: what it is, its test accuracy, ...}

Each file holds the weights and what using them needs: the design (ModelConfig options), the task, its
class names, the input size, the normalisation, and the test accuracy of the full-precision weights and of
the stored ones on the task's fixed test set. `model.weights.preprocess` turns images (PIL, arrays; uint8
or float in [0, 1]) into the batch the model expects: resized to the training size (bicubic, the whole
image) and normalised as the task images were.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

STUDY_DIR = Path(__file__).with_name("data") / "study"
PREFIX = "study:"
# the procedural tasks' images live in [0, 1] around grey; the trainer normalises them with these
TASK_MEAN, TASK_STD = 0.5, 0.25


def task_preprocess(image, size: int = 32):
    """A float32 batch (N, 3, size, size) for a study model from one image or a list (the whole image
    resized to size x size, bicubic; then (x - TASK_MEAN) / TASK_STD)."""
    from .imagenet import _batch
    return _batch(image, size, crop=False, mean=(TASK_MEAN,) * 3, std=(TASK_STD,) * 3)


def _files() -> dict:
    """{name: file}, a task's released-design model ("markers") before its variants ("markers-ss2d")."""
    return {p.stem: p for p in sorted(STUDY_DIR.glob("*.pt"), key=lambda p: (p.stem.split("-")[0], p.stem))}


@functools.cache
def _meta(name: str) -> dict:
    """A shipped model's metadata (kept: small); its weights are read when a model is built, not kept here."""
    from .compact import read_compact_meta
    return read_compact_meta(_files()[name])


def study_models() -> dict:
    """{name: metadata} of the shipped study models (design, task, classes, accuracies, training)."""
    return {name: _meta(name) for name in _files()}


def is_study_name(source) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def study_model_meta(source: str) -> dict:
    name = source.removeprefix(PREFIX)
    files = _files()
    if name not in files:
        known = ", ".join(PREFIX + n for n in files) or "none (this installation ships none)"
        raise ValueError(f"no study model {source!r}: the shipped ones are {known}")
    return _meta(name)


def read_study_model(source: str) -> tuple[dict, dict, dict]:
    """(design, state, metadata) of the study model `source` ("study:NAME"): its ModelConfig fields (all of
    them, defaults included), its weights as a state dict, and what the file says about them. Building the
    model is the factory's (evmamba.factory.fit and build)."""
    from .compact import read_compact
    from .model import ModelConfig
    meta = study_model_meta(source)
    state, _ = read_compact(_files()[source.removeprefix(PREFIX)])
    design = dataclasses.asdict(ModelConfig(**meta["model"]).validate())
    return design, state, meta


def study_weights(source: str, meta: dict) -> dict:
    """The `Weights` fields (evmamba.model.Weights) of a study model: its class names, task and inputs."""
    from .model import InputSpec
    return dict(source=source, seed=None, class_names=tuple(meta["class_names"]),
                preprocess=functools.partial(task_preprocess, size=meta["image_size"]),
                inputs=InputSpec(meta["image_size"], "stretch", (TASK_MEAN,) * 3, (TASK_STD,) * 3),
                task=f"the {meta['task']} task ({meta['image_size']}x{meta['image_size']}, procedural)")


__all__ = ["PREFIX", "STUDY_DIR", "TASK_MEAN", "TASK_STD", "is_study_name", "read_study_model", "study_model_meta",
           "study_models", "study_weights", "task_preprocess"]
