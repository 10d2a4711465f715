"""Typed, validated requests: what a task pipeline's ``validate(...)`` returns and ``run(...)`` takes.

A request is only made by ``pipe.validate(*args, **kwargs)``, which checks every argument (unknown
keywords refused with the closest valid name, types, ranges, sizes against the engine) and fills in
the engine's defaults, so a request is complete: ``run`` never checks an argument again. The CLI and
the server make their requests with the same ``validate``. Requests are frozen; ``dataclasses.replace``
makes a variant (the result is not re-validated).

Defaults shared by every task: ``seed=None`` draws a random seed (recorded in the request and the
output); ``num_inference_steps`` / ``guidance_scale`` default to the engine's (``fastgen info``); ``cache=None``
(step caching off; see :mod:`fastgen.cache`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["TextDiffusionRequest", "ImageRequest", "VideoRequest", "ImageToVideoRequest", "CaptionRequest"]


@dataclass(frozen=True)
class TextDiffusionRequest:
    """What every prompt-driven diffusion request holds (image and video alike)."""

    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...] | None
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    seed: int
    latents: np.ndarray | None = field(repr=False)
    scheduler: Any
    guidance_rescale: float
    eta: float
    output_type: str
    callback: Any = field(repr=False)
    #: step caching (fastgen.cache.CacheSpec) or None: off, the default
    cache: Any = field(default=None, kw_only=True)


@dataclass(frozen=True)
class ImageRequest(TextDiffusionRequest):
    """Text-to-image, image-to-image (``images``) or inpainting (``images`` and ``masks``)."""

    mode: str  # "text2img" | "img2img" | "inpaint"
    num_images_per_prompt: int
    images: tuple | None = field(repr=False)  # PIL images (img2img / inpaint)
    masks: tuple | None = field(repr=False)  # PIL images (inpaint)
    strength: float  # 1.0 for text2img
    extra: dict  # family keywords (SDXL prompt_2 / sizes, SD3 prompt_2 / prompt_3)
    vae_tiling: bool = False  # decode in overlapping tiles, as diffusers' vae.enable_tiling()

    @property
    def batch(self) -> int:
        return len(self.prompts) * self.num_images_per_prompt


@dataclass(frozen=True)
class VideoRequest(TextDiffusionRequest):
    """Text-to-video (AnimateDiff): ``frames`` frames per video, in context windows when longer than the
    motion module, or FIFO-Diffusion (``long_video="fifo"``)."""

    num_frames: int
    num_videos_per_prompt: int
    window_callback: Any = field(repr=False)
    context_length: int
    context_stride: int
    context_weighting: str
    decode_chunk_size: int
    long_video: str  # "context" | "fifo"

    @property
    def batch(self) -> int:
        return len(self.prompts) * self.num_videos_per_prompt


@dataclass(frozen=True)
class ImageToVideoRequest:
    """Stable Video Diffusion: one video per conditioning image."""

    images: tuple = field(repr=False)  # PIL images
    num_frames: int
    num_inference_steps: int
    height: int
    width: int
    min_guidance_scale: float
    max_guidance_scale: float
    fps: float
    motion_bucket_id: float
    noise_aug_strength: float
    decode_chunk_size: int
    seed: int
    latents: np.ndarray | None = field(repr=False)
    image_noise: np.ndarray | None = field(repr=False)
    output_type: str
    callback: Any = field(repr=False)


@dataclass(frozen=True)
class CaptionRequest:
    """Captioning: greedy (num_beams=1) or beam search over one batch of images."""

    images: tuple = field(repr=False)  # PIL images
    prompts: tuple[str, ...] | None
    max_new_tokens: int
    num_beams: int
    length_penalty: float
    no_repeat_ngram_size: int
    early_stopping: Any  # True | False | "never"
    num_return_sequences: int
    repetition_penalty: float
