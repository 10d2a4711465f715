"""ControlNet for the image pipeline: request checks, control images and the per-step residuals.

An engine exported with ``--controlnet DIR`` (repeatable) holds ``controlnet_<i>`` graphs (residuals at
conditioning scale 1) and ``unet_control``, the UNet that takes them. A request with ``control_image=`` runs
every exported ControlNet at each step, scales their residuals as diffusers' ``ControlNetModel`` does
(``controlnet_conditioning_scale``, ``guess_mode``'s logspace scales, ``control_guidance_start`` / ``_end``),
sums them over ControlNets (``MultiControlNetModel``) and feeds the sum to ``unet_control``; requests without a
control image run the plain ``unet``. Follows ``StableDiffusionControlNetPipeline`` /
``StableDiffusionXLControlNetPipeline`` (text-to-image) and ``StableDiffusion(XL)ControlNetImg2ImgPipeline``
(``image=``: the guidance window is over the steps that run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import image as imgproc
from .._args import check_bool, check_float
from ..errors import InvalidArgumentError, ManifestError, UnsupportedError

__all__ = ["ControlRequest", "ControlNets"]


@dataclass(frozen=True)
class ControlRequest:
    images: tuple  # per ControlNet: a tuple of PIL images (1, or one per generated image)
    scales: tuple[float, ...]
    starts: tuple[float, ...]
    ends: tuple[float, ...]
    guess_mode: bool


def _per_net(name: str, v: Any, k: int, default: float, lo: float, hi: float) -> tuple[float, ...]:
    if v is None:
        return (default,) * k
    if isinstance(v, (list, tuple)):
        if len(v) != k:
            raise InvalidArgumentError(f"{name} has {len(v)} entries but the engine has {k} ControlNet(s)")
        return tuple(check_float(f"{name}[{i}]", x, lo, hi) for i, x in enumerate(v))
    return (check_float(name, v, lo, hi),) * k


class ControlNets:
    """The engine's ControlNets (the manifest's ``controlnet`` section)."""

    def __init__(self, manifest, session):
        self.session = session
        rec = manifest.data.get("controlnet")
        self.available = isinstance(rec, dict)
        self.names: list[str] = []
        self.global_pool: list[bool] = []
        self.unet = "unet_control"
        self.unet_lora: str | None = None
        if not self.available:
            return
        try:
            for c in rec["controlnets"]:
                if not manifest.has(c["component"]):
                    raise ManifestError(f"fastgen.json: controlnet component {c['component']!r} is missing")
                self.names.append(c["component"])
                self.global_pool.append(bool(c.get("global_pool_conditions", False)))
            self.unet = rec["unet"]
            self.unet_lora = rec.get("unet_lora")  # with LoRA branches too (export --lora-branches --controlnet)
            if self.unet_lora is not None and not manifest.has(self.unet_lora):
                raise ManifestError(f"fastgen.json: controlnet.unet_lora {self.unet_lora!r} is not a component")
            if not self.names or not manifest.has(self.unet):
                raise ManifestError("fastgen.json: the controlnet section names no ControlNet or no UNet")
        except (KeyError, TypeError) as e:
            raise ManifestError(f"fastgen.json: malformed controlnet section ({type(e).__name__}: {e})") from None

    def check(self, control_image, scale, start, end, guess_mode, *, mode: str, batch: int) -> ControlRequest | None:
        """A request's ControlNet arguments -> ControlRequest (None without ``control_image``)."""
        if control_image is None:
            for name, v in (("controlnet_conditioning_scale", scale), ("control_guidance_start", start),
                            ("control_guidance_end", end)):
                if v is not None:
                    raise InvalidArgumentError(f"{name} needs control_image=")
            if guess_mode:
                raise InvalidArgumentError("guess_mode needs control_image=")
            return None
        if not self.available:
            raise UnsupportedError("this engine has no ControlNet: export it with `fastgen export --controlnet DIR`")
        if mode == "inpaint":
            raise UnsupportedError("ControlNet runs with text-to-image and image-to-image requests here (mask_image= "
                                   "with control_image= is not supported yet)")
        k = len(self.names)
        if k == 1:
            per_net = [control_image]
        else:
            if not isinstance(control_image, (list, tuple)) or len(control_image) != k:
                raise InvalidArgumentError(f"this engine has {k} ControlNets: control_image must be a list of {k} "
                                           "images (one per ControlNet, in export order)")
            per_net = list(control_image)
        images = []
        for i, im in enumerate(per_net):
            loaded = imgproc.load_images("control_image" if k == 1 else f"control_image[{i}]", im)
            if len(loaded) != 1 and len(loaded) != batch:
                raise InvalidArgumentError(f"control_image has {len(loaded)} images; give 1 or one per generated "
                                           f"image ({batch})")
            images.append(loaded)
        scales = _per_net("controlnet_conditioning_scale", scale, k, 1.0, -100.0, 100.0)
        starts = _per_net("control_guidance_start", start, k, 0.0, 0.0, 1.0)
        ends = _per_net("control_guidance_end", end, k, 1.0, 0.0, 1.0)
        for i, (s, e) in enumerate(zip(starts, ends)):
            if s >= e:
                raise InvalidArgumentError(f"control_guidance_start ({s}) must be below control_guidance_end ({e})"
                                           + (f" for ControlNet {i}" if k > 1 else ""))
        guess = check_bool("guess_mode", guess_mode) or any(self.global_pool)
        return ControlRequest(tuple(images), scales, starts, ends, guess)

    def prepare(self, ctl: ControlRequest, height: int, width: int, batch: int, n: int, cfg: bool) -> list:
        """Control images per ControlNet as diffusers' prepare_image: [0, 1], repeated to the batch, doubled for
        classifier-free guidance unless guess_mode."""
        out = []
        for ims in ctl.images:
            arr = imgproc.images_01(list(ims), height, width)
            arr = np.repeat(arr, batch if arr.shape[0] == 1 else n, axis=0)
            if cfg and not ctl.guess_mode:
                arr = np.concatenate([arr, arr])
            out.append(np.ascontiguousarray(arr))
        return out

    def residuals(self, ctl: ControlRequest, images: list, step: int, n_steps: int, xin: np.ndarray, t: float,
                  cond: dict, cfg: bool) -> dict[str, np.ndarray]:
        """The summed, scaled residuals of every ControlNet for one denoiser call (step ``step`` of ``n_steps``)."""
        half = xin.shape[0] // 2 if (ctl.guess_mode and cfg) else 0
        feeds = {k: v[half:] for k, v in cond.items()}
        x = xin[half:]
        total: list[np.ndarray] | None = None
        for i, name in enumerate(self.names):
            keep = 1.0 - float(step / n_steps < ctl.starts[i] or (step + 1) / n_steps > ctl.ends[i])
            scale = ctl.scales[i] * keep
            outs = self.session(name).run({"sample": x, "timestep": np.full((x.shape[0],), t, np.float32),
                                           "controlnet_cond": images[i], **feeds})
            res = [outs[k] for k in sorted((k for k in outs if k.startswith("down_block_res_samples.")),
                                           key=lambda s: int(s.rsplit(".", 1)[1]))] + [outs["mid_block_res_sample"]]
            if ctl.guess_mode and not self.global_pool[i]:
                scales = (np.logspace(-1, 0, len(res), dtype=np.float32) * np.float32(scale)).astype(np.float32)
            else:
                scales = np.full(len(res), scale, np.float32)
            res = [(r * s).astype(np.float32) for r, s in zip(res, scales)]
            if self.global_pool[i]:
                res = [r.mean(axis=(2, 3), keepdims=True) for r in res]
            total = res if total is None else [a + b for a, b in zip(total, res)]
        assert total is not None
        if half:
            total = [np.concatenate([np.zeros_like(r), r]) for r in total]
        out = {f"down_block_additional_residuals.{k}": r for k, r in enumerate(total[:-1])}
        out["mid_block_additional_residual"] = total[-1]
        return out
