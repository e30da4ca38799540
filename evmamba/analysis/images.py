"""Natural images that work offline: scikit-image's bundled samples, or every image in a folder you name.

    names = sample_names()                       # "astronaut", "chelsea", "coffee", "rocket", ...
    image = load_image("chelsea")                # (H, W, 3) uint8
    named = load_images("~/photos")              # [(file name, array), ...] for every image in the folder
    x, names = image_batch(["astronaut", "rocket"], size=224)   # ImageNet-normalised (N, 3, 224, 224)

Grey samples are given as three equal channels, so every image is (H, W, 3) uint8.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# Samples read from files inside scikit-image's wheel (no download): photographs and micrographs.
# The value is the skimage.data function that returns the picture.
SAMPLES = {
    "astronaut": "astronaut",
    "chelsea": "chelsea",
    "coffee": "coffee",
    "rocket": "rocket",
    "motorcycle": "stereo_motorcycle",  # the left view of the stereo pair
    "hubble_deep_field": "hubble_deep_field",
    "immunohistochemistry": "immunohistochemistry",
    "retina": "retina",
    "camera": "camera",
    "coins": "coins",
    "moon": "moon",
    "clock": "clock",
    "brick": "brick",
    "grass": "grass",
    "gravel": "gravel",
    "cell": "cell",
}
# The colour photographs of everyday things: the default set for averages over natural images.
DEFAULT_SAMPLES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle")
MAX_SIDE = 2048  # fit_image: longer side of a picture kept for drawing and preprocessing
MAX_PIXELS = 80_000_000  # larger files are refused rather than decoded (about 240 MB as RGB)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def sample_names() -> list[str]:
    """The names `load_image` accepts for scikit-image's bundled samples."""
    return list(SAMPLES)


def _as_rgb_uint8(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"{what}: expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
    a = a[:, :, :3]
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        if a.size and (np.nanmin(a) < -1e-3 or np.nanmax(a) > 1 + 1e-3):
            raise ValueError(f"{what}: a float image must hold values in [0, 1], got [{np.nanmin(a):.3g}, "
                             f"{np.nanmax(a):.3g}]")
        a = np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        if a.size and (a.min() < 0 or a.max() > 255):
            raise ValueError(f"{what}: an integer image must hold values in 0..255, got dtype {a.dtype}")
        a = a.astype(np.uint8)
    return np.ascontiguousarray(a)


def _sample(name: str) -> np.ndarray:
    import skimage.data
    out = getattr(skimage.data, SAMPLES[name])()
    if name == "motorcycle":
        out = out[0]
    return _as_rgb_uint8(out, f"sample {name!r}")


def _eight_bit(im) -> np.ndarray:
    """A PIL image as 8-bit RGB values. 16-bit and 32-bit integer greys (PNG's 16-bit mode) are scaled from
    their full range (PIL's own conversion would clip every value above 255 to white)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or (a.size and a.max() <= 65535) else float(2 ** 31 - 1)
        return np.round(np.clip(a, 0, top) / top * 255).astype(np.uint8)
    return np.asarray(im.convert("RGB"))


def _read_file(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ValueError(f"{path} is {im.width}x{im.height} pixels, more than this tool reads "
                                 f"({MAX_PIXELS // 10**6} megapixels): downscale it first")
            return _as_rgb_uint8(_eight_bit(im), str(path))
    except Image.DecompressionBombError:
        raise ValueError(f"{path} is too large to decode safely: downscale it below "
                         f"{MAX_PIXELS // 10**6} megapixels first") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read {path} as an image ({e}); give a PNG, JPEG, BMP, GIF, TIFF or WebP "
                         f"file") from None


def fit_image(image, max_side: int = MAX_SIDE) -> tuple[np.ndarray, str | None]:
    """(picture, note): `image` (anything `load_image` takes) as (H, W, 3) uint8, downscaled (area
    averaging) so that its longer side is at most `max_side`; the note says so when it was, else None.
    The analyses resize to the model's input anyway; this keeps huge uploads cheap."""
    picture = load_image(image)
    h, w = picture.shape[:2]
    if max(h, w) <= max_side:
        return picture, None
    from PIL import Image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.BOX))
    return small, f"the image was {w}x{h} pixels and has been downscaled to {size[0]}x{size[1]}"


def _unknown(source) -> ValueError:
    return ValueError(f"{source!r} is neither an existing image file or folder nor a sample image; sample "
                      f"names are {', '.join(SAMPLES)}")


def load_image(source) -> np.ndarray:
    """One image as an (H, W, 3) uint8 array.

    source: a sample name (see `sample_names()`), a path to an image file, a PIL image, or an array
    (H, W), (H, W, 3) or (H, W, 4) in uint8 0..255 or float 0..1."""
    if isinstance(source, np.ndarray):
        return _as_rgb_uint8(source, "image array")
    if hasattr(source, "convert") and hasattr(source, "size"):  # a PIL image
        return _as_rgb_uint8(np.asarray(source.convert("RGB")), "PIL image")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_file():
            return _read_file(path)
        if path.is_dir():
            raise ValueError(f"{source} is a folder: use load_images to read every image in it")
        if isinstance(source, str) and source in SAMPLES:
            return _sample(source)
        raise _unknown(source)
    raise ValueError(f"expected a sample name, a path or an image array, got {type(source).__name__}")


def _folder(path: Path) -> list[tuple[str, np.ndarray]]:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"the folder {path} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)} files)")
    return [(p.name, _read_file(p)) for p in files]


def load_images(source=None) -> list[tuple[str, np.ndarray]]:
    """Several images as [(name, (H, W, 3) uint8 array), ...].

    source: None for the default samples (astronaut, chelsea, coffee, rocket, motorcycle); "samples" for
    every bundled sample; a sample name, an image file or a folder (every image in it, sorted by name);
    an array; or a list of any of these."""
    if source is None:
        return [(n, _sample(n)) for n in DEFAULT_SAMPLES]
    if isinstance(source, str) and source == "samples" and not Path(source).exists():
        return [(n, _sample(n)) for n in SAMPLES]
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_dir():
            return _folder(path)
        name = path.name if path.is_file() else str(source)
        return [(name, load_image(source))]
    if isinstance(source, np.ndarray) or (hasattr(source, "convert") and hasattr(source, "size")):
        return [("image", load_image(source))]
    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("got an empty list of images")
        out = []
        for i, s in enumerate(source):
            got = load_images(s)
            if len(got) == 1 and got[0][0] == "image":
                got = [(f"image {i}", got[0][1])]
            out += got
        return out
    raise ValueError(f"expected a sample name, a path, an image array or a list of them, got "
                     f"{type(source).__name__}")


def to_picture(x, mean=None, std=None) -> np.ndarray:
    """A normalised image (3, H, W) or (1, 3, H, W) back as an (H, W, 3) float picture in [0, 1], for
    drawing under maps (undoes the normalisation only: ImageNet's unless mean and std are given)."""
    import torch

    from ..imagenet import IMAGENET_MEAN, IMAGENET_STD
    mean = IMAGENET_MEAN if mean is None else mean
    std = IMAGENET_STD if std is None else std
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a normalised image (3, H, W) or (1, 3, H, W), got {x.shape}")
    x = x * np.asarray(std, dtype=np.float64)[:, None, None] + np.asarray(mean, dtype=np.float64)[:, None, None]
    return np.clip(x.transpose(1, 2, 0), 0.0, 1.0)


def input_spec(model, size=None):
    """The InputSpec the model's weights expect (model.weights.inputs: ImageNet's at 224 unless the weights
    say otherwise), with its side replaced by `size` when one is given."""
    import dataclasses

    from ..model import InputSpec
    spec = getattr(getattr(model, "weights", None), "inputs", None) or InputSpec()
    return spec if size is None else dataclasses.replace(spec, size=size)


def model_batch(model, source=None, size=None):
    """(x, names): the images of `source` prepared as `model`'s weights expect (input_spec)."""
    spec = input_spec(model, size)
    return image_batch(source, size=spec.size, resize=spec.resize, mean=spec.mean, std=spec.std)


def model_picture(model, x) -> np.ndarray:
    """The picture a batch prepared for `model` shows (to_picture with the weights' normalisation)."""
    spec = input_spec(model)
    return to_picture(x, spec.mean, spec.std)


RESIZES = ("crop", "stretch")


def image_batch(source=None, size: int = 224, resize: str = "crop", mean=None, std=None):
    """(x, names): the images of `source` (as in `load_images`) as a normalised batch x (N, 3, size, size)
    float32. resize: "crop" (the ImageNet evaluation transform: resize, centre crop; evmamba.preprocess) or
    "stretch" (the whole image resized to size×size, bicubic, then normalised: RepLKNet's ERF transform).
    mean, std: the normalisation (default ImageNet's)."""
    from ..checks import choice
    from ..imagenet import IMAGENET_MEAN, IMAGENET_STD, _batch
    choice(resize, "resize", RESIZES, plural="resize modes")
    named = load_images(source)
    pictures = [a for _, a in named]
    x = _batch(pictures, size, resize == "crop", IMAGENET_MEAN if mean is None else tuple(mean),
               IMAGENET_STD if std is None else tuple(std))
    return x, [n for n, _ in named]
