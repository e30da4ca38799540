"""Progress for long analyses: a tqdm bar in notebooks and terminals, and an optional callback for apps.

Every analysis that loops over images, routes or blocks takes `progress=None`: a callable
`progress(fraction, desc=...)` (Gradio's `gr.Progress()` has this signature) called after each step."""
from __future__ import annotations

from collections.abc import Callable, Iterable

from tqdm.auto import tqdm

ProgressCallback = Callable[..., object]


def track(items: Iterable, total: int, desc: str, progress: ProgressCallback | None = None, bar: bool = True):
    """Yield from `items`, advancing a tqdm bar (when `bar`) and calling `progress(done / total, desc=desc)`."""
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be a callable progress(fraction, desc=...) such as gr.Progress(), "
                         f"got {type(progress).__name__}")
    total = max(int(total), 1)
    with tqdm(total=total, desc=desc, leave=False, disable=not bar) as pbar:
        if progress is not None:
            progress(0.0, desc=desc)
        for done, item in enumerate(items, start=1):
            yield item
            pbar.update(1)
            if progress is not None:
                progress(min(done / total, 1.0), desc=desc)


def part(progress: ProgressCallback | None, start: float, end: float) -> ProgressCallback | None:
    """A progress callback for one part of a longer task: its fractions 0..1 are reported as start..end of
    `progress` (None stays None)."""
    if progress is None:
        return None

    def report(fraction, desc=None):
        progress(start + (end - start) * min(max(float(fraction), 0.0), 1.0), desc=desc)

    return report
