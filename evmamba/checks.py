"""Argument checks for public entry points: one integer check and one choice check, with messages that name
the argument, the valid values and what was given.

    step = integer(step, "step", low=1, note=" (2 is the authors' ES2D)")
    stage = integer(stage, "stage", 0, len(model.layers) - 1)
    scan = choice(scan, "scan", SCANS)
"""
from __future__ import annotations

import operator

SHOWN = 80  # characters of a given value repeated in a message (a 100,000-character input is not echoed)


def shown(value) -> str:
    """repr(value), cut to SHOWN characters."""
    text = repr(value)
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."


def integer(value, name: str, low: int | None = None, high: int | None = None, *, what: str = "",
            note: str = "") -> int:
    """`value` as an int when it is an integer (not a bool) in [low, high]; else a ValueError such as
    "stage must be an integer in 0..3, got 5". `what` replaces the noun ("a class id"); `note` is added
    after the range."""
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        v = None
    if v is None or (low is not None and v < low) or (high is not None and v > high):
        raise ValueError(f"{name} must be {_range(low, high, what)}{note}, got {shown(value)}")
    return v


def _range(low, high, what) -> str:
    if low is not None and high is not None:
        return f"{what or 'an integer'} in {low}..{high}"
    if low == 1:
        return what or "a positive integer"
    if low == 0:
        return what or "a non-negative integer"
    if low is not None:
        return f"{what or 'an integer'} >= {low}"
    if high is not None:
        return f"{what or 'an integer'} <= {high}"
    return what or "an integer"


def choice(value, name: str, options, *, plural: str = "", note: str = ""):
    """`value` when it is one of `options`; else a ValueError such as "unknown level 'layer': valid levels
    are mixer, block, stage" (`plural` names the options, by default name + "s")."""
    options = tuple(options)
    try:
        ok = value in options
    except TypeError:  # an unhashable value asked of a dict's keys
        ok = False
    if not ok:
        raise ValueError(f"unknown {name} {shown(value)}: valid {plural or name + 's'} are "
                         f"{', '.join(map(str, options))}{note}")
    return value


def flag(value, name: str) -> bool:
    """`value` when it is True or False; else a ValueError."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {shown(value)}")
    return value


__all__ = ["choice", "flag", "integer", "shown"]
