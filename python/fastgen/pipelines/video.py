"""Text-to-video (AnimateDiff engines, manifest kind ``text2video``).

The flow follows diffusers' ``AnimateDiffPipeline``: SD prompt encoding, latents (batch, C, frames,
h, w) times ``init_noise_sigma``, CFG with the unconditional half first, frames decoded by the image
VAE in chunks of ``decode_chunk_size``. The denoising loop runs in the C++ core
(``_core.video_sample_loop``); when ``num_frames`` exceeds ``context_length`` it denoises
overlapping windows of ``context_length`` frames every ``context_stride`` frames and blends their
predictions with per-frame (pyramid or flat) weights, so the UNet only ever sees one window. With
``num_frames <= context_length`` there is one window and the result equals diffusers'.

Decoded frames pass through the core's ``FrameRing`` (capacity ``decode_chunk_size``):
``iter_frames`` yields them one by one, so ``fastgen.export_video(vid.iter_frames(...), "x.mp4")``
never holds the decoded video in memory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _core
from .. import image as imgproc
from ..errors import InvalidArgumentError, ManifestError, ShapeError, UnsupportedError
from ..sampling import randn
from .._args import check_float, check_int
from .diffusion import StableDiffusionPipeline, _prompt_list

__all__ = ["TextToVideoPipeline", "ImageToVideoPipeline", "resize_with_antialiasing", "VideoOutput", "pipeline_for_video", "VIDEO_OUTPUT_TYPES"]

VIDEO_OUTPUT_TYPES = ("np", "pil", "latent")
MAX_FRAMES = 100_000
MAX_VIDEOS_PER_CALL = 16
WEIGHTINGS = ("pyramid", "flat")
LONG_VIDEO_MODES = ("context", "fifo")


@dataclass
class VideoOutput:
    """``frames``: (batch, frames, H, W, 3) float32 in [0, 1] ("np"), a list of lists of PIL images
    ("pil"), or the latents (batch, C, frames, h, w) ("latent")."""

    frames: Any
    seed: int | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class _Plan:
    prompts: list[str]
    negatives: list[str] | None
    steps: int
    guidance: float
    rescale: float
    eta: float
    n: int
    height: int
    width: int
    frames: int
    context_length: int
    stride: int
    weighting: str
    chunk: int
    seed: int
    latents: np.ndarray | None
    long_video: str = "context"


class TextToVideoPipeline(StableDiffusionPipeline):
    """AnimateDiff text-to-video. ``vid(prompt, num_frames=16, ...)`` -> VideoOutput."""

    kind = "text2video"
    default_steps = 25
    default_guidance = 7.5

    def __init__(self, manifest, **kw):
        super().__init__(manifest, **kw)
        c = manifest.config
        try:
            self.motion_max_seq_length = int(c["motion_max_seq_length"])
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"text2video fastgen.json config lacks a valid {e} entry") from e
        if self.motion_max_seq_length < 1:
            raise ManifestError("config.motion_max_seq_length must be >= 1")

    # ------------------------------------------------------------------ arguments
    def _plan(self, prompt, num_frames, steps, guidance_scale, height, width, seed, latents, context_length,
              context_stride, decode_chunk_size, negative_prompt, n, guidance_rescale, eta, weighting) -> _Plan:
        prompts = _prompt_list("prompt", prompt)
        negatives = None if negative_prompt is None else _prompt_list("negative_prompt", negative_prompt, len(prompts))
        frames = check_int("num_frames", num_frames, 1, MAX_FRAMES)
        steps = self.default_steps if steps is None else check_int("num_inference_steps", steps, 1, 1000)
        g = self.default_guidance if guidance_scale is None else check_float("guidance_scale", guidance_scale, 0.0)
        rescale = check_float("guidance_rescale", guidance_rescale, 0.0, 1.0)
        eta = check_float("eta", eta, 0.0)
        n = check_int("num_videos_per_prompt", n, 1, MAX_VIDEOS_PER_CALL)
        if len(prompts) * n > MAX_VIDEOS_PER_CALL:
            raise InvalidArgumentError(f"{len(prompts) * n} videos in one call exceeds the limit of {MAX_VIDEOS_PER_CALL}")
        m = self.motion_max_seq_length
        if context_length is None:
            ctx = min(frames, m)
        else:
            ctx = check_int("context_length", context_length, 1, 1 << 30)
            if ctx > m:
                raise InvalidArgumentError(f"context_length {ctx} exceeds the motion module's length {m}")
        stride = check_int("context_stride", context_stride, 1, 1 << 30) if context_stride is not None else 4
        # checked against the context length asked for (the motion length by default), even when the
        # video fits one window and the stride does not matter
        limit = ctx if context_length is not None else m
        if stride > limit:
            raise InvalidArgumentError(f"context_stride must be in [1, context_length={limit}], got {stride}")
        stride = min(stride, ctx)
        chunk = check_int("decode_chunk_size", decode_chunk_size, 1, 1 << 16)
        if weighting not in WEIGHTINGS:
            raise InvalidArgumentError(f"context_weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little") >> 1
        elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
            raise InvalidArgumentError(f"seed must be an int in [0, 2**63), got {seed!r}")
        h, w = self._size(height, width, None)
        shape = (len(prompts) * n, self.latent_channels, frames, h // self.vae_scale_factor, w // self.vae_scale_factor)
        if latents is not None:
            if not isinstance(latents, np.ndarray):
                raise ShapeError(f"latents must be a numpy array of shape {shape}, got {type(latents).__name__}")
            if tuple(latents.shape) != shape:
                raise ShapeError(f"latents must have shape {shape} (batch, channels, frames, height/"
                                 f"{self.vae_scale_factor}, width/{self.vae_scale_factor}), got {latents.shape}")
            if not np.issubdtype(latents.dtype, np.floating) or not np.isfinite(latents).all():
                raise ShapeError("latents must be finite floating-point values")
            latents = np.ascontiguousarray(latents, dtype=np.float32)
        return _Plan(prompts, negatives, steps, g, rescale, eta, n, h, w, frames, ctx, stride, weighting, chunk,
                     int(seed), latents)

    # ------------------------------------------------------------------ denoising
    def _denoise(self, p: _Plan, scheduler, callback, window_callback, timings) -> np.ndarray:
        if callback is not None and not callable(callback):
            raise InvalidArgumentError("callback must be callable: callback(step, timestep, latents)")
        if window_callback is not None and not callable(window_callback):
            raise InvalidArgumentError("window_callback must be callable: window_callback(window_start, timestep)")
        if p.long_video == "fifo":
            return self._fifo(p, scheduler, callback, window_callback, timings)
        batch = len(p.prompts) * p.n
        sched = self.make_scheduler(scheduler)
        sched.manual_seed(p.seed ^ 0x5EED)
        cfg = self.uses_cfg(p.guidance)
        t0 = time.perf_counter()
        cond = self.encode_prompt(p.prompts, p.negatives, p.n, cfg, {})
        ehs = cond.arrays["encoder_hidden_states"]
        timings["text_encode"] = time.perf_counter() - t0
        sched.set_timesteps(p.steps)
        shape = (batch, self.latent_channels, p.frames, p.height // self.vae_scale_factor,
                 p.width // self.vae_scale_factor)
        noise = p.latents if p.latents is not None else randn(shape, p.seed)
        x = (noise * np.float32(sched.init_noise_sigma)).astype(np.float32)
        net = self.session("unet")
        unet_time = [0.0]

        def denoise(xin: np.ndarray, t: float, start: int) -> np.ndarray:
            t1 = time.perf_counter()
            out = net.run({"sample": xin, "timestep": np.full((xin.shape[0],), t, np.float32),
                           "encoder_hidden_states": ehs}, ["noise_pred"])["noise_pred"]
            unet_time[0] += time.perf_counter() - t1
            if window_callback is not None:
                window_callback(int(start), float(t))
            return out if out.dtype == np.float32 else out.astype(np.float32)

        t0 = time.perf_counter()
        x = _core.video_sample_loop(sched.impl, x, denoise, p.context_length, p.stride, p.weighting,
                                    p.guidance if cfg else 1.0, p.rescale, p.eta, callback)
        loop = time.perf_counter() - t0
        timings["denoise"] = unet_time[0]
        timings["loop_overhead"] = max(loop - unet_time[0], 0.0)
        return x

    # ------------------------------------------------------------------ FIFO-Diffusion
    def fifo_coefficients(self, sched) -> tuple[np.ndarray, dict[str, list[float]]]:
        """(slot timesteps [L], DDIM coefficients per slot) for a queue of L = len(timesteps) slots.

        Slot j holds timestep ts[L-1-j] (slot 0 the least noisy); its DDIM update goes to the next
        lower timestep of the schedule, slot 0 to the clean frame (final alphā, as diffusers' DDIM)."""
        cfg = sched.config
        if str(cfg.get("prediction_type") or "epsilon") != "epsilon":
            raise UnsupportedError("long_video='fifo' supports epsilon-prediction engines only")
        n = int(cfg.get("num_train_timesteps", 1000))
        b0, b1 = float(cfg.get("beta_start", 0.0001)), float(cfg.get("beta_end", 0.02))
        kind = cfg.get("beta_schedule", "linear")
        if kind == "linear":
            betas = np.linspace(b0, b1, n, dtype=np.float32)
        elif kind == "scaled_linear":
            betas = np.linspace(b0 ** 0.5, b1 ** 0.5, n, dtype=np.float32) ** 2
        else:
            raise UnsupportedError(f"long_video='fifo' does not support beta_schedule {kind!r}")
        ac = np.cumprod(1.0 - betas.astype(np.float64)).astype(np.float32)
        final = np.float32(1.0) if cfg.get("set_alpha_to_one", True) else ac[0]
        ts = np.asarray(sched.timesteps).astype(np.int64)[::-1]  # ascending: slot j -> ts[j]
        a = ac[ts]
        a_prev = np.concatenate([[final], a[:-1]]).astype(np.float32)
        coef = {"sqrt_a": np.sqrt(a).tolist(), "sqrt_1ma": np.sqrt(np.float32(1) - a).tolist(),
                "sqrt_a_prev": np.sqrt(a_prev).tolist(), "sqrt_1ma_prev": np.sqrt(np.float32(1) - a_prev).tolist()}
        return ts.astype(np.float32), coef

    def _fifo(self, p: _Plan, scheduler, callback, window_callback, timings) -> np.ndarray:
        """FIFO-Diffusion (Kim et al. 2024) without latent partitioning: a queue of L =
        num_inference_steps latent frames at increasing noise. The queue starts as a clip of L frames
        generated normally and noised diagonally (slot j to timestep ts[j]); each iteration the
        per-frame-timestep UNet (``unet_fifo``, in partitions of ``context_length`` frames) and one
        DDIM step per slot move every frame one level down, the clean head frame is emitted and
        fresh noise (Philox, seed ^ 0xF1F0, offset = index * frame size) enters at the tail."""
        if not self.manifest.has("unet_fifo"):
            raise UnsupportedError("long_video='fifo' needs the per-frame-timestep UNet (unet_fifo), which this "
                                   "engine was exported without: re-export it with `fastgen export --fifo-unet` "
                                   "(fastgen_export.export(..., fifo_unet=True), the default)")
        if callback is not None:
            raise InvalidArgumentError("callback= is not supported with long_video='fifo' (use window_callback)")
        if p.latents is not None:
            raise InvalidArgumentError("latents= is not supported with long_video='fifo' (the queue draws its noise "
                                       "from seed)")
        sched = self.make_scheduler(scheduler)
        sched.set_timesteps(p.steps)
        slot_t, coef = self.fifo_coefficients(sched)
        L = len(slot_t)
        if L < 1:
            raise InvalidArgumentError("long_video='fifo' needs num_inference_steps >= 1")
        batch = len(p.prompts) * p.n
        lh, lw = p.height // self.vae_scale_factor, p.width // self.vae_scale_factor
        # 1. the first clip: L frames denoised as usual (context windows when L > context_length)
        clip_plan = _Plan(**{**p.__dict__, "frames": L, "long_video": "context",
                             "stride": min(p.stride, min(L, p.context_length))})
        clip = self._denoise(clip_plan, scheduler, None, window_callback, timings)
        # 2. diagonal noise: slot j at timestep slot_t[j]
        noise = randn((batch, self.latent_channels, L, lh, lw), p.seed ^ 0xD1A6)
        sa = np.asarray(coef["sqrt_a"], np.float32)[None, None, :, None, None]
        sb = np.asarray(coef["sqrt_1ma"], np.float32)[None, None, :, None, None]
        queue = (sa * clip + sb * noise).astype(np.float32)
        cfg = self.uses_cfg(p.guidance)
        ehs = self.encode_prompt(p.prompts, p.negatives, p.n, cfg, {}).arrays["encoder_hidden_states"]
        net = self.session("unet_fifo")
        ctx = min(L, p.context_length)
        out = np.empty((batch, self.latent_channels, p.frames, lh, lw), np.float32)
        frame_size = batch * self.latent_channels * lh * lw
        unet_time = [0.0]

        def denoise(xin: np.ndarray, start: int) -> np.ndarray:
            t1 = time.perf_counter()
            ts = np.ascontiguousarray(np.broadcast_to(slot_t[start:start + ctx], (xin.shape[0], ctx)))
            r = net.run({"sample": xin, "timestep": ts, "encoder_hidden_states": ehs}, ["noise_pred"])["noise_pred"]
            unet_time[0] += time.perf_counter() - t1
            if window_callback is not None:
                window_callback(int(start), float(slot_t[start]))
            return r if r.dtype == np.float32 else r.astype(np.float32)

        def exchange(i: int, head: np.ndarray) -> np.ndarray:
            out[:, :, i] = head
            return randn((batch, self.latent_channels, lh, lw), p.seed ^ 0xF1F0, offset=i * frame_size)

        t0 = time.perf_counter()
        _core.fifo_sample_loop(queue, denoise, exchange, p.frames, ctx, coef["sqrt_a"], coef["sqrt_1ma"],
                               coef["sqrt_a_prev"], coef["sqrt_1ma_prev"], p.guidance if cfg else 1.0, p.rescale)
        timings["fifo"] = time.perf_counter() - t0
        timings["denoise"] = timings.get("denoise", 0.0) + unet_time[0]
        return out

    def _decode_iter(self, latents: np.ndarray, chunk: int, timings: dict) -> Iterator[np.ndarray]:
        """Frames (H, W, 3) float32 in [0, 1], video after video, through the core's FrameRing."""
        b, c, f = latents.shape[:3]
        f_vae = self.vae_scale_factor
        h, w = latents.shape[3] * f_vae, latents.shape[4] * f_vae
        ring = _core.FrameRing(chunk, 3, h, w)
        dec = self.session("vae_decoder")
        inv = np.float32(self.scaling_factor)
        shift = np.float32(self.shift_factor)
        timings.setdefault("vae_decode", 0.0)
        for bi in range(b):
            for f0 in range(0, f, chunk):
                t0 = time.perf_counter()
                z = latents[bi, :, f0:f0 + chunk].transpose(1, 0, 2, 3)
                z = np.ascontiguousarray(z / inv + shift, dtype=np.float32)
                out = dec.run({"latent": z}, ["sample"])["sample"]
                if out.shape[1] != 3 or out.shape[2:] != (h, w):
                    raise ManifestError(f"vae_decoder returned shape {out.shape}, expected (n, 3, {h}, {w})")
                ring.push(np.ascontiguousarray(out, dtype=np.float32))
                timings["vae_decode"] += time.perf_counter() - t0
                del out, z
                while len(ring):
                    yield ring.pop(h, w)

    # ------------------------------------------------------------------ public API
    def __call__(self, prompt, num_frames=16, num_inference_steps=None, guidance_scale=None, height=None, width=None,
                 seed=0, latents=None, output_type="np", context_length=None, context_stride=4, decode_chunk_size=8,
                 negative_prompt=None, callback=None, *, num_videos_per_prompt=1, scheduler=None, guidance_rescale=0.0,
                 eta=0.0, context_weighting="pyramid", window_callback=None, long_video=None) -> VideoOutput:
        """Generate ``num_frames`` frames per prompt; see the module docstring for the long-video options.

        ``callback(step, t, latents)`` runs after each denoising step (False stops early);
        ``window_callback(window_start, t)`` after each context window's UNet call.
        ``long_video="fifo"``: FIFO-Diffusion diagonal denoising (see ``_fifo``); default: context windows.
        """
        if output_type not in VIDEO_OUTPUT_TYPES:
            raise InvalidArgumentError(f"output_type must be one of {VIDEO_OUTPUT_TYPES}, got {output_type!r}")
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        p = self._plan(prompt, num_frames, num_inference_steps, guidance_scale, height, width, seed, latents,
                       context_length, context_stride, decode_chunk_size, negative_prompt, num_videos_per_prompt,
                       guidance_rescale, eta, context_weighting)
        p.long_video = _long_video(long_video)
        x = self._denoise(p, scheduler, callback, window_callback, timings)
        if output_type == "latent":
            frames: Any = x
        else:
            arr = np.empty((x.shape[0], p.frames, p.height, p.width, 3), np.float32)
            for i, fr in enumerate(self._decode_iter(x, p.chunk, timings)):
                arr[i // p.frames, i % p.frames] = fr
            frames = arr if output_type == "np" else [imgproc.to_pil(v) for v in arr]
        timings["total"] = time.perf_counter() - t_start
        return VideoOutput(frames=frames, seed=p.seed, timings=timings)

    def iter_frames(self, prompt, num_frames=16, num_inference_steps=None, guidance_scale=None, height=None,
                    width=None, seed=0, latents=None, context_length=None, context_stride=4, decode_chunk_size=8,
                    negative_prompt=None, callback=None, *, scheduler=None, guidance_rescale=0.0, eta=0.0,
                    context_weighting="pyramid", window_callback=None, long_video=None) -> Iterator[np.ndarray]:
        """Denoise (on the first ``next()``), then yield the decoded frames (H, W, 3) float32 one at a
        time; at most ``decode_chunk_size`` decoded frames are held. One prompt (one video)."""
        if not isinstance(prompt, str):
            raise InvalidArgumentError("iter_frames takes one prompt string")
        p = self._plan(prompt, num_frames, num_inference_steps, guidance_scale, height, width, seed, latents,
                       context_length, context_stride, decode_chunk_size, negative_prompt, 1, guidance_rescale,
                       eta, context_weighting)
        p.long_video = _long_video(long_video)

        def gen():
            timings: dict[str, float] = {}
            x = self._denoise(p, scheduler, callback, window_callback, timings)
            yield from self._decode_iter(x, p.chunk, timings)

        return gen()

    def num_windows(self, num_frames: int, context_length: int | None = None, context_stride: int = 4) -> int:
        """How many UNet windows one step runs (for progress bars)."""
        frames = check_int("num_frames", num_frames, 1, MAX_FRAMES)
        ctx = min(frames, self.motion_max_seq_length) if context_length is None else int(context_length)
        if frames <= ctx:
            return 1
        return len(_core.context_windows(frames, ctx, int(context_stride)))


# ---------------------------------------------------------------------------- Stable Video Diffusion


def _gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float32) - np.float32(size // 2)
    if size % 2 == 0:
        x = x + np.float32(0.5)
    g = np.exp(-(x ** 2) / (np.float32(2) * np.float32(sigma) ** 2)).astype(np.float32)
    return g / g.sum(dtype=np.float32)


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    def c1(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def c2(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([c2(t + 1), c1(t), c1(1 - t), c2(2 - t)], axis=-1).astype(np.float32)


def _resize_bicubic_align_corners(x: np.ndarray, axis: int, out: int) -> np.ndarray:
    n = x.shape[axis]
    scale = np.float32((n - 1) / (out - 1)) if out > 1 else np.float32(0)
    src = np.arange(out, dtype=np.float32) * scale
    i0 = np.floor(src).astype(np.int64)
    w = _cubic_weights((src - i0).astype(np.float32))
    res = 0
    for k in range(4):
        idx = np.clip(i0 - 1 + k, 0, n - 1)
        shape = [1] * x.ndim
        shape[axis] = out
        res = res + np.take(x, idx, axis=axis) * w[:, k].reshape(shape)
    return res.astype(np.float32)


def resize_with_antialiasing(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """diffusers' SVD ``_resize_with_antialiasing`` (Gaussian blur, reflect padding, then bicubic
    interpolation with align_corners=True), NCHW float32, in NumPy."""
    h, w = x.shape[-2:]
    sig = (max((h / size[0] - 1.0) / 2.0, 0.001), max((w / size[1] - 1.0) / 2.0, 0.001))
    ks = [int(max(2.0 * 2 * sig[0], 3)), int(max(2.0 * 2 * sig[1], 3))]
    ks = [k + 1 if k % 2 == 0 else k for k in ks]
    for axis, k, sg in ((3, ks[1], sig[1]), (2, ks[0], sig[0])):
        kern = _gaussian_kernel(k, sg)
        front = (k - 1) // 2
        pad = [(0, 0)] * 4
        pad[axis] = (front, k - 1 - front)
        xp = np.pad(x, pad, mode="reflect")
        acc = np.zeros_like(x)
        n = x.shape[axis]
        for j in range(k):
            acc += kern[j] * np.take(xp, np.arange(j, j + n), axis=axis)
        x = acc
    x = _resize_bicubic_align_corners(x, 3, size[1])
    return _resize_bicubic_align_corners(x, 2, size[0])


class ImageToVideoPipeline(StableDiffusionPipeline):
    """Stable Video Diffusion: ``vid(image, num_frames=None, ...)`` -> VideoOutput, as diffusers'
    StableVideoDiffusionPipeline (per-frame guidance from min to max, CLIP image conditioning,
    VAE-encoded image latents concatenated to the noisy latents, temporal VAE decoding in chunks)."""

    kind = "img2video"
    default_steps = 25

    def __init__(self, manifest, **kw):
        super().__init__(manifest, **kw)
        c = manifest.config
        self.default_num_frames = int(c.get("default_num_frames", 14))
        self.image_size = int(c.get("image_size", 224))
        self.image_mean = np.asarray(c.get("image_mean"), np.float32).reshape(1, 3, 1, 1)
        self.image_std = np.asarray(c.get("image_std"), np.float32).reshape(1, 3, 1, 1)

    def encode_image_embeds(self, pil) -> np.ndarray:
        arr = np.stack([np.asarray(im.convert("RGB"), np.float32) / 255.0 for im in pil]).transpose(0, 3, 1, 2)
        x = resize_with_antialiasing(np.ascontiguousarray(arr * 2.0 - 1.0, np.float32),
                                     (self.image_size, self.image_size))
        x = (x + 1.0) / 2.0
        x = ((x - self.image_mean) / self.image_std).astype(np.float32)
        return self.session("image_encoder").run({"pixel_values": x}, ["image_embeds"])["image_embeds"]

    def __call__(self, image, num_frames=None, num_inference_steps=None, height=None, width=None,
                 min_guidance_scale=1.0, max_guidance_scale=3.0, fps=7, motion_bucket_id=127, noise_aug_strength=0.02,
                 decode_chunk_size=None, seed=0, latents=None, image_noise=None, output_type="np",
                 callback=None) -> VideoOutput:
        """``image_noise``: the noise added to the conditioning image (default: drawn from ``seed``)."""
        if output_type not in VIDEO_OUTPUT_TYPES:
            raise InvalidArgumentError(f"output_type must be one of {VIDEO_OUTPUT_TYPES}, got {output_type!r}")
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        pil = [imgproc.load_image(im) for im in (image if isinstance(image, list) else [image])]
        frames = self.default_num_frames if num_frames is None else check_int("num_frames", num_frames, 1, MAX_FRAMES)
        steps = self.default_steps if num_inference_steps is None else check_int("num_inference_steps",
                                                                                  num_inference_steps, 1, 1000)
        gmin = check_float("min_guidance_scale", min_guidance_scale, 0.0)
        gmax = check_float("max_guidance_scale", max_guidance_scale, 0.0)
        aug = check_float("noise_aug_strength", noise_aug_strength, 0.0)
        fps = check_float("fps", fps, 1.0)
        mb = check_float("motion_bucket_id", motion_bucket_id, 0.0)
        chunk = frames if decode_chunk_size is None else check_int("decode_chunk_size", decode_chunk_size, 1, 1 << 16)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
            raise InvalidArgumentError(f"seed must be an int in [0, 2**63), got {seed!r}")
        h, w = self._size(height, width, None)
        B = len(pil)
        cfg = gmax > 1
        f = self.vae_scale_factor
        shape = (B, frames, self.latent_channels, h // f, w // f)
        if latents is not None and (not isinstance(latents, np.ndarray) or latents.shape != shape):
            raise ShapeError(f"latents must be a numpy array of shape {shape}")
        emb = self.encode_image_embeds(pil)[:, None].astype(np.float32)
        pixels = imgproc.preprocess_image(pil, h, w)
        if image_noise is None:
            image_noise = randn(pixels.shape, int(seed) ^ 0xA06)
        elif not isinstance(image_noise, np.ndarray) or image_noise.shape != pixels.shape:
            raise ShapeError(f"image_noise must be a numpy array of shape {pixels.shape}")
        pixels = (pixels + np.float32(aug) * image_noise.astype(np.float32)).astype(np.float32)
        img_lat = self.session("vae_encoder").run({"sample": pixels}, ["latent_mean"])["latent_mean"]
        img_lat = np.repeat(img_lat[:, None], frames, axis=1)
        ids = np.tile(np.array([[fps - 1, mb, aug]], np.float32), (B, 1))
        if cfg:
            emb = np.concatenate([np.zeros_like(emb), emb])
            img_lat = np.concatenate([np.zeros_like(img_lat), img_lat])
            ids = np.concatenate([ids, ids])
        img_lat = np.ascontiguousarray(img_lat, np.float32)
        g = np.linspace(gmin, gmax, frames, dtype=np.float32).reshape(1, frames, 1, 1, 1)
        sched = self.make_scheduler(None)
        sched.set_timesteps(steps)
        noise = latents.astype(np.float32) if latents is not None else randn(shape, int(seed))
        x = (noise * np.float32(sched.init_noise_sigma)).astype(np.float32)
        net = self.session("unet")

        def denoise(xin: np.ndarray, t: float) -> np.ndarray:
            xx = np.concatenate([xin, xin]) if cfg else xin
            xx = np.ascontiguousarray(np.concatenate([xx, img_lat], axis=2))
            out = net.run({"sample": xx, "timestep": np.full((xx.shape[0],), t, np.float32),
                           "encoder_hidden_states": emb, "added_time_ids": ids}, ["noise_pred"])["noise_pred"]
            if cfg:
                u, c = out[:B], out[B:]
                out = u + g * (c - u)
            return np.ascontiguousarray(out, np.float32)

        from ..sampling import sample_loop

        x = sample_loop(sched, x, denoise, guidance_scale=1.0, callback=callback)
        if output_type == "latent":
            return VideoOutput(frames=x, seed=int(seed), timings=timings)
        flat = (x.reshape((B * frames,) + x.shape[2:]) * np.float32(1.0 / self.scaling_factor)).astype(np.float32)
        ring = _core.FrameRing(chunk, 3, h, w)
        dec = self.session("vae_decoder")
        arr = np.empty((B * frames, h, w, 3), np.float32)
        k = 0
        for i in range(0, B * frames, chunk):
            ring.push(np.ascontiguousarray(dec.run({"latent": np.ascontiguousarray(flat[i:i + chunk])},
                                                   ["sample"])["sample"], np.float32))
            while len(ring):
                arr[k] = ring.pop(h, w)
                k += 1
        arr = arr.reshape(B, frames, h, w, 3)
        timings["total"] = time.perf_counter() - t_start
        return VideoOutput(frames=arr if output_type == "np" else [imgproc.to_pil(v) for v in arr], seed=int(seed),
                           timings=timings)


def _long_video(mode) -> str:
    if mode is None:
        return "context"
    if mode not in LONG_VIDEO_MODES:
        raise InvalidArgumentError(f"long_video must be one of {LONG_VIDEO_MODES} or None, got {mode!r}")
    return mode


def pipeline_for_video(manifest) -> type:
    if manifest.kind == "text2video":
        if manifest.family not in (None, "sd"):
            raise ManifestError(f"unsupported text2video family {manifest.family!r}")
        return TextToVideoPipeline
    if manifest.kind == "img2video" and manifest.family == "svd":
        return ImageToVideoPipeline
    raise ManifestError(f"engine kind {manifest.kind!r} (family {manifest.family!r}) is not supported by this build")

