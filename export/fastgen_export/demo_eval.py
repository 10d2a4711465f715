"""Check generated demo images against their prompts with pixel rules (numpy only).

The classifier is part of the runtime (:mod:`fastgen.demo_eval`, used by ``fastgen eval``); this module
re-exports it so the training script and older imports keep working.
"""

from fastgen.demo_eval import (  # noqa: F401  (re-exported)
    Prediction,
    as_float_nhwc,
    border_pixels,
    classify,
    classify_shape,
    evaluate,
    nearest_color,
    score,
)
from fastgen.demo_eval import _FAR_FROM_BACKGROUND, _PALETTE, _PALETTE_NAMES  # noqa: F401

from .demo_data import COLORS, SHAPES, parse_prompt, shape_mask  # noqa: F401
