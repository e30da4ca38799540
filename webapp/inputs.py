"""A web user's numbers: widgets send whole numbers as floats (2.0) or strings ("2"); they are read as the
integers they are, then checked like any other argument (evmamba.checks.integer)."""
from __future__ import annotations

from evmamba.checks import integer


def whole(value, name: str, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    return integer(value, name, low, high)


__all__ = ["whole"]
