"""fastgen_export: turn diffusers / transformers checkpoints into fastgen engine directories.

This package is the only part of fastgen that imports torch, diffusers or transformers (lazily:
importing it is cheap).

    from fastgen_export import export
    export("runwayml/stable-diffusion-v1-5", "./sd15", dtype="fp16")
"""

__version__ = "0.1.0"

from .api import export  # noqa: E402

__all__ = ["export", "__version__"]
