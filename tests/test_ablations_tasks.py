"""The procedural tasks: labels correct by construction (checked against the pixels), deterministic by seed."""
import numpy as np
import pytest
import torch

from ablations.data import TaskDataset, epoch_order, shard_batches
from ablations.study.tasks import (
    MARKER_COLOURS,
    MARKER_SIDE,
    ORIENTATIONS,
    TASKS,
    dots_connected,
    draw_image,
    make_task,
)


def dominant_orientation(img: np.ndarray) -> int:
    """The orientation (degrees, ORIENTATIONS) of a grating, from the peak of its power spectrum: the peak
    frequency (fy, fx) is normal to the stripes, so the stripes run at atan2(fx, -fy) from horizontal
    (rows downwards, the picture as seen)."""
    grey = img.mean(0)
    spec = np.abs(np.fft.fftshift(np.fft.fft2(grey - grey.mean()))) ** 2
    h, w = spec.shape
    fy, fx = np.unravel_index(np.argmax(spec), spec.shape)
    fy, fx = (fy - h // 2) / h, (fx - w // 2) / w  # cycles per pixel, whatever the crop's shape
    # stripes are perpendicular to (fx, fy) in (x right, y down) coordinates; as seen, y points up
    angle = np.degrees(np.arctan2(fx, fy)) % 180  # the stripes' direction, counter-clockwise as seen
    return min(ORIENTATIONS, key=lambda a: min(abs(a - angle), 180 - abs(a - angle)))


def marker_colour(img: np.ndarray, box) -> str:
    r, c, _ = box
    patch = img[:, r:r + MARKER_SIDE, c:c + MARKER_SIDE].reshape(3, -1)
    assert patch.std(1).max() < 1e-6, "a marker is one flat colour"
    rgb = patch[:, 0]
    return min(MARKER_COLOURS, key=lambda k: np.abs(np.asarray(MARKER_COLOURS[k]) - rgb).sum())


@pytest.mark.parametrize("size", [32, 64])
def test_texture_labels_match_the_pixels(size):
    data = make_task("texture", 48, size, seed=3)
    found = [dominant_orientation(img) for img in data.images.numpy()]
    assert found == [ORIENTATIONS[k] for k in data.labels[:, 0].tolist()]
    assert set(data.labels[:, 0].tolist()) == set(range(len(ORIENTATIONS)))


@pytest.mark.parametrize("size", [32, 64, 96])
def test_marker_labels_match_the_pixels(size):
    data = make_task("markers", 64, size, seed=5)
    third = size // 3
    for img, label, meta in zip(data.images.numpy(), data.labels[:, 0].tolist(), data.meta):
        (r1, c1, n1), (r2, c2, n2) = meta["boxes"]
        colours = [marker_colour(img, b) for b in meta["boxes"]]
        assert colours == [n1, n2]
        assert label == int(n1 == n2)
        # one marker wholly in the left third, the other wholly in the right third
        assert c1 + MARKER_SIDE <= third and c2 >= size - third
        assert c2 - (c1 + MARKER_SIDE) >= size // 3 - 1
    labels = data.labels[:, 0]
    assert 0.25 < labels.float().mean() < 0.75  # both answers occur, about equally


def test_composite_has_both_labels_and_both_are_right():
    data = make_task("texture+markers", 32, 64, seed=1)
    assert data.labels.shape == (32, 2)
    for img, (orientation, match), meta in zip(data.images.numpy(), data.labels.tolist(), data.meta):
        assert meta["orientation"] == ORIENTATIONS[orientation]
        names = [marker_colour(img, b) for b in meta["boxes"]]
        assert match == int(names[0] == names[1])
        lo, hi = meta["band"]  # the grating fills the middle third; the markers lie outside it
        assert all(c + MARKER_SIDE <= lo or c >= hi for _, c, _ in meta["boxes"])
        assert dominant_orientation(img[:, :, lo:hi]) == ORIENTATIONS[orientation]


def _flood(mask, a, b):
    """A second connectivity test, written apart from the task's: breadth-first search over 8-neighbours of
    the path pixels, gaps of up to 2 pixels between dashes bridged (5x5 neighbourhood)."""
    from collections import deque
    h, w = mask.shape
    seen, queue = {a}, deque([a])
    while queue:
        r, c = queue.popleft()
        if (r, c) == b:
            return True
        for dr in range(-2, 3):
            for dc in range(-2, 3):
                n = (r + dr, c + dc)
                if 0 <= n[0] < h and 0 <= n[1] < w and n not in seen and mask[n]:
                    seen.add(n)
                    queue.append(n)
    return False


@pytest.mark.parametrize("size", [32, 64])
def test_contour_labels_match_the_pixels(size):
    data = make_task("contours", 60, size, seed=3)
    labels = data.labels[:, 0].tolist()
    assert 0.3 < np.mean(labels) < 0.7
    for img, label, details in zip(data.images.numpy(), labels, data.meta):
        bright = img.mean(0) > 0.5  # paths (0.85) and dots (1.0) on a dark ground (0.1)
        dots = img.min(0) > 0.99
        a, b = details["ends"]
        assert dots[a] and dots[b]
        assert np.hypot(a[0] - b[0], a[1] - b[1]) >= size / 3
        # the dashes' gaps (1.5 px along the path) are bridged by a 2-pixel reach
        assert dots_connected(bright, a, b) == bool(label)
        assert _flood(bright, a, b) == bool(label)


@pytest.mark.parametrize("name", list(TASKS))
def test_deterministic_by_seed_and_independent_of_the_range(name):
    a = make_task(name, 12, 32, seed=7)
    b = make_task(name, 12, 32, seed=7)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    part = make_task(name, 4, 32, seed=7, start=8)  # images 8..11 alone are the same images
    assert torch.equal(part.images, a.images[8:]) and torch.equal(part.labels, a.labels[8:])
    other = make_task(name, 12, 32, seed=8)
    assert not torch.equal(other.images, a.images)
    img, labels, _ = draw_image(name, 32, 7, 3)
    assert np.array_equal(img.astype(np.float32), a.images[3].numpy()) and labels == a.labels[3].tolist()
    assert a.images.min() >= 0 and a.images.max() <= 1


def test_dataset_matches_make_task_and_is_normalised():
    ds = TaskDataset("texture+markers", 6, 32, seed=2, start=10)
    ref = make_task("texture+markers", 6, 32, seed=2, start=10)
    x, y = ds[4]
    # training reads the images as uint8 (the image cache): within half a level of the drawn floats
    assert torch.allclose(x, (ref.images[4] - 0.5) / 0.25, atol=0.5 / 255 / 0.25 + 1e-6)
    assert torch.equal(y, ref.labels[4])
    assert ds.heads == (4, 2)


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="unknown task 'stripes'.*texture"):
        make_task("stripes", 4)
    with pytest.raises(ValueError, match="size must be an integer >= 32"):
        make_task("texture", 4, size=16)
    with pytest.raises(ValueError, match="count must be a positive integer"):
        make_task("markers", 0)


def test_batches_cover_an_epoch_once_and_split_across_processes():
    n, b = 50, 4
    single = shard_batches(n, b * 2, seed=1, epoch=0)
    ranks = [shard_batches(n, b, seed=1, epoch=0, rank=r, world=2) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 50 // 8
    for s, (r0, r1) in enumerate(zip(*ranks)):
        assert r0 + r1 == single[s]  # each global batch split between the two processes
    flat = [i for batch in single for i in batch]
    assert len(set(flat)) == len(flat)
    assert not torch.equal(epoch_order(n, 1, 0), epoch_order(n, 1, 1))
