"""Synthetic "colored shape" images and captions for the embedded demo model.

Every image shows one flat-colored shape (circle, square or upward triangle) on a flat background,
captioned ``"a {color} {shape} on a {background} background"``. Colors are pure RGB values, so tests
can check pixels exactly; edges are anti-aliased by supersampling. Everything is numpy and
deterministic per seed, so the generator needs no files and no torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

_PROMPT_RE = re.compile(r"^\s*an? (\w+) (\w+) on an? (\w+) background\s*$", re.IGNORECASE)


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


def make_caption(shape: str, color: str, background: str) -> str:
    """The caption grammar: ``"a {color} {shape} on a {background} background"``."""
    return f"a {color} {shape} on a {background} background"


def parse_prompt(prompt: str) -> tuple[str, str, str]:
    """Parse a caption of the grammar back into ``(shape, color, background)``.

    Raises ``ValueError`` for text outside the grammar (unknown words, or equal colors).
    """
    m = _PROMPT_RE.match(prompt)
    if m is None:
        raise ValueError(f"not a demo prompt: {prompt!r}")
    color, shape, background = (g.lower() for g in m.groups())
    if shape not in SHAPES or color not in COLORS or background not in COLORS or color == background:
        raise ValueError(f"not a demo prompt: {prompt!r}")
    return shape, color, background


def grammar_words() -> list[str]:
    """Every word a caption can contain (the tokenizer's vocabulary)."""
    return ["a", "on", "background", *SHAPES, *COLORS]


def all_prompts() -> list[str]:
    """All 90 captions of the grammar, in a fixed order."""
    return [make_caption(s, c, b) for s in SHAPES for c in COLORS for b in COLORS if c != b]


def sample_spec(rng: np.random.Generator, *, min_size: float = 0.35, max_size: float = 0.7,
                max_offset: float = 0.1) -> ShapeSpec:
    """Draw a random shape, two different colors, a size and a roughly centred position."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    names = list(COLORS)
    color, background = (names[i] for i in rng.choice(len(names), size=2, replace=False))
    size = float(rng.uniform(min_size, max_size))
    cx, cy = (float(v) for v in 0.5 + rng.uniform(-max_offset, max_offset, size=2))
    return ShapeSpec(shape, color, background, cx, cy, size)


def shape_mask(shape: str, height: int, width: int, box: tuple[float, float, float, float], *,
               supersample: int = 4) -> np.ndarray:
    """Coverage in [0, 1] of ``shape`` inscribed in ``box = (x0, y0, x1, y1)`` (pixel units).

    A circle is the ellipse inscribed in the box, a square fills it, a triangle has its base on the
    box's bottom edge and its apex at the top centre. Coverage is averaged over
    ``supersample**2`` sub-pixel samples, which anti-aliases the edges.
    """
    x0, y0, x1, y1 = box
    offsets = (np.arange(supersample) + 0.5) / supersample
    ys = (np.arange(height)[:, None] + offsets[None, :]).reshape(-1)
    xs = (np.arange(width)[:, None] + offsets[None, :]).reshape(-1)
    # Normalised coordinates: u, v in [0, 1] inside the box.
    u = ((xs - x0) / max(x1 - x0, 1e-6))[None, :]
    v = ((ys - y0) / max(y1 - y0, 1e-6))[:, None]
    if shape == "circle":
        inside = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    elif shape == "square":
        inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    elif shape == "triangle":
        inside = (v >= 0) & (v <= 1) & (np.abs(u - 0.5) <= 0.5 * v)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    inside = inside.reshape(height, supersample, width, supersample)
    return inside.mean(axis=(1, 3))


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
