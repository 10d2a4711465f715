"""Subprocess side of the cold-start and memory benchmarks. Prints one JSON line on stdout.

    python benchmarks/bench_worker.py import   fastgen|diffusers
    python benchmarks/bench_worker.py generate fastgen|diffusers MODEL_JSON LATENTS_NPY STEPS [CALLS] [DEVICE]

``generate``: import, load, first call (+ CALLS-1 more), then peak RSS (/proc/self/status VmHWM) of the
process. ``t_end`` is time.time() at the end of the first image, so the parent measures process start to
first image. fastgen's worker imports no torch (reported as torch_loaded).
"""

from __future__ import annotations

import json
import resource
import sys
import time

T_START = time.time()


def _rss_mb() -> float:
    """Peak RSS of this process image in MiB: VmHWM (getrusage's ru_maxrss would carry over the parent's
    peak across fork + exec on Linux, so it cannot be used for a child of a big parent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main() -> None:
    mode, fw = sys.argv[1], sys.argv[2]
    t0 = time.perf_counter()
    if fw == "fastgen":
        import fastgen  # noqa: F401
    else:
        import torch  # noqa: F401
        from diffusers import StableDiffusionPipeline  # noqa: F401
    import_s = time.perf_counter() - t0
    res = {"framework": fw, "import_s": import_s}
    if mode == "generate":
        import numpy as np

        model = json.loads(open(sys.argv[3]).read())
        lat = np.load(sys.argv[4])
        steps = int(sys.argv[5])
        calls = int(sys.argv[6]) if len(sys.argv) > 6 else 1
        device = sys.argv[7] if len(sys.argv) > 7 else "cpu"
        size = model["latent"] * model["vae_scale_factor"]
        kw = dict(negative_prompt="blurry", num_inference_steps=steps, guidance_scale=7.5, height=size, width=size)
        t0 = time.perf_counter()
        if fw == "fastgen":
            pipe = fastgen.Pipeline.load(model["engine"], device=device)

            def call():
                return pipe("a photo of a cat on a red car", latents=lat, **kw).images[0]
        else:
            pipe = StableDiffusionPipeline.from_pretrained(model["src"], safety_checker=None,
                                                           requires_safety_checker=False).to(device)
            pipe.set_progress_bar_config(disable=True)
            tl = torch.from_numpy(lat).to(device)

            def call():
                with torch.inference_mode():
                    return pipe("a photo of a cat on a red car", latents=tl, **kw).images[0]
        res["load_s"] = time.perf_counter() - t0
        rss_loaded = _rss_mb()
        t0 = time.perf_counter()
        call()
        res["first_call_s"] = time.perf_counter() - t0
        res["t_end"] = time.time()
        res["peak_rss_after_load_mb"] = rss_loaded
        res["peak_rss_first_image_mb"] = _rss_mb()
        t0 = time.perf_counter()
        for _ in range(calls - 1):
            call()
        if calls > 1:
            res["warm_call_s"] = (time.perf_counter() - t0) / (calls - 1)
        res["peak_rss_mb"] = _rss_mb()
    else:
        res["t_end"] = time.time()
        res["peak_rss_mb"] = _rss_mb()
    res["torch_loaded"] = "torch" in sys.modules
    res["t_start_in_process"] = T_START
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
