"""Subprocess side of the cold-start and memory benchmarks. Prints one JSON line on stdout.

    python benchmarks/bench_worker.py import   fastgen|diffusers
    python benchmarks/bench_worker.py generate fastgen|diffusers MODEL_JSON LATENTS_NPY STEPS [CALLS] [DEVICE]
    python benchmarks/bench_worker.py video    fastgen|diffusers SPEC_JSON

``generate``: import, load, first call (+ CALLS-1 more), then peak RSS (/proc/self/status VmHWM) of the
process. ``t_end`` is time.time() at the end of the first image, so the parent measures process start to
first image. fastgen's worker imports no torch (reported as torch_loaded).

``video`` (see video.py for SPEC_JSON): text-to-video, fastgen's TextToVideoPipeline or diffusers'
AnimateDiffPipeline (with FreeNoise when the video is longer than the motion module): load, ``calls``
calls with the same latents, the time of each, the peak RSS after load / the first call / all calls,
and what ran (``ran``); the last call's frames go to ``frames_out`` (.npy) when given.
"""

from __future__ import annotations

import json
import os
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


def _video(fw: str, spec: dict) -> dict:
    """One text-to-video configuration in this fresh process (the ``video`` mode)."""
    import numpy as np

    lat = np.load(spec["latents"])
    frames, ctx, stride = spec["num_frames"], spec["context_length"], spec["context_stride"]
    chunk = spec["decode_chunk_size"]
    kw = dict(negative_prompt=spec["negative_prompt"], num_frames=frames, num_inference_steps=spec["steps"],
              guidance_scale=spec["guidance_scale"], height=spec["height"], width=spec["width"],
              decode_chunk_size=chunk, output_type="np")
    model, device = spec["model"], spec.get("device", "cpu")
    load_avg = [os.getloadavg()[0]]  # the machine's 1-minute load at the start and the end (shared machines)
    t0 = time.perf_counter()
    if fw == "fastgen":
        import fastgen
        from fastgen import _core

        opts = None
        if spec.get("threads"):
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = spec["threads"]
            # fastgen's default level for graphs under 1 GiB
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.log_severity_level = 3
        pipe = fastgen.Pipeline.load(model["engine"], device=device, session_options=opts)
        starts = _core.context_windows(frames, ctx, stride) if frames > ctx else [0]
        ran = {"pipeline": type(pipe).__name__, "backend": "onnxruntime", "long_video": "context",
               "intra_op_threads": spec.get("threads") or "onnxruntime default",
               "context_length": ctx, "context_stride": stride, "context_weighting": "pyramid",
               "windows": [[s, s + min(ctx, frames)] for s in starts],
               "windowed": ("the whole UNet runs per window of context_length frames; the C++ loop "
                            "(video_sample_loop) blends the windows' guided noise predictions with pyramid "
                            "weights, then takes one scheduler step over all frames"),
               "decode_chunk_size": chunk}

        def call():
            return pipe(spec["prompt"], latents=lat, context_length=ctx, context_stride=stride,
                        context_weighting="pyramid", **kw).frames
    else:
        import torch
        from diffusers import AnimateDiffPipeline

        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        pipe = AnimateDiffPipeline.from_pretrained(model["src"]).to(device)
        pipe.set_progress_bar_config(disable=True)
        ran = {"pipeline": "AnimateDiffPipeline", "torch_threads": torch.get_num_threads(),
               "decode_chunk_size": chunk, "free_noise": None,
               "windowed": "nothing: all frames go through the UNet at once (one window)"}
        if frames > model["motion_max_seq_length"]:
            fn = dict(context_length=ctx, context_stride=stride, weighting_scheme="pyramid",
                      noise_type="shuffle_context")
            pipe.enable_free_noise(**fn)
            from diffusers.models.attention import FreeNoiseTransformerBlock

            block = next(m for m in pipe.unet.modules() if isinstance(m, FreeNoiseTransformerBlock))
            ran["free_noise"] = {**fn, "windows": [list(w) for w in block._get_frame_indices(frames)],
                                 "latents": "passed at full length, so not shuffled (used as given)"}
            ran["windowed"] = ("only the motion modules' transformer blocks (FreeNoiseTransformerBlock) run per "
                               "window and blend with pyramid weights; ResNets, spatial self-attention, text "
                               "cross-attention and the scheduler see all frames at once")
        latents = torch.from_numpy(lat).to(device)

        def call():
            with torch.inference_mode():
                return pipe(spec["prompt"], latents=latents, **kw).frames
    res = {"load_s": time.perf_counter() - t0, "peak_rss_after_load_mb": _rss_mb(), "ran": ran}
    times, out = [], None
    for i in range(spec["calls"]):
        t0 = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t0)
        if i == 0:
            res["t_end"] = time.time()  # spawn -> first video, as for images
            res["peak_rss_first_call_mb"] = _rss_mb()
    res["call_s"] = times
    res["peak_rss_mb"] = _rss_mb()
    res["load_avg_1m"] = load_avg + [os.getloadavg()[0]]
    if spec.get("frames_out"):
        np.save(spec["frames_out"], np.asarray(out, dtype=np.float32))
    return res


def main() -> None:
    mode, fw = sys.argv[1], sys.argv[2]
    t0 = time.perf_counter()
    if fw == "fastgen":
        import fastgen  # noqa: F401
    else:
        import torch  # noqa: F401
        if mode == "video":
            from diffusers import AnimateDiffPipeline  # noqa: F401
        else:
            from diffusers import StableDiffusionPipeline  # noqa: F401
    import_s = time.perf_counter() - t0
    res = {"framework": fw, "import_s": import_s}
    if mode == "video":
        with open(sys.argv[3]) as f:
            res.update(_video(fw, json.load(f)))
    elif mode == "generate":
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
