"""One paper style for every matplotlib figure the project makes, and one palette for routes."""
import contextlib

import matplotlib

# Colour-blind-safe qualitative palette (Okabe-Ito, with wine for its yellow, which is unreadable as text on
# white), then tab20 for steps with many routes.
ROUTE_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#882255", "#000000"]

PAPER_RC = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.0,
    "figure.dpi": 150,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,
    "image.cmap": "viridis",
}


def route_colour(k: int) -> str:
    """The colour of route k, the same in every figure."""
    if k < len(ROUTE_COLOURS):
        return ROUTE_COLOURS[k]
    return matplotlib.colormaps["tab20"](k % 20)


@contextlib.contextmanager
def paper_style():
    """Context in which matplotlib figures get the project's paper style."""
    with matplotlib.rc_context(PAPER_RC):
        yield
