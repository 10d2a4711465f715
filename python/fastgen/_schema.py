"""A small declarative schema for JSON documents (fastgen.json, scheduler_config.json).

A schema is a tree of field specs: ``Int``, ``Num``, ``Bool``, ``Str``, ``List``, ``Obj`` (known keys,
unknown keys kept as they are), ``Map`` (name -> one spec), ``OneOf`` and ``Any``. ``spec.check(value,
path)`` returns the value normalised (ints as ``int``, numbers as ``float``, objects as new dicts) or
raises :class:`SchemaError` naming the field by its dotted path, e.g. ``config.scaling_factor``. The
caller turns that into its own error type (``ManifestError``, ``ConfigError``) with its own prefix.

JSON reading goes through :func:`load_json_bytes` (size-capped, nesting depth bounded, RecursionError and
oversized integer literals turned into a clean error).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any as _AnyT

__all__ = ["SchemaError", "Spec", "Int", "Num", "Bool", "Str", "List", "Obj", "Map", "OneOf", "Any",
           "show", "check_depth", "load_json_bytes", "INT32_MAX", "INT64_MIN", "INT64_MAX"]

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: deepest nesting of arrays / objects a document may have (fastgen.json needs 6)
MAX_DEPTH = 64


class SchemaError(ValueError):
    """``path`` must be ``what``, got ``value``. ``str(e)`` is the whole sentence."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path and not message.startswith(path) else message)
        self.path = path


def show(v: _AnyT) -> str:
    """A short description of a JSON value for error messages."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return ("true" if v else "false") + " (a bool)"
    if isinstance(v, str):
        s = v if len(v) <= 60 else v[:57] + "..."
        return f"the string {s!r}"
    if isinstance(v, numbers.Integral):
        v = int(v)
        return str(v) if v.bit_length() <= 200 else f"an int of {v.bit_length()} bits"
    if isinstance(v, numbers.Real):
        return repr(float(v))
    if isinstance(v, (list, tuple)):
        return f"a list of {len(v)} item{'s' if len(v) != 1 else ''}"
    if isinstance(v, Mapping):
        return "an object"
    return type(v).__name__


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class Spec:
    """Base of the field specs. ``required``: the key must be present in its object; ``nullable``: JSON
    null is accepted (kept as None)."""

    what = "a value"

    def __init__(self, *, required: bool = False, nullable: bool = False):
        self.required = required
        self.nullable = nullable

    def check(self, v: _AnyT, path: str) -> _AnyT:
        if v is None:
            if self.nullable:
                return None
            raise SchemaError(path, f"{path} must be {self.describe()}, got null")
        return self._check(v, path)

    def _check(self, v: _AnyT, path: str) -> _AnyT:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        return self.what + (" or null" if self.nullable else "")

    def fail(self, v: _AnyT, path: str, what: str | None = None) -> SchemaError:
        return SchemaError(path, f"{path} must be {what or self.describe()}, got {show(v)}")


def _range_text(lo, hi, lo_open=False, hi_open=False) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return ""


class Int(Spec):
    """An integer (not a bool) in [lo, hi]. ``integral_float``: also accept 8.0 (as C++ scheduler configs do),
    returned as int."""

    def __init__(self, lo: int | None = None, hi: int | None = None, *, integral_float: bool = False, **kw):
        super().__init__(**kw)
        self.lo, self.hi, self.integral_float = lo, hi, integral_float
        rng = _range_text(lo, hi)
        self.what = "an int" + (f" {rng}" if rng else "")

    def _check(self, v, path):
        if self.integral_float and isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral):
            f = float(v)
            if math.isfinite(f) and f == math.floor(f) and abs(f) < 2.0**63:
                v = int(f)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise self.fail(v, path)
        v = int(v)
        if (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
            raise self.fail(v, path)
        return int(v)


class Num(Spec):
    """A finite number (int or float, not a bool), returned as float, within an optional range."""

    def __init__(self, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False, **kw):
        super().__init__(**kw)
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open
        rng = _range_text(lo, hi, lo_open, hi_open)
        self.what = "a finite number" + (f" {rng}" if rng else "")

    def _check(self, v, path):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise self.fail(v, path)
        try:
            f = float(v)
        except OverflowError:
            raise self.fail(v, path) from None
        if not math.isfinite(f):
            raise self.fail(v, path)
        lo, hi = self.lo, self.hi
        if lo is not None and (f <= lo if self.lo_open else f < lo):
            raise self.fail(v, path)
        if hi is not None and (f >= hi if self.hi_open else f > hi):
            raise self.fail(v, path)
        return f


class Bool(Spec):
    what = "a bool (true or false)"

    def _check(self, v, path):
        if not isinstance(v, bool):
            raise self.fail(v, path)
        return v


class Str(Spec):
    """A string, optionally one of ``choices``, at most ``max_len`` characters."""

    def __init__(self, choices: tuple[str, ...] | None = None, *, max_len: int = 4096, **kw):
        super().__init__(**kw)
        self.choices, self.max_len = choices, max_len
        if choices:
            self.what = "one of " + ", ".join(repr(c) for c in choices)
        else:
            self.what = f"a string of at most {max_len} characters"

    def _check(self, v, path):
        if not isinstance(v, str):
            raise self.fail(v, path)
        if self.choices is not None and v not in self.choices:
            raise self.fail(v, path)
        if len(v) > self.max_len:
            raise self.fail(v, path)
        return v


class List(Spec):
    """A JSON array of ``elem``; ``length`` (exact) or [min_len, max_len] items."""

    def __init__(self, elem: Spec, *, length: int | None = None, min_len: int = 0, max_len: int = 1 << 20, **kw):
        super().__init__(**kw)
        self.elem = elem
        self.min_len, self.max_len = (length, length) if length is not None else (min_len, max_len)
        n = (f"{length} " if length is not None else
             (f"{min_len} to {max_len} " if min_len else f"at most {max_len} "))
        self.what = f"a list of {n}items, each {elem.what}"

    def _check(self, v, path):
        if not isinstance(v, list):
            raise self.fail(v, path)
        if not self.min_len <= len(v) <= self.max_len:
            raise self.fail(v, path)
        return [self.elem.check(x, _join(path, i)) for i, x in enumerate(v)]


class Any(Spec):
    """Anything (free-form records such as parity figures): kept as it is."""

    what = "any JSON value"

    def _check(self, v, path):
        return v


class OneOf(Spec):
    """The first of ``options`` that accepts the value."""

    def __init__(self, *options: Spec, **kw):
        super().__init__(**kw)
        self.options = options
        self.what = " or ".join(o.what for o in options)

    def _check(self, v, path):
        for o in self.options:
            try:
                return o.check(v, path)
            except SchemaError:
                pass
        raise self.fail(v, path)


class Obj(Spec):
    """A JSON object with known ``fields`` (name -> spec); keys not listed are kept unchecked (forward
    compatibility). ``rules``: cross-field checks ``fn(normalised_dict, path)`` run after the fields."""

    what = "an object"

    def __init__(self, fields: Mapping[str, Spec] | None = None, *,
                 rules: tuple[Callable[[dict, str], None], ...] = (), **kw):
        super().__init__(**kw)
        self.fields = dict(fields or {})
        self.rules = rules

    def _check(self, v, path):
        if not isinstance(v, dict):
            raise self.fail(v, path)
        out = dict(v)
        for key, spec in self.fields.items():
            p = _join(path, key)
            if key not in v:
                if spec.required:
                    raise SchemaError(p, f"{p} is required ({spec.describe()}) but missing")
                continue
            out[key] = spec.check(v[key], p)
        for rule in self.rules:
            rule(out, path)
        return out


class Map(Spec):
    """A JSON object used as a table: every value is ``value``; at most ``max_items`` entries; keys are
    non-empty strings of at most ``max_key_len`` characters."""

    def __init__(self, value: Spec, *, max_items: int = 1024, max_key_len: int = 256, **kw):
        super().__init__(**kw)
        self.value, self.max_items, self.max_key_len = value, max_items, max_key_len
        self.what = f"an object of at most {max_items} entries"

    def _check(self, v, path):
        if not isinstance(v, dict) or len(v) > self.max_items:
            raise self.fail(v, path)
        out = {}
        for key, x in v.items():
            if not key or len(key) > self.max_key_len:
                raise SchemaError(path, f"{path} has a key {key!r:.80} that is empty or longer than "
                                        f"{self.max_key_len} characters")
            out[key] = self.value.check(x, _join(path, key))
        return out


def check_depth(doc: _AnyT, limit: int = MAX_DEPTH) -> None:
    """Raise SchemaError if arrays / objects nest deeper than ``limit`` (iterative: no recursion)."""
    stack: list[tuple[_AnyT, int]] = [(doc, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            items = v.values()
        elif isinstance(v, list):
            items = v
        else:
            continue
        if d > limit:
            raise SchemaError("", f"nesting deeper than {limit} levels of arrays / objects")
        stack.extend((x, d + 1) for x in items if isinstance(x, (dict, list)))


def load_json_bytes(raw: bytes, *, depth: int = MAX_DEPTH) -> _AnyT:
    """Parse JSON bytes (UTF-8) with the nesting ``depth`` bounded; ValueError (with a readable message)
    on bad JSON, too deep nesting or integer literals too long to convert."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text: {e}") from None
    try:
        # JSONDecodeError, and the ValueError of an integer literal over sys.get_int_max_str_digits()
        # digits, are ValueErrors already
        doc = json.loads(text)
    except RecursionError:
        raise ValueError(f"nesting deeper than {depth} levels of arrays / objects") from None
    check_depth(doc, depth)
    return doc

