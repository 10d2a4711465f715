"""fastgen_export: turn diffusers / transformers checkpoints into fastgen engine directories.

This package is the only part of fastgen that imports torch, diffusers or transformers, and only when
it exports: importing the package (or ``fastgen_export.cli``) loads none of them, nor any other module
of the package. ``export`` and ``__version__`` are resolved on first use (PEP 562).

    from fastgen_export import export
    export("runwayml/stable-diffusion-v1-5", "./sd15", dtype="fp16")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ._version import __version__
    from .api import export

__all__ = ["export", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "export":
        from .api import export

        return export
    if name == "__version__":
        from ._version import __version__

        return __version__
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
