"""The procedural tasks' images, drawn once and kept on disk as uint8.

Drawing an image costs from under a millisecond (mazes) to tens of milliseconds (contours: the paths are
redrawn until the pixels agree with the label), more than training on it; a multi-epoch run would pay it
every epoch. So images are drawn in chunks of CHUNK consecutive indices of a (task, size, seed) stream,
quantised to uint8, and written under

    ROOT/<task>-v<generator version>/<size>px/seed<seed>/<chunk>.images.npy   (CHUNK, 3, size, size) uint8
                                                         <chunk>.labels.npy   (CHUNK, heads) int64

ROOT is $EVMAMBA_IMAGE_CACHE, else ~/.cache/evmamba/task-images. Each file is written to a temporary name
and renamed into place (labels first, images last: an images file means its chunk is complete), so an
interrupted draw leaves nothing half-written, and processes drawing the same chunk at once only repeat work.
The generator's version (TaskInfo.version) is part of the folder name, so a changed drawing never reads old
images. Training reads every image through here (quantised the same way whether drawn now or read back),
so a run's result does not depend on what the cache held.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from evmamba.files import atomic_path

from .tasks import TASKS, _check, draw_image

CHUNK = 256
ENV = "EVMAMBA_IMAGE_CACHE"


def cache_root(root=None) -> Path:
    """The cache's folder: `root`, else $EVMAMBA_IMAGE_CACHE, else ~/.cache/evmamba/task-images."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    return Path.home() / ".cache" / "evmamba" / "task-images"


def quantise(img: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] as uint8 (rounded to the nearest of 256 levels)."""
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def chunk_paths(name: str, size: int, seed: int, chunk: int, root=None) -> tuple[Path, Path]:
    folder = cache_root(root) / f"{name}-v{TASKS[name].version}" / f"{size}px" / f"seed{seed}"
    return folder / f"{chunk:06d}.images.npy", folder / f"{chunk:06d}.labels.npy"


def draw_chunk(name: str, size: int, seed: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Images chunk·CHUNK .. (chunk+1)·CHUNK - 1 of the stream, drawn now: (uint8 images, labels)."""
    heads = len(TASKS[name].heads)
    images = np.empty((CHUNK, 3, size, size), dtype=np.uint8)
    labels = np.empty((CHUNK, heads), dtype=np.int64)
    for i in range(CHUNK):
        img, lab, _ = draw_image(name, size, seed, chunk * CHUNK + i)
        images[i], labels[i] = quantise(img), lab
    return images, labels


def load_chunk(name: str, size: int, seed: int, chunk: int, root=None) -> tuple[np.ndarray, np.ndarray]:
    """One chunk, read from the cache (memory-mapped) or drawn and written there first."""
    images_path, labels_path = chunk_paths(name, size, seed, chunk, root)
    if not images_path.exists():
        images, labels = draw_chunk(name, size, seed, chunk)
        for path, array in ((labels_path, labels), (images_path, images)):
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.save(f, array)
    return np.load(images_path, mmap_mode="r"), np.load(labels_path)


def chunks(start: int, count: int) -> range:
    """The chunks that hold images start .. start + count - 1."""
    return range(start // CHUNK, (start + count - 1) // CHUNK + 1)


def warm(name: str, size: int, seed: int, start: int, count: int, *, root=None, bar: bool = True,
         jobs: int = 1) -> int:
    """Draw the chunks of images start..start+count-1 the cache lacks (`jobs` processes, with a progress
    bar); returns how many were drawn."""
    from tqdm.auto import tqdm
    _check(name, count, size, seed)
    todo = [k for k in chunks(start, count) if not chunk_paths(name, size, seed, k, root)[0].exists()]
    if not todo:
        return 0
    with tqdm(total=len(todo) * CHUNK, desc=f"drawing {name} {size}px seed {seed}", unit="img",
              disable=not bar) as pbar:
        if jobs <= 1 or len(todo) == 1:
            for k in todo:
                load_chunk(name, size, seed, k, root)
                pbar.update(CHUNK)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(_warm_one, name, size, seed, k, str(cache_root(root))) for k in todo]
                for f in as_completed(futures):
                    f.result()
                    pbar.update(CHUNK)
    return len(todo)


def _warm_one(name, size, seed, chunk, root):
    load_chunk(name, size, seed, chunk, root)


class TaskImages:
    """Images start..start+count-1 of a task's stream, read through the cache chunk by chunk (each chunk
    drawn the first time it is needed): `images(i)` is a (3, size, size) uint8 array, `label(i)` its labels."""

    def __init__(self, name: str, size: int, seed: int, start: int = 0, count: int = 1, root=None):
        _check(name, count, size, seed)
        self.name, self.size, self.seed, self.start, self.count = name, size, seed, start, count
        self.root = cache_root(root)
        self._chunks: dict = {}

    def _get(self, i: int):
        if not 0 <= i < self.count:
            raise IndexError(f"image {i} of {self.count}")
        k, j = divmod(self.start + i, CHUNK)
        if k not in self._chunks:
            self._chunks[k] = load_chunk(self.name, self.size, self.seed, k, self.root)
        images, labels = self._chunks[k]
        return images[j], labels[j]

    def image(self, i: int) -> np.ndarray:
        return np.asarray(self._get(i)[0])

    def labels(self, i: int) -> np.ndarray:
        return self._get(i)[1]

    def __getstate__(self):  # worker processes open their own memory maps
        return {**self.__dict__, "_chunks": {}}


__all__ = ["CHUNK", "ENV", "TaskImages", "cache_root", "chunk_paths", "chunks", "draw_chunk", "load_chunk",
           "quantise", "warm"]
