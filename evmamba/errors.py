"""The errors evmamba raises beyond ValueError and TypeError, in one module that imports nothing of ours
(so that the checkpoint reader, the Hub client and the model factory can all raise them)."""


class CheckpointError(ValueError):
    """A file or object that is not a usable EfficientVMamba checkpoint."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose keys or shapes do not fit the model."""


__all__ = ["CheckpointError", "CheckpointMismatchError"]
