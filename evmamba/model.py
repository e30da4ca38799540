"""EfficientVMamba (arXiv 2403.09977): the network, its variants as a table, and its configuration.

    patch_embed   4x4 conv stride 4, LayerNorm                     H/4 x W/4
    layers.0..3   stages of EVSS or inverted-residual blocks, patch merging between stages
    classifier    LayerNorm, global average pool, Linear

The released design uses EVSS blocks in stages 1-2 and inverted-residual blocks in stages 3-4 with the
ES2D scan at step 2; every one of those choices is a field of `ModelConfig`, the one description of a
model that the factory (`evmamba.build_model`), the checkpoints, the ablation grid, the trainer and the app
all read. Adding a switch means adding a field here (and using it in the network).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .blocks import EVSSStage, IRStage, channels_last
from .checks import choice, flag, integer
from .families import family, scans
from .imagenet import IMAGENET_MEAN, IMAGENET_STD
from .mixer import SelectiveScan2D
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
    """Everything that decides a model's structure. Each field's metadata says what it is ("doc"), the table
    column that shows it ("column": the design fields), and its valid values where they are a list
    ("choices") or a range ("range"). Consumers (the factory, the ablation grid, the trainer's command line,
    the app's model panel) iterate `dataclasses.fields`."""

    variant: str = field(default="tiny", metadata={"doc": "tiny, small or base (widths and depths: VARIANTS)",
                                                   "column": "variant", "choices": lambda: list(VARIANTS)})
    scan: str = field(default="es2d", metadata={"doc": "the scan-route family: es2d (atrous skip-sampled, the "
                                                       "paper's), ss2d (VMamba's four-way cross scan), zigzag, "
                                                       "windows, hilbert, diagonal, or one added with "
                                                       "evmamba.register_scan", "column": "scan",
                                                "choices": lambda: list(scans())})
    step: int = field(default=2, metadata={"doc": "the scan's parameter: ES2D's skip step p (p² sub-maps, one route "
                                                  "each; 2: released), the windows' side", "column": "step p",
                                           "range": (1, 8)})
    conv_branch: bool = field(default=True, metadata={"doc": "the EVSS block's depthwise-conv branch",
                                                      "column": "conv branch"})
    gate: bool = field(default=True, metadata={"doc": "the EVSS block's channel gate over both branches (the "
                                                      "authors' `se`, its checkpoint keys)", "column": "gate"})
    stages: tuple = field(default=STAGE_LAYOUTS["released"],
                          metadata={"doc": "per stage evss or ir, or a layout name: " + ", ".join(STAGE_LAYOUTS),
                                    "column": "stages", "choices": lambda: list(STAGE_LAYOUTS)})
    num_classes: int = field(default=1000, metadata={"doc": "classifier outputs (0: no head, pooled features)"})
    drop_path: float = field(default=0.0, metadata={"doc": "stochastic-depth rate, rising linearly to this value"})
    backend: str = field(default="auto", metadata={"doc": "selective-scan backend: auto, reference, torch, "
                                                          "cpu_fused, mamba_ssm (see evmamba.scan)"})

    @classmethod
    def from_options(cls, what: str = "build_model", **options) -> ModelConfig:
        """A validated config from keyword options, with a ValueError naming any option that is not a field."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in options if k not in names]
        if unknown:
            raise ValueError(f"unknown {what} option(s) {', '.join(map(repr, unknown))}: valid options are "
                             f"{', '.join(n for n in names if n != 'variant')}")
        return cls(**options).validate()

    @property
    def dims(self):
        return VARIANTS[self.variant]["dims"]

    @property
    def depths(self):
        return VARIANTS[self.variant]["depths"]

    @property
    def layout_name(self) -> str:
        """The stage layout's name ("released", ...), or its kinds joined by commas."""
        stages = self.validate().stages
        return next((n for n, s in STAGE_LAYOUTS.items() if s == stages), ",".join(stages))

    def validate(self) -> ModelConfig:
        """This config with names resolved (a layout name becomes its tuple), or a ValueError naming the
        field, its valid values and what was given."""
        choice(self.variant, "variant", VARIANTS)
        check_scan(self.scan, self.step)
        flag(self.conv_branch, "conv_branch")
        flag(self.gate, "gate")
        stages = self.stages
        if isinstance(stages, str):
            choice(stages, "stage layout", STAGE_LAYOUTS, plural="names",
                   note=f", or a tuple of four of {', '.join(STAGE_KINDS)}")
            stages = STAGE_LAYOUTS[stages]
        try:
            stages = tuple(stages)
        except TypeError:
            stages = ()
        if len(stages) != 4 or any(s not in STAGE_KINDS for s in stages):
            raise ValueError(f"stages must be four of {', '.join(STAGE_KINDS)} (one per stage) or one of "
                             f"{', '.join(STAGE_LAYOUTS)}; got {self.stages!r}")
        integer(self.num_classes, "num_classes", low=0, what="an integer >= 0", note=" (0 for no head)")
        if isinstance(self.drop_path, bool) or not isinstance(self.drop_path, (int, float)) \
                or not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must be a number in [0, 1), got {self.drop_path!r}")
        check_backend(self.backend)
        return dataclasses.replace(self, stages=stages, drop_path=float(self.drop_path))

    def settled(self) -> ModelConfig:
        """This config validated, with the fields that do not apply to its design at their defaults (so one
        design has one config: an SS2D model's step is always the default)."""
        default = ModelConfig()
        return dataclasses.replace(self, **{f.name: getattr(default, f.name) for f in dataclasses.fields(self)
                                            if not self.applies(f.name)}).validate()

    def applies(self, name: str) -> bool:
        """Whether field `name` means anything for this design (`step` only for a scan with a parameter)."""
        return name != "step" or family(self.scan).param is not None

    def shown(self) -> dict:
        """The design fields as a table shows them, {column: text}: the fields whose metadata names a column,
        booleans as yes/no, the scan in capitals, the stage layout by name, "-" where a field does not apply."""
        config = self.validate()
        out = {}
        for f in dataclasses.fields(config):
            column = f.metadata.get("column")
            if column is None:
                continue
            v = getattr(config, f.name)
            if not config.applies(f.name):
                text = "-"
            elif isinstance(v, bool):
                text = "yes" if v else "no"
            elif f.name == "stages":
                text = config.layout_name
            elif f.name == "scan":
                text = v.upper()
            elif f.name == "step" and family(config.scan).param != "step":
                text = f"{family(config.scan).param} {v}"  # the parameter of another family (the windows' size)
            else:
                text = v
            out[column] = text
        return out

    def options(self, keep=()) -> dict:
        """The fields that differ from the defaults (and those named in `keep` that apply to this design), as
        build_model options."""
        default = ModelConfig()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if (f.name in keep and self.applies(f.name)) or getattr(self, f.name) != getattr(default, f.name)}

    def call(self, keep=()) -> str:
        """This config as a build_model(...) call, options at their defaults left out."""
        options = self.options(keep)
        options.pop("variant", None)
        args = [repr(self.variant)] + [f"{k}={v!r}" for k, v in options.items()]
        return f"build_model({', '.join(args)})"


@dataclass(frozen=True)
class InputSpec:
    """How images become the input the weights expect: the side (size x size), "crop" (resize the shorter
    side to size / 0.875, centre crop: the ImageNet evaluation transform) or "stretch" (the whole image
    resized, bicubic), then (x - mean) / std per channel."""

    size: int = 224
    resize: str = "crop"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD


@dataclass(frozen=True)
class Weights:
    """Where a model's weights came from and what its outputs mean (`model.weights`)."""

    source: str | None = None  # the checkpoint they were loaded from; None: initialised here
    seed: int | None = None  # the seed of the initialisation, when known
    class_names: tuple | None = None  # a name per output, when the weights were trained for named classes
    preprocess: Callable | None = field(default=None, compare=False)  # image -> the batch the weights expect
    task: str | None = None  # what they were trained on (e.g. "ImageNet-1K")
    inputs: InputSpec = field(default_factory=InputSpec)  # the images the analyses feed it (ImageNet's by default)

    @property
    def trained(self) -> bool:
        return self.source is not None

    def describe(self) -> str:
        if self.source is None:
            return "random weights" + (f" (seed {self.seed})" if self.seed is not None else "")
        return f"weights from {self.source}" + (f", trained on {self.task}" if self.task else "")


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
        self.weights = Weights()  # set by the factory and by load_checkpoint
        dims, depths = config.dims, config.depths
        self.patch_embed = nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), channels_last(), nn.LayerNorm(dims[0]))
        rates = torch.linspace(0, config.drop_path, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, (kind, dim, depth) in enumerate(zip(config.stages, dims, depths)):
            drop_paths = rates[sum(depths[:i]): sum(depths[: i + 1])]
            downsample = i < len(dims) - 1
            if kind == "evss":
                stage = EVSSStage(dim, depth, drop_paths, downsample, scan=config.scan, step=config.step,
                                  conv_branch=config.conv_branch, gate=config.gate, backend=config.backend)
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
        return scan_mixers(self)

    def set_scan_backend(self, backend: str) -> EfficientVMamba:
        """Use `backend` (auto, reference, torch, cpu_fused, mamba_ssm) for every selective scan in the model."""
        check_backend(backend)
        for _, m in self.mixers():
            m.backend = backend
        self.config = dataclasses.replace(self.config, backend=backend)
        return self

    def set_scan_precision(self, precision: str) -> EfficientVMamba:
        """"float32" (default, as the authors): the selective scans' inputs are cast to float32 under
        autocast. "autocast": they stay in the autocast dtype (bfloat16/float16), halving the scans'
        memory traffic and saved activations; the scan still computes in float32."""
        choice(precision, "scan precision", SCAN_PRECISIONS)
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

    def forward_to_stage(self, x, stage: int):
        """Channels-last features at the end of stage `stage`'s blocks, before its downsample: the grid that
        stage's scans read (for the last stage, which has no downsample, the final feature map)."""
        stage = integer(stage, "stage", 0, len(self.layers) - 1)
        self.check_input(x)
        x = self.patch_embed(x)
        for layer in self.layers[:stage]:
            x = layer(x)
        last = self.layers[stage]
        if isinstance(last, EVSSStage):
            return last.blocks(x)
        for part in list(last)[:-1]:  # IRStage: to channels-first, blocks, to channels-last | downsample
            x = part(x)
        return x

    def evss_block(self, stage: int, block: int):
        """(name, block): EVSS block `block` of stage `stage`, or a ValueError naming the stages that have them."""
        stage = integer(stage, "stage", 0, len(self.layers) - 1)
        if self.config.stages[stage] != "evss":
            evss = [i for i, k in enumerate(self.config.stages) if k == "evss"]
            raise ValueError(f"stage {stage} is made of inverted-residual blocks and has no scan; choose an EVSS "
                             f"stage ({', '.join(map(str, evss)) or 'this model has none'})")
        blocks = self.layers[stage].blocks
        block = integer(block, "block", 0, len(blocks) - 1, note=f" (stage {stage} has {len(blocks)} blocks)")
        return f"layers.{stage}.blocks.{block}", blocks[block]

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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def scan_mixers(module: nn.Module) -> list:
    """(name, SelectiveScan2D) for every selective-scan mixer in `module` (the module itself included)."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, SelectiveScan2D)]


__all__ = ["MIN_INPUT", "SCANS", "STAGE_KINDS", "STAGE_LAYOUTS", "VARIANTS", "EfficientVMamba", "InputSpec",
           "ModelConfig", "Weights", "count_parameters", "scan_mixers"]
