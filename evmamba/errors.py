"""The errors evmamba raises beyond ValueError and TypeError, in one module that imports nothing of ours
(so that the checkpoint reader, the Hub client and the model factory can all raise them)."""


class CheckpointError(ValueError):
    """A file or object that is not a usable EfficientVMamba checkpoint."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose keys or shapes do not fit the model."""


class DesignMismatchError(ValueError):
    """A design that the chosen weights cannot honour; `differences` names each field given and what the
    weights hold ("scan='ss2d' (weights: 'es2d')")."""

    def __init__(self, message: str, differences: list[str]):
        super().__init__(message)
        self.differences = differences


__all__ = ["CheckpointError", "CheckpointMismatchError", "DesignMismatchError"]
