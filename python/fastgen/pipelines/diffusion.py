"""Text-to-image, image-to-image and inpainting for Stable Diffusion 1.x/2.x, SDXL and SD3.

The flow of each call follows the diffusers pipeline of the same family step for step (the same
prompt encoding, latents, timesteps, guidance and decoding), so with the same engine, prompts and
latents the images equal diffusers'. The denoising loop runs in the C++ core; this module builds
the network inputs and calls the backend sessions.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import image as imgproc
from ..errors import InvalidArgumentError, ManifestError, ShapeError
from .._args import check_float, check_int
from ..sampling import randn, sample_loop
from ..schedulers import Scheduler, from_config
from ..tokenizer import PromptTokenizer
from .base import Pipeline, PipelineOutput

OUTPUT_TYPES = ("pil", "np", "latent")
MAX_IMAGES_PER_CALL = 64


@dataclass
class Conditioning:
    """Per-row network conditioning for the (CFG) batch, in the order the loop feeds rows."""

    arrays: dict[str, np.ndarray]


def _prompt_list(name: str, prompt: Any, batch: int | None = None) -> list[str]:
    if isinstance(prompt, str):
        prompts = [prompt] if batch is None else [prompt] * batch
    elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    else:
        raise InvalidArgumentError(f"{name} must be a string or a non-empty list of strings, got {prompt!r:.80}")
    if batch is not None and len(prompts) != batch:
        raise InvalidArgumentError(f"{name} has {len(prompts)} entries but prompt has {batch}")
    return prompts


class StableDiffusionPipeline(Pipeline):
    """SD 1.x / 2.x (epsilon and v-prediction), including 9-channel inpainting UNets."""

    kind = "text2img"
    family = "sd"
    denoiser = "unet"
    default_guidance = 7.5
    default_steps = 50

    def __init__(self, manifest, **kw):
        super().__init__(manifest, **kw)
        c = manifest.config
        try:
            self.vae_scale_factor = int(c["vae_scale_factor"])
            self.latent_channels = int(c["latent_channels"])
            self.scaling_factor = float(c["scaling_factor"])
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"fastgen.json config lacks a valid {e} entry") from e
        self.shift_factor = float(c.get("shift_factor") or 0.0)
        self.unet_in_channels = int(c.get("unet_in_channels", self.latent_channels))
        self.default_height = int(c.get("default_height", 64 * self.vae_scale_factor))
        self.default_width = int(c.get("default_width", 64 * self.vae_scale_factor))
        self.size_multiple = int(c.get("size_multiple", self.vae_scale_factor))
        self.min_size = int(c.get("min_size", self.vae_scale_factor))
        self.max_size = int(c.get("max_size", 4096))
        self.max_pixels = int(c.get("max_pixels", self.max_size * self.max_size))
        if manifest.scheduler_config is None:
            raise ManifestError("fastgen.json has no scheduler")
        self.scheduler_config = dict(manifest.scheduler_config)
        self._base_scheduler = from_config(self.scheduler_config)
        self._tokenizers: dict[str, PromptTokenizer] = {}
        self.default_steps = int(c.get("default_steps", type(self).default_steps))
        self.default_guidance = float(c.get("default_guidance_scale", type(self).default_guidance))

    # ------------------------------------------------------------------ components
    def tokenizer(self, name: str) -> PromptTokenizer:
        t = self._tokenizers.get(name)
        if t is None:
            spec = self.manifest.tokenizers.get(name)
            if spec is None:
                raise ManifestError(f"engine has no tokenizer {name!r}")
            t = self._tokenizers[name] = PromptTokenizer(spec)
        return t

    def _encode_text(self, encoder: str, tokenizer: str, prompts: list[str]) -> dict[str, np.ndarray]:
        ids = self.tokenizer(tokenizer)(prompts)
        return self.session(encoder).run({"input_ids": ids})

    def make_scheduler(self, scheduler: Any = None) -> Scheduler:
        """A fresh scheduler for one call: the engine's, another class by name, or a given config."""
        if scheduler is None:
            return self._base_scheduler.clone()
        if isinstance(scheduler, Scheduler):
            return scheduler.clone()
        if isinstance(scheduler, str):
            return from_config(self.scheduler_config, class_name=scheduler)
        if isinstance(scheduler, dict):
            cfg = dict(self.scheduler_config)
            cfg.update(scheduler)
            return from_config(cfg)
        raise InvalidArgumentError(f"scheduler must be None, a name, a config dict or a Scheduler, "
                                   f"got {type(scheduler).__name__}")

    # ------------------------------------------------------------------ family hooks
    def encode_prompt(self, prompts: list[str], negatives: list[str] | None, n: int, cfg: bool,
                      extra: dict) -> Conditioning:
        """SD 1.x/2.x: last hidden state of the CLIP text encoder; negatives default to ''."""
        B = len(prompts)
        neg = negatives if negatives is not None else [""] * B
        texts = (neg + prompts) if cfg else prompts
        emb = self._encode_text("text_encoder", "tokenizer", texts)["last_hidden_state"]
        emb = emb.astype(np.float32, copy=False)
        if cfg:
            neg_e, pos_e = emb[:B], emb[B:]
            emb = np.concatenate([np.repeat(neg_e, n, axis=0), np.repeat(pos_e, n, axis=0)])
        else:
            emb = np.repeat(emb, n, axis=0)
        return Conditioning({"encoder_hidden_states": np.ascontiguousarray(emb)})

    def network_inputs(self, x: np.ndarray, t: float, cond: Conditioning) -> dict[str, np.ndarray]:
        return {"sample": x, "timestep": np.full((x.shape[0],), t, np.float32), **cond.arrays}

    def set_timesteps(self, sched: Scheduler, steps: int, height: int, width: int) -> None:
        sched.set_timesteps(steps)

    def uses_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0

    def first_step(self, steps: int, strength: float) -> int:
        """Index of the first denoising step for img2img / inpaint (diffusers' get_timesteps)."""
        init_timestep = min(int(steps * strength), steps)
        return max(steps - init_timestep, 0)

    # ------------------------------------------------------------------ public API
    def __call__(self, prompt, negative_prompt=None, num_inference_steps=None, guidance_scale=None, height=None,
                 width=None, num_images_per_prompt=1, seed=None, latents=None, scheduler=None,
                 guidance_rescale=0.0, output_type="pil", callback=None, eta=0.0, image=None, mask_image=None,
                 strength=None, **family_kwargs) -> PipelineOutput:
        """Text-to-image; with ``image=`` image-to-image, with ``image=`` and ``mask_image=`` inpainting."""
        if mask_image is not None:
            if image is None:
                raise InvalidArgumentError("mask_image needs image=")
            return self.inpaint(prompt, image=image, mask_image=mask_image,
                                strength=1.0 if strength is None else strength,
                                negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
                                guidance_scale=guidance_scale, height=height, width=width,
                                num_images_per_prompt=num_images_per_prompt, seed=seed, latents=latents,
                                scheduler=scheduler, guidance_rescale=guidance_rescale, output_type=output_type,
                                callback=callback, eta=eta, **family_kwargs)
        if image is not None:
            return self.img2img(prompt, image=image, strength=0.8 if strength is None else strength,
                                negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
                                guidance_scale=guidance_scale, height=height, width=width,
                                num_images_per_prompt=num_images_per_prompt, seed=seed, latents=latents,
                                scheduler=scheduler, guidance_rescale=guidance_rescale, output_type=output_type,
                                callback=callback, eta=eta, **family_kwargs)
        if strength is not None:
            raise InvalidArgumentError("strength= only applies with image=")
        if self.unet_in_channels != self.latent_channels:
            raise InvalidArgumentError("this engine has an inpainting UNet: call pipe.inpaint(prompt, image=..., "
                                       "mask_image=...)")
        return self._run("text2img", prompt, negative_prompt, num_inference_steps, guidance_scale, height, width,
                         num_images_per_prompt, seed, latents, scheduler, guidance_rescale, output_type, callback,
                         eta, None, None, 1.0, family_kwargs)

    def img2img(self, prompt, image, strength=0.8, negative_prompt=None, num_inference_steps=None,
                guidance_scale=None, height=None, width=None, num_images_per_prompt=1, seed=None, latents=None,
                scheduler=None, guidance_rescale=0.0, output_type="pil", callback=None, eta=0.0,
                **family_kwargs) -> PipelineOutput:
        """Image-to-image: noise the encoded image to ``strength`` and denoise the rest of the schedule.

        ``latents``, when given, is the noise added to the encoded image (else drawn from ``seed``).
        """
        if self.unet_in_channels != self.latent_channels:
            raise InvalidArgumentError("this engine has an inpainting UNet: use pipe.inpaint(...)")
        return self._run("img2img", prompt, negative_prompt, num_inference_steps, guidance_scale, height, width,
                         num_images_per_prompt, seed, latents, scheduler, guidance_rescale, output_type, callback,
                         eta, image, None, strength, family_kwargs)

    def inpaint(self, prompt, image, mask_image, strength=1.0, negative_prompt=None, num_inference_steps=None,
                guidance_scale=None, height=None, width=None, num_images_per_prompt=1, seed=None, latents=None,
                scheduler=None, guidance_rescale=0.0, output_type="pil", callback=None, eta=0.0,
                **family_kwargs) -> PipelineOutput:
        """Inpainting: white mask pixels are repainted. Works with 9-channel inpainting UNets and, by
        latent blending as diffusers does, with regular ones."""
        if mask_image is None:
            raise InvalidArgumentError("inpaint needs mask_image=")
        return self._run("inpaint", prompt, negative_prompt, num_inference_steps, guidance_scale, height, width,
                         num_images_per_prompt, seed, latents, scheduler, guidance_rescale, output_type, callback,
                         eta, image, mask_image, strength, family_kwargs)

    # ------------------------------------------------------------------ the shared flow
    def _size(self, height, width, pil_image) -> tuple[int, int]:
        f = max(self.size_multiple, self.vae_scale_factor)
        if pil_image is not None and (height is None or width is None):
            dh, dw = imgproc.default_size(pil_image, f)
        else:
            dh, dw = self.default_height, self.default_width
        h = dh if height is None else check_int("height", height, 1, 1 << 16)
        w = dw if width is None else check_int("width", width, 1, 1 << 16)
        for name, v in (("height", h), ("width", w)):
            if v % f:
                raise InvalidArgumentError(f"{name} must be a multiple of {f} for this engine, got {v}")
            if not self.min_size <= v <= self.max_size:
                raise InvalidArgumentError(f"{name} must be in [{self.min_size}, {self.max_size}] for this engine, "
                                           f"got {v}")
        if h * w > self.max_pixels:
            raise InvalidArgumentError(f"{h}x{w} exceeds this engine's limit of {self.max_pixels} pixels")
        return h, w

    def _run(self, mode, prompt, negative_prompt, steps, guidance_scale, height, width, n, seed, latents,
             scheduler, guidance_rescale, output_type, callback, eta, image, mask_image, strength, family_kwargs):
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        prompts = _prompt_list("prompt", prompt)
        negatives = None if negative_prompt is None else _prompt_list("negative_prompt", negative_prompt, len(prompts))
        steps = self.default_steps if steps is None else check_int("num_inference_steps", steps, 1, 1000)
        g = self.default_guidance if guidance_scale is None else check_float("guidance_scale", guidance_scale, 0.0)
        rescale = check_float("guidance_rescale", guidance_rescale, 0.0, 1.0)
        eta = check_float("eta", eta, 0.0)
        n = check_int("num_images_per_prompt", n, 1, MAX_IMAGES_PER_CALL)
        batch = len(prompts) * n
        if batch > MAX_IMAGES_PER_CALL:
            raise InvalidArgumentError(f"{batch} images in one call exceeds the limit of {MAX_IMAGES_PER_CALL}")
        if output_type not in OUTPUT_TYPES:
            raise InvalidArgumentError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if callback is not None and not callable(callback):
            raise InvalidArgumentError("callback must be callable: callback(step, timestep, latents)")
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little") >> 1
        elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
            raise InvalidArgumentError(f"seed must be an int in [0, 2**63), got {seed!r}")
        seed = int(seed)
        if mode != "text2img":
            strength = check_float("strength", strength, 0.0, 1.0)
            if strength <= 0:
                raise InvalidArgumentError("strength must be > 0")
        pil_images = pil_masks = None
        if image is not None:
            pil_images = [imgproc.load_image(im, what="image") for im in (image if isinstance(image, list) else [image])]
        if mask_image is not None:
            pil_masks = [imgproc.load_image(m, what="mask_image")
                         for m in (mask_image if isinstance(mask_image, list) else [mask_image])]
        h, w = self._size(height, width, pil_images[0] if pil_images else None)
        sched = self.make_scheduler(scheduler)
        sched.manual_seed(seed ^ 0x5EED)
        cfg = self.uses_cfg(g)
        lat_shape = (batch, self.latent_channels, h // self.vae_scale_factor, w // self.vae_scale_factor)
        if latents is not None:
            latents = self._check_latents(latents, lat_shape)

        t0 = time.perf_counter()
        cond = self.encode_prompt(prompts, negatives, n, cfg, dict(family_kwargs, height=h, width=w))
        timings["text_encode"] = time.perf_counter() - t0

        self.set_timesteps(sched, steps, h, w)
        post_step = None
        extra_inputs: dict[str, np.ndarray] = {}
        t0 = time.perf_counter()
        if mode == "text2img":
            noise = latents if latents is not None else randn(lat_shape, seed)
            x = (noise * np.float32(sched.init_noise_sigma)).astype(np.float32)
        else:
            x, post_step, extra_inputs = self._prepare_image_latents(
                mode, sched, steps, strength, pil_images, pil_masks, h, w, batch, latents, seed, lat_shape, cfg)
        timings["vae_encode"] = time.perf_counter() - t0

        net = self.session(self.denoiser)
        unet_time = [0.0]

        def denoise(xin: np.ndarray, t: float) -> np.ndarray:
            if extra_inputs:
                xin = np.concatenate([xin, extra_inputs["mask"], extra_inputs["masked_image_latents"]], axis=1)
            t1 = time.perf_counter()
            out = net.run(self.network_inputs(xin, t, cond), ["noise_pred"])["noise_pred"]
            unet_time[0] += time.perf_counter() - t1
            return out if out.dtype == np.float32 else out.astype(np.float32)

        user_cb = callback
        if post_step is not None or user_cb is not None:
            def step_cb(i, t, lat):
                if post_step is not None:
                    post_step(i, lat)
                if user_cb is not None:
                    return user_cb(i, t, lat)
                return True
        else:
            step_cb = None

        t0 = time.perf_counter()
        x = sample_loop(sched, x, denoise, guidance_scale=g if cfg else 1.0, guidance_rescale=rescale, eta=eta,
                        callback=step_cb)
        loop_time = time.perf_counter() - t0
        timings["denoise"] = unet_time[0]
        timings["loop_overhead"] = max(loop_time - unet_time[0], 0.0)
        timings["steps"] = float(len(sched.timesteps) - (sched.begin_index or 0))
        if output_type == "latent":
            images: Any = x
        else:
            t0 = time.perf_counter()
            arr = self.decode_latents(x)
            timings["vae_decode"] = time.perf_counter() - t0
            images = arr if output_type == "np" else imgproc.to_pil(arr)
        timings["total"] = time.perf_counter() - t_start
        return PipelineOutput(images=images, seed=seed, timings=timings)

    def _check_latents(self, latents, shape) -> np.ndarray:
        if not isinstance(latents, np.ndarray):
            raise ShapeError(f"latents must be a numpy array of shape {shape}, got {type(latents).__name__}")
        if tuple(latents.shape) != tuple(shape):
            raise ShapeError(f"latents must have shape {shape} (batch, channels, height/{self.vae_scale_factor}, "
                             f"width/{self.vae_scale_factor}), got {latents.shape}")
        if not np.issubdtype(latents.dtype, np.floating) or not np.isfinite(latents).all():
            raise ShapeError("latents must be finite floating-point values")
        return np.ascontiguousarray(latents, dtype=np.float32)

    # ------------------------------------------------------------------ VAE
    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """NCHW [-1, 1] -> scaled latents (the latent distribution's mean)."""
        mean = self.session("vae_encoder").run({"sample": pixels}, ["latent_mean"])["latent_mean"]
        return ((mean - np.float32(self.shift_factor)) * np.float32(self.scaling_factor)).astype(np.float32)

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        z = (latents / np.float32(self.scaling_factor) + np.float32(self.shift_factor)).astype(np.float32)
        dec = self.session("vae_decoder").run({"latent": z}, ["sample"])["sample"]
        return imgproc.postprocess(dec)

    def _prepare_image_latents(self, mode, sched, steps, strength, pil_images, pil_masks, h, w, batch, latents,
                               seed, lat_shape, cfg):
        pixels = imgproc.preprocess_image(pil_images, h, w)
        order = sched.order
        t_begin = self.first_step(steps, strength)
        timesteps = sched.timesteps[t_begin * order:]
        if len(timesteps) < 1:
            raise InvalidArgumentError(f"strength {strength} with {steps} steps leaves no denoising step")
        sched.set_begin_index(t_begin * order)
        latent_timestep = timesteps[0]
        if mode == "img2img":
            init = self.encode_images(pixels)
            init = self._tile(init, batch, "image")
            noise = latents if latents is not None else randn(lat_shape, seed)
            return sched.add_noise(init, noise, latent_timestep), None, {}

        # inpainting, as diffusers' StableDiffusionInpaintPipeline
        masks = imgproc.preprocess_mask(pil_masks, h, w)
        masked_pixels = (pixels * (masks < 0.5)).astype(np.float32)
        nine = self.unet_in_channels == self.latent_channels * 2 + 1
        if not nine and self.unet_in_channels != self.latent_channels:
            raise ManifestError(f"UNet has {self.unet_in_channels} input channels; inpainting supports "
                                f"{self.latent_channels} or {2 * self.latent_channels + 1}")
        is_strength_max = strength == 1.0
        image_latents = None
        if not nine or (latents is None and not is_strength_max):
            image_latents = self._tile(self.encode_images(pixels), batch, "image")
        if latents is None:
            noise = randn(lat_shape, seed)
            x = noise if is_strength_max else sched.add_noise(image_latents, noise, latent_timestep)
            if is_strength_max:
                x = noise * np.float32(sched.init_noise_sigma)
        else:
            noise = latents
            x = latents * np.float32(sched.init_noise_sigma)
        lat_h, lat_w = lat_shape[2], lat_shape[3]
        mask_lat = self._tile(imgproc.resize_nearest(masks, lat_h, lat_w), batch, "mask_image")
        extra: dict[str, np.ndarray] = {}
        if nine:
            masked_lat = self._tile(self.encode_images(masked_pixels), batch, "image")
            if cfg:
                extra = {"mask": np.concatenate([mask_lat, mask_lat]),
                         "masked_image_latents": np.concatenate([masked_lat, masked_lat])}
            else:
                extra = {"mask": mask_lat, "masked_image_latents": masked_lat}
            return x.astype(np.float32), None, extra
        ts = sched.timesteps
        keep = (1.0 - mask_lat).astype(np.float32)

        def blend(i: int, lat: np.ndarray) -> None:
            proper = image_latents
            if i < len(ts) - 1:
                proper = sched.add_noise(image_latents, noise, ts[i + 1])
            lat[...] = keep * proper + mask_lat * lat

        return x.astype(np.float32), blend, extra

    @staticmethod
    def _tile(x: np.ndarray, batch: int, what: str) -> np.ndarray:
        """Repeat per-image arrays to the generation batch, as diffusers does (whole-batch tiling)."""
        if x.shape[0] == batch:
            return x
        if batch % x.shape[0]:
            raise InvalidArgumentError(f"cannot duplicate {x.shape[0]} {what}(s) to a batch of {batch}")
        return np.concatenate([x] * (batch // x.shape[0]))


class StableDiffusionXLPipeline(StableDiffusionPipeline):
    """SDXL: two CLIP encoders (penultimate layers concatenated), pooled text embeds and add_time_ids."""

    family = "sdxl"
    default_guidance = 5.0

    def encode_prompt(self, prompts, negatives, n, cfg, extra):
        B = len(prompts)
        prompts_2 = _prompt_list("prompt_2", extra.get("prompt_2") or prompts, B)
        c = self.manifest.config
        zero_neg = negatives is None and extra.get("negative_prompt_2") is None and bool(
            c.get("force_zeros_for_empty_prompt", True))

        def embed(texts1, texts2):
            o1 = self._encode_text("text_encoder", "tokenizer", texts1)
            o2 = self._encode_text("text_encoder_2", "tokenizer_2", texts2)
            e = np.concatenate([o1["penultimate_hidden_state"], o2["penultimate_hidden_state"]], axis=-1)
            return e.astype(np.float32), o2["pooled"].astype(np.float32)

        if cfg and not zero_neg:
            neg1 = negatives if negatives is not None else [""] * B
            neg2 = _prompt_list("negative_prompt_2", extra.get("negative_prompt_2") or neg1, B)
            emb, pooled = embed(neg1 + prompts, neg2 + prompts_2)
            neg_e, pos_e, neg_p, pos_p = emb[:B], emb[B:], pooled[:B], pooled[B:]
        else:
            pos_e, pos_p = embed(prompts, prompts_2)
            neg_e, neg_p = np.zeros_like(pos_e), np.zeros_like(pos_p)
        h, w = extra["height"], extra["width"]
        orig = extra.get("original_size") or (h, w)
        crop = extra.get("crops_coords_top_left") or (0, 0)
        target = extra.get("target_size") or (h, w)
        ids = np.array([list(orig) + list(crop) + list(target)], np.float32)
        neg_ids = np.array([list(extra.get("negative_original_size") or orig)
                            + list(extra.get("negative_crops_coords_top_left") or crop)
                            + list(extra.get("negative_target_size") or target)], np.float32)
        rep = lambda a: np.repeat(a, n, axis=0)  # noqa: E731
        if cfg:
            e = np.concatenate([rep(neg_e), rep(pos_e)])
            p = np.concatenate([rep(neg_p), rep(pos_p)])
            t = np.concatenate([np.repeat(neg_ids, B * n, 0), np.repeat(ids, B * n, 0)])
        else:
            e, p, t = rep(pos_e), rep(pos_p), np.repeat(ids, B * n, 0)
        return Conditioning({"encoder_hidden_states": np.ascontiguousarray(e), "text_embeds": np.ascontiguousarray(p),
                             "time_ids": np.ascontiguousarray(t)})


class StableDiffusion3Pipeline(StableDiffusionPipeline):
    """SD3: MMDiT transformer, two CLIP encoders with projection and T5 (zeros when not exported)."""

    family = "sd3"
    denoiser = "transformer"
    default_guidance = 7.0
    default_steps = 28

    def network_inputs(self, x, t, cond):
        return {"hidden_states": x, "timestep": np.full((x.shape[0],), t, np.float32), **cond.arrays}

    def first_step(self, steps, strength):
        # SD3's get_timesteps rounds after subtracting (diffusers' StableDiffusion3Img2ImgPipeline)
        return int(max(steps - min(steps * strength, steps), 0))

    def set_timesteps(self, sched, steps, height, width):
        mu = None
        cfg = self.scheduler_config
        if cfg.get("use_dynamic_shifting"):
            # diffusers' calculate_shift on the image sequence length
            seq = (height // self.vae_scale_factor // 2) * (width // self.vae_scale_factor // 2)
            base_seq, max_seq = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
            base_shift, max_shift = cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.16)
            m = (max_shift - base_shift) / (max_seq - base_seq)
            mu = seq * m + (base_shift - m * base_seq)
        sched.set_timesteps(steps, mu=mu)

    def encode_prompt(self, prompts, negatives, n, cfg, extra):
        B = len(prompts)
        c = self.manifest.config
        p2 = _prompt_list("prompt_2", extra.get("prompt_2") or prompts, B)
        p3 = _prompt_list("prompt_3", extra.get("prompt_3") or prompts, B)
        t5_len = int(c.get("t5_max_length", 256))
        joint_dim = int(c["joint_attention_dim"])

        def embed(t1, t2, t3):
            o1 = self._encode_text("text_encoder", "tokenizer", t1)
            o2 = self._encode_text("text_encoder_2", "tokenizer_2", t2)
            clip = np.concatenate([o1["penultimate_hidden_state"], o2["penultimate_hidden_state"]], axis=-1)
            pooled = np.concatenate([o1["pooled"], o2["pooled"]], axis=-1)
            if self.manifest.has("text_encoder_3"):
                t5 = self._encode_text("text_encoder_3", "tokenizer_3", t3)["last_hidden_state"]
            else:
                t5 = np.zeros((len(t1), t5_len, joint_dim), np.float32)
            clip = np.pad(clip, ((0, 0), (0, 0), (0, t5.shape[-1] - clip.shape[-1])))
            return np.concatenate([clip, t5], axis=-2).astype(np.float32), pooled.astype(np.float32)

        if cfg:
            neg = negatives if negatives is not None else [""] * B
            neg2 = _prompt_list("negative_prompt_2", extra.get("negative_prompt_2") or neg, B)
            neg3 = _prompt_list("negative_prompt_3", extra.get("negative_prompt_3") or neg, B)
            e, p = embed(neg + prompts, neg2 + p2, neg3 + p3)
            e = np.concatenate([np.repeat(e[:B], n, 0), np.repeat(e[B:], n, 0)])
            p = np.concatenate([np.repeat(p[:B], n, 0), np.repeat(p[B:], n, 0)])
        else:
            e, p = embed(prompts, p2, p3)
            e, p = np.repeat(e, n, 0), np.repeat(p, n, 0)
        return Conditioning({"encoder_hidden_states": np.ascontiguousarray(e),
                             "pooled_projections": np.ascontiguousarray(p)})


_FAMILIES: dict[str | None, type[StableDiffusionPipeline]] = {
    "sd": StableDiffusionPipeline,
    None: StableDiffusionPipeline,
    "sdxl": StableDiffusionXLPipeline,
    "sd3": StableDiffusion3Pipeline,
}


def pipeline_for_family(family: str | None) -> type[StableDiffusionPipeline]:
    try:
        return _FAMILIES[family]
    except KeyError:
        raise ManifestError(f"unknown diffusion family {family!r}; supported: sd, sdxl, sd3") from None
