"""The GPU check: fastgen on ONNX Runtime's CUDA provider (and TensorRT where it is installed) against
diffusers on the same GPU, on the SD 1.5 architecture with random weights (benchmarks/models.py "sd15").

    python benchmarks/gpu_check.py --out gpu_check.json [--model sd15|tiny] [--size 512] [--steps 20]

Run by benchmarks/gpu_check.sh, which installs what it can first. Every part is tried on its own and
leaves either numbers or the error in the JSON:

- env: the GPU (nvidia-smi), the onnxruntime distributions installed (exactly one must be), providers,
  TensorRT / cuda-python / torch versions;
- ort_cuda: fastgen with device="cuda" (cpu_fallback=False: a CUDA provider that did not load is an
  error, not a CPU run), per-stage timings, the UNet session's host <-> device transfers per generation,
  and the image's difference to diffusers fp32 and fp16 on cuda (same latents);
- tensorrt: `fastgen build-trt` for the run's size (default precisions: fp16 but the VAE on TensorRT 10,
  the export's precision on 11), build time, timings, the image difference to diffusers;
- diffusers: fp32 and fp16 timings on cuda.

Nothing here has run yet: this project's machines have no GPU (see docs/gpu.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

PROMPT, NEGATIVE = "a photo of a cat on a red car", "blurry"


def _try(rec: dict, key: str, fn):
    t0 = time.perf_counter()
    try:
        rec[key] = fn()
    except Exception as e:  # the JSON says what failed and why; the other parts still run
        rec[key] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
    rec[key]["wall_s"] = round(time.perf_counter() - t0, 3) if isinstance(rec[key], dict) else None


def env() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version(), "machine": platform.machine()}
    smi = shutil.which("nvidia-smi")
    out["nvidia_smi"] = (subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                        capture_output=True, text=True).stdout.strip() if smi else "not found")
    dists = {d.metadata["Name"].lower(): d.version for d in metadata.distributions()}
    out["onnxruntime_distributions"] = {k: v for k, v in dists.items() if k.startswith("onnxruntime")}
    out["one_onnxruntime"] = len([k for k in out["onnxruntime_distributions"] if k in ("onnxruntime", "onnxruntime-gpu")]) == 1
    for name in ("tensorrt", "tensorrt-cu12", "cuda-python", "cuda-bindings", "torch", "diffusers"):
        out[name] = dists.get(name)
    try:
        import onnxruntime

        out["ort_available_providers"] = onnxruntime.get_available_providers()
    except ImportError as e:
        out["ort_available_providers"] = f"onnxruntime missing: {e}"
    try:
        from cuda.bindings import runtime as cudart

        from fastgen.backends.tensorrt import cuda_device_count

        out["cuda_devices"] = cuda_device_count(cudart, "gpu_check")
    except Exception as e:
        out["cuda_devices"] = f"{type(e).__name__}: {e}"
    return out


def diff(a: np.ndarray, b: np.ndarray) -> dict:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = float(np.mean((a - b) ** 2))
    return {"max_abs": float(np.max(np.abs(a - b))), "mean_abs": float(np.mean(np.abs(a - b))),
            "psnr_db": float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))}


def fastgen_run(engine: str, backend: str, latents: np.ndarray, size: int, steps: int, repeat: int) -> dict:
    import fastgen

    pipe = fastgen.Pipeline.load(engine, backend=backend, device="cuda")
    kw = dict(negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.5, height=size, width=size,
              latents=latents, output_type="np", scheduler="ddim")
    pipe(PROMPT, **kw)  # warm-up (cuDNN / TensorRT context set-up)
    runs = [pipe(PROMPT, **kw) for _ in range(repeat)]
    best = min(runs, key=lambda o: o.timings["total"])
    rec = {"backend": backend, "timings_s": {k: round(v, 4) for k, v in best.timings.items()}, "image": best.images}
    unet = pipe._components.session("unet")
    rec["unet_transfers_last_call"] = getattr(unet, "transfers", None)
    return rec


def diffusers_run(src: str, latents: np.ndarray, size: int, steps: int, dtype: str, repeat: int) -> dict:
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    td = torch.float16 if dtype == "fp16" else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(src, torch_dtype=td, safety_checker=None,
                                                   requires_safety_checker=False).to("cuda")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    lat = torch.from_numpy(latents).to("cuda", td)
    kw = dict(negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.5, height=size, width=size,
              latents=lat, output_type="np")
    with torch.inference_mode():
        pipe(PROMPT, **kw)
        times, img = [], None
        for _ in range(repeat):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            img = pipe(PROMPT, **kw).images
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return {"dtype": dtype, "total_s": round(min(times), 4), "image": img}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="sd15", choices=("sd15", "tiny"))
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cache", default=None, help="model cache (benchmarks/models.py)")
    args = ap.parse_args(argv)

    rec: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args)}
    _try(rec, "env", env)

    import fastgen
    from models import DEFAULT_CACHE, diffusion_model

    model = diffusion_model(args.model, args.cache or DEFAULT_CACHE)
    f = model["vae_scale_factor"]
    size = args.size if args.model == "sd15" else model["latent"] * f
    latents = np.ascontiguousarray(fastgen.randn((1, 4, size // f, size // f), seed=0), dtype=np.float32)
    rec["model"] = {k: model[k] for k in ("name", "description") if k in model}
    images = {}

    def run_ref(dtype):
        r = diffusers_run(model["src"], latents, size, args.steps, dtype, args.repeat)
        images[f"diffusers_{dtype}"] = r.pop("image")
        return r

    _try(rec, "diffusers_fp32", lambda: run_ref("fp32"))
    _try(rec, "diffusers_fp16", lambda: run_ref("fp16"))

    def compare(key):
        out = {}
        for ref in ("diffusers_fp32", "diffusers_fp16"):
            if ref in images:
                out[f"vs_{ref}"] = diff(images[key], images[ref])
        return out

    def ort_cuda():
        r = fastgen_run(model["engine"], "onnxruntime", latents, size, args.steps, args.repeat)
        images["ort_cuda"] = r.pop("image")
        r.update(compare("ort_cuda"))
        return r

    _try(rec, "ort_cuda", ort_cuda)

    def tensorrt():
        from fastgen_export.trt import build_trt

        eng = os.path.join(os.path.dirname(model["engine"]), f"{model['name']}-trt-{size}")
        if not os.path.isdir(eng):
            shutil.copytree(model["engine"], eng, ignore=shutil.ignore_patterns("trt"))
        logs: list[str] = []
        t0 = time.perf_counter()
        shape = f"1x{size}x{size}"
        section = build_trt(eng, min_shapes=shape, opt_shapes=shape, max_shapes=shape,
                            timing_cache=os.path.join(eng, "timing.cache"), log=logs.append)
        r = {"build_s": round(time.perf_counter() - t0, 1), "build_log": logs, "tensorrt_version": section["version"],
             "plans": {k: {x: v.get(x) for x in ("precision", "strongly_typed")} for k, v in section["plans"].items()}}
        r.update(fastgen_run(eng, "tensorrt", latents, size, args.steps, args.repeat))
        images["tensorrt"] = r.pop("image")
        r.update(compare("tensorrt"))
        return r

    _try(rec, "tensorrt", tensorrt)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(rec, fh, indent=1, default=str)
    print(json.dumps({k: (v if k != "env" else "...") for k, v in rec.items()}, indent=1, default=str)[:6000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
