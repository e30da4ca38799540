"""EfficientVMamba (arXiv 2403.09977): the network, its variants as a table, and `build_model`.

    patch_embed   4x4 conv stride 4, LayerNorm                     H/4 x W/4
    layers.0..3   stages of EVSS or inverted-residual blocks, patch merging between stages
    classifier    LayerNorm, global average pool, Linear

The released design uses EVSS blocks in stages 1-2 and inverted-residual blocks in stages 3-4 with the
ES2D scan at step 2; every one of those choices is a switch of `build_model`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from .blocks import EVSSStage, IRStage, channels_last
from .routes import SCANS, check_scan
from .scan import check_backend

# Variants as data: stage widths and depths (parameter counts with the released layout in the comment).
VARIANTS = {
    "tiny": dict(dims=(48, 96, 192, 384), depths=(2, 2, 4, 2)),   # 6,493,660
    "small": dict(dims=(64, 128, 256, 512), depths=(2, 2, 4, 2)),  # 11,273,688 (the authors' config says 96: wrong)
    "base": dict(dims=(96, 192, 384, 768), depths=(2, 2, 9, 2)),  # 33,717,136
}
STAGE_KINDS = ("evss", "ir")
SCAN_PRECISIONS = ("float32", "autocast")
# Named stage layouts used by the paper's ablations (Table 6, Table 8).
STAGE_LAYOUTS = {
    "released": ("evss", "evss", "ir", "ir"),
    "all-evss": ("evss", "evss", "evss", "evss"),
    "ir-first": ("ir", "ir", "evss", "evss"),
    "all-ir": ("ir", "ir", "ir", "ir"),
}
MIN_INPUT = 32  # the network downsamples by 32


@dataclass(frozen=True)
class ModelConfig:
    variant: str = "tiny"
    scan: str = "es2d"
    step: int = 2
    conv_branch: bool = True
    se: bool = True
    stages: tuple = STAGE_LAYOUTS["released"]
    num_classes: int = 1000
    drop_path: float = 0.0
    backend: str = "auto"

    @property
    def dims(self):
        return VARIANTS[self.variant]["dims"]

    @property
    def depths(self):
        return VARIANTS[self.variant]["depths"]

    def validate(self) -> ModelConfig:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}: valid variants are {', '.join(VARIANTS)}")
        check_scan(self.scan, self.step)
        for name in ("conv_branch", "se"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        stages = self.stages
        if isinstance(stages, str):
            if stages not in STAGE_LAYOUTS:
                raise ValueError(f"unknown stage layout {stages!r}: valid names are {', '.join(STAGE_LAYOUTS)}, "
                                 f"or a tuple of four of {', '.join(STAGE_KINDS)}")
            stages = STAGE_LAYOUTS[stages]
        stages = tuple(stages)
        if len(stages) != 4 or any(s not in STAGE_KINDS for s in stages):
            raise ValueError(f"stages must be four of {', '.join(STAGE_KINDS)} (one per stage) or one of "
                             f"{', '.join(STAGE_LAYOUTS)}; got {self.stages!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0 (0 for no head), got {self.num_classes!r}")
        if not isinstance(self.drop_path, (int, float)) or not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must be a number in [0, 1), got {self.drop_path!r}")
        check_backend(self.backend)
        return dataclasses.replace(self, stages=stages, drop_path=float(self.drop_path))


class Classifier(nn.Module):
    """LayerNorm, global average pool over H and W, Linear (`classifier.norm`, `classifier.head`)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x):  # (B, H, W, C)
        return self.head(self.norm(x).mean(dim=(1, 2)))


class EfficientVMamba(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config = config.validate()
        dims, depths = config.dims, config.depths
        self.patch_embed = nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), channels_last(), nn.LayerNorm(dims[0]))
        rates = torch.linspace(0, config.drop_path, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, (kind, dim, depth) in enumerate(zip(config.stages, dims, depths)):
            drop_paths = rates[sum(depths[:i]): sum(depths[: i + 1])]
            downsample = i < len(dims) - 1
            if kind == "evss":
                stage = EVSSStage(dim, depth, drop_paths, downsample, scan=config.scan, step=config.step,
                                  conv_branch=config.conv_branch, se=config.se, backend=config.backend)
            else:
                stage = IRStage(dim, depth, drop_paths, downsample)
            self.layers.append(stage)
        self.classifier = Classifier(dims[-1], config.num_classes)
        self.apply(_init_weights)

    # ---- introspection --------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def mixers(self):
        """(name, SelectiveScan2D) for every scan mixer, in order."""
        from .mixer import SelectiveScan2D
        return [(n, m) for n, m in self.named_modules() if isinstance(m, SelectiveScan2D)]

    def set_scan_backend(self, backend: str) -> EfficientVMamba:
        """Use `backend` (auto, reference, torch, mamba_ssm) for every selective scan in the model."""
        check_backend(backend)
        for _, m in self.mixers():
            m.backend = backend
        self.config = dataclasses.replace(self.config, backend=backend)
        return self

    def set_scan_precision(self, precision: str) -> EfficientVMamba:
        """"float32" (default, as the authors): the selective scans' inputs are cast to float32 under
        autocast. "autocast": they stay in the autocast dtype (bfloat16/float16), halving the scans'
        memory traffic and saved activations; the scan still computes in float32."""
        if precision not in SCAN_PRECISIONS:
            raise ValueError(f"scan precision must be one of {', '.join(SCAN_PRECISIONS)}, got {precision!r}")
        for _, m in self.mixers():
            m.scan_precision = precision
        return self

    def stage_grids(self, height: int, width: int):
        """The (H, W) token grid each stage works on for a height×width input."""
        h, w = height // 4, width // 4
        grids = []
        for _ in self.layers:
            grids.append((h, w))
            h, w = -(-h // 2), -(-w // 2)
        return grids

    # ---- forward --------------------------------------------------------------------------------
    def check_input(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected an image tensor (batch, 3, H, W), got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an image batch of shape (batch, 3, H, W), got {tuple(x.shape)}"
                             + (": add a batch dimension with x.unsqueeze(0)" if x.dim() == 3 else ""))
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point image tensor, got {x.dtype}: convert with x.float() "
                             "and normalise as in evmamba.preprocess")
        h, w = x.shape[2:]
        if h < MIN_INPUT or w < MIN_INPUT:
            raise ValueError(f"input is {h}x{w}, but the network downsamples by 32 and needs at least "
                             f"{MIN_INPUT}x{MIN_INPUT}: resize the image (224x224 is the trained size)")

    def forward_stages(self, x, upto: int | None = None):
        """Channels-last outputs of each stage (each includes the stage's patch merging, so stage i's output
        is on stage i+1's grid), as a list; stops after stage `upto` (0-based) when given."""
        self.check_input(x)
        x = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.layers):
            x = stage(x)
            outs.append(x)
            if upto is not None and i >= upto:
                break
        return outs

    def forward_features(self, x):
        """Channels-last features of the last stage, (B, H/32, W/32, C)."""
        return self.forward_stages(x)[-1]

    def forward(self, x):
        return self.classifier(self.forward_features(x))


def _init_weights(m):
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def build_model(variant: str = "tiny", *, scan: str = "es2d", step: int = 2, conv_branch: bool = True,
                se: bool = True, stages=STAGE_LAYOUTS["released"], num_classes: int = 1000,
                drop_path: float = 0.0, backend: str = "auto", pretrained: bool = False,
                **unknown) -> EfficientVMamba:
    """EfficientVMamba-{tiny,small,base} with the paper's design choices as switches.

    scan: "es2d" (atrous skip-sampled, the paper's) or "ss2d" (VMamba's four-way scan).
    step: ES2D's skip step p (p² sub-maps, one route each); 2 is the released model.
    conv_branch / se: the EVSS block's depthwise-conv branch and its channel gate.
    stages: per stage "evss" or "ir", or a layout name: released, all-evss, ir-first, all-ir.
    num_classes: classifier outputs (0: no head, the model returns pooled features).
    drop_path: stochastic-depth rate, rising linearly over blocks to this value.
    backend: selective-scan backend (auto, reference, torch, mamba_ssm); see evmamba.scan.
    pretrained: load the authors' ImageNet-1K weights (PRETRAINED, downloaded once and cached; see
        evmamba.hub) and set the model up for ImageNet use: eval mode, `model.class_names` (1000 names,
        index = class id) and `model.preprocess` (evmamba.preprocess: image -> normalised batch). Only the
        released design has trained weights, so any other scan/step/conv_branch/se/stages/num_classes
        raises a ValueError. SS2D has the same parameter shapes but was not what the weights were trained
        with; to study ES2D weights under SS2D, load them explicitly:
        load_checkpoint(build_model(variant, scan="ss2d"), PRETRAINED[variant]).
    """
    if unknown:
        valid = ", ".join(f.name for f in dataclasses.fields(ModelConfig) if f.name != "variant")
        raise ValueError(f"unknown build_model option(s) {', '.join(map(repr, unknown))}: valid options are {valid}, "
                         "pretrained")
    if not isinstance(pretrained, bool):
        raise ValueError(f"pretrained must be True or False, got {pretrained!r}")
    config = ModelConfig(variant=variant, scan=scan, step=step, conv_branch=conv_branch, se=se, stages=stages,
                         num_classes=num_classes, drop_path=drop_path, backend=backend)
    if not pretrained:
        return EfficientVMamba(config)
    _check_pretrained(config.validate())
    from .checkpoint import load_checkpoint, read_checkpoint
    from .imagenet import class_names, preprocess
    checkpoint = read_checkpoint(PRETRAINED[config.variant])  # fetched first: no network fails before building
    model = EfficientVMamba(config)
    load_checkpoint(model, checkpoint)  # strict: every key, every shape
    model.eval()
    model.class_names = class_names()
    model.preprocess = preprocess
    return model


# The authors' ImageNet-1K checkpoints (the released design: ES2D at step 2, EVSS-EVSS-IR-IR, 1000 classes).
PRETRAINED = {
    "tiny": "hf:TerryPei/EfficientVMamba-Tiny",
    "small": "hf:TerryPei/EfficientVMamba-Small",
    "base": "hf:TerryPei/EfficientVMamba-Base",
}


def _check_pretrained(config: ModelConfig) -> None:
    released = ModelConfig(variant=config.variant).validate()
    if config.variant not in PRETRAINED:
        raise ValueError(f"no pretrained weights for variant {config.variant!r}: they exist for "
                         f"{', '.join(PRETRAINED)}")
    differ = [f"{name}={getattr(config, name)!r}" for name in ("scan", "step", "conv_branch", "se", "stages",
                                                                 "num_classes")
              if getattr(config, name) != getattr(released, name)]
    if differ:
        hint = ""
        if config.scan == "ss2d":
            hint = (" (SS2D has the same parameters, so to run the ES2D-trained weights under SS2D load them "
                    f"explicitly: load_checkpoint(build_model({config.variant!r}, scan='ss2d'), "
                    f"{PRETRAINED[config.variant]!r}))")
        elif config.num_classes != 1000:
            hint = (" (to fine-tune on other classes, load the pretrained model and replace "
                    "model.classifier.head with a new nn.Linear)")
        verb = "changes" if len(differ) == 1 else "change"
        raise ValueError(f"pretrained=True loads the released ImageNet-1K model, but {', '.join(differ)} {verb} "
                         f"the design the weights were trained for{hint}: drop those options, or pass "
                         "pretrained=False to build that model with fresh weights")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["VARIANTS", "STAGE_LAYOUTS", "SCANS", "PRETRAINED", "ModelConfig", "EfficientVMamba", "build_model",
           "count_parameters"]
