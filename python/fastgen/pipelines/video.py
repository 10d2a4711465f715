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

import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import _core
from .. import image as imgproc
from .._args import check_array, check_callable, check_choice, check_float, check_int, check_seed
from ..cache import check_cache
from ..errors import InvalidArgumentError, ManifestError, UnsupportedError
from ..outputs import Timer, VideoOutput
from ..requests import VideoRequest
from ..sampling import randn
from .base import Components, Pipeline
from .step_cache import make_runner
from .stages import (ImageGeometry, Schedulers, SDPromptEncoder, TextEncoders, Vae, check_prompt_batch,
                     check_steps_guidance)

__all__ = ["TextToVideoPipeline", "VideoOutput", "pipeline_class", "VIDEO_OUTPUT_TYPES"]

VIDEO_OUTPUT_TYPES = ("np", "pil", "latent")
MAX_FRAMES = 100_000
MAX_VIDEOS_PER_CALL = 16
WEIGHTINGS = ("pyramid", "flat")
LONG_VIDEO_MODES = ("context", "fifo")


def pipeline_class(manifest) -> type["TextToVideoPipeline"]:
    if manifest.family not in (None, "sd"):
        raise ManifestError(f"unsupported text2video family {manifest.family!r}")
    return TextToVideoPipeline


class TextToVideoPipeline(Pipeline):
    """AnimateDiff text-to-video. ``vid(prompt, num_frames=16, ...)`` -> VideoOutput."""

    kind = "text2video"

    def __init__(self, components: Components):
        super().__init__(components)
        c = self.manifest.config
        try:
            self.motion_max_seq_length = int(c["motion_max_seq_length"])
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"text2video fastgen.json config lacks a valid {e} entry") from e
        if self.motion_max_seq_length < 1:
            raise ManifestError("config.motion_max_seq_length must be >= 1")
        self.geometry = ImageGeometry(c)
        self.latent_channels = self.geometry.latent_channels
        self.vae_scale_factor = self.geometry.vae_scale_factor
        self.vae = Vae(self.session, c)
        self.schedulers = Schedulers(self.manifest)
        self.text = TextEncoders(self.session, self.manifest)
        self.prompt_encoder = SDPromptEncoder(self.text, c)
        self.default_steps = int(c.get("default_steps", 25))
        self.default_guidance = float(c.get("default_guidance_scale", 7.5))

    # ------------------------------------------------------------------ requests
    def validate(self, prompt=None, *, num_frames=16, num_inference_steps=None, guidance_scale=None, height=None,
                 width=None, seed=None, latents=None, output_type="np", context_length=None, context_stride=4,
                 decode_chunk_size=8, negative_prompt=None, callback=None, num_videos_per_prompt=1,
                 scheduler=None, guidance_rescale=0.0, eta=0.0, context_weighting="pyramid", window_callback=None,
                 long_video=None, cache=None, **unknown) -> VideoRequest:
        """Check a call's arguments against this engine and return the complete request.

        ``long_video``: None or "context" (overlapping context windows), or "fifo" (FIFO-Diffusion
        diagonal denoising over the exported per-frame-timestep UNet)."""
        self.refuse_unknown(unknown)
        cache = check_cache(cache, self.manifest)
        prompts, negatives, n = check_prompt_batch(prompt, negative_prompt, "num_videos_per_prompt",
                                                   num_videos_per_prompt, MAX_VIDEOS_PER_CALL)
        frames = check_int("num_frames", num_frames, 1, MAX_FRAMES)
        steps, g = check_steps_guidance(self, num_inference_steps, guidance_scale)
        m = self.motion_max_seq_length
        if context_length is None:
            ctx = min(frames, m)
        else:
            ctx = check_int("context_length", context_length, 1, 1 << 30)
            if ctx > m:
                raise InvalidArgumentError(f"context_length {ctx} exceeds the motion module's length {m}")
        stride = check_int("context_stride", context_stride, 1, 1 << 30)
        # checked against the context length asked for (the motion length by default), even when the
        # video fits one window and the stride does not matter
        limit = ctx if context_length is not None else m
        if stride > limit:
            raise InvalidArgumentError(f"context_stride must be in [1, context_length={limit}], got {stride}")
        mode = "context" if long_video is None else check_choice("long_video", long_video, LONG_VIDEO_MODES)
        h, w = self.geometry.resolve(height, width)
        lh, lw = self.geometry.latent_hw(h, w)
        if latents is not None:
            latents = check_array("latents", latents, (len(prompts) * n, self.latent_channels, frames, lh, lw),
                                  f"(batch, channels, frames, height/{self.vae_scale_factor}, "
                                  f"width/{self.vae_scale_factor})")
        callback = check_callable("callback", callback, "callback(step, timestep, latents) -> bool | None")
        window_callback = check_callable("window_callback", window_callback, "window_callback(window_start, t)")
        if mode == "fifo":
            if not self.manifest.has("unet_fifo"):
                raise UnsupportedError("long_video='fifo' needs the per-frame-timestep UNet (unet_fifo), which this "
                                       "engine was exported without: re-export it with `fastgen export --fifo-unet` "
                                       "(fastgen_export.export(..., fifo_unet=True), the default)")
            if callback is not None:
                raise InvalidArgumentError("callback= is not supported with long_video='fifo' (use window_callback)")
            if latents is not None:
                raise InvalidArgumentError("latents= is not supported with long_video='fifo' (the queue draws its "
                                           "noise from seed)")
        if cache is not None and (long_video == "fifo" or frames > ctx):
            raise UnsupportedError("step caching (cache=) runs one context window per step: give num_frames <= "
                                   f"context_length ({ctx}) and no long_video='fifo'")
        return VideoRequest(
            prompts=tuple(prompts), negative_prompts=None if negatives is None else tuple(negatives),
            num_frames=frames, num_inference_steps=steps, guidance_scale=g, height=h, width=w,
            num_videos_per_prompt=n, seed=check_seed("seed", seed), latents=latents,
            scheduler=self.schedulers.check(scheduler),
            guidance_rescale=check_float("guidance_rescale", guidance_rescale, 0.0, 1.0),
            eta=check_float("eta", eta, 0.0), output_type=check_choice("output_type", output_type, VIDEO_OUTPUT_TYPES),
            callback=callback, window_callback=window_callback, context_length=ctx, context_stride=min(stride, ctx),
            context_weighting=check_choice("context_weighting", context_weighting, WEIGHTINGS),
            decode_chunk_size=check_int("decode_chunk_size", decode_chunk_size, 1, 1 << 16), long_video=mode,
            cache=cache)

    # ------------------------------------------------------------------ running
    def run(self, req: VideoRequest) -> VideoOutput:
        if not isinstance(req, VideoRequest):
            raise InvalidArgumentError(f"run() takes the VideoRequest made by validate(), got {type(req).__name__}")
        timer = Timer()
        stats: list = []
        x = self._denoise(req, timer, stats)
        if req.output_type == "latent":
            frames: Any = x
        else:
            arr = np.empty((x.shape[0], req.num_frames, req.height, req.width, 3), np.float32)
            for i, fr in enumerate(self._decode_iter(x, req, timer)):
                arr[i // req.num_frames, i % req.num_frames] = fr
            frames = arr if req.output_type == "np" else [imgproc.to_pil(v) for v in arr]
        return VideoOutput(frames=frames, seed=req.seed, timings=timer.finish(), cache_stats=stats[0] if stats else None)

    def iter_frames(self, prompt, **kwargs) -> Iterator[np.ndarray]:
        """Validate now; denoise on the first ``next()``, then yield the decoded frames (H, W, 3) float32
        one at a time; at most ``decode_chunk_size`` decoded frames are held. One prompt (one video)."""
        if not isinstance(prompt, str):
            raise InvalidArgumentError("iter_frames takes one prompt string")
        for k in ("num_videos_per_prompt", "output_type"):
            if k in kwargs:
                raise InvalidArgumentError(f"iter_frames takes no {k}= (one video, decoded frames)")
        req = self.validate(prompt, **kwargs)

        def gen():
            timer = Timer()
            yield from self._decode_iter(self._denoise(req, timer), req, timer)

        return gen()

    def num_windows(self, num_frames: int, context_length: int | None = None, context_stride: int = 4) -> int:
        """How many UNet windows one step runs (for progress bars)."""
        frames = check_int("num_frames", num_frames, 1, MAX_FRAMES)
        ctx = min(frames, self.motion_max_seq_length) if context_length is None else int(context_length)
        if frames <= ctx:
            return 1
        return len(_core.context_windows(frames, ctx, int(context_stride)))

    def _encode(self, req: VideoRequest, cfg: bool, timer: Timer) -> np.ndarray:
        with timer.stage("text_encode"):
            return self.prompt_encoder(list(req.prompts), None if req.negative_prompts is None
                                       else list(req.negative_prompts), req.num_videos_per_prompt, cfg,
                                       {}).arrays["encoder_hidden_states"]

    def _denoise(self, req: VideoRequest, timer: Timer, stats: list | None = None) -> np.ndarray:
        """The denoised latents; with ``cache=`` the step-cache statistics are appended to ``stats``."""
        cfg = req.guidance_scale > 1.0
        ehs = self._encode(req, cfg, timer)
        if req.long_video == "fifo":
            return self._fifo(req, ehs, cfg, timer)
        return self._windows(req, req.num_frames, req.context_stride, req.latents, req.callback, ehs, cfg, timer,
                             stats)

    def _windows(self, req: VideoRequest, frames: int, stride: int, latents, callback, ehs, cfg: bool,
                 timer: Timer, stats: list | None = None) -> np.ndarray:
        sched = self.schedulers.make(req.scheduler)
        sched.manual_seed(req.seed ^ 0x5EED)
        sched.set_timesteps(req.num_inference_steps)
        lh, lw = self.geometry.latent_hw(req.height, req.width)
        shape = (req.batch, self.latent_channels, frames, lh, lw)
        noise = latents if latents is not None else randn(shape, req.seed)
        x = (noise * np.float32(sched.init_noise_sigma)).astype(np.float32)
        runner = None if req.cache is None else make_runner(req.cache, self.manifest, self.session, "unet",
                                                             len(sched.timesteps))  # one window per step
        net = self.session("unet") if runner is None else None
        window_callback = req.window_callback
        unet_time, steps = [0.0], [0]

        def denoise(xin: np.ndarray, t: float, start: int) -> np.ndarray:
            steps[0] += start == 0  # every step's first window starts at frame 0
            t1 = time.perf_counter()
            inputs = {"sample": xin, "timestep": np.full((xin.shape[0],), t, np.float32), "encoder_hidden_states": ehs}
            out = net.run(inputs, ["noise_pred"])["noise_pred"] if runner is None else runner(inputs)
            unet_time[0] += time.perf_counter() - t1
            if window_callback is not None:
                window_callback(int(start), float(t))
            return out if out.dtype == np.float32 else out.astype(np.float32)

        t0 = time.perf_counter()
        x = _core.video_sample_loop(sched.impl, x, denoise, req.context_length, stride,
                                    req.context_weighting, req.guidance_scale if cfg else 1.0, req.guidance_rescale,
                                    req.eta, callback)
        timer.add("denoise", unet_time[0])
        timer.add("loop_overhead", max(time.perf_counter() - t0 - unet_time[0], 0.0))
        timer.add("steps", steps[0])
        if runner is not None and stats is not None:
            stats.append(runner.stats())
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

    def _fifo(self, req: VideoRequest, ehs: np.ndarray, cfg: bool, timer: Timer) -> np.ndarray:
        """FIFO-Diffusion (Kim et al. 2024) without latent partitioning: a queue of L =
        num_inference_steps latent frames at increasing noise. The queue starts as a clip of L frames
        generated normally and noised diagonally (slot j to timestep ts[j]); each iteration the
        per-frame-timestep UNet (``unet_fifo``, in partitions of ``context_length`` frames) and one
        DDIM step per slot move every frame one level down, the clean head frame is emitted and
        fresh noise (Philox, seed ^ 0xF1F0, offset = index * frame size) enters at the tail."""
        sched = self.schedulers.make(req.scheduler)
        sched.set_timesteps(req.num_inference_steps)
        slot_t, coef = self.fifo_coefficients(sched)
        L = len(slot_t)
        batch = req.batch
        lh, lw = self.geometry.latent_hw(req.height, req.width)
        ctx = min(L, req.context_length)
        # 1. the first clip: L frames denoised as usual (context windows when L > context_length)
        clip = self._windows(req, L, min(req.context_stride, ctx), None, None, ehs, cfg, timer)
        # 2. diagonal noise: slot j at timestep slot_t[j]
        noise = randn((batch, self.latent_channels, L, lh, lw), req.seed ^ 0xD1A6)
        sa = np.asarray(coef["sqrt_a"], np.float32)[None, None, :, None, None]
        sb = np.asarray(coef["sqrt_1ma"], np.float32)[None, None, :, None, None]
        queue = (sa * clip + sb * noise).astype(np.float32)
        net = self.session("unet_fifo")
        out = np.empty((batch, self.latent_channels, req.num_frames, lh, lw), np.float32)
        frame_size = batch * self.latent_channels * lh * lw
        window_callback = req.window_callback
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
            return randn((batch, self.latent_channels, lh, lw), req.seed ^ 0xF1F0, offset=i * frame_size)

        t0 = time.perf_counter()
        _core.fifo_sample_loop(queue, denoise, exchange, req.num_frames, ctx, coef["sqrt_a"], coef["sqrt_1ma"],
                               coef["sqrt_a_prev"], coef["sqrt_1ma_prev"], req.guidance_scale if cfg else 1.0,
                               req.guidance_rescale)
        timer.add("denoise", unet_time[0])
        timer.add("loop_overhead", max(time.perf_counter() - t0 - unet_time[0], 0.0))
        return out

    def _decode_iter(self, latents: np.ndarray, req: VideoRequest, timer: Timer) -> Iterator[np.ndarray]:
        """Frames (H, W, 3) float32 in [0, 1], video after video."""
        for bi in range(latents.shape[0]):
            yield from self.vae.iter_decode(latents[bi].transpose(1, 0, 2, 3), req.decode_chunk_size,
                                            (req.height, req.width), lambda s: timer.add("vae_decode", s))
