"""Image conversion and pre-processing, equal to diffusers' VaeImageProcessor for what we use."""

from __future__ import annotations

import os

import numpy as np

from .errors import InvalidArgumentError

try:
    from PIL import Image
except ImportError as e:  # pragma: no cover - pillow is a hard dependency
    raise ImportError("fastgen needs pillow") from e

_LANCZOS = Image.Resampling.LANCZOS


MAX_INPUT_PIXELS = 4096 * 4096  # input images (init images, masks, captioning / SVD inputs)


def load_image(image, *, what: str = "image") -> Image.Image:
    """A PIL image from a path, a PIL image, or an HWC uint8 / float [0, 1] array; at least 1x1 and at
    most MAX_INPUT_PIXELS pixels."""
    im = _to_pil(image, what)
    w, h = im.size
    if w < 1 or h < 1:
        raise InvalidArgumentError(f"{what} is {w}x{h}: an image needs at least one pixel")
    if w * h > MAX_INPUT_PIXELS:
        raise InvalidArgumentError(f"{what} is {w}x{h}: larger than the limit of {MAX_INPUT_PIXELS} pixels")
    return im


def _to_pil(image, what: str) -> Image.Image:
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as im:
                w, h = im.size
                if w * h > MAX_INPUT_PIXELS:  # before decoding it
                    raise InvalidArgumentError(f"{what}: {image} is {w}x{h}: larger than the limit of "
                                               f"{MAX_INPUT_PIXELS} pixels")
                im.load()
                return im.copy()
        except InvalidArgumentError:
            raise
        except FileNotFoundError as e:
            raise InvalidArgumentError(f"{what}: file not found: {image}") from e
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise InvalidArgumentError(f"{what}: {image} is not a readable image: {e}") from e
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim == 4 and a.shape[0] == 1:
            a = a[0]
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
            raise InvalidArgumentError(f"{what}: array must be HWC with 1, 3 or 4 channels, got shape {image.shape}")
        if a.shape[0] < 1 or a.shape[1] < 1:
            raise InvalidArgumentError(f"{what}: array of shape {image.shape} has no pixels")
        if a.shape[0] * a.shape[1] > MAX_INPUT_PIXELS:
            raise InvalidArgumentError(f"{what}: array of shape {image.shape} is larger than the limit of "
                                       f"{MAX_INPUT_PIXELS} pixels")
        if a.dtype == np.uint8:
            u8 = a
        elif np.issubdtype(a.dtype, np.floating):
            if not np.isfinite(a).all():
                raise InvalidArgumentError(f"{what}: array has NaN or infinite values")
            u8 = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
        else:
            raise InvalidArgumentError(f"{what}: array dtype must be uint8 or float, got {a.dtype}")
        u8 = np.ascontiguousarray(u8)
        if u8.shape[2] == 1:
            return Image.fromarray(u8[:, :, 0], "L")
        return Image.fromarray(u8, "RGB" if u8.shape[2] == 3 else "RGBA")
    raise InvalidArgumentError(f"{what} must be a path, a PIL image or a numpy array, got {type(image).__name__}")


def load_images(name: str, images) -> tuple:
    """One image or a non-empty list / tuple of images -> a tuple of PIL images (loaded and checked)."""
    items = images if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise InvalidArgumentError(f"{name} is an empty list: pass an image or a non-empty list of images")
    return tuple(load_image(im, what=name if len(items) == 1 else f"{name}[{i}]") for i, im in enumerate(items))


def default_size(image: Image.Image, multiple: int) -> tuple[int, int]:
    """(height, width) of the image rounded down to a multiple of the VAE factor, as diffusers."""
    w, h = image.size
    return h - h % multiple, w - w % multiple


def preprocess_image(images: list[Image.Image], height: int, width: int) -> np.ndarray:
    """RGB images -> float32 NCHW in [-1, 1], resized (Lanczos) to (height, width) when needed."""
    out = []
    for im in images:
        im = im.convert("RGB")
        if im.size != (width, height):
            im = im.resize((width, height), resample=_LANCZOS)
        out.append(np.asarray(im, dtype=np.float32) / 255.0)
    arr = np.stack(out).transpose(0, 3, 1, 2)
    return (2.0 * arr - 1.0).astype(np.float32)


def preprocess_mask(masks: list[Image.Image], height: int, width: int) -> np.ndarray:
    """Masks -> float32 N1HW binarised at 0.5 (1 = repaint), like diffusers' mask processor."""
    out = []
    for im in masks:
        im = im.convert("L")
        if im.size != (width, height):
            im = im.resize((width, height), resample=_LANCZOS)
        out.append(np.asarray(im, dtype=np.float32) / 255.0)
    m = np.stack(out)[:, None]
    return np.where(m < 0.5, 0.0, 1.0).astype(np.float32)


def resize_nearest(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """torch.nn.functional.interpolate(x, size=(h, w)) with the default 'nearest' mode (NCHW)."""
    H, W = x.shape[-2:]
    rows = np.minimum((np.arange(h) * (H / h)).astype(np.int64), H - 1)
    cols = np.minimum((np.arange(w) * (W / w)).astype(np.int64), W - 1)
    return x[..., rows[:, None], cols[None, :]]


def postprocess(decoded: np.ndarray) -> np.ndarray:
    """VAE output NCHW in about [-1, 1] -> NHWC float32 in [0, 1]."""
    return np.clip(decoded / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1).astype(np.float32)


def to_pil(images: np.ndarray) -> list[Image.Image]:
    u8 = (images * 255).round().astype(np.uint8)
    return [Image.fromarray(im[:, :, 0], "L") if im.shape[2] == 1 else Image.fromarray(im) for im in u8]


def generation_info(pipe, req, seed: int) -> dict:
    """What made an image (the PNG text chunks of `fastgen generate` and `fastgen serve` alike): the
    request's first prompt and negative prompt, seed, steps, guidance, scheduler, engine and step cache."""
    cache = getattr(req, "cache", None)
    return {"prompt": req.prompts[0], "negative_prompt": (req.negative_prompts or ("",))[0], "seed": seed,
            "steps": req.num_inference_steps, "guidance_scale": req.guidance_scale,
            "scheduler": req.scheduler or pipe.scheduler_config.get("_class_name", ""),
            "engine": os.path.basename(os.path.normpath(str(pipe.engine_dir))), "generator": "fastgen",
            "cache": "off" if cache is None else cache.describe()}


def png_info(info: dict):
    """``generation_info`` as PNG text chunks: ``prompt`` and ``fastgen:<key>`` for the others."""
    from PIL import PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    for k, v in info.items():
        meta.add_text(f"fastgen:{k}" if k != "prompt" else "prompt", str(v))
    return meta
