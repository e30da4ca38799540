"""Procedurally generated image tasks that train in minutes on a CPU and tell local from global ability.

Every image is a pure function of (task, seed, index, size): no downloads, no files. Its labels are drawn
first and the image is then drawn to match them, so labels are correct by construction.

    texture   (local)   which of four orientations (0, 45, 90, 135 degrees) a grey grating has (random
                        period 4-8 px, phase, brightness, contrast, pixel noise). Every 8x8 window shows
                        the orientation, so local filters and the global average pool solve it.
    markers   (global)  two coloured 8x8 squares, one in the left and one in the right third of the image
                        (at least a third of the image apart), on grey noise: do their colours match?
                        Per-position features averaged over the image cannot answer this: the average
                        of "red here" and "green there" is the midpoint of "red, red" and "green,
                        green", so no linear read-out of the pooled features separates same from
                        different. Some layer must carry one marker's colour to the other's position.
    contours  (global)  Pathfinder-style contour integration (Linsley et al., NeurIPS 2018; Long Range Arena's
                        Pathfinder, Tay et al., ICLR 2021): curved dashed paths on a dark ground, two of
                        them long, a few short distractors, and two endpoint dots: are the dots the two ends
                        of one path? Negatives put the dots on the ends of the two long paths, so both
                        classes show the same paths and dots. Every label is checked by an independent
                        connectivity test on the pixels (`dots_connected`: a flood fill through the paths'
                        pixels, bridging the gaps between dashes); images where the test disagrees with the
                        drawn label are drawn again (negatives whose paths come within a few pixels of each other
                        too, so no negative is nearly connected).
    texture+markers     both at once: the grating fills the middle third of the image and the markers sit
                        on grey in the outer thirds (the grating between them); two labels per image
                        (orientation, match), answered by two heads of one classifier.

The markers keep their size (8x8 pixels) at every image size, so larger images put them further apart
in tokens: the global task gets harder with resolution, as long-range dependencies do.

`pictures(name, count, size, seed)` returns the images as (H, W, 3) pictures;
`make_task(name, count, size, seed)` returns a TaskData: float images in [0, 1] (N, 3, H, W), integer
labels (N, heads), and per-image details (`meta`) that say how each image was drawn (the tests check the
labels against the pixels with them).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from evmamba.checks import integer

# Marker colours (RGB in [0, 1]): saturated, far from each other and from any grey of the backgrounds.
MARKER_COLOURS = {
    "red": (0.95, 0.1, 0.1),
    "blue": (0.15, 0.25, 1.0),
}
MARKER_SIDE = 8  # pixels, at every image size
MARKER_NOISE = 0.05  # standard deviation of the grey background's pixel noise
ORIENTATIONS = (0, 45, 90, 135)  # degrees from horizontal (image rows run downwards), the texture classes
PERIODS = (4.0, 8.0)  # grating period range, pixels
TEXTURE_NOISE = 0.06
# contours: dash and gap along a path (pixels), the path step, and how far a path turns per step
DASH, GAP, PATH_STEP, CURVATURE = 2.0, 1.5, 0.5, 0.015


@dataclass(frozen=True)
class TaskInfo:
    name: str
    kind: str  # local, global, or both
    heads: tuple  # classes per label column
    head_names: tuple
    class_names: tuple  # per head, a tuple of class names
    description: str
    # the generator's version: bumped whenever a change to the drawing changes the task's images (it keys
    # the image cache, ablations/study/cache.py)
    version: int = 1


_ORIENTATION_NAMES = tuple(f"{a} deg" for a in ORIENTATIONS)
TASKS = {
    "texture": TaskInfo("texture", "local", (len(ORIENTATIONS),), ("orientation",), (_ORIENTATION_NAMES,),
                        "which of four orientations a grey grating (random period, phase, contrast, noise) has"),
    "markers": TaskInfo("markers", "global", (2,), ("match",), (("different", "same"),),
                        "do two coloured squares, one in the left and one in the right third, have the same colour"),
    "contours": TaskInfo("contours", "global", (2,), ("connected",), (("apart", "connected"),),
                         "are two dots the two ends of one curved dashed path (Pathfinder-style contour "
                         "integration, with distractor paths)"),
    "texture+markers": TaskInfo("texture+markers", "local and global", (len(ORIENTATIONS), 2),
                                ("orientation", "match"), (_ORIENTATION_NAMES, ("different", "same")),
                                "a grating in the middle third between the two markers: its orientation, and "
                                "whether the markers match"),
}
# The long-range ladder: mazes of n x n cells, and contour integration with more long paths.
MAZE_SIDES = (4, 5, 6, 8, 16)
for _n in MAZE_SIDES:
    TASKS[f"maze-{_n}"] = TaskInfo(
        f"maze-{_n}", "global", (2,), ("reachable",), (("blocked", "reachable"),),
        f"a maze of {_n}x{_n} cells (1-px walls) with one extra wall and two marked cells: can one mark be "
        "reached from the other? Both classes have the same number of walls; the extra wall is on the "
        "marks' path (blocked) or off it (reachable)")
TASKS["contours-3"] = TaskInfo(
    "contours-3", "global", (2,), ("connected",), (("apart", "connected"),),
    "contours with three long paths and twice the distractors: are two dots the two ends of one path?")
# Which task and label head measures which ability (the tables' accuracy columns).
HEAD_ABILITY = {"orientation": "local", "match": "global", "connected": "global", "reachable": "global"}


@dataclass
class TaskData:
    info: TaskInfo
    images: torch.Tensor  # (N, 3, H, W) float32 in [0, 1]
    labels: torch.Tensor  # (N, heads) int64
    seed: int
    meta: list = field(default_factory=list)

    def __len__(self):
        return self.images.shape[0]


def _check(name, count, size, seed):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: valid tasks are {', '.join(TASKS)}")
    integer(count, "count", low=1)
    integer(size, "size", low=32, note=" (the network downsamples by 32)")
    integer(seed, "seed", low=0)


def _rng(name: str, seed: int, index: int) -> np.random.Generator:
    """One generator per image, so image i is the same whatever range it is generated in."""
    return np.random.default_rng([seed, index, zlib.crc32(name.encode())])


# ---- drawing -------------------------------------------------------------------------------------------
def grating(rng: np.random.Generator, size: int, orientation: int) -> tuple[np.ndarray, dict]:
    """A grey grating whose stripes run at `orientation` degrees (ORIENTATIONS), with random period, phase,
    brightness, contrast and pixel noise: (3, size, size) in [0, 1]."""
    angle = np.deg2rad(orientation)
    period = rng.uniform(*PERIODS)
    phase = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    # the intensity changes along the stripes' normal; stripes at `angle` from horizontal, rows downwards
    wave = np.sin(2 * np.pi * (-xx * np.sin(angle) - yy * np.cos(angle)) / period + phase)
    low = rng.uniform(0.1, 0.45)
    high = rng.uniform(low + 0.3, 0.95)
    t = low + (high - low) * (0.5 + 0.5 * wave)
    img = np.repeat(t[None], 3, axis=0) + rng.normal(0, TEXTURE_NOISE, size=(3, size, size))
    return np.clip(img, 0, 1), dict(orientation=orientation, period=period)


def place_markers(rng: np.random.Generator, img: np.ndarray, match: int) -> dict:
    """Draw two MARKER_SIDE squares on `img` (in place), one in the left third and one in the right third,
    of the same colour when match is 1 and of different colours when 0."""
    size = img.shape[-1]
    names = list(MARKER_COLOURS)
    first = int(rng.integers(len(names)))
    second = first if match == 1 else (first + int(rng.integers(1, len(names)))) % len(names)
    s = MARKER_SIDE
    third = size // 3
    boxes = []
    for colour, (c_lo, c_hi) in zip((first, second), ((0, third - s), (size - third, size - s))):
        r = int(rng.integers(0, size - s + 1))
        c = int(rng.integers(c_lo, max(c_lo, c_hi) + 1))
        boxes.append((r, c, names[colour]))
    if rng.random() < 0.5:  # which colour sits on the left carries no information
        boxes = [(r, c, name) for (r, c, _), (_, _, name) in zip(boxes, reversed(boxes))]
    for r, c, name in boxes:
        img[:, r:r + s, c:c + s] = np.asarray(MARKER_COLOURS[name])[:, None, None]
    return dict(boxes=boxes, side=s)


def _texture(rng, size, labels):
    return grating(rng, size, ORIENTATIONS[labels[0]])


def _markers(rng, size, labels):
    img = np.clip(0.5 + rng.normal(0, MARKER_NOISE, size=(3, size, size)), 0, 1)
    return img, place_markers(rng, img, labels[0])


def _both(rng, size, labels):
    """The grating fills the middle third; the markers sit on grey noise in the outer thirds, so the
    grating lies between them."""
    img = np.clip(0.5 + rng.normal(0, MARKER_NOISE, size=(3, size, size)), 0, 1)
    texture, details = grating(rng, size, ORIENTATIONS[labels[0]])
    third = size // 3
    img[:, :, third:size - third] = texture[:, :, third:size - third]
    details.update(place_markers(rng, img, labels[1]))
    details["band"] = (third, size - third)
    return img, details


def _path(rng, size: int, length: float) -> np.ndarray:
    """(n, 2) points (row, col) of a smooth random curve of about `length` pixels inside the image (a
    margin of 2 px), turning by a random-walk amount each PATH_STEP and away from the borders."""
    lo, hi = 2.0, size - 3.0
    pos = rng.uniform(lo + 2, hi - 2, size=2)
    heading = rng.uniform(0, 2 * np.pi)
    turn = 0.0
    points = [pos.copy()]
    for _ in range(int(length / PATH_STEP)):
        turn = 0.9 * turn + rng.normal(0, CURVATURE)
        heading += turn
        step = PATH_STEP * np.array([np.sin(heading), np.cos(heading)])
        if not (lo <= pos[0] + step[0] <= hi and lo <= pos[1] + step[1] <= hi):
            heading += np.pi / 2 * (1 if rng.random() < 0.5 else -1)  # turn away from the border
            turn = 0.0
            continue
        pos = pos + step
        points.append(pos.copy())
    return np.asarray(points)


def _dashes(points: np.ndarray, mask: np.ndarray) -> None:
    """Mark (in place) the pixels of `points` that fall on dashes: DASH pixels drawn, GAP left out."""
    arc = np.arange(len(points)) * PATH_STEP
    on = (arc % (DASH + GAP)) < DASH
    rows, cols = np.round(points[on]).astype(int).T
    mask[rows, cols] = True


def dots_connected(mask: np.ndarray, a, b, bridge: int = 2) -> bool:
    """Whether pixels a and b are joined through `mask` when gaps of up to `bridge` pixels are bridged: a
    flood fill from a over the mask grown by `bridge` (the independent check of the contours labels)."""
    grown = mask.copy()
    for _ in range(bridge // 2 + bridge % 2):
        g = grown.copy()
        g[1:] |= grown[:-1]
        g[:-1] |= grown[1:]
        g[:, 1:] |= grown[:, :-1]
        g[:, :-1] |= grown[:, 1:]
        grown = g
    reach = np.zeros_like(mask)
    reach[a] = grown[a]
    while True:
        nxt = reach.copy()
        nxt[1:] |= reach[:-1]
        nxt[:-1] |= reach[1:]
        nxt[:, 1:] |= reach[:, :-1]
        nxt[:, :-1] |= reach[:, 1:]
        nxt &= grown
        if (nxt == reach).all():
            return bool(reach[b])
        reach = nxt


def _contours(rng, size, labels, long_paths=2, distractors=1):
    """`long_paths` curves of 1.4 x size px and `distractors` x size/16 short ones; the dots on path 0's
    start and on the end of path 0 (connected) or of path 1 (apart)."""
    connected = labels[0]
    attempt = 0
    for attempt in range(1, 1001):  # noqa: B007 - the count is reported in the details
        longs = [_path(rng, size, 1.4 * size) for _ in range(long_paths)]
        shorts = [_path(rng, size, 0.4 * size) for _ in range(max(1, distractors * size // 16))]
        long_paths_, distractors_ = longs, shorts
        ends = [tuple(np.round(long_paths_[0][0]).astype(int)),
                tuple(np.round(long_paths_[0 if connected else 1][-1]).astype(int))]
        if np.hypot(*np.subtract(*ends)) < size / 3:  # the dots at least a third of the image apart
            continue
        mask = np.zeros((size, size), dtype=bool)
        for p in long_paths_ + distractors_:
            _dashes(p, mask)
        for r, c in ends:
            mask[r, c] = True
        # the label by pixels: positives joined with the dashes' gaps bridged; negatives apart even when gaps
        # twice as wide are bridged (no two paths nearly touching between the dots)
        if connected and not dots_connected(mask, ends[0], ends[1], bridge=2):
            continue
        if not connected and dots_connected(mask, ends[0], ends[1], bridge=4):
            continue
        break
    else:  # pragma: no cover - the image is redrawn until it agrees; 1000 failures would be a bug
        raise RuntimeError("could not draw a contours image whose pixels agree with its label")
    img = 0.1 + rng.normal(0, MARKER_NOISE, size=(3, size, size))
    img[:, mask] = 0.85
    for r, c in ends:  # the dots: 3x3 bright squares
        img[:, max(0, r - 1):r + 2, max(0, c - 1):c + 2] = 1.0
    return np.clip(img, 0, 1), dict(ends=ends, mask=mask, attempts=attempt)


# ---- mazes -------------------------------------------------------------------------------------------------
MAZE_WALL, MAZE_GROUND = 0.85, 0.1
MAZE_MARK = (0.95, 0.1, 0.1)
MAZE_GAP = 1  # the extra wall at least this many cells (along the path, or by rows + columns) from both marks


def maze_tree(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A perfect maze of n x n cells (a random depth-first spanning tree): (right, down) boolean arrays of
    open passages, right[i, j] between cells (i, j) and (i, j + 1), down[i, j] between (i, j) and (i + 1, j)."""
    right = np.zeros((n, n - 1), dtype=bool)
    down = np.zeros((n - 1, n), dtype=bool)
    seen = np.zeros((n, n), dtype=bool)
    stack = [(int(rng.integers(n)), int(rng.integers(n)))]
    seen[stack[0]] = True
    while stack:
        i, j = stack[-1]
        free = [(i + a, j + b) for a, b in ((0, 1), (1, 0), (0, -1), (-1, 0))
                if 0 <= i + a < n and 0 <= j + b < n and not seen[i + a, j + b]]
        if not free:
            stack.pop()
            continue
        k, m = free[int(rng.integers(len(free)))]
        if k == i:
            right[i, min(j, m)] = True
        else:
            down[min(i, k), j] = True
        seen[k, m] = True
        stack.append((k, m))
    return right, down


def maze_path(right: np.ndarray, down: np.ndarray, a, b) -> list:
    """The cells from a to b through the open passages (breadth first), or [] when b cannot be reached."""
    n = right.shape[0]
    parent = {tuple(a): None}
    queue = [tuple(a)]
    for i, j in queue:
        if (i, j) == tuple(b):
            out, c = [], (i, j)
            while c is not None:
                out.append(c)
                c = parent[c]
            return out[::-1]
        steps = []
        if j + 1 < n and right[i, j]:
            steps.append((i, j + 1))
        if j > 0 and right[i, j - 1]:
            steps.append((i, j - 1))
        if i + 1 < n and down[i, j]:
            steps.append((i + 1, j))
        if i > 0 and down[i - 1, j]:
            steps.append((i - 1, j))
        for c in steps:
            if c not in parent:
                parent[c] = (i, j)
                queue.append(c)
    return []


def _close(right, down, c, d):
    """Close the passage between neighbouring cells c and d (in place)."""
    (i, j), (k, m) = sorted((tuple(c), tuple(d)))
    if i == k:
        right[i, j] = False
    else:
        down[i, j] = False


def maze_grid(size: int, n: int) -> tuple[int, int, int]:
    """(cell pitch in px, offset of the first wall line, row/column of the last wall line) of an n x n maze
    drawn in a size x size image: wall lines at offset + k * pitch, the last one at most at size - 1."""
    pitch = size // n
    offset = (size - n * pitch) // 2
    return pitch, offset, min(offset + n * pitch, size - 1)


def draw_maze(right, down, marks, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image (3, size, size), wall mask (size, size)) of a maze: 1-px wall lines between closed cells and
    around the maze, the marked cells' interiors filled with MAZE_MARK, on a dark noisy ground."""
    n = right.shape[0]
    pitch, off, last = maze_grid(size, n)
    line = [off + k * pitch for k in range(n)] + [last]
    wall = np.zeros((size, size), dtype=bool)
    wall[line[0], line[0]:last + 1] = wall[last, line[0]:last + 1] = True
    wall[line[0]:last + 1, line[0]] = wall[line[0]:last + 1, last] = True
    for i in range(n):
        for j in range(n):
            if j + 1 < n and not right[i, j]:
                wall[line[i]:line[i + 1] + 1, line[j + 1]] = True
            if i + 1 < n and not down[i, j]:
                wall[line[i + 1], line[j]:line[j + 1] + 1] = True
    img = MAZE_GROUND + rng.normal(0, MARKER_NOISE, size=(3, size, size))
    img[:, wall] = MAZE_WALL
    for i, j in marks:
        img[:, line[i] + 1:line[i + 1], line[j] + 1:line[j + 1]] = np.asarray(MAZE_MARK)[:, None, None]
    return np.clip(img, 0, 1), wall


def _maze(rng, size, labels, n=8):
    """A perfect maze, two marked cells, and one passage closed: on the marks' path (blocked, label 0) or
    off it (reachable, 1), at least MAZE_GAP cells from both marks, so both classes have as many walls."""
    reachable = labels[0]
    for attempt in range(1, 1001):  # noqa: B007 - the count is reported in the details
        right, down = maze_tree(rng, n)
        cells = rng.choice(n * n, size=2, replace=False)
        a, b = divmod(int(cells[0]), n), divmod(int(cells[1]), n)
        path = maze_path(right, down, a, b)
        far = lambda c, marks=(a, b): min(abs(c[0] - m[0]) + abs(c[1] - m[1]) for m in marks) >= MAZE_GAP  # noqa: E731
        if reachable:
            on = {frozenset(e) for e in zip(path, path[1:])}
            edges = [((i, j), (i, j + 1)) for i, j in np.argwhere(right).tolist()]
            edges += [((i, j), (i + 1, j)) for i, j in np.argwhere(down).tolist()]
            edges = [e for e in edges if frozenset(e) not in on and far(e[0]) and far(e[1])]
        else:
            edges = [(c, d) for k, (c, d) in enumerate(zip(path, path[1:]))
                     if min(k, len(path) - 2 - k) >= MAZE_GAP - 1 and far(c) and far(d)]
        if edges:
            break
    else:  # pragma: no cover - a maze of 4 or more cells a side has such passages
        raise RuntimeError(f"could not draw a {n}x{n} maze with an extra wall far from the marks")
    cut = edges[int(rng.integers(len(edges)))]
    _close(right, down, *cut)
    img, wall = draw_maze(right, down, (a, b), size, rng)
    return img, dict(marks=(a, b), cut=cut, cells=n, path=len(path), wall=wall, attempts=attempt)


_DRAW = {"texture": _texture, "markers": _markers, "contours": _contours, "texture+markers": _both,
         "contours-3": lambda rng, size, labels: _contours(rng, size, labels, long_paths=3, distractors=2)}
for _n in MAZE_SIDES:
    _DRAW[f"maze-{_n}"] = lambda rng, size, labels, n=_n: _maze(rng, size, labels, n)


def draw_image(name: str, size: int, seed: int, index: int):
    """Image `index` of task `name`'s stream for `seed`: (image (3, size, size) float array in [0, 1],
    labels (one per head), details). The labels are drawn first (each uniformly) and the image made to
    match them."""
    info = TASKS[name]
    rng = _rng(name, seed, index)
    labels = [int(rng.integers(n)) for n in info.heads]
    img, details = _DRAW[name](rng, size, labels)
    return img, labels, details


def pictures(name: str, count: int, size: int = 32, seed: int = 0, start: int = 0) -> list:
    """Images start..start+count-1 of task `name` as (size, size, 3) float pictures in [0, 1] (what
    evmamba's image functions and the study models' preprocessing take)."""
    _check(name, count, size, seed)
    return [np.ascontiguousarray(draw_image(name, size, seed, start + i)[0].transpose(1, 2, 0))
            for i in range(count)]


def make_task(name: str, count: int, size: int = 32, seed: int = 0, start: int = 0) -> TaskData:
    """`count` images of task `name` at size×size: images start..start+count-1 of the stream for `seed`."""
    _check(name, count, size, seed)
    info = TASKS[name]
    images = np.empty((count, 3, size, size), dtype=np.float32)
    labels = np.empty((count, len(info.heads)), dtype=np.int64)
    meta = []
    for i in range(count):
        images[i], labels[i], details = draw_image(name, size, seed, start + i)
        meta.append(details)
    return TaskData(info, torch.from_numpy(images), torch.from_numpy(labels), seed, meta)


__all__ = ["DASH", "GAP", "HEAD_ABILITY", "MARKER_COLOURS", "MARKER_SIDE", "MAZE_SIDES", "ORIENTATIONS", "TASKS",
           "TaskData", "TaskInfo", "dots_connected", "draw_image", "draw_maze", "grating", "make_task", "maze_grid",
           "maze_path", "maze_tree", "place_markers"]
