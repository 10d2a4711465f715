"""Writing videos: ``fastgen.export_video(frames, "out.mp4" | "out.gif", fps=8)``.

Frames may be a (frames, H, W, 3) array (float in [0, 1] or uint8), a list of PIL images or arrays,
or any iterator of them (for example ``TextToVideoPipeline.iter_frames(...)``): both formats are
written frame by frame as frames arrive, so a long video never needs all its frames in memory. MP4 uses
PyAV (``pip install "fastgen[video]"``), else imageio-ffmpeg when installed. GIF needs only Pillow:
:class:`_GifWriter` streams a GIF89a file itself and uses Pillow to quantise and LZW-encode one frame at a
time (each frame gets its own 256-colour palette, as Pillow's adaptive conversion makes it).
"""

from __future__ import annotations

import io
import itertools
import os
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

from ._args import check_float
from .errors import InvalidArgumentError, UnsupportedError

__all__ = ["export_video", "check_writer", "VIDEO_SUFFIXES"]

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


def _mp4_backend() -> str:
    """'av' or 'imageio_ffmpeg', whichever is installed; UnsupportedError when neither is."""
    for name in ("av", "imageio_ffmpeg"):
        try:
            __import__(name)
            return name
        except ImportError:
            pass
    raise UnsupportedError('writing MP4 needs PyAV or imageio-ffmpeg: pip install "fastgen[video]"')


def check_writer(path: str | os.PathLike) -> str:
    """Check, before any frame is made, that ``path`` can be written as a video: a known suffix, a
    writer installed for it, and a folder that exists or can be made. Returns the path as a str."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in VIDEO_SUFFIXES:
        raise InvalidArgumentError(f"unknown video suffix {suffix!r} in {path!r}; use one of {', '.join(VIDEO_SUFFIXES)}")
    if suffix == ".mp4":
        _mp4_backend()
    ensure_parent(path)
    return path


def ensure_parent(path: str) -> None:
    """Make the folder of an output file, or say why it cannot be made."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        raise InvalidArgumentError(f"cannot write {path!r}: its folder {d!r} cannot be created ({e.strerror})") from None
    if not os.access(d, os.W_OK):
        raise InvalidArgumentError(f"cannot write {path!r}: its folder {d!r} is not writable")


def _mp4_writer(path: str, fps: float):
    return _PyAVWriter(path, fps) if _mp4_backend() == "av" else _ImageioWriter(path, fps)


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


class _GifWriter:
    """A streaming animated-GIF (GIF89a) writer: header and NETSCAPE loop block on the first frame, then
    per frame a graphic control extension (its delay), an image descriptor with a local colour table and
    the LZW data, written as it comes; the trailer on close. Memory: one frame.

    Pillow encodes each frame (its default RGB -> adaptive 256-colour palette conversion and its LZW
    encoder) as a one-frame GIF in memory; the palette and image data are copied from it. Delays are in
    the format's 1/100 s: frame i lasts round(100 (i+1) / fps) - round(100 i / fps), so the total
    duration is n / fps to the nearest 1/100 s (8 fps: 12, 13, 12, 13, ... centiseconds)."""

    def __init__(self, path: str, fps: float):
        self.path, self.fps = path, fps
        self.f = None
        self.n = 0

    def _start(self, w: int, h: int) -> None:
        if not (0 < w < 65536 and 0 < h < 65536):
            raise InvalidArgumentError(f"GIF frames must be at most 65535 x 65535 pixels, got {w} x {h}")
        self.f = open(self.path, "wb")
        # logical screen: no global colour table (every frame has its own), background 0, aspect 0
        self.f.write(b"GIF89a" + struct.pack("<HHBBB", w, h, 0, 0, 0))
        # NETSCAPE2.0 application extension: loop forever
        self.f.write(b"\x21\xff\x0bNETSCAPE2.0\x03\x01" + struct.pack("<H", 0) + b"\x00")

    def _delay(self, i: int) -> int:
        return int(round(100 * (i + 1) / self.fps)) - int(round(100 * i / self.fps))

    def write(self, frame: np.ndarray) -> None:
        from PIL import Image

        h, w = frame.shape[:2]
        if self.f is None:
            self._start(w, h)
        table, descriptor, data = _gif_frame_blocks(Image.fromarray(frame))
        # graphic control extension: disposal 1 (leave the frame), no transparency, delay in 1/100 s
        gce = b"\x21\xf9\x04" + struct.pack("<BHB", 1 << 2, min(self._delay(self.n), 65535), 0) + b"\x00"
        size_code = max(0, (len(table) // 3).bit_length() - 2)  # table holds 2 ** (size_code + 1) entries
        packed = 0x80 | descriptor[8] | size_code  # local colour table; Pillow's interlace bit
        self.f.write(gce + b"\x2c" + descriptor[:8] + bytes([packed]) + table + data)
        self.f.flush()  # the frame is in the file (a reader of a growing GIF sees it); nothing is kept
        self.n += 1

    def close(self) -> None:
        if self.f is not None:
            self.f.write(b"\x3b")
            self.f.close()


def _skip_sub_blocks(d: bytes, i: int) -> int:
    """Index just past a chain of GIF data sub-blocks (length byte + data, ended by a 0 length)."""
    while d[i]:
        i += d[i] + 1
    return i + 1


def _gif_frame_blocks(im) -> tuple[bytes, bytes, bytes]:
    """(colour table, image descriptor (left, top, width, height, interlace bit), LZW code size + data
    sub-blocks) of ``im`` encoded by Pillow as a one-frame GIF: the table is the frame's local one, else
    the file's global one."""
    buf = io.BytesIO()
    im.save(buf, format="GIF", interlace=False)
    d = buf.getvalue()
    if d[:3] != b"GIF":
        raise RuntimeError("Pillow did not write a GIF")
    packed = d[10]
    i = 13
    table = b""
    if packed & 0x80:
        n = 3 << ((packed & 7) + 1)
        table, i = d[i:i + n], i + n
    while i < len(d):
        block = d[i]
        if block == 0x21:  # extension: label, then sub-blocks
            i = _skip_sub_blocks(d, i + 2)
        elif block == 0x2C:  # image descriptor
            descriptor = d[i + 1:i + 10]
            lpacked = descriptor[8]
            i += 10
            if lpacked & 0x80:
                n = 3 << ((lpacked & 7) + 1)
                table, i = d[i:i + n], i + n
            end = _skip_sub_blocks(d, i + 1)  # the LZW minimum code size byte, then the data
            if not table:
                raise RuntimeError("Pillow wrote a GIF frame without a colour table")
            return table, descriptor[:8] + bytes([lpacked & 0x40]), d[i:end]
        else:
            break
    raise RuntimeError("Pillow wrote a GIF without an image")


def export_video(frames: Any, path: str | os.PathLike, fps: float = 8) -> str:
    """Write ``frames`` to ``path`` (the suffix picks the format: .mp4 or .gif); return the path.

    An iterator is consumed frame by frame and each frame is written to the file as it arrives (MP4 and
    GIF alike), so memory does not grow with the number of frames. All frames must have the first's size.
    """
    path = check_writer(path)  # before the first frame: an iterator denoises on its first next()
    suffix = os.path.splitext(path)[1].lower()
    fps = check_float("fps", fps, 0.0, 1000.0, open_lo=True)
    it = _frames(frames)
    first = next(it, None)
    if first is None:
        raise InvalidArgumentError("no frames to write")
    writer = _GifWriter(path, fps) if suffix == ".gif" else _mp4_writer(path, fps)
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
