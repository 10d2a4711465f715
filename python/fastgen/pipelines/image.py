"""Text-to-image, image-to-image and inpainting for Stable Diffusion 1.x/2.x, SDXL and SD3.

The flow of each call follows the diffusers pipeline of the same family step for step (the same
prompt encoding, latents, timesteps, guidance and decoding), so with the same engine, prompts and
latents the images equal diffusers'. A family is configuration (its prompt encoder, denoiser and
defaults), not a subclass; the denoising loop runs in the C++ core.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import image as imgproc
from .._args import (check_bool, check_callable, check_choice, check_float,
                     check_seed, check_array)
from ..cache import check_cache
from ..errors import InvalidArgumentError, ManifestError
from ..outputs import ImageOutput, Timer
from ..requests import ImageRequest
from ..sampling import randn, sample_loop
from ..schedulers import Scheduler
from .base import Components, Pipeline
from .step_cache import make_runner
from .stages import (ImageGeometry, check_prompt_batch, check_steps_guidance, SD3PromptEncoder, SDPromptEncoder, SDXLPromptEncoder, Schedulers,
                     TextEncoders, Vae, tile_rows)

OUTPUT_TYPES = ("pil", "np", "latent")
MAX_IMAGES_PER_CALL = 64
MODES = ("text2img", "img2img", "inpaint")


@dataclass(frozen=True)
class Family:
    name: str
    prompt_encoder: type
    denoiser: str  # component name
    sample_input: str  # the denoiser's latent input name
    default_guidance: float
    default_steps: int


FAMILIES = {
    "sd": Family("sd", SDPromptEncoder, "unet", "sample", 7.5, 50),
    "sdxl": Family("sdxl", SDXLPromptEncoder, "unet", "sample", 5.0, 50),
    "sd3": Family("sd3", SD3PromptEncoder, "transformer", "hidden_states", 7.0, 28),
}


def pipeline_class(manifest) -> type["ImagePipeline"]:
    family = manifest.family or "sd"
    if family not in FAMILIES:
        raise ManifestError(f"unknown diffusion family {family!r}; supported: {', '.join(FAMILIES)}")
    return ImagePipeline


class ImagePipeline(Pipeline):
    """``pipe(prompt, ...)``: text-to-image; with ``image=`` image-to-image, with ``image=`` and
    ``mask_image=`` inpainting. SD 1.x / 2.x (epsilon and v-prediction, 9-channel inpainting UNets),
    SDXL and SD3."""

    kind = "text2img"

    def __init__(self, components: Components):
        super().__init__(components)
        manifest = self.manifest
        c = manifest.config
        self.family = manifest.family or "sd"
        self._family = FAMILIES[self.family]
        self.kind = manifest.kind
        self.geometry = ImageGeometry(c)
        self.latent_channels = self.geometry.latent_channels
        self.vae_scale_factor = self.geometry.vae_scale_factor
        self.unet_in_channels = int(c.get("unet_in_channels", self.latent_channels))
        self.vae = Vae(self.session, c)
        self.schedulers = Schedulers(manifest)
        self.scheduler_config = self.schedulers.config
        self.text = TextEncoders(self.session, self.manifest)
        self.prompt_encoder = self._family.prompt_encoder(self.text, c)
        self.default_steps = int(c.get("default_steps", self._family.default_steps))
        self.default_guidance = float(c.get("default_guidance_scale", self._family.default_guidance))

    # ------------------------------------------------------------------ requests
    def validate(self, prompt=None, *, negative_prompt=None, num_inference_steps=None, guidance_scale=None,
                 height=None, width=None, num_images_per_prompt=1, seed=None, latents=None, scheduler=None,
                 guidance_rescale=0.0, output_type="pil", callback=None, eta=0.0, image=None, mask_image=None,
                 strength=None, vae_tiling=False, cache=None, **family_kwargs) -> ImageRequest:
        """Check a call's arguments against this engine and return the complete request."""
        self.refuse_unknown(family_kwargs, self.prompt_encoder.keywords)
        extra = {k: self.prompt_encoder.keywords[k](k, v) for k, v in family_kwargs.items() if v is not None}
        prompts, negatives, n = check_prompt_batch(prompt, negative_prompt, "num_images_per_prompt",
                                                   num_images_per_prompt, MAX_IMAGES_PER_CALL)
        mode = "inpaint" if mask_image is not None else "img2img" if image is not None else "text2img"
        if mode == "inpaint" and image is None:
            raise InvalidArgumentError("mask_image needs image= (inpainting)")
        inpaint_unet = self.unet_in_channels != self.latent_channels
        if inpaint_unet and mode != "inpaint":
            raise InvalidArgumentError("this engine has an inpainting UNet: pass image= and mask_image= "
                                       "(pipe.inpaint(prompt, image=..., mask_image=...))")
        if mode == "text2img":
            if strength is not None:
                raise InvalidArgumentError("strength= only applies with image=")
            strength = 1.0
        else:
            strength = check_float("strength", 0.8 if mode == "img2img" and strength is None
                                   else 1.0 if strength is None else strength, 0.0, 1.0, open_lo=True)
        steps, g = check_steps_guidance(self, num_inference_steps, guidance_scale)
        images = None if image is None else imgproc.load_images("image", image)
        masks = None if mask_image is None else imgproc.load_images("mask_image", mask_image)
        h, w = self.geometry.resolve(height, width, images[0] if images else None)
        lh, lw = self.geometry.latent_hw(h, w)
        batch = len(prompts) * n
        if latents is not None:
            latents = check_array("latents", latents, (batch, self.latent_channels, lh, lw),
                                  f"(batch, channels, height/{self.vae_scale_factor}, width/{self.vae_scale_factor})")
        for name, items in (("image", images), ("mask_image", masks)):
            if items is not None and batch % len(items):
                raise InvalidArgumentError(f"{len(items)} {name}s cannot be spread over a batch of {batch} "
                                           "(give one, or one per generated image)")
        req = ImageRequest(
            mode=mode, prompts=tuple(prompts), negative_prompts=None if negatives is None else tuple(negatives),
            num_inference_steps=steps, guidance_scale=g, height=h, width=w, num_images_per_prompt=n,
            seed=check_seed("seed", seed), latents=latents, scheduler=self.schedulers.check(scheduler),
            guidance_rescale=check_float("guidance_rescale", guidance_rescale, 0.0, 1.0),
            eta=check_float("eta", eta, 0.0), output_type=check_choice("output_type", output_type, OUTPUT_TYPES),
            callback=check_callable("callback", callback, "callback(step, timestep, latents) -> bool | None"),
            images=images, masks=masks, strength=strength, extra=extra,
            vae_tiling=check_bool("vae_tiling", vae_tiling), cache=check_cache(cache, self.manifest))
        if mode != "text2img" and self.denoising_steps(req) < 1:
            raise InvalidArgumentError(f"strength {strength} with {steps} steps leaves no denoising step")
        return req

    def img2img(self, prompt, image, strength=0.8, **kwargs) -> ImageOutput:
        """Image-to-image: noise the encoded image to ``strength`` and denoise the rest of the schedule.
        ``latents``, when given, is the noise added to the encoded image (else drawn from ``seed``)."""
        if image is None:
            raise InvalidArgumentError("img2img needs image=")
        if kwargs.get("mask_image") is not None:
            raise InvalidArgumentError("img2img takes no mask_image: use pipe.inpaint(...)")
        return self(prompt, image=image, strength=strength, **kwargs)

    def inpaint(self, prompt, image, mask_image, strength=1.0, **kwargs) -> ImageOutput:
        """Inpainting: white mask pixels are repainted. Works with 9-channel inpainting UNets and, by
        latent blending as diffusers does, with regular ones."""
        if image is None or mask_image is None:
            raise InvalidArgumentError("inpaint needs image= and mask_image=")
        return self(prompt, image=image, mask_image=mask_image, strength=strength, **kwargs)

    # ------------------------------------------------------------------ schedule
    def make_scheduler(self, scheduler: Any = None) -> Scheduler:
        return self.schedulers.make(scheduler)

    def uses_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0

    def set_timesteps(self, sched: Scheduler, steps: int, height: int, width: int) -> None:
        mu = None
        cfg = self.scheduler_config
        if self.family == "sd3" and cfg.get("use_dynamic_shifting"):
            # diffusers' calculate_shift on the image sequence length
            seq = (height // self.vae_scale_factor // 2) * (width // self.vae_scale_factor // 2)
            base_seq, max_seq = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
            base_shift, max_shift = cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.16)
            m = (max_shift - base_shift) / (max_seq - base_seq)
            mu = seq * m + (base_shift - m * base_seq)
        sched.set_timesteps(steps, mu=mu) if mu is not None else sched.set_timesteps(steps)

    def first_step(self, steps: int, strength: float) -> int:
        """Index of the first denoising step for img2img / inpaint (diffusers' get_timesteps)."""
        if self.family == "sd3":  # SD3's get_timesteps rounds after subtracting
            return int(max(steps - min(steps * strength, steps), 0))
        init_timestep = min(int(steps * strength), steps)
        return max(steps - init_timestep, 0)

    def _schedule(self, req: ImageRequest) -> tuple[Scheduler, int]:
        """The request's scheduler with its timesteps set, and the index of its first step."""
        sched = self.make_scheduler(req.scheduler)
        self.set_timesteps(sched, req.num_inference_steps, req.height, req.width)
        begin = 0 if req.mode == "text2img" else self.first_step(req.num_inference_steps, req.strength) * sched.order
        return sched, begin

    def denoising_steps(self, req: ImageRequest) -> int:
        """How many scheduler steps (network calls) ``run(req)`` makes: for progress bars."""
        sched, begin = self._schedule(req)
        return len(sched.timesteps) - begin

    # ------------------------------------------------------------------ running
    def run(self, req: ImageRequest) -> ImageOutput:
        if not isinstance(req, ImageRequest):
            raise InvalidArgumentError(f"run() takes the ImageRequest made by validate(), got {type(req).__name__}")
        timer = Timer()
        sched, begin = self._schedule(req)
        sched.manual_seed(req.seed ^ 0x5EED)
        cfg = self.uses_cfg(req.guidance_scale)
        batch = req.batch
        lh, lw = self.geometry.latent_hw(req.height, req.width)
        lat_shape = (batch, self.latent_channels, lh, lw)

        with timer.stage("text_encode"):
            cond = self.prompt_encoder(list(req.prompts), None if req.negative_prompts is None
                                       else list(req.negative_prompts), req.num_images_per_prompt, cfg,
                                       dict(req.extra, height=req.height, width=req.width))
        post_step = None
        extra_inputs: dict[str, np.ndarray] = {}
        if req.mode == "text2img":
            noise = req.latents if req.latents is not None else randn(lat_shape, req.seed)
            x = (noise * np.float32(sched.init_noise_sigma)).astype(np.float32)
        else:
            sched.set_begin_index(begin)
            with timer.stage("vae_encode"):
                x, post_step, extra_inputs = self._image_latents(req, sched, lat_shape, cfg)

        sample_name = self._family.sample_input
        unet_time, calls = [0.0], [0]
        runner = None if req.cache is None else make_runner(req.cache, self.manifest, self.session,
                                                             self._family.denoiser, len(sched.timesteps) - begin)
        if runner is None:
            net = self.session(self._family.denoiser)

            def call_net(inputs: dict) -> np.ndarray:
                return net.run(inputs, ["noise_pred"])["noise_pred"]
        else:
            call_net = runner

        def denoise(xin: np.ndarray, t: float) -> np.ndarray:
            calls[0] += 1
            if extra_inputs:
                xin = np.concatenate([xin, extra_inputs["mask"], extra_inputs["masked_image_latents"]], axis=1)
            t1 = time.perf_counter()
            out = call_net({sample_name: xin, "timestep": np.full((xin.shape[0],), t, np.float32), **cond.arrays})
            unet_time[0] += time.perf_counter() - t1
            return out if out.dtype == np.float32 else out.astype(np.float32)

        user_cb = req.callback

        def blend_then_callback(i, t, lat):
            post_step(i, lat)
            return True if user_cb is None else user_cb(i, t, lat)

        step_cb = user_cb if post_step is None else blend_then_callback

        t0 = time.perf_counter()
        x = sample_loop(sched, x, denoise, guidance_scale=req.guidance_scale if cfg else 1.0,
                        guidance_rescale=req.guidance_rescale, eta=req.eta, callback=step_cb)
        timer.add("denoise", unet_time[0])
        timer.add("loop_overhead", max(time.perf_counter() - t0 - unet_time[0], 0.0))
        timer.add("steps", calls[0])
        if req.output_type == "latent":
            images: Any = x
        else:
            with timer.stage("vae_decode"):
                arr = self.vae.decode(x, tiling=req.vae_tiling)
            images = arr if req.output_type == "np" else imgproc.to_pil(arr)
        return ImageOutput(images=images, seed=req.seed, timings=timer.finish(),
                           cache_stats=None if runner is None else runner.stats())

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        """Scaled latents -> NHWC float32 images in [0, 1]."""
        return self.vae.decode(latents)

    def _image_latents(self, req: ImageRequest, sched: Scheduler, lat_shape, cfg: bool):
        """img2img / inpaint starting latents, as diffusers: (x, per-step blend or None, extra UNet inputs)."""
        batch, seed, latents = req.batch, req.seed, req.latents
        pixels = imgproc.preprocess_image(list(req.images), req.height, req.width)
        latent_timestep = sched.timesteps[sched.begin_index]
        if req.mode == "img2img":
            init = tile_rows(self.vae.encode(pixels), batch, "image")
            noise = latents if latents is not None else randn(lat_shape, seed)
            return sched.add_noise(init, noise, latent_timestep), None, {}

        # inpainting, as diffusers' StableDiffusionInpaintPipeline
        masks = imgproc.preprocess_mask(list(req.masks), req.height, req.width)
        masked_pixels = (pixels * (masks < 0.5)).astype(np.float32)
        nine = self.unet_in_channels == self.latent_channels * 2 + 1
        if not nine and self.unet_in_channels != self.latent_channels:
            raise ManifestError(f"UNet has {self.unet_in_channels} input channels; inpainting supports "
                                f"{self.latent_channels} or {2 * self.latent_channels + 1}")
        is_strength_max = req.strength == 1.0
        image_latents = None
        if not nine or (latents is None and not is_strength_max):
            image_latents = tile_rows(self.vae.encode(pixels), batch, "image")
        if latents is None:
            noise = randn(lat_shape, seed)
            x = noise * np.float32(sched.init_noise_sigma) if is_strength_max else sched.add_noise(
                image_latents, noise, latent_timestep)
        else:
            noise = latents
            x = latents * np.float32(sched.init_noise_sigma)
        mask_lat = tile_rows(imgproc.resize_nearest(masks, lat_shape[2], lat_shape[3]), batch, "mask_image")
        if nine:
            masked_lat = tile_rows(self.vae.encode(masked_pixels), batch, "image")
            if cfg:
                mask_lat, masked_lat = np.concatenate([mask_lat, mask_lat]), np.concatenate([masked_lat, masked_lat])
            return x.astype(np.float32), None, {"mask": mask_lat, "masked_image_latents": masked_lat}
        ts = sched.timesteps
        keep = (1.0 - mask_lat).astype(np.float32)

        def blend(i: int, lat: np.ndarray) -> None:
            proper = image_latents
            if i < len(ts) - 1:
                proper = sched.add_noise(image_latents, noise, ts[i + 1])
            lat[...] = keep * proper + mask_lat * lat

        return x.astype(np.float32), blend, {}


__all__ = ["ImagePipeline", "Family", "FAMILIES", "pipeline_class"]
