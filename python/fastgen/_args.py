"""Argument checks shared by the pipelines: every failure is an InvalidArgumentError naming the argument."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import InvalidArgumentError


def check_int(name: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InvalidArgumentError(f"{name} must be an int, got {type(v).__name__}")
    if not lo <= int(v) <= hi:
        raise InvalidArgumentError(f"{name} must be in [{lo}, {hi}], got {v}")
    return int(v)


def check_float(name: str, v: Any, lo: float = -math.inf, hi: float = math.inf, *, open_lo: bool = False) -> float:
    """A finite float in [lo, hi] ((lo, hi] with open_lo)."""
    if isinstance(v, bool):
        raise InvalidArgumentError(f"{name} must be a number, got bool")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a number, got {type(v).__name__}") from None
    if not (math.isfinite(f) and lo <= f <= hi) or (open_lo and f == lo):
        raise InvalidArgumentError(
            f"{name} must be a finite number in {'(' if open_lo else '['}{lo}, {hi}], got {v!r}")
    return f
