"""Stages the task pipelines compose: image geometry, prompt encoders per family, the VAE, schedulers.

Each stage gets the pipeline's session getter (so ``pipe.close()`` reaches them) and does one job the way the
diffusers pipeline of the same family does it, so image, video and image-to-video pipelines share
them without inheriting from each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _core
from .. import image as imgproc
from .._args import check_float, check_int, check_prompts, check_size_pair
from ..errors import InvalidArgumentError, ManifestError
from ..schedulers import Scheduler, from_config
from ..tokenizer import PromptTokenizer
from ..backends.base import Session

SessionGetter = Callable[[str], Session]  # the pipeline's session(name): stages never outlive its close()


def _config_number(config: dict, key: str, cast, default=None):
    v = config.get(key, default)
    if v is None:
        raise ManifestError(f"fastgen.json config lacks a valid {key!r} entry")
    try:
        return cast(v)
    except (TypeError, ValueError):
        raise ManifestError(f"fastgen.json config.{key} must be a number, got {v!r}") from None


# ------------------------------------------------------------------------------------ geometry

class ImageGeometry:
    """The engine's latent geometry and the sizes it accepts (from the manifest's config)."""

    def __init__(self, config: dict):
        self.vae_scale_factor = _config_number(config, "vae_scale_factor", int)
        self.latent_channels = _config_number(config, "latent_channels", int)
        self.size_multiple = int(config.get("size_multiple", self.vae_scale_factor))
        self.min_size = int(config.get("min_size", self.vae_scale_factor))
        self.max_size = int(config.get("max_size", 4096))
        self.max_pixels = int(config.get("max_pixels", self.max_size * self.max_size))
        self.default_height = int(config.get("default_height", 64 * self.vae_scale_factor))
        self.default_width = int(config.get("default_width", 64 * self.vae_scale_factor))

    @property
    def multiple(self) -> int:
        return max(self.size_multiple, self.vae_scale_factor)

    def resolve(self, height: Any, width: Any, like: Any = None) -> tuple[int, int]:
        """(height, width) of a call: given, else the init image's (rounded down), else the engine default."""
        f = self.multiple
        if like is not None and (height is None or width is None):
            dh, dw = imgproc.default_size(like, f)
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

    def latent_hw(self, height: int, width: int) -> tuple[int, int]:
        return height // self.vae_scale_factor, width // self.vae_scale_factor


# ------------------------------------------------------------------------------------ common arguments

MAX_GUIDANCE = 1000.0  # beyond this the guided prediction overflows float32 for ordinary model outputs


def check_prompt_batch(prompt: Any, negative_prompt: Any, per_prompt_name: str, per_prompt: Any,
                       limit: int) -> tuple[list[str], list[str] | None, int]:
    """(prompts, negative prompts or None, outputs per prompt) of a prompt-driven call; at most ``limit``
    outputs in all."""
    if prompt is None:
        raise InvalidArgumentError("prompt is required: a string or a non-empty list of strings")
    prompts = check_prompts("prompt", prompt)
    negatives = None if negative_prompt is None else check_prompts("negative_prompt", negative_prompt, len(prompts))
    n = check_int(per_prompt_name, per_prompt, 1, limit)
    if len(prompts) * n > limit:
        raise InvalidArgumentError(f"{len(prompts)} prompts x {per_prompt_name}={n} exceeds the limit of {limit} "
                                   "outputs per call")
    return prompts, negatives, n


def check_steps_guidance(pipe, num_inference_steps: Any, guidance_scale: Any) -> tuple[int, float]:
    """The call's steps and guidance scale, or the engine's defaults (``pipe.default_steps`` / ``_guidance``)."""
    steps = pipe.default_steps if num_inference_steps is None else check_int(
        "num_inference_steps", num_inference_steps, 1, 1000)
    g = pipe.default_guidance if guidance_scale is None else check_float("guidance_scale", guidance_scale, 0.0,
                                                                          MAX_GUIDANCE)
    return steps, g


# ------------------------------------------------------------------------------------ text

@dataclass
class Conditioning:
    """Per-row network conditioning for the (CFG) batch, in the order the loop feeds rows."""

    arrays: dict[str, np.ndarray]


class TextEncoders:
    """Tokenizers and text-encoder sessions of an engine (``session``: the pipeline's session getter)."""

    def __init__(self, session: SessionGetter, manifest, lora: dict | None = None):
        self.session, self.manifest = session, manifest
        self._tokenizers: dict[str, PromptTokenizer] = {}
        self.lora = lora or {}  # encoder -> (its LoRA graph, side inputs): see with_lora

    def with_lora(self, feeds: dict) -> "TextEncoders":
        """A view sharing the tokenizers that runs the encoders in ``feeds`` ({encoder: (LoRA graph, side
        inputs)}, from fastgen.lora.EngineLoras.feeds) through their LoRA graphs."""
        view = TextEncoders(self.session, self.manifest, feeds)
        view._tokenizers = self._tokenizers
        return view

    def tokenizer(self, name: str) -> PromptTokenizer:
        t = self._tokenizers.get(name)
        if t is None:
            spec = self.manifest.tokenizers.get(name)
            if spec is None:
                raise ManifestError(f"engine has no tokenizer {name!r}")
            t = self._tokenizers[name] = PromptTokenizer(spec)
        return t

    def encode(self, encoder: str, tokenizer: str, prompts: list[str]) -> dict[str, np.ndarray]:
        ids = self.tokenizer(tokenizer)(prompts)
        graph, side = self.lora.get(encoder, (encoder, {}))
        return self.session(graph).run({"input_ids": ids, **side})


def _cfg_rows(neg: np.ndarray, pos: np.ndarray, n: int, cfg: bool) -> np.ndarray:
    """Rows in loop order: [neg x n per prompt, pos x n per prompt] with CFG, else pos x n."""
    if cfg:
        return np.ascontiguousarray(np.concatenate([np.repeat(neg, n, axis=0), np.repeat(pos, n, axis=0)]))
    return np.ascontiguousarray(np.repeat(pos, n, axis=0))


class SDPromptEncoder:
    """SD 1.x/2.x (and AnimateDiff): the CLIP text encoder's last hidden state; negatives default to ''."""

    keywords: dict[str, Callable[[str, Any], Any]] = {}

    def __init__(self, text: TextEncoders, config: dict):
        self.text = text

    def __call__(self, prompts: list[str], negatives: list[str] | None, n: int, cfg: bool,
                 extra: dict) -> Conditioning:
        B = len(prompts)
        neg = negatives if negatives is not None else [""] * B
        texts = (neg + prompts) if cfg else prompts
        emb = self.text.encode("text_encoder", "tokenizer", texts)["last_hidden_state"].astype(np.float32, copy=False)
        neg_e, pos_e = (emb[:B], emb[B:]) if cfg else (None, emb)
        return Conditioning({"encoder_hidden_states": _cfg_rows(neg_e, pos_e, n, cfg)})


def _prompt_keyword(name: str, v: Any) -> Any:
    return check_prompts(name, v)


class SDXLPromptEncoder:
    """SDXL: two CLIP encoders (penultimate layers concatenated), pooled text embeds and add_time_ids."""

    keywords = {"prompt_2": _prompt_keyword, "negative_prompt_2": _prompt_keyword,
                "original_size": check_size_pair, "crops_coords_top_left": check_size_pair,
                "target_size": check_size_pair, "negative_original_size": check_size_pair,
                "negative_crops_coords_top_left": check_size_pair, "negative_target_size": check_size_pair}

    def __init__(self, text: TextEncoders, config: dict):
        self.text = text
        self.force_zeros_for_empty_prompt = bool(config.get("force_zeros_for_empty_prompt", True))

    def __call__(self, prompts, negatives, n, cfg, extra) -> Conditioning:
        B = len(prompts)
        prompts_2 = check_prompts("prompt_2", extra.get("prompt_2") or prompts, B)
        zero_neg = negatives is None and extra.get("negative_prompt_2") is None and self.force_zeros_for_empty_prompt

        def embed(texts1, texts2):
            o1 = self.text.encode("text_encoder", "tokenizer", texts1)
            o2 = self.text.encode("text_encoder_2", "tokenizer_2", texts2)
            e = np.concatenate([o1["penultimate_hidden_state"], o2["penultimate_hidden_state"]], axis=-1)
            return e.astype(np.float32), o2["pooled"].astype(np.float32)

        if cfg and not zero_neg:
            neg1 = negatives if negatives is not None else [""] * B
            neg2 = check_prompts("negative_prompt_2", extra.get("negative_prompt_2") or neg1, B)
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
        t = (np.concatenate([np.repeat(neg_ids, B * n, 0), np.repeat(ids, B * n, 0)]) if cfg
             else np.repeat(ids, B * n, 0))
        return Conditioning({"encoder_hidden_states": _cfg_rows(neg_e, pos_e, n, cfg),
                             "text_embeds": _cfg_rows(neg_p, pos_p, n, cfg), "time_ids": np.ascontiguousarray(t)})


class SD3PromptEncoder:
    """SD3: two CLIP encoders with projection and T5 (zeros when not exported)."""

    keywords = {"prompt_2": _prompt_keyword, "prompt_3": _prompt_keyword, "negative_prompt_2": _prompt_keyword,
                "negative_prompt_3": _prompt_keyword}

    def __init__(self, text: TextEncoders, config: dict):
        self.text = text
        self.t5_len = int(config.get("t5_max_length", 256))
        self.joint_dim = _config_number(config, "joint_attention_dim", int)

    def __call__(self, prompts, negatives, n, cfg, extra) -> Conditioning:
        B = len(prompts)
        p2 = check_prompts("prompt_2", extra.get("prompt_2") or prompts, B)
        p3 = check_prompts("prompt_3", extra.get("prompt_3") or prompts, B)
        has_t5 = self.text.manifest.has("text_encoder_3")

        def embed(t1, t2, t3):
            o1 = self.text.encode("text_encoder", "tokenizer", t1)
            o2 = self.text.encode("text_encoder_2", "tokenizer_2", t2)
            clip = np.concatenate([o1["penultimate_hidden_state"], o2["penultimate_hidden_state"]], axis=-1)
            pooled = np.concatenate([o1["pooled"], o2["pooled"]], axis=-1)
            if has_t5:
                t5 = self.text.encode("text_encoder_3", "tokenizer_3", t3)["last_hidden_state"]
            else:
                t5 = np.zeros((len(t1), self.t5_len, self.joint_dim), np.float32)
            # diffusers pads the CLIP features to T5's width with F.pad, which crops when CLIP is wider
            d = t5.shape[-1] - clip.shape[-1]
            clip = np.pad(clip, ((0, 0), (0, 0), (0, d))) if d >= 0 else clip[..., :t5.shape[-1]]
            return np.concatenate([clip, t5], axis=-2).astype(np.float32), pooled.astype(np.float32)

        if cfg:
            neg = negatives if negatives is not None else [""] * B
            neg2 = check_prompts("negative_prompt_2", extra.get("negative_prompt_2") or neg, B)
            neg3 = check_prompts("negative_prompt_3", extra.get("negative_prompt_3") or neg, B)
            e, p = embed(neg + prompts, neg2 + p2, neg3 + p3)
            neg_e, pos_e, neg_p, pos_p = e[:B], e[B:], p[:B], p[B:]
        else:
            (pos_e, pos_p), neg_e, neg_p = embed(prompts, p2, p3), None, None
        return Conditioning({"encoder_hidden_states": _cfg_rows(neg_e, pos_e, n, cfg),
                             "pooled_projections": _cfg_rows(neg_p, pos_p, n, cfg)})


# ------------------------------------------------------------------------------------ schedulers

class Schedulers:
    """Fresh schedulers for each call: the engine's, another class by name, or a given config."""

    def __init__(self, manifest):
        if manifest.scheduler_config is None:
            raise ManifestError("fastgen.json has no scheduler")
        self.config = dict(manifest.scheduler_config)
        self._base = from_config(self.config)

    def check(self, scheduler: Any) -> Any:
        """Validate a call's ``scheduler=`` (None, a class name / alias, a config dict or a Scheduler)."""
        if scheduler is None or isinstance(scheduler, Scheduler):
            return scheduler
        if isinstance(scheduler, (str, dict)):
            self.make(scheduler)  # raises ConfigError / InvalidArgumentError for a bad one
            return scheduler
        raise InvalidArgumentError(f"scheduler must be None, a name, a config dict or a Scheduler, "
                                   f"got {type(scheduler).__name__}")

    def make(self, scheduler: Any = None) -> Scheduler:
        if scheduler is None:
            return self._base.clone()
        if isinstance(scheduler, Scheduler):
            return scheduler.clone()
        if isinstance(scheduler, str):
            return from_config(self.config, class_name=scheduler)
        if isinstance(scheduler, dict):
            return from_config({**self.config, **scheduler})
        raise InvalidArgumentError(f"scheduler must be None, a name, a config dict or a Scheduler, "
                                   f"got {type(scheduler).__name__}")


# ------------------------------------------------------------------------------------ VAE

class Vae:
    """VAE encode / decode with the engine's scaling factor and shift (diffusers' order of operations)."""

    # diffusers' AutoencoderKL tiling: tiles of the VAE's sample_size pixels (its config; 512 for SD 1.x /
    # 2.x, 1024 for SDXL), overlapping by a quarter, blended linearly over the overlap
    TILE_OVERLAP = 0.25

    def __init__(self, session: SessionGetter, config: dict):
        self.session = session
        self.scaling_factor = _config_number(config, "scaling_factor", float)
        self.shift_factor = float(config.get("shift_factor") or 0.0)
        factor = _config_number(config, "vae_scale_factor", int)
        self.tile_sample_size = int(config.get("vae_sample_size") or 512)
        self.tile_latent_size = max(1, self.tile_sample_size // factor)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """NCHW [-1, 1] -> scaled latents (the latent distribution's mean)."""
        mean = self.session("vae_encoder").run({"sample": pixels}, ["latent_mean"])["latent_mean"]
        return ((mean - np.float32(self.shift_factor)) * np.float32(self.scaling_factor)).astype(np.float32)

    def encode_mean(self, pixels: np.ndarray) -> np.ndarray:
        """The unscaled latent mean (SVD conditions on it)."""
        return self.session("vae_encoder").run({"sample": pixels}, ["latent_mean"])["latent_mean"]

    def decode(self, latents: np.ndarray, *, tiling: bool = False) -> np.ndarray:
        """Scaled latents NCHW -> NHWC float32 images in [0, 1]. ``tiling``: decode latents larger than one
        tile in overlapping tiles, as diffusers' ``vae.enable_tiling()`` (bounded memory, equal results)."""
        z = (latents / np.float32(self.scaling_factor) + np.float32(self.shift_factor)).astype(np.float32)
        t = self.tile_latent_size
        if tiling and (z.shape[-1] > t or z.shape[-2] > t):
            return imgproc.postprocess(self._tiled_decode(z))
        return imgproc.postprocess(self._decode(z))

    def _tiled_decode(self, z: np.ndarray) -> np.ndarray:
        """diffusers' AutoencoderKL.tiled_decode: tiles of tile_latent_size latents every 3/4 tile, each
        blended with the tile above and the tile to the left over the overlap, then cropped."""
        t, ts = self.tile_latent_size, self.tile_sample_size
        overlap = int(t * (1 - self.TILE_OVERLAP))
        blend = int(ts * self.TILE_OVERLAP)
        limit = ts - blend
        rows = [[self._decode(np.ascontiguousarray(z[:, :, i:i + t, j:j + t]))
                 for j in range(0, z.shape[3], overlap)] for i in range(0, z.shape[2], overlap)]
        out_rows = []
        for i, row in enumerate(rows):
            out_row = []
            for j, tile in enumerate(row):
                if i > 0:
                    _blend(rows[i - 1][j], tile, blend, axis=2)
                if j > 0:
                    _blend(row[j - 1], tile, blend, axis=3)
                out_row.append(tile[:, :, :limit, :limit])
            out_rows.append(np.concatenate(out_row, axis=3))
        return np.concatenate(out_rows, axis=2)

    def _decode(self, z: np.ndarray) -> np.ndarray:
        return self.session("vae_decoder").run({"latent": z}, ["sample"])["sample"]

    def iter_decode(self, latents: np.ndarray, chunk: int, size: tuple[int, int], add, *,
                    unscaled: bool = False) -> Iterator[np.ndarray]:
        """Frames (H, W, 3) float32 in [0, 1] of (frames, C, h, w) scaled latents (``unscaled``: already
        divided by the scaling factor), ``chunk`` decoded at a time through the core's FrameRing, which
        holds at most ``chunk`` decoded frames; ``add(seconds)`` receives the decode time."""
        import time

        h, w = size
        ring = _core.FrameRing(chunk, 3, h, w)
        inv, shift = np.float32(self.scaling_factor), np.float32(self.shift_factor)
        for f0 in range(0, latents.shape[0], chunk):
            t0 = time.perf_counter()
            z = latents[f0:f0 + chunk]
            z = np.ascontiguousarray(z if unscaled else z / inv + shift, dtype=np.float32)
            out = self._decode(z)
            if out.ndim != 4 or out.shape[1] != 3 or out.shape[2:] != (h, w):
                raise ManifestError(f"vae_decoder returned shape {out.shape}, expected (n, 3, {h}, {w})")
            ring.push(np.ascontiguousarray(out, dtype=np.float32))
            add(time.perf_counter() - t0)
            del out, z
            while len(ring):
                yield ring.pop(h, w)


def _blend(a: np.ndarray, b: np.ndarray, extent: int, axis: int) -> None:
    """diffusers' blend_v (axis 2) / blend_h (axis 3), in place on ``b``, in float32 as torch computes it."""
    extent = min(a.shape[axis], b.shape[axis], extent)
    for y in range(extent):
        sa = [slice(None)] * 4
        sb = [slice(None)] * 4
        sa[axis], sb[axis] = -extent + y, y
        b[tuple(sb)] = a[tuple(sa)] * np.float32(1 - y / extent) + b[tuple(sb)] * np.float32(y / extent)


def tile_rows(x: np.ndarray, batch: int, what: str) -> np.ndarray:
    """Repeat per-image arrays to the generation batch, as diffusers does (whole-batch tiling)."""
    if x.shape[0] == batch:
        return x
    if batch % x.shape[0]:
        raise InvalidArgumentError(f"cannot duplicate {x.shape[0]} {what}(s) to a batch of {batch}")
    return np.concatenate([x] * (batch // x.shape[0]))
