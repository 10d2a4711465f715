"""The ``cache=`` request field: step caching settings, parsed and checked against the engine.

A setting is a spec string ``"KIND"`` or ``"KIND:key=value,key=value"`` (the CLI's ``--cache``; ``;``
separates options too), a dict
``{"kind": KIND, key: value, ...}``, or a :class:`CacheSpec`; ``None`` (the default) is off. Kinds:

=============  =====================================================================================
deepcache      UNets (SD 1.x/2.x, SDXL, AnimateDiff: one context window). ``interval`` (3): a full UNet every interval-th
               step, the cached steps run only the shallow layers around ``branch`` (0) and reuse the
               deep feature of the last full step; ``uniform`` (true) or the paper's non-uniform
               spacing (``uniform=false``, ``pow`` 1.4, ``center`` 15). Engines need
               ``fastgen export ... --cache deepcache[:branch=N]``.
first_block    SD3 transformers (diffusers' FirstBlockCache). ``threshold`` (0.05): the rest of the
               transformer runs when the first block's residual changed by more than this (relative
               L1) since the last full step. Engines need ``fastgen export ... --cache first_block``.
taylorseer     SD3 transformers (diffusers' TaylorSeer, lite mode: the output projection is
               extrapolated). ``interval`` (5), ``warmup`` (3: full steps first), ``until`` (none:
               full steps from this step on), ``order`` (1). Every SD3 engine supports it.
=============  =====================================================================================

Which steps run in full is decided in the C++ core (``fastgen._core``); this module only reads settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ._args import check_bool, check_float, check_int
from .errors import InvalidArgumentError

__all__ = ["CacheSpec", "KINDS", "parse_cache", "check_cache", "engine_cache_kinds", "EXPORT_FLAG"]

#: kind -> {option: (default, checker)}; a checker returns the normalised value or raises
_INT = lambda lo, hi: (lambda name, v: check_int(name, v, lo, hi))  # noqa: E731


def _threshold(name: str, v: Any) -> float:
    return check_float(name, v, 0.0, 1e6)


def _pow(name: str, v: Any) -> float:
    return check_float(name, v, 1.0, 16.0, open_lo=True)


def _until(name: str, v: Any) -> int | None:
    return None if v is None or v == "none" else check_int(name, v, 0, 1000)


KINDS: dict[str, dict[str, tuple[Any, Any]]] = {
    "deepcache": {"interval": (3, _INT(1, 1000)), "branch": (0, _INT(0, 63)), "uniform": (True, check_bool),
                  "pow": (1.4, _pow), "center": (15, _INT(0, 1000))},
    "first_block": {"threshold": (0.05, _threshold)},
    "taylorseer": {"interval": (5, _INT(1, 1000)), "warmup": (3, _INT(0, 1000)), "until": (None, _until),
                   "order": (1, _INT(0, 8))},
}
ALIASES = {"fbcache": "first_block", "first-block": "first_block", "fbc": "first_block"}
#: the export option that adds a kind's graphs (taylorseer needs none)
EXPORT_FLAG = {"deepcache": "--cache deepcache", "first_block": "--cache first_block"}


@dataclass(frozen=True)
class CacheSpec:
    """A validated step-cache setting: ``kind`` and every option of that kind (defaults filled in)."""

    kind: str
    options: tuple[tuple[str, Any], ...]

    def __getitem__(self, key: str) -> Any:
        return dict(self.options)[key]

    def describe(self) -> str:
        """The canonical spec string (PNG text chunks, logs): ``kind:key=value,...``."""
        def show(v):
            return "none" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
        return self.kind + ":" + ",".join(f"{k}={show(v)}" for k, v in self.options)


def _kind(name: Any) -> str:
    if not isinstance(name, str):
        raise InvalidArgumentError(f"cache kind must be a string, got {type(name).__name__}")
    k = ALIASES.get(name.strip().lower(), name.strip().lower())
    if k not in KINDS:
        raise InvalidArgumentError(f"unknown cache kind {name!r}; valid kinds: {', '.join(KINDS)} (or None for off)")
    return k


def _value(text: str) -> Any:
    """A spec string's value: an int, a float, true / false / none, else the text."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(low)
        except ValueError:
            pass
    return text.strip()


def parse_cache(cache: Any) -> CacheSpec | None:
    """``cache=`` -> a CacheSpec (options checked, defaults filled in) or None (off)."""
    if cache is None or isinstance(cache, CacheSpec) and cache.kind in KINDS:
        return cache
    if isinstance(cache, str):
        head, _, rest = cache.partition(":")
        kind, given = _kind(head), {}
        for part in filter(None, (p.strip() for p in rest.replace(";", ",").split(","))):
            key, eq, val = part.partition("=")
            if not eq:
                raise InvalidArgumentError(f"cache option {part!r} must be key=value (in {cache!r})")
            given[key.strip()] = _value(val)
    elif isinstance(cache, dict):
        if "kind" not in cache:
            raise InvalidArgumentError(f"a cache dict needs a 'kind' ({', '.join(KINDS)})")
        kind, given = _kind(cache["kind"]), {k: v for k, v in cache.items() if k != "kind"}
    else:
        raise InvalidArgumentError(f"cache must be None, a spec string like 'deepcache:interval=3' or a dict, "
                                   f"got {type(cache).__name__}")
    known = KINDS[kind]
    for key in given:
        if key not in known:
            raise InvalidArgumentError(f"unknown option {key!r} for cache kind {kind!r}; valid options: "
                                       f"{', '.join(known)}")
    options = tuple((k, chk(f"cache {kind} {k}", given[k]) if k in given else default)
                    for k, (default, chk) in known.items())
    return CacheSpec(kind, options)


def engine_cache_kinds(manifest) -> dict[str, dict]:
    """The step-cache kinds an engine supports -> their manifest record (config.step_cache); engines
    exported before step caching have none but taylorseer (SD3, no graphs of its own)."""
    kinds = dict((manifest.config.get("step_cache") or {}))
    if manifest.family == "sd3":
        kinds.setdefault("taylorseer", {})
    return kinds


def check_cache(cache: Any, manifest) -> CacheSpec | None:
    """``cache=`` of a call on this engine: parsed, and refused when the engine was not exported for it."""
    spec = parse_cache(cache)
    if spec is None:
        return None
    kinds = engine_cache_kinds(manifest)
    if spec.kind not in kinds:
        have = ", ".join(kinds) or "none"
        flag = EXPORT_FLAG.get(spec.kind)
        how = f"; export it with `fastgen export SOURCE OUT {flag}`" if flag else ""
        if spec.kind == "taylorseer":
            how = " (taylorseer needs an SD3 transformer)"
        raise InvalidArgumentError(f"this engine was not exported for cache kind {spec.kind!r} (it supports: "
                                   f"{have}){how}")
    if spec.kind == "deepcache":
        branches = sorted(int(b) for b in kinds["deepcache"].get("branches", {}))
        if spec["branch"] not in branches:
            raise InvalidArgumentError(f"cache deepcache branch must be one of the exported branches {branches}, got "
                                       f"{spec['branch']}; export another with `fastgen export SOURCE OUT --cache "
                                       f"deepcache:branch={spec['branch']}`")
    return spec
