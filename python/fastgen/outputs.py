"""What every task pipeline returns, with one timings schema.

``out.timings`` is a dict of seconds (and ``steps`` / ``decoder_steps`` counts) whose keys all come
from TIMING_KEYS; ``total`` is always there, a stage that did not run is absent:

================  ===============================================================================
key               meaning
================  ===============================================================================
total             the whole call
preprocess        image loading / resizing / normalising (captioning, image conditioning)
text_encode       prompt encoding (text encoders)
image_encode      image conditioning encoders (captioning's vision encoder, SVD's CLIP image encoder)
vae_encode        VAE encoding of init images / masks (img2img, inpainting, image-to-video)
denoise           time inside the denoising network (UNet / transformer), all steps
loop_overhead     the rest of the denoising loop (scheduler, guidance, callbacks)
vae_decode        VAE decoding to pixels
cross_kv          captioning: cross-attention keys / values, once per image
text_decode       captioning: the decoder steps and the search
steps             denoising steps run (denoiser calls; fewer when a callback stopped early)
decoder_steps     captioning: decoder steps run
================  ===============================================================================
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TIMING_KEYS", "Timer", "Output", "ImageOutput", "PipelineOutput", "VideoOutput", "CaptionOutput"]

TIMING_KEYS = ("total", "preprocess", "text_encode", "image_encode", "vae_encode", "denoise", "loop_overhead",
               "vae_decode", "cross_kv", "text_decode", "steps", "decoder_steps")


class Timer:
    """Collects one call's timings; only TIMING_KEYS may be recorded."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter()
        self.timings: dict[str, float] = {}

    def add(self, key: str, value: float) -> None:
        if key not in TIMING_KEYS:
            raise KeyError(f"{key!r} is not a fastgen timing key ({', '.join(TIMING_KEYS)})")
        self.timings[key] = self.timings.get(key, 0.0) + float(value)

    @contextmanager
    def stage(self, key: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(key, time.perf_counter() - t0)

    def finish(self) -> dict[str, float]:
        self.timings["total"] = time.perf_counter() - self._t0
        return dict(self.timings)


@dataclass
class Output:
    """Base of every output: ``timings`` (see TIMING_KEYS)."""

    timings: dict[str, float] = field(default_factory=dict, kw_only=True)


@dataclass
class ImageOutput(Output):
    """``images``: a list of PIL images ("pil"), NHWC float32 in [0, 1] ("np") or the latents ("latent")."""

    images: Any
    seed: int | None = None
    #: step caching (``cache=``): kind, setting, steps, full_steps / cached_steps (0-based), full_calls;
    #: None when off
    cache_stats: dict | None = None


PipelineOutput = ImageOutput  # the name of earlier releases


@dataclass
class VideoOutput(Output):
    """``frames``: (batch, frames, H, W, 3) float32 in [0, 1] ("np"), a list of lists of PIL images
    ("pil"), or the latents ("latent")."""

    frames: Any
    seed: int | None = None
    cache_stats: dict | None = None  # as ImageOutput.cache_stats


@dataclass
class CaptionOutput(Output):
    """``texts[i]`` / ``token_ids[i]``: for image i // num_return_sequences, candidate i % num_return_sequences."""

    texts: list[str]
    token_ids: list[list[int]]
    scores: list[float] | None = None
