"""Images and videos in and out of the API: decoding uploads, encoding PNG / JPEG / WebP (PNGs carry
the CLI's text chunks), MP4 / GIF files, latent previews."""

from __future__ import annotations

import base64
import binascii
import io
import os
import tempfile

import numpy as np

from ..image import MAX_INPUT_PIXELS, png_info
from .errors import ApiError, bad

IMAGE_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
VIDEO_FORMATS = {"mp4": "video/mp4", "gif": "image/gif"}


def decode_image_bytes(name: str, raw: bytes):
    """Image file bytes -> PIL image, refusing unreadable files and images over MAX_INPUT_PIXELS (400)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.size[0] * im.size[1] > MAX_INPUT_PIXELS:
                raise bad(f"'{name}' is {im.size[0]}x{im.size[1]}: larger than {MAX_INPUT_PIXELS} pixels", param=name)
            im.load()
            return im.copy()
    except ApiError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds
        raise bad(f"'{name}' is not a readable image: {type(e).__name__}", param=name) from None


def decode_image(name: str, s: str):
    """A base64 string (optionally a ``data:`` URL) -> PIL image."""
    if s.startswith("data:"):
        s = s.split(",", 1)[-1]
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise bad(f"'{name}' is not valid base64", param=name) from None
    return decode_image_bytes(name, raw)


def encode_image(img, fmt: str = "png", info: dict | None = None, quality: int | None = None) -> bytes:
    """A PIL image -> file bytes. PNGs carry ``info`` as text chunks (as `fastgen generate` writes them)."""
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=1, pnginfo=None if info is None else png_info(info))
    else:
        img.save(buf, format=fmt.upper(), quality=90 if quality is None else int(quality))
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode_video(frames, fmt: str, fps: float) -> bytes:
    """(frames, H, W, 3) -> MP4 or GIF file bytes, written frame by frame by ``fastgen.export_video``."""
    from ..video_io import export_video

    fd, path = tempfile.mkstemp(suffix="." + fmt, prefix="fastgen-serve-")
    os.close(fd)
    try:
        export_video(frames, path, fps=fps)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


PREVIEWS_PER_RUN = 5
# latent -> RGB linear approximation for 4-channel SD latents (the usual "latent preview" factors)
_SD_RGB = np.array([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264],
                    [-0.184, -0.271, -0.473]], np.float32)


def latent_preview(lat: np.ndarray):
    """A cheap low-resolution RGB preview (PIL) of one latent (C, h, w), without the VAE."""
    from PIL import Image

    lat = np.asarray(lat, np.float32)
    if lat.shape[0] == 4:
        rgb = np.einsum("chw,ck->hwk", lat, _SD_RGB)
        rgb = (rgb + 1.0) * 0.5
    else:  # other latent spaces: the first three channels, normalized
        x = lat[:3] if lat.shape[0] >= 3 else np.repeat(lat[:1], 3, axis=0)
        x = (x - x.min()) / max(float(x.max() - x.min()), 1e-6)
        rgb = np.moveaxis(x, 0, -1)
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), "RGB")
