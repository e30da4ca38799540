"""Making models: `create` (the one factory: a ModelConfig, a seed, weights) and the two calls users write,
`build_model` and `model_from_checkpoint`. It imports both the model and the checkpoint reader; neither
of them imports it.

    model = build_model("tiny")                                   # the released design, fresh weights
    model = build_model("tiny", scan="ss2d", gate=False, seed=0)  # weights that depend only on the seed
    model = build_model("tiny", pretrained=True)                  # the authors' ImageNet-1K weights
    model = build_model("tiny", weights="study:markers")          # trained by the study (shipped)
    model = create(ModelConfig(variant="small"), seed=3, weights="run/final.pth")
"""
from __future__ import annotations

import dataclasses

import torch

from .checkpoint import describe_checkpoint, load_checkpoint, read_checkpoint
from .checks import flag, integer
from .imagenet import class_names, preprocess
from .model import EfficientVMamba, ModelConfig, Weights
from .routes import num_routes, scan_label
from .study_models import is_study_name, load_study_model

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
        return load_study_model(weights, variant, **options)
    config = ModelConfig.from_options(variant=variant, **options)
    if not pretrained:
        return create(config, seed=seed, weights=weights)
    _check_pretrained(config)
    checkpoint = read_checkpoint(PRETRAINED[config.variant])  # fetched first: no network fails before building
    return imagenet_weights(create(config, seed=seed, weights=checkpoint)).eval()


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


__all__ = ["IMAGENET", "PRETRAINED", "build_model", "create", "imagenet_weights", "model_from_checkpoint"]
