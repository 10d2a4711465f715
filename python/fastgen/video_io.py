"""Writing videos: ``fastgen.export_video(frames, "out.mp4" | "out.gif", fps=8)``.

Frames may be a (frames, H, W, 3) array (float in [0, 1] or uint8), a list of PIL images or arrays,
or any iterator of them (for example ``TextToVideoPipeline.iter_frames(...)``): MP4 is written frame
by frame as frames arrive, so a long video never needs all its frames in memory. MP4 uses PyAV
(``pip install "fastgen[video]"``), else imageio-ffmpeg when installed; GIF uses Pillow.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from .errors import InvalidArgumentError, UnsupportedError

__all__ = ["export_video", "VIDEO_SUFFIXES"]

VIDEO_SUFFIXES = (".mp4", ".gif")


def _to_uint8(frame: Any) -> np.ndarray:
    if hasattr(frame, "convert") and hasattr(frame, "size"):  # PIL image
        frame = np.asarray(frame.convert("RGB"))
    a = np.asarray(frame)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise InvalidArgumentError(f"video frames must be (H, W, 3) arrays or PIL images, got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise InvalidArgumentError(f"video frames must be uint8 or float in [0, 1], got {a.dtype}")
    return (np.clip(a, 0.0, 1.0) * 255).round().astype(np.uint8)


def _frames(frames: Any) -> Iterable[np.ndarray]:
    if isinstance(frames, np.ndarray):
        if frames.ndim == 5 and frames.shape[0] == 1:
            frames = frames[0]
        if frames.ndim not in (3, 4):
            raise InvalidArgumentError(f"frames must have shape (frames, H, W, 3), got {frames.shape}")
        if frames.ndim == 3:
            frames = frames[None]
        return iter(frames)
    if isinstance(frames, (str, bytes)) or not hasattr(frames, "__iter__"):
        raise InvalidArgumentError(f"frames must be an array, a list or an iterator of frames, got {type(frames).__name__}")
    return iter(frames)


def _mp4_writer(path: str, fps: float):
    try:
        import av  # noqa: F401
    except ImportError:
        av = None
    if av is not None:
        return _PyAVWriter(path, fps)
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        raise UnsupportedError('writing MP4 needs PyAV or imageio-ffmpeg: pip install "fastgen[video]"') from None
    return _ImageioWriter(path, fps)


class _PyAVWriter:
    def __init__(self, path: str, fps: float):
        import fractions

        import av

        self.av = av
        self.container = av.open(path, mode="w")
        self.rate = fractions.Fraction(fps).limit_denominator(1000)
        self.stream = None

    def write(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        if self.stream is None:
            self.stream = self.container.add_stream("libx264", rate=self.rate)
            self.stream.width, self.stream.height = w + (w % 2), h + (h % 2)  # yuv420p needs even sizes
            self.stream.pix_fmt = "yuv420p"
        if (w % 2) or (h % 2):
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        vf = self.av.VideoFrame.from_ndarray(frame, format="rgb24")
        for packet in self.stream.encode(vf):
            self.container.mux(packet)

    def close(self) -> None:
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()


class _ImageioWriter:
    def __init__(self, path: str, fps: float):
        self.path, self.fps, self.gen = path, fps, None

    def write(self, frame: np.ndarray) -> None:
        import imageio_ffmpeg

        if self.gen is None:
            h, w = frame.shape[:2]
            self.gen = imageio_ffmpeg.write_frames(self.path, (w, h), fps=self.fps, macro_block_size=1)
            self.gen.send(None)
        self.gen.send(np.ascontiguousarray(frame))

    def close(self) -> None:
        if self.gen is not None:
            self.gen.close()


def export_video(frames: Any, path: str | os.PathLike, fps: float = 8) -> str:
    """Write ``frames`` to ``path`` (the suffix picks the format: .mp4 or .gif); return the path.

    An iterator is consumed frame by frame (MP4 streams to the file; a GIF is assembled by Pillow).
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in VIDEO_SUFFIXES:
        raise InvalidArgumentError(f"unknown video suffix {suffix!r} in {path!r}; use one of {', '.join(VIDEO_SUFFIXES)}")
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"fps must be a number, got {fps!r}") from None
    if not 0 < fps <= 1000:
        raise InvalidArgumentError(f"fps must be in (0, 1000], got {fps}")
    it = _frames(frames)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    if suffix == ".gif":
        from PIL import Image

        pil = [Image.fromarray(_to_uint8(f)) for f in it]
        if not pil:
            raise InvalidArgumentError("no frames to write")
        pil[0].save(path, save_all=True, append_images=pil[1:], duration=int(round(1000 / fps)), loop=0)
        return path
    first = next(it, None)
    if first is None:
        raise InvalidArgumentError("no frames to write")
    writer = _mp4_writer(path, fps)
    n = 0
    size = None
    try:
        for f in itertools.chain([first], it):
            u8 = _to_uint8(f)
            if size is None:
                size = u8.shape
            elif u8.shape != size:
                raise InvalidArgumentError(f"frame {n} has shape {u8.shape}, the first had {size}")
            writer.write(u8)
            n += 1
    finally:
        writer.close()
    return path
