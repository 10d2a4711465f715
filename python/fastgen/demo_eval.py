"""The demo model's caption grammar and its pixel-rule classifier (numpy only, part of the runtime).

The demo engine shipped in the package draws one flat-colored shape (circle, square or upward triangle)
on a flat background, from prompts ``"a {color} {shape} on a {background} background"``. This module
scores images against such prompts, so ``fastgen eval`` can report the demo's accuracy without the
exporter package. ``fastgen_export.demo_eval`` and ``fastgen_export.demo_data`` re-export it (the
training data generator stays in the exporter).

The classifier works on any NHWC image batch (float in [0, 1], as diffusers' ``output_type="np"`` and
fastgen return, or uint8), so the same checks score the diffusers pipeline and the fastgen runtime:

- background color: the palette color nearest to the median of the border pixels;
- shape color: the palette color nearest to the median of the pixels far (> half the smallest
  palette distance) from the background color;
- shape type: the pixels closer to the shape color than to the background form a mask; a circle,
  a square and a triangle are inscribed in the mask's bounding box and the best IoU wins.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InvalidArgumentError, ShapeError

__all__ = [
    "COLORS", "SHAPES", "make_caption", "parse_prompt", "is_demo_prompt", "grammar_words", "all_prompts",
    "shape_mask", "Prediction", "as_float_nhwc", "nearest_color", "border_pixels", "classify_shape", "classify",
    "evaluate",
]

# ---------------------------------------------------------------- the caption grammar

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


def make_caption(shape: str, color: str, background: str) -> str:
    """The caption grammar: ``"a {color} {shape} on a {background} background"``."""
    return f"a {color} {shape} on a {background} background"


def parse_prompt(prompt: str) -> tuple[str, str, str]:
    """Parse a caption of the grammar back into ``(shape, color, background)``.

    Raises ``InvalidArgumentError`` (a ``ValueError``) for text outside the grammar (unknown words, or
    equal colors).
    """
    m = _PROMPT_RE.match(prompt) if isinstance(prompt, str) else None
    if m is None:
        raise InvalidArgumentError(f"not a demo prompt: {prompt!r}")
    color, shape, background = (g.lower() for g in m.groups())
    if shape not in SHAPES or color not in COLORS or background not in COLORS or color == background:
        raise InvalidArgumentError(f"not a demo prompt: {prompt!r}")
    return shape, color, background


def is_demo_prompt(prompt: str) -> bool:
    """Whether ``prompt`` is a caption of the demo grammar."""
    try:
        parse_prompt(prompt)
    except InvalidArgumentError:
        return False
    return True


def grammar_words() -> list[str]:
    """Every word a caption can contain (the tokenizer's vocabulary)."""
    return ["a", "on", "background", *SHAPES, *COLORS]


def all_prompts() -> list[str]:
    """All 90 captions of the grammar, in a fixed order."""
    return [make_caption(s, c, b) for s in SHAPES for c in COLORS for b in COLORS if c != b]


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
        raise InvalidArgumentError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    inside = inside.reshape(height, supersample, width, supersample)
    return inside.mean(axis=(1, 3))


# ---------------------------------------------------------------- the classifier

_PALETTE_NAMES = list(COLORS)
_PALETTE = np.asarray([COLORS[n] for n in _PALETTE_NAMES], dtype=np.float64) / 255.0
# All palette colors are at least 1.0 apart (Euclidean, RGB in [0, 1]); half of that separates them.
_FAR_FROM_BACKGROUND = 0.5


@dataclass(frozen=True)
class Prediction:
    """What an image shows; ``None`` where nothing could be found (e.g. no foreground)."""

    shape: str | None
    color: str | None
    background: str


def as_float_nhwc(images) -> np.ndarray:
    """A float64 ``[N, H, W, 3]`` array in [0, 1] from uint8 or float images (HWC or NHWC)."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ShapeError(f"expected NHWC RGB images, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    return np.clip(arr.astype(np.float64), 0.0, 1.0)


def nearest_color(rgb, exclude: Sequence[str] = ()) -> str:
    """Name of the palette color nearest to ``rgb`` (3 floats in [0, 1])."""
    dist = np.linalg.norm(_PALETTE - np.asarray(rgb, dtype=np.float64), axis=1)
    for name in exclude:
        dist[_PALETTE_NAMES.index(name)] = np.inf
    return _PALETTE_NAMES[int(np.argmin(dist))]


def border_pixels(image: np.ndarray, width: int | None = None) -> np.ndarray:
    """The ``[K, 3]`` pixels of the outer ring of an HWC image (default width: ~3% of the side)."""
    h, w, _ = image.shape
    width = width or max(1, round(0.03 * min(h, w)))
    ring = np.ones((h, w), dtype=bool)
    ring[width:h - width, width:w - width] = False
    return image[ring]


def classify_shape(mask: np.ndarray) -> str | None:
    """The shape whose template, inscribed in the bounding box of boolean ``mask``, has best IoU."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    h, w = mask.shape
    ious = []
    for shape in SHAPES:
        template = shape_mask(shape, h, w, box, supersample=2) >= 0.5
        ious.append((template & mask).sum() / max((template | mask).sum(), 1))
    return SHAPES[int(np.argmax(ious))]


def classify(image) -> Prediction:
    """Background color, shape color and shape type of one HWC image."""
    img = as_float_nhwc(image)[0]
    background = nearest_color(np.median(border_pixels(img), axis=0))
    bg_rgb = _PALETTE[_PALETTE_NAMES.index(background)]
    far = np.linalg.norm(img - bg_rgb, axis=-1) > _FAR_FROM_BACKGROUND
    if not far.any():
        return Prediction(None, None, background)
    color = nearest_color(np.median(img[far], axis=0), exclude=(background,))
    fg_rgb = _PALETTE[_PALETTE_NAMES.index(color)]
    mask = np.linalg.norm(img - fg_rgb, axis=-1) < np.linalg.norm(img - bg_rgb, axis=-1)
    return Prediction(classify_shape(mask), color, background)


def score(pred: Prediction, prompt: str) -> dict[str, bool]:
    """Which parts of one prediction match its prompt: ``background``, ``color``, ``shape`` and ``all``."""
    shape, color, background = parse_prompt(prompt)
    ok = {"background": pred.background == background, "color": pred.color == color, "shape": pred.shape == shape}
    ok["all"] = all(ok.values())
    return ok


def evaluate(images, prompts: Sequence[str]) -> dict:
    """Score a batch of images against the prompts they were generated from.

    Returns the fraction of images with the right ``background``, shape ``color``, ``shape`` type
    and ``all`` three right, the count ``n``, and the per-image ``predictions``.
    """
    batch = as_float_nhwc(images)
    if len(batch) != len(prompts):
        raise ShapeError(f"{len(batch)} images but {len(prompts)} prompts")
    preds = [classify(img) for img in batch]
    hits: dict[str, list[bool]] = {"background": [], "color": [], "shape": [], "all": []}
    for pred, prompt in zip(preds, prompts):
        for key, value in score(pred, prompt).items():
            hits[key].append(value)
    result = {key: float(np.mean(v)) if v else float("nan") for key, v in hits.items()}
    return {**result, "n": len(preds), "predictions": preds}
