"""Synthetic "colored shape" images and captions for the embedded demo model.

Every image shows one flat-colored shape (circle, square or upward triangle) on a flat background,
captioned ``"a {color} {shape} on a {background} background"``. Colors are pure RGB values, so tests
can check pixels exactly; edges are anti-aliased by supersampling. Everything is numpy and
deterministic per seed, so the generator needs no files and no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The grammar (colors, shapes, captions) and the shape masks live in the runtime, which scores demo
# images in `fastgen eval`; they are re-exported here.
from fastgen.demo_eval import (  # noqa: F401  (re-exported)
    COLORS,
    SHAPES,
    all_prompts,
    grammar_words,
    is_demo_prompt,
    make_caption,
    parse_prompt,
    shape_mask,
)


@dataclass(frozen=True)
class ShapeSpec:
    """One image: what is drawn and where, in units of the image side.

    ``cx``, ``cy`` are the centre of the shape's bounding box and ``size`` its side length
    (the bounding box is square for all three shapes).
    """

    shape: str
    color: str
    background: str
    cx: float = 0.5
    cy: float = 0.5
    size: float = 0.6

    @property
    def caption(self) -> str:
        return make_caption(self.shape, self.color, self.background)


def sample_spec(rng: np.random.Generator, *, min_size: float = 0.35, max_size: float = 0.7,
                max_offset: float = 0.1) -> ShapeSpec:
    """Draw a random shape, two different colors, a size and a roughly centred position."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    names = list(COLORS)
    color, background = (names[i] for i in rng.choice(len(names), size=2, replace=False))
    size = float(rng.uniform(min_size, max_size))
    cx, cy = (float(v) for v in 0.5 + rng.uniform(-max_offset, max_offset, size=2))
    return ShapeSpec(shape, color, background, cx, cy, size)


def render(spec: ShapeSpec, resolution: int = 64, *, supersample: int = 4) -> np.ndarray:
    """Draw ``spec`` as a ``[resolution, resolution, 3]`` uint8 RGB image."""
    half = spec.size * resolution / 2
    cx, cy = spec.cx * resolution, spec.cy * resolution
    alpha = shape_mask(spec.shape, resolution, resolution, (cx - half, cy - half, cx + half, cy + half),
                       supersample=supersample)[..., None]
    fg = np.asarray(COLORS[spec.color], dtype=np.float64)
    bg = np.asarray(COLORS[spec.background], dtype=np.float64)
    return np.rint(alpha * fg + (1.0 - alpha) * bg).astype(np.uint8)


def make_batch(seed: int | Sequence[int], n: int, resolution: int = 64
               ) -> tuple[np.ndarray, list[str], list[ShapeSpec]]:
    """``n`` random images (uint8 NHWC), their captions and specs; the same for the same seed.

    ``seed`` is anything ``numpy.random.default_rng`` takes, e.g. ``(seed, step)`` for a stream.
    """
    rng = np.random.default_rng(seed)
    specs = [sample_spec(rng) for _ in range(n)]
    images = np.stack([render(s, resolution) for s in specs]) if specs else \
        np.zeros((0, resolution, resolution, 3), np.uint8)
    return images, [s.caption for s in specs], specs
