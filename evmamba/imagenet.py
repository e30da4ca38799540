"""ImageNet-1K as the released checkpoints see it: class names and the test-time preprocessing.

Class ids follow the standard ImageNet-1K order (WordNet synset ids sorted), so id 0 is n01440764
"tench" and id 999 is n15075141 "toilet tissue". The names ship as data in `data/imagenet_classes.txt`,
one line per class: the synset id, a tab, and its WordNet lemmas ("n01440764<TAB>tench, Tinca tinca").

`preprocess` is the authors' (Swin-style) evaluation transform: resize the shorter side to size/0.875
with bicubic interpolation, centre-crop to size, scale to [0, 1], normalise with the ImageNet mean and
standard deviation. It is written with PIL and numpy and follows torchvision's Resize/CenterCrop
arithmetic (the longer side is truncated, the crop offset rounded), so a uint8 image gives the tensor
the authors' evaluation loop fed the network.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import torch

from .checks import integer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_PCT = 0.875  # evaluation: resize to size / CROP_PCT, then centre-crop to size (224 -> 256 -> 224)
NUM_CLASSES = 1000


@lru_cache(maxsize=1)
def _classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    text = resources.files("evmamba").joinpath("data/imagenet_classes.txt").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    if len(rows) != NUM_CLASSES or any(len(r) != 2 for r in rows):
        raise RuntimeError("evmamba/data/imagenet_classes.txt is damaged: expected 1000 lines "
                           "'<synset id><TAB><lemmas>'; reinstall evmamba")
    return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


def synset_ids() -> list[str]:
    """The 1000 WordNet synset ids in class-id order ("n01440764", ...)."""
    return list(_classes()[0])


def class_descriptions() -> list[str]:
    """All WordNet lemmas of each class, in class-id order ("tench, Tinca tinca", ...)."""
    return list(_classes()[1])


def class_names() -> list[str]:
    """Short display names, index = class id: the first lemma of each synset ("tench", "goldfish", ...).

    Two pairs of classes share a first lemma ("crane" 134 bird / 517 machine, "maillot" 638 / 639);
    `class_descriptions` tells them apart."""
    return [d.split(", ")[0] for d in _classes()[1]]


def top_k(logits: torch.Tensor, k: int = 5) -> list[list[tuple[int, str, float]]]:
    """For each row of (B, 1000) logits, the k most probable classes as (class id, name, probability)."""
    if logits.ndim == 1:
        logits = logits[None]
    if logits.ndim != 2 or logits.shape[1] != NUM_CLASSES:
        raise ValueError(f"expected ImageNet logits of shape (B, {NUM_CLASSES}), got {tuple(logits.shape)}")
    names = class_names()
    probs = logits.detach().float().softmax(-1)
    p, i = probs.topk(min(k, NUM_CLASSES), dim=-1)
    return [[(int(c), names[int(c)], float(q)) for q, c in zip(pr, ir)] for pr, ir in zip(p, i)]


# ---- preprocessing ------------------------------------------------------------------------------
def _resized_shape(h: int, w: int, short: int) -> tuple[int, int]:
    # torchvision's Resize(int): shorter side to `short`, the longer side scaled and truncated.
    if h <= w:
        return short, int(short * w / h)
    return int(short * h / w), short


def _to_channels(image) -> tuple[list, str]:
    """The image as three PIL single-band images (mode "L" for uint8, "F" for float) and that mode."""
    import numpy as np  # here, not at import time: the model itself needs neither numpy nor PIL
    from PIL import Image
    if isinstance(image, Image.Image):
        return list(image.convert("RGB").split()), "L"
    if isinstance(image, torch.Tensor):
        raise ValueError("preprocess takes a PIL image or an H x W (x 3 or 4) numpy array, got a torch tensor: "
                         "pass tensor.permute(1, 2, 0).numpy() for a (3, H, W) tensor")
    if not isinstance(image, np.ndarray):
        raise ValueError(f"preprocess takes a PIL image or a numpy array, got {type(image).__name__}")
    a = image
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected an image array of shape (H, W), (H, W, 3) or (H, W, 4), got {a.shape}; "
                         "a channels-first (3, H, W) array needs .transpose(1, 2, 0)")
    a = a[:, :, :3]  # RGBA: drop alpha, as PIL's convert("RGB") does
    if min(a.shape[:2]) < 1:
        raise ValueError(f"the image is empty (shape {image.shape})")
    if a.dtype == np.uint8:
        return [Image.fromarray(np.ascontiguousarray(a[:, :, c])) for c in range(3)], "L"
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"expected a uint8 image (0-255) or a float image (0-1), got dtype {a.dtype}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ValueError("the image contains NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"a float image must hold values in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                         "divide a 0-255 float image by 255 or pass it as uint8")
    return [Image.fromarray(np.ascontiguousarray(a[:, :, c])) for c in range(3)], "F"


def _preprocess_one(image, size: int, crop: bool = True, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    import numpy as np
    from PIL import Image
    bands, mode = _to_channels(image)
    w, h = bands[0].size
    if crop:
        rh, rw = _resized_shape(h, w, int(size / CROP_PCT))
        if rh < size or rw < size:  # cannot happen for CROP_PCT < 1; kept so a change of CROP_PCT fails loudly
            raise ValueError(f"resized image {rh}x{rw} is smaller than the crop {size}")
        top, left = int(round((rh - size) / 2.0)), int(round((rw - size) / 2.0))
    else:
        rh, rw, top, left = size, size, 0, 0
    planes = []
    for band in bands:
        band = band.resize((rw, rh), Image.BICUBIC)  # PIL returns a copy when the size already matches
        band = band.crop((left, top, left + size, top + size))
        p = np.asarray(band, dtype=np.float32)
        # uint8 bands are clamped to 0-255 by PIL; clamp float bands the same way so both agree.
        planes.append(p / 255.0 if mode == "L" else np.clip(p, 0.0, 1.0))
    x = torch.from_numpy(np.stack(planes))
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def _batch(image, size, crop, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    size = integer(size, "size", low=1)
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError("preprocess got an empty list of images")
        return torch.cat([_batch(im, size, crop, mean, std) for im in image])
    return _preprocess_one(image, size, crop, mean, std)[None]


def preprocess(image, size: int = 224) -> torch.Tensor:
    """A float32 batch (1, 3, size, size) for the released ImageNet-1K models, from one image.

    image: a PIL image (any mode; converted to RGB) or a numpy array H x W, H x W x 3 or H x W x 4
    (alpha dropped), uint8 in 0-255 or float in [0, 1]. A list or tuple of images gives (N, 3, size, size).
    """
    return _batch(image, size, crop=True)


def stretched(image, size: int = 1024) -> torch.Tensor:
    """As `preprocess`, but the whole image resized to size×size (bicubic, no crop), then normalised:
    RepLKNet's transform for receptive-field maps (`transforms.Resize((size, size), BICUBIC)`)."""
    return _batch(image, size, crop=False)


__all__ = ["CROP_PCT", "IMAGENET_MEAN", "IMAGENET_STD", "NUM_CLASSES", "class_descriptions", "class_names",
           "preprocess", "stretched", "synset_ids", "top_k"]
