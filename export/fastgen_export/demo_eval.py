"""Check generated demo images against their prompts with pixel rules (numpy only).

Works on any NHWC image batch (float in [0, 1], as diffusers' ``output_type="np"`` and fastgen
return, or uint8), so the same checks score the diffusers pipeline and the fastgen runtime:

- background color: the palette color nearest to the median of the border pixels;
- shape color: the palette color nearest to the median of the pixels far (> half the smallest
  palette distance) from the background color;
- shape type: the pixels closer to the shape color than to the background form a mask; a circle,
  a square and a triangle are inscribed in the mask's bounding box and the best IoU wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .demo_data import COLORS, SHAPES, parse_prompt, shape_mask

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
        raise ValueError(f"expected NHWC RGB images, got shape {arr.shape}")
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


def evaluate(images, prompts: Sequence[str]) -> dict:
    """Score a batch of images against the prompts they were generated from.

    Returns the fraction of images with the right ``background``, shape ``color``, ``shape`` type
    and ``all`` three right, the count ``n``, and the per-image ``predictions``.
    """
    batch = as_float_nhwc(images)
    if len(batch) != len(prompts):
        raise ValueError(f"{len(batch)} images but {len(prompts)} prompts")
    preds = [classify(img) for img in batch]
    hits = {"background": [], "color": [], "shape": [], "all": []}
    for pred, prompt in zip(preds, prompts):
        shape, color, background = parse_prompt(prompt)
        ok = {"background": pred.background == background, "color": pred.color == color,
              "shape": pred.shape == shape}
        ok["all"] = all(ok.values())
        for key, value in ok.items():
            hits[key].append(value)
    result = {key: float(np.mean(v)) if v else float("nan") for key, v in hits.items()}
    return {**result, "n": len(preds), "predictions": preds}
