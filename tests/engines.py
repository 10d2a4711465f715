"""Tiny exported engines shared by the runtime tests (built once per test session)."""

from __future__ import annotations

import os
import tempfile
import threading

_CACHE: dict[tuple, tuple[str, str]] = {}
_LOCK = threading.Lock()
_ROOT = None


def _build(kind: str, src: str, **overrides) -> None:
    from fastgen_export import testing

    others = {"animatediff": testing.build_tiny_animatediff, "svd": testing.build_tiny_svd,
              "vit-gpt2": testing.build_tiny_vit_gpt2, "blip": testing.build_tiny_blip}
    if kind in others:
        others[kind](src, **overrides)
    else:
        testing.build_tiny_pipeline(kind, src, **overrides)


def tiny_engine(kind: str, export_options: dict | None = None, **overrides) -> tuple[str, str]:
    """(source folder, engine dir) of a tiny random `kind` model: the image kinds of
    fastgen_export.testing.KINDS, "animatediff", "svd", "vit-gpt2" or "blip". ``export_options``: extra
    keywords of fastgen_export.api.export (e.g. ``{"cache": "deepcache"}``)."""
    global _ROOT
    from fastgen_export.api import export

    export_options = dict(export_options or {})
    key = (kind, tuple(sorted(overrides.items())), repr(sorted(export_options.items())))
    with _LOCK:
        if key not in _CACHE:
            if _ROOT is None:
                _ROOT = tempfile.mkdtemp(prefix="fastgen-engines-")
            name = f"{kind}-{len(_CACHE)}"
            src = os.path.join(_ROOT, name + "-src")
            eng = os.path.join(_ROOT, name + "-engine")
            _build(kind, src, **overrides)
            export(src, eng, log=None, **export_options)
            _CACHE[key] = (src, eng)
        return _CACHE[key]
