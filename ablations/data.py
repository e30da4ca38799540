"""Training data: the procedural tasks and any ImageFolder dataset, and the order in which they are read.

Both datasets return (image, labels) with image a normalised float tensor (3, H, W) and labels an int64
tensor (heads,). Randomness (the order of samples, the augmentation of an ImageFolder image) depends only
on (seed, epoch, index), so a resumed run reads exactly what an uninterrupted one would, on any number of
processes.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from evmamba.study_models import TASK_MEAN, TASK_STD  # the procedural images live in [0, 1] around grey

from .study.cache import TaskImages
from .study.tasks import TASKS, _check

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class TaskDataset(Dataset):
    """Images start..start+count-1 of task `name`'s stream for `seed`, read through the image cache
    (ablations/study/cache.py: drawn once, kept as uint8 on disk, memory-mapped)."""

    def __init__(self, name: str, count: int, size: int, seed: int, start: int = 0, cache=None):
        _check(name, count, size, seed)
        self.name, self.count, self.size, self.seed, self.start = name, count, size, seed, start
        self.images = TaskImages(name, size, seed, start, count, cache)
        self.info = TASKS[name]
        self.heads = self.info.heads
        self.head_names = self.info.head_names
        self.classes = self.info.class_names

    def __len__(self):
        return self.count

    def set_epoch(self, epoch: int):
        pass  # a task image is the same in every epoch

    def __getitem__(self, i):
        img = torch.from_numpy(self.images.image(int(i)).astype(np.float32)) / 255
        return (img - TASK_MEAN) / TASK_STD, torch.from_numpy(np.array(self.images.labels(int(i))))

    def describe(self) -> str:
        last = self.start + self.count - 1
        return f"task {self.name} ({self.info.kind}), images {self.start}..{last} of seed {self.seed}"


class ImageFolder(Dataset):
    """root/<class>/<image>: classes are the sorted folder names. Training images get a random resized
    crop (scale 0.08-1, aspect 3/4-4/3) and a horizontal flip, seeded by (seed, epoch, index); evaluation
    images are resized (shorter side size/0.875) and centre-cropped. Normalised with ImageNet's mean/std."""

    def __init__(self, root, size: int = 224, train: bool = True, seed: int = 0):
        from evmamba.imagenet import IMAGENET_MEAN, IMAGENET_STD
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ValueError(f"dataset folder {self.root} does not exist: pass a folder with one sub-folder per class")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise ValueError(f"{self.root} has no class sub-folders: expected {self.root}/<class>/<image>")
        self.samples = [(p, k) for k, c in enumerate(self.classes) for p in sorted((self.root / c).rglob("*"))
                        if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not self.samples:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}/<class>/")
        self.size, self.train, self.seed, self.epoch = size, train, seed, 0
        self.heads = (len(self.classes),)
        self.head_names = ("class",)
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self):
        return len(self.samples)

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def _load(self, path) -> torch.Tensor:
        from PIL import Image
        with Image.open(path) as im:
            a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(a).permute(2, 0, 1)

    def __getitem__(self, i):
        path, label = self.samples[int(i)]
        x = self._load(path)
        h, w = x.shape[1:]
        if self.train:
            g = np.random.default_rng([self.seed, self.epoch, int(i)])
            top, left, ch, cw = _random_resized_crop(g, h, w)
            x = x[:, top:top + ch, left:left + cw]
            x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=True)[0]
            if g.random() < 0.5:
                x = x.flip(-1)
        else:
            scale = self.size / 0.875 / min(h, w)
            nh, nw = max(self.size, round(h * scale)), max(self.size, round(w * scale))
            x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
            top, left = (nh - self.size) // 2, (nw - self.size) // 2
            x = x[:, top:top + self.size, left:left + self.size]
        return (x.clamp(0, 1) - self.mean) / self.std, torch.tensor([label])

    def describe(self) -> str:
        return f"ImageFolder {self.root} ({len(self.samples)} images, {len(self.classes)} classes)"


def _random_resized_crop(g, h, w, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    area = h * w
    for _ in range(10):
        target = area * g.uniform(*scale)
        aspect = math.exp(g.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(g.integers(0, h - ch + 1)), int(g.integers(0, w - cw + 1)), ch, cw
    side = min(h, w)  # fall back to the central square
    return (h - side) // 2, (w - side) // 2, side, side


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which epoch `epoch` reads the n samples (the same on every process)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def shard_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """This process's batches of epoch `epoch`: the epoch's order cut into global batches of
    batch_size·world samples (the last partial one dropped), each split across the processes."""
    order = epoch_order(n, seed, epoch).tolist()
    per_step = batch_size * world
    steps = n // per_step
    return [order[s * per_step + rank * batch_size: s * per_step + (rank + 1) * batch_size] for s in range(steps)]


def build_dataset(data: str, *, split: str, size: int, seed: int, count: int | None = None,
                  start: int = 0, val_data: str | None = None):
    """The dataset named by `data`: a task name (texture, markers) or an ImageFolder path. For a path,
    split "train" reads PATH/train when it exists (else PATH) and "test" reads `val_data`, else PATH/val."""
    if data in TASKS:
        if count is None:
            raise ValueError("a procedural task needs a number of images")
        return TaskDataset(data, count, size, seed, start)
    root = Path(data).expanduser()
    if not root.exists():
        raise ValueError(f"unknown data {data!r}: give a task name ({', '.join(TASKS)}) or an ImageFolder path")
    if split == "train":
        folder = root / "train" if (root / "train").is_dir() else root
        return ImageFolder(folder, size, train=True, seed=seed)
    folder = Path(val_data).expanduser() if val_data else root / "val"
    if not folder.is_dir():
        raise ValueError(f"no evaluation folder: {folder} does not exist; pass --val-data PATH (one sub-folder "
                         "per class)")
    return ImageFolder(folder, size, train=False, seed=seed)


__all__ = ["ImageFolder", "TaskDataset", "build_dataset", "epoch_order", "shard_batches"]
