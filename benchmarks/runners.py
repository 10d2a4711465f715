"""One text-to-image call of fastgen and of diffusers, same model / prompt / steps / latents, with stage timings.

Stages: text_encode, unet (the network calls of the denoising loop), vae_decode, loop_overhead and total.
fastgen reports them itself (``out.timings``). For diffusers the text encoder, UNet and VAE decode are
wrapped with timers; its ``loop_overhead`` is what remains of the call (the loop's torch.cat / chunk /
guidance / scheduler.step, plus latent preparation and image post-processing); fastgen's
``loop_overhead`` is the C++ loop only, its ``other`` field the rest of the call.
"""

from __future__ import annotations

import threading
import time

import numpy as np

PROMPT = "a photo of a cat on a red car"
NEGATIVE = "blurry"


def cuda_available() -> bool:
    try:
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return False
    except ImportError:
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def latents_for(model: dict, n: int, seed: int = 0) -> np.ndarray:
    import fastgen

    L = model["latent"]
    return np.ascontiguousarray(fastgen.randn((n, 4, L, L), seed=seed), dtype=np.float32)


class FastgenT2I:
    framework = "fastgen"

    def __init__(self, model: dict, device: str = "cpu"):
        import os

        import fastgen

        backend = "onnxruntime"
        if device == "cuda" and os.path.isdir(os.path.join(model["engine"], "trt")):
            backend = "tensorrt"
        self.backend = backend
        self.pipe = fastgen.Pipeline.load(model["engine"], backend=backend, device=device)
        self.model = model

    def __call__(self, steps: int, n: int = 1, seed: int = 0) -> dict:
        L, f = self.model["latent"], self.model["vae_scale_factor"]
        lat = latents_for(self.model, n, seed)
        out = self.pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.5,
                        height=L * f, width=L * f, num_images_per_prompt=n, latents=lat, output_type="pil")
        t = out.timings
        res = {"text_encode": t["text_encode"], "unet": t["denoise"], "vae_decode": t.get("vae_decode", 0.0),
               "loop_overhead": t["loop_overhead"], "total": t["total"]}
        res["other"] = res["total"] - res["text_encode"] - res["unet"] - res["vae_decode"] - res["loop_overhead"]
        return res


class DiffusersT2I:
    framework = "diffusers"

    def __init__(self, model: dict, device: str = "cpu"):
        import torch
        from diffusers import StableDiffusionPipeline

        self.torch = torch
        self.device = device
        self.pipe = StableDiffusionPipeline.from_pretrained(model["src"], safety_checker=None,
                                                            requires_safety_checker=False).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.model = model
        self.lock = threading.Lock()  # a diffusers pipeline (its scheduler) is not safe to call concurrently
        self._acc = {"text_encode": 0.0, "unet": 0.0, "vae_decode": 0.0}
        self._wrap(self.pipe.text_encoder, "forward", "text_encode")
        self._wrap(self.pipe.unet, "forward", "unet")
        self._wrap(self.pipe.vae, "decode", "vae_decode")

    def _sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def _wrap(self, module, attr, key):
        orig = getattr(module, attr)
        acc = self._acc

        def timed(*a, **kw):
            self._sync()
            t0 = time.perf_counter()
            r = orig(*a, **kw)
            self._sync()
            acc[key] += time.perf_counter() - t0
            return r

        setattr(module, attr, timed)

    def __call__(self, steps: int, n: int = 1, seed: int = 0) -> dict:
        torch = self.torch
        L, f = self.model["latent"], self.model["vae_scale_factor"]
        lat = torch.from_numpy(latents_for(self.model, n, seed)).to(self.device)
        with self.lock, torch.inference_mode():
            for k in self._acc:
                self._acc[k] = 0.0
            t0 = time.perf_counter()
            self.pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.5,
                      height=L * f, width=L * f, num_images_per_prompt=n, latents=lat, output_type="pil")
            self._sync()
            total = time.perf_counter() - t0
            res = dict(self._acc)
        res["total"] = total
        res["loop_overhead"] = total - res["text_encode"] - res["unet"] - res["vae_decode"]
        res["other"] = 0.0
        return res


def runner(framework: str, model: dict, device: str = "cpu"):
    return (FastgenT2I if framework == "fastgen" else DiffusersT2I)(model, device)


def repeat_call(fn, repeat: int, warmup: int = 1) -> dict:
    """Stage timings of `repeat` calls after `warmup`: per stage min and median (by total)."""
    for _ in range(warmup):
        fn()
    runs = [fn() for _ in range(repeat)]
    runs.sort(key=lambda r: r["total"])
    best, med = runs[0], runs[len(runs) // 2]
    return {"min": best, "median": med, "repeat": repeat,
            "totals": [r["total"] for r in runs]}
