"""fastgen_export: turn diffusers / transformers checkpoints into fastgen engine directories.

This package is the only part of fastgen that imports torch, diffusers or transformers.
"""

__version__ = "0.1.0"
