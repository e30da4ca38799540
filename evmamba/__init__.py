"""evmamba: EfficientVMamba (arXiv 2403.09977) in plain PyTorch, with its scan routes as data.

    import evmamba
    model = evmamba.build_model("tiny")                    # the released design: ES2D, step 2
    evmamba.load_checkpoint(model, "efficientvmamba_tiny.pth")
    model = evmamba.build_model("tiny", pretrained=True)   # the authors' ImageNet-1K weights, from the Hub
    logits = model(evmamba.preprocess(image))               # a PIL image or array -> a normalised batch
    routes = evmamba.scan_routes("es2d", 56, 56, step=2)   # what the first stage's scan reads, in order
    evmamba.register_scan("spiral", spiral)                # a scan order of your own: build_model(scan="spiral")

    model = model.cuda(); model(x)                         # on a GPU: mamba-ssm's kernel when installed
    fast = torch.compile(model)                            # then one graph around the kernel
    model.set_scan_precision("autocast")                   # bf16 scan inputs under autocast (default float32)
"""
from .checkpoint import describe_checkpoint, load_checkpoint, read_checkpoint, save_checkpoint
from .errors import CheckpointError, CheckpointMismatchError, DesignMismatchError
from .factory import PRETRAINED, Fit, build, build_model, create, fit, model_from_checkpoint
from .families import FamilyRoutes, Route, register_scan, scans, unregister_scan
from .imagenet import IMAGENET_MEAN, IMAGENET_STD, class_names, preprocess
from .model import STAGE_LAYOUTS, VARIANTS, EfficientVMamba, ModelConfig, Weights, count_parameters
from .routes import SCANS, ScanRoutes, scan_routes
from .scan import BACKENDS, selective_scan
from .study_models import study_models

__version__ = "0.1.0"


def count_flops(model, image_size=224, batch_size: int = 1):
    """FLOPs of one forward pass in the paper's convention (fvcore-style multiply-adds plus 9·B·L·D·N + B·D·L
    per selective scan) and a per-layer table: `evmamba.analysis.cost.count_flops` (needs pandas)."""
    from .analysis.cost import count_flops as count
    return count(model, image_size, batch_size)


__all__ = ["BACKENDS", "IMAGENET_MEAN", "IMAGENET_STD", "PRETRAINED", "SCANS", "STAGE_LAYOUTS", "VARIANTS",
           "CheckpointError", "CheckpointMismatchError", "DesignMismatchError", "EfficientVMamba", "FamilyRoutes",
           "Fit", "ModelConfig", "Route", "ScanRoutes", "Weights",
           "build", "build_model", "class_names", "count_flops", "count_parameters", "create", "describe_checkpoint",
           "fit", "load_checkpoint", "model_from_checkpoint", "preprocess", "read_checkpoint", "register_scan",
           "save_checkpoint", "scan_routes", "scans", "selective_scan", "study_models", "unregister_scan"]
