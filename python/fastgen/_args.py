"""Argument checks shared by the request objects, the pipelines and the server.

Every failure is an InvalidArgumentError (or ShapeError) that names the argument. Numbers must be
numbers (a string "7" is refused, a bool is never an int), ranges are closed unless said otherwise.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .errors import InvalidArgumentError, ShapeError

MAX_PROMPT_CHARS = 10_000
MAX_SEED = 2**63


def check_int(name: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InvalidArgumentError(f"{name} must be an int, got {type(v).__name__}")
    if not lo <= int(v) <= hi:
        raise InvalidArgumentError(f"{name} must be in [{lo}, {hi}], got {v}")
    return int(v)


def check_float(name: str, v: Any, lo: float = -math.inf, hi: float = math.inf, *, open_lo: bool = False) -> float:
    """A finite real number (int, float or numpy scalar; not a bool or a string) in [lo, hi] ((lo, hi] with open_lo)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise InvalidArgumentError(f"{name} must be a number, got {type(v).__name__} {_short(v)}")
    f = float(v)
    if not (math.isfinite(f) and lo <= f <= hi) or (open_lo and f == lo):
        raise InvalidArgumentError(
            f"{name} must be a finite number in {'(' if open_lo else '['}{lo}, {hi}], got {v!r}")
    return f


def check_bool(name: str, v: Any) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    raise InvalidArgumentError(f"{name} must be True or False, got {type(v).__name__} {_short(v)}")


def check_choice(name: str, v: Any, choices: Iterable[Any]) -> Any:
    choices = tuple(choices)
    if not isinstance(v, (str, type(None))) or v not in choices:
        raise InvalidArgumentError(f"{name} must be one of {', '.join(map(repr, choices))}, got {_short(v)}")
    return v


def check_callable(name: str, v: Any, signature: str) -> Any:
    if v is not None and not callable(v):
        raise InvalidArgumentError(f"{name} must be callable: {signature}; got {type(v).__name__}")
    return v


def check_text(name: str, v: Any, *, max_chars: int = MAX_PROMPT_CHARS) -> str:
    """A str that is valid Unicode text (no lone surrogates) of at most ``max_chars`` characters."""
    if not isinstance(v, str):
        raise InvalidArgumentError(f"{name} must be a string, got {type(v).__name__}")
    if len(v) > max_chars:
        raise InvalidArgumentError(f"{name} is {len(v)} characters long; the limit is {max_chars}")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidArgumentError(f"{name} is not valid Unicode text: a lone surrogate {v[e.start]!r} at "
                                   f"character {e.start}") from None
    return v


def check_prompts(name: str, v: Any, batch: int | None = None) -> list[str]:
    """A string or a non-empty list of strings -> a list (a string repeated ``batch`` times when given)."""
    if isinstance(v, str):
        out = [check_text(name, v)] * (1 if batch is None else batch)
    elif isinstance(v, (list, tuple)) and v:
        out = [check_text(f"{name}[{i}]", p) for i, p in enumerate(v)]
    else:
        raise InvalidArgumentError(f"{name} must be a string or a non-empty list of strings, got {_short(v)}")
    if batch is not None and len(out) != batch:
        raise InvalidArgumentError(f"{name} has {len(out)} entries but prompt has {batch}")
    return out


def check_seed(name: str, v: Any) -> int:
    """None draws a random seed (as every fastgen task does); else an int in [0, 2**63)."""
    if v is None:
        return int.from_bytes(os.urandom(8), "little") >> 1
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= int(v) < MAX_SEED:
        raise InvalidArgumentError(f"{name} must be None or an int in [0, 2**63), got {_short(v)}")
    return int(v)


def check_array(name: str, v: Any, shape: tuple[int, ...], what: str = "") -> np.ndarray:
    """A finite floating-point numpy array of exactly ``shape`` -> contiguous float32."""
    if not isinstance(v, np.ndarray):
        raise ShapeError(f"{name} must be a numpy array of shape {shape}, got {type(v).__name__}")
    if tuple(v.shape) != tuple(shape):
        raise ShapeError(f"{name} must have shape {shape}{' ' + what if what else ''}, got {v.shape}")
    if not np.issubdtype(v.dtype, np.floating) or not np.isfinite(v).all():
        raise ShapeError(f"{name} must hold finite floating-point values")
    return np.ascontiguousarray(v, dtype=np.float32)


def check_size_pair(name: str, v: Any) -> tuple[int, int]:
    """SDXL micro-conditioning sizes / offsets: a pair of ints in [0, 65536]."""
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise InvalidArgumentError(f"{name} must be a pair (height, width) of ints, got {_short(v)}")
    return check_int(f"{name}[0]", v[0], 0, 1 << 16), check_int(f"{name}[1]", v[1], 0, 1 << 16)


def check_keywords(what: str, given: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Refuse keyword arguments that ``what`` does not take, naming the closest valid one."""
    allowed = sorted(set(allowed))
    unknown = [k for k in given if k not in allowed]
    if not unknown:
        return
    parts = []
    for k in unknown:
        close = difflib.get_close_matches(str(k), allowed, n=1, cutoff=0.6)
        parts.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise InvalidArgumentError(f"{what} got unexpected keyword argument{'s' * (len(unknown) > 1)} "
                               f"{', '.join(parts)}; valid: {', '.join(allowed)}")


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."
