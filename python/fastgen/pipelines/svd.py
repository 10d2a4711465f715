"""Image-to-video: Stable Video Diffusion engines (manifest kind ``img2video``, family ``svd``).

The flow follows diffusers' ``StableVideoDiffusionPipeline``: CLIP image embedding of the
conditioning image (antialiased resize, as diffusers' ``_resize_with_antialiasing``), the VAE latent
of the noise-augmented image concatenated to every frame's latents, per-frame guidance from
``min_guidance_scale`` to ``max_guidance_scale``, and the temporal VAE decoder in chunks.
"""

from __future__ import annotations

import time

import numpy as np

from .. import image as imgproc
from .._args import check_array, check_callable, check_choice, check_float, check_int, check_seed
from ..errors import InvalidArgumentError, ManifestError, ShapeError
from ..outputs import Timer, VideoOutput
from ..requests import ImageToVideoRequest
from ..sampling import randn, sample_loop
from .base import Components, Pipeline
from .stages import ImageGeometry, Schedulers, Vae

__all__ = ["ImageToVideoPipeline", "resize_with_antialiasing", "pipeline_class"]

VIDEO_OUTPUT_TYPES = ("np", "pil", "latent")
MAX_FRAMES = 1024
MAX_IMAGES_PER_CALL = 16


def pipeline_class(manifest) -> type["ImageToVideoPipeline"]:
    if manifest.family != "svd":
        raise ManifestError(f"engine kind 'img2video' (family {manifest.family!r}) is not supported by this build")
    return ImageToVideoPipeline



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


class ImageToVideoPipeline(Pipeline):
    """Stable Video Diffusion: ``vid(image, num_frames=None, ...)`` -> VideoOutput."""

    kind = "img2video"

    def __init__(self, components: Components):
        super().__init__(components)
        c = self.manifest.config
        self.geometry = ImageGeometry(c)
        self.latent_channels = self.geometry.latent_channels
        self.vae_scale_factor = self.geometry.vae_scale_factor
        self.vae = Vae(self.session, c)
        self.schedulers = Schedulers(self.manifest)
        self.default_steps = int(c.get("default_steps", 25))
        self.default_num_frames = int(c.get("default_num_frames", 14))
        self.image_size = int(c.get("image_size", 224))
        try:
            self.image_mean = np.asarray(c["image_mean"], np.float32).reshape(1, 3, 1, 1)
            self.image_std = np.asarray(c["image_std"], np.float32).reshape(1, 3, 1, 1)
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"img2video fastgen.json config needs image_mean / image_std of 3 numbers: {e}") from e

    def validate(self, image=None, *, num_frames=None, num_inference_steps=None, height=None, width=None,
                 min_guidance_scale=1.0, max_guidance_scale=3.0, fps=7, motion_bucket_id=127, noise_aug_strength=0.02,
                 decode_chunk_size=None, seed=None, latents=None, image_noise=None, output_type="np",
                 callback=None, **unknown) -> ImageToVideoRequest:
        """Check a call's arguments against this engine and return the complete request.
        ``image_noise``: the noise added to the conditioning image (default: drawn from ``seed``)."""
        self.refuse_unknown(unknown)
        if image is None:
            raise InvalidArgumentError("image is required: the conditioning image (or a list, one video each)")
        images = imgproc.load_images("image", image)
        if len(images) > MAX_IMAGES_PER_CALL:
            raise InvalidArgumentError(f"at most {MAX_IMAGES_PER_CALL} images (videos) per call, got {len(images)}")
        frames = self.default_num_frames if num_frames is None else check_int("num_frames", num_frames, 1, MAX_FRAMES)
        steps = self.default_steps if num_inference_steps is None else check_int(
            "num_inference_steps", num_inference_steps, 1, 1000)
        h, w = self.geometry.resolve(height, width)
        lh, lw = self.geometry.latent_hw(h, w)
        B = len(images)
        if latents is not None:
            latents = check_array("latents", latents, (B, frames, self.latent_channels, lh, lw),
                                  "(batch, frames, channels, height/f, width/f)")
        if image_noise is not None:
            image_noise = check_array("image_noise", image_noise, (B, 3, h, w), "(batch, 3, height, width)")
        return ImageToVideoRequest(
            images=images, num_frames=frames, num_inference_steps=steps, height=h, width=w,
            min_guidance_scale=check_float("min_guidance_scale", min_guidance_scale, 0.0),
            max_guidance_scale=check_float("max_guidance_scale", max_guidance_scale, 0.0),
            fps=check_float("fps", fps, 1.0), motion_bucket_id=check_float("motion_bucket_id", motion_bucket_id, 0.0),
            noise_aug_strength=check_float("noise_aug_strength", noise_aug_strength, 0.0),
            decode_chunk_size=frames if decode_chunk_size is None else check_int("decode_chunk_size",
                                                                                 decode_chunk_size, 1, 1 << 16),
            seed=check_seed("seed", seed), latents=latents, image_noise=image_noise,
            output_type=check_choice("output_type", output_type, VIDEO_OUTPUT_TYPES),
            callback=check_callable("callback", callback, "callback(step, timestep, latents) -> bool | None"))

    def encode_image_embeds(self, pil) -> np.ndarray:
        arr = np.stack([np.asarray(im.convert("RGB"), np.float32) / 255.0 for im in pil]).transpose(0, 3, 1, 2)
        x = resize_with_antialiasing(np.ascontiguousarray(arr * 2.0 - 1.0, np.float32),
                                     (self.image_size, self.image_size))
        x = (x + 1.0) / 2.0
        x = ((x - self.image_mean) / self.image_std).astype(np.float32)
        return self.session("image_encoder").run({"pixel_values": x}, ["image_embeds"])["image_embeds"]

    def run(self, req: ImageToVideoRequest) -> VideoOutput:
        if not isinstance(req, ImageToVideoRequest):
            raise InvalidArgumentError(f"run() takes the ImageToVideoRequest made by validate(), "
                                       f"got {type(req).__name__}")
        timer = Timer()
        pil, frames, seed = list(req.images), req.num_frames, req.seed
        h, w = req.height, req.width
        B = len(pil)
        cfg = req.max_guidance_scale > 1
        f = self.vae_scale_factor
        shape = (B, frames, self.latent_channels, h // f, w // f)
        with timer.stage("image_encode"):
            emb = self.encode_image_embeds(pil)[:, None].astype(np.float32)
        with timer.stage("vae_encode"):
            pixels = imgproc.preprocess_image(pil, h, w)
            image_noise = req.image_noise if req.image_noise is not None else randn(pixels.shape, seed ^ 0xA06)
            aug = req.noise_aug_strength
            pixels = (pixels + np.float32(aug) * image_noise).astype(np.float32)
            img_lat = self.vae.encode_mean(pixels)
        img_lat = np.repeat(img_lat[:, None], frames, axis=1)
        ids = np.tile(np.array([[req.fps - 1, req.motion_bucket_id, aug]], np.float32), (B, 1))
        if cfg:
            emb = np.concatenate([np.zeros_like(emb), emb])
            img_lat = np.concatenate([np.zeros_like(img_lat), img_lat])
            ids = np.concatenate([ids, ids])
        img_lat = np.ascontiguousarray(img_lat, np.float32)
        g = np.linspace(req.min_guidance_scale, req.max_guidance_scale, frames,
                        dtype=np.float32).reshape(1, frames, 1, 1, 1)
        sched = self.schedulers.make(None)
        sched.set_timesteps(req.num_inference_steps)
        noise = req.latents if req.latents is not None else randn(shape, seed)
        x = (noise * np.float32(sched.init_noise_sigma)).astype(np.float32)
        net = self.session("unet")
        unet_time, calls = [0.0], [0]

        def denoise(xin: np.ndarray, t: float) -> np.ndarray:
            calls[0] += 1
            xx = np.concatenate([xin, xin]) if cfg else xin
            xx = np.ascontiguousarray(np.concatenate([xx, img_lat], axis=2))
            t1 = time.perf_counter()
            out = net.run({"sample": xx, "timestep": np.full((xx.shape[0],), t, np.float32),
                           "encoder_hidden_states": emb, "added_time_ids": ids}, ["noise_pred"])["noise_pred"]
            unet_time[0] += time.perf_counter() - t1
            if out.shape[0] != xx.shape[0]:
                raise ShapeError(f"unet returned {out.shape[0]} rows for {xx.shape[0]}")
            if cfg:
                u, c = out[:B], out[B:]
                out = u + g * (c - u)
            return np.ascontiguousarray(out, np.float32)

        t0 = time.perf_counter()
        x = sample_loop(sched, x, denoise, guidance_scale=1.0, callback=req.callback)
        timer.add("denoise", unet_time[0])
        timer.add("loop_overhead", max(time.perf_counter() - t0 - unet_time[0], 0.0))
        timer.add("steps", calls[0])
        if req.output_type == "latent":
            return VideoOutput(frames=x, seed=seed, timings=timer.finish())
        flat = (x.reshape((B * frames,) + x.shape[2:]) * np.float32(1.0 / self.vae.scaling_factor)).astype(np.float32)
        arr = np.empty((B * frames, h, w, 3), np.float32)
        for k, fr in enumerate(self.vae.iter_decode(flat, req.decode_chunk_size, (h, w),
                                                    lambda s: timer.add("vae_decode", s), unscaled=True)):
            arr[k] = fr
        arr = arr.reshape(B, frames, h, w, 3)
        return VideoOutput(frames=arr if req.output_type == "np" else [imgproc.to_pil(v) for v in arr], seed=seed,
                           timings=timer.finish())
