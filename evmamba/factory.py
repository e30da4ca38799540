"""Making models: `create` (the one factory: a ModelConfig, a seed, weights) and the two calls users write,
`build_model` and `model_from_checkpoint`. It imports both the model and the checkpoint reader; neither
of them imports it.

    model = build_model("tiny")                                   # the released design, fresh weights
    model = build_model("tiny", scan="ss2d", gate=False, seed=0)  # weights that depend only on the seed
    model = build_model("tiny", pretrained=True)                  # the authors' ImageNet-1K weights
    model = build_model("tiny", weights="study:markers")          # trained by the study (shipped)
    model = create(ModelConfig(variant="small"), seed=3, weights="run/final.pth")

    f = fit("study:markers", scan="ss2d")    # the design these weights run as, or a DesignMismatchError
    model = build(f)                         # naming each field they cannot honour; then the model
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .checkpoint import Checkpoint, describe_checkpoint, load_checkpoint, read_checkpoint
from .checks import flag, integer
from .errors import DesignMismatchError
from .imagenet import class_names, preprocess
from .model import EfficientVMamba, ModelConfig, Weights
from .routes import num_routes, scan_label
from .study_models import is_study_name, read_study_model, study_weights

# The authors' ImageNet-1K checkpoints (the released design: ES2D at step 2, EVSS-EVSS-IR-IR, 1000 classes).
PRETRAINED = {
    "tiny": "hf:TerryPei/EfficientVMamba-Tiny",
    "small": "hf:TerryPei/EfficientVMamba-Small",
    "base": "hf:TerryPei/EfficientVMamba-Base",
}
IMAGENET = "ImageNet-1K"


def create(config: ModelConfig, *, seed: int | None = None, weights=None) -> EfficientVMamba:
    """The model of `config`. seed: its initial weights depend only on the seed (the global random state
    is left as it was); None draws them from the global state. weights: a checkpoint to load strictly
    (a path, an hf: name or a loaded object, see load_checkpoint)."""
    config = config.validate()
    if seed is None:
        model = EfficientVMamba(config)
    else:
        seed = integer(seed, "seed", low=0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = EfficientVMamba(config)
        model.weights = Weights(seed=seed)
    if weights is not None:
        load_checkpoint(model, weights)
    return model


def build_model(variant: str = "tiny", *, pretrained: bool = False, seed: int | None = None, weights=None,
                **options) -> EfficientVMamba:
    """EfficientVMamba-{tiny,small,base} with the paper's design choices as options: every field of
    ModelConfig (scan, step, conv_branch, gate, stages, num_classes, drop_path, backend; see its field
    docs). Unknown options raise a ValueError that lists the valid ones.

    seed: initial weights that depend only on the seed (see `create`).
    pretrained: load the authors' ImageNet-1K weights (PRETRAINED, downloaded once and cached; see
        evmamba.hub), in eval mode, with `model.weights` naming the 1000 classes (index = class id) and
        the preprocessing (evmamba.preprocess). Only the released design has trained weights, so any other
        structural option raises a ValueError. SS2D has the same parameter shapes but was not what the
        weights were trained with; to study ES2D weights under SS2D, load them explicitly:
        load_checkpoint(build_model(variant, scan="ss2d"), PRETRAINED[variant]).
    weights: "study:NAME", a trained model of the study shipped with the package (evmamba.study_models:
        its design, task classes and preprocessing come with it; options may only repeat its design), or
        a checkpoint (a path, an hf: name) loaded strictly into the model the options describe.
    """
    flag(pretrained, "pretrained")
    if weights is not None and pretrained:
        raise ValueError("give pretrained=True (the authors' ImageNet-1K weights) or weights=..., not both")
    if is_study_name(weights):
        if seed is not None:
            raise ValueError(f"seed= sets initial weights; {weights} loads trained ones: drop seed")
        try:
            return build(fit(weights, variant=variant, **options))
        except DesignMismatchError as e:
            raise ValueError(f"{e}: drop those options") from None
    config = ModelConfig.from_options(variant=variant, **options)
    if not pretrained:
        return create(config, seed=seed, weights=weights)
    _check_pretrained(config)
    checkpoint = read_checkpoint(PRETRAINED[config.variant])  # fetched first: no network fails before building
    return imagenet_weights(create(config, seed=seed, weights=checkpoint)).eval()


# ---- which model answers a design with given weights ------------------------------------------------
FREE = ("backend", "drop_path")  # fields that any weights take as given: they change no parameter


@dataclass(frozen=True)
class Fit:
    """The model a design and a weights choice make, before it is built (see `fit`): its design, the input
    side its weights expect, and what `build` loads."""

    config: ModelConfig
    image_size: int = 224
    study: str | None = None  # "study:NAME" for a study model
    checkpoint: Checkpoint | None = None  # the checkpoint read, for other trained weights; None: fresh weights
    source: str | None = None  # the weights' name, as the caller gave it


def fit(weights=None, *, label: str | None = None, **options) -> Fit:
    """The design that runs when a model with the build_model `options` is given `weights` (None: fresh
    weights; "study:NAME"; a checkpoint: a path, an hf: name, a loaded object), or a DesignMismatchError
    whose message names every given option the weights cannot honour (label: what to call the weights in
    it). An option left out takes the weights' value (the class count, a study model's design); backend and
    drop_path are always the caller's. Reads a checkpoint, builds nothing."""
    options = {k: v for k, v in options.items() if v is not None or k != "variant"}
    if weights is None:
        return Fit(ModelConfig.from_options(**options))
    study = is_study_name(weights)
    if study:
        fixed, _, meta = read_study_model(weights)
        size, ckpt = meta["image_size"], None
    else:
        ckpt = read_checkpoint(weights)
        fixed, size = describe_checkpoint(ckpt), 224
    fixed = {k: v for k, v in fixed.items() if k not in FREE}
    name = label or (weights if isinstance(weights, str) else ckpt.name)
    config = ModelConfig.from_options(**{**fixed, **options}).settled()
    own = ModelConfig(**fixed).settled()
    differ = [f"{k}={getattr(config, k)!r} (weights: {getattr(own, k)!r})" for k in options
              if k in fixed and config.applies(k) and getattr(config, k) != getattr(own, k)]
    if not study and "scan" not in fixed and any(kind == "evss" for kind in config.stages) and \
            num_routes(config.scan, config.step) != num_routes("es2d"):  # 4 routes: ES2D at step 2 or SS2D
        differ.append(f"scan={config.scan!r}, step={config.step!r} ({num_routes(config.scan, config.step)} routes; "
                      f"the weights' mixers have {num_routes('es2d')})")
    if differ:
        kind = "was trained as another design" if study else f"holds another design ({own.call()})"
        raise DesignMismatchError(f"{name} {kind}: {', '.join(differ)}", differ)
    return Fit(config, size, weights if study else None, ckpt, weights if isinstance(weights, str) else None)


def build(f: Fit, seed: int | None = None) -> EfficientVMamba:
    """The model of a `fit`: fresh weights (from `seed`), a study model in eval mode with its classes and
    inputs, or the checkpoint loaded strictly (the authors' ImageNet-1K weights with their class names)."""
    if f.study is not None:
        _, state, meta = read_study_model(f.study)
        model = create(f.config, weights=state).eval()
        model.weights = dataclasses.replace(model.weights, **study_weights(f.study, meta))
        return model
    model = create(f.config, seed=seed, weights=f.checkpoint)
    if f.checkpoint is not None and f.source in PRETRAINED.values():
        imagenet_weights(model)
    return model


def imagenet_weights(model: EfficientVMamba) -> EfficientVMamba:
    """Record on `model` that its weights are the authors' ImageNet-1K ones: the 1000 class names and the
    evaluation preprocessing (evmamba.preprocess)."""
    model.weights = dataclasses.replace(model.weights, class_names=tuple(class_names()), preprocess=preprocess,
                                        task=IMAGENET)
    return model


def _check_pretrained(config: ModelConfig) -> None:
    if config.variant not in PRETRAINED:
        raise ValueError(f"no pretrained weights for variant {config.variant!r}: they exist for "
                         f"{', '.join(PRETRAINED)}")
    released = ModelConfig(variant=config.variant, backend=config.backend, drop_path=config.drop_path)
    differ = [f"{name}={value!r}" for name, value in config.options().items()
              if getattr(released.validate(), name) != value]
    if differ:
        hint = ""
        if config.scan != "es2d" and num_routes(config.scan, config.step) == num_routes("es2d"):
            label = scan_label(config.scan, config.step)
            hint = (f" ({label} has the same parameters (4 routes), so to run the ES2D-trained weights under "
                    f"{label} load them explicitly: load_checkpoint(build_model({config.variant!r}, "
                    f"scan={config.scan!r}), {PRETRAINED[config.variant]!r}))")
        elif config.num_classes != 1000:
            hint = (" (to fine-tune on other classes, load the pretrained model and replace "
                    "model.classifier.head with a new nn.Linear)")
        verb = "changes" if len(differ) == 1 else "change"
        raise ValueError(f"pretrained=True loads the released ImageNet-1K model, but {', '.join(differ)} {verb} "
                         f"the design the weights were trained for{hint}: drop those options, or pass "
                         "pretrained=False to build that model with fresh weights")


def model_from_checkpoint(source, **overrides) -> EfficientVMamba:
    """Build the model a checkpoint fits (see describe_checkpoint) and load it strictly.
    Keyword arguments override the inferred build_model options (e.g. scan="ss2d", backend="torch")."""
    ckpt = read_checkpoint(source)
    options = {**describe_checkpoint(ckpt), **overrides}
    return create(ModelConfig.from_options("model_from_checkpoint", **options), weights=ckpt)


__all__ = ["IMAGENET", "PRETRAINED", "Fit", "build", "build_model", "create", "fit", "imagenet_weights",
           "model_from_checkpoint"]
