"""What the operator chose on the command line (app.py), read by the rest of the app."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MAX_GRID = 128  # the skip-sampling tab's grid sides (sliders and handlers agree)
MAX_STEP = 8
MAX_IMAGES = 16  # images a receptive field may be averaged over
MAX_UPLOAD = "160mb"  # the largest file a web user may upload (a checkpoint of base is 135 MB)
MAX_IMAGE_BYTES = 20 * 2**20  # the largest image file the handlers read
MAX_TEXT = 300  # characters of a message shown to a client or logged for it


@dataclass
class Settings:
    device: str = "cpu"
    variant: str = "tiny"
    weights: str = ""  # the model panel's starting weights ("" : the first choice)
    weights_dirs: tuple[Path, ...] = ()  # folders whose checkpoint files web users may load
    allow_hub_downloads: bool = False  # other Hub repositories than the authors'
    hub_max_bytes: int = 600 * 2 ** 20  # the largest checkpoint the server downloads for a web user
    ablations: str = ""  # the ablation run shown in the Ablations tab ("": the committed one)
    max_cost: float = 60.0  # the largest request, in estimated seconds of this server's CPU (jobs.estimate)
    time_limit: float = 180.0  # seconds after which a running request stops
    compute_slots: int = 2  # requests computing at once (a cancelled one holds its slot until it stops)
    large_slots: int = 1  # of those, requests on full-size images (jobs.is_large): their peaks do not stack
    cached_models: int = 3
    extra: dict = field(default_factory=dict)


SETTINGS = Settings()

__all__ = ["MAX_GRID", "MAX_IMAGES", "MAX_IMAGE_BYTES", "MAX_STEP", "MAX_TEXT", "MAX_UPLOAD", "SETTINGS",
           "Settings"]
