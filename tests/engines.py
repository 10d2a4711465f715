"""Tiny exported engines shared by the runtime tests (built once per test session)."""

from __future__ import annotations

import os
import tempfile
import threading

_CACHE: dict[tuple, tuple[str, str]] = {}
_LOCK = threading.Lock()
_ROOT = None


def tiny_engine(kind: str, **overrides) -> tuple[str, str]:
    """(diffusers source folder, engine dir) of a tiny random `kind` pipeline (see fastgen_export.testing)."""
    global _ROOT
    from fastgen_export.api import export
    from fastgen_export.testing import build_tiny_pipeline

    key = (kind, tuple(sorted(overrides.items())))
    with _LOCK:
        if key not in _CACHE:
            if _ROOT is None:
                _ROOT = tempfile.mkdtemp(prefix="fastgen-engines-")
            name = f"{kind}-{len(_CACHE)}"
            src = os.path.join(_ROOT, name + "-src")
            eng = os.path.join(_ROOT, name + "-engine")
            build_tiny_pipeline(kind, src, **overrides)
            export(src, eng, log=None)
            _CACHE[key] = (src, eng)
        return _CACHE[key]
