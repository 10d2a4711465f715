"""Text-to-video: seconds per frame and peak RSS, fastgen (TextToVideoPipeline, ONNX Runtime) vs diffusers
(AnimateDiffPipeline, PyTorch), on the same AnimateDiff model, prompt, steps, guidance and latents.

Every (framework, num_frames) configuration runs in fresh ``bench_worker.py video`` processes
(``processes`` of them, the frameworks interleaved), so its peak RSS (VmHWM) is that configuration's
alone. A process loads the pipeline, makes ``calls`` calls with the same latents (the first includes
ONNX Runtime session creation / torch warm-up) and reports the time of each; seconds per frame is the
fastest warm call of all the processes (the first call when calls == 1) divided by ``num_frames``.
``threads`` pins torch (``set_num_threads``) and ONNX Runtime (``intra_op_num_threads``) to the same
count; by default each uses its own default, as the other benchmarks do. Each row records the machine's
1-minute load average at the start and end of its process (``load_avg_1m``).

Long videos (``num_frames`` > the motion module's ``motion_max_seq_length``) use each side's own
mechanism with the same window length, stride and pyramid weights:

- fastgen: context windows over the **whole UNet** (``context_length`` / ``context_stride``): each
  window of frames is one UNet call and the C++ loop blends the windows' predictions, so activations
  are those of one window whatever the length.
- diffusers: FreeNoise (``pipe.enable_free_noise(context_length=, context_stride=,
  weighting_scheme="pyramid")``): only the motion modules' transformer blocks run per window; the rest
  of the UNet (ResNets, spatial and cross attention) processes all frames in one batch.

So at 64 frames the two compute different things (fastgen runs the spatial layers once per window
that covers a frame, diffusers once per frame) and their frames differ (``max_abs_diff`` in the
JSON); within the motion length both run one window and the frames agree to ~1e-5.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile

import numpy as np

from cold_start import _spawn

PROMPT = "a photo of a cat walking on the grass"
NEGATIVE = "blurry"
FRAMEWORKS = ("fastgen", "diffusers")


def _latents(shape: tuple, seed: int = 0) -> np.ndarray:
    import fastgen

    return np.ascontiguousarray(fastgen.randn(shape, seed=seed), dtype=np.float32)


def _row(fw: str, n: int, runs: list[dict]) -> dict:
    """One (framework, num_frames) row from its processes' results: the fastest warm call over all of them
    (the first call when calls == 1), medians, and the smallest peak RSS (as the memory benchmark)."""
    warm = [t for r in runs for t in (r["call_s"][1:] or r["call_s"])]
    rss = [r["peak_rss_mb"] for r in runs]
    return {"framework": fw, "num_frames": n, "processes": len(runs), "s_per_frame": min(warm) / n,
            "s_per_frame_median": statistics.median(warm) / n, "s_per_video": min(warm),
            "first_call_s": min(r["call_s"][0] for r in runs), "call_s": [r["call_s"] for r in runs],
            "import_s": min(r["import_s"] for r in runs), "load_s": min(r["load_s"] for r in runs),
            "peak_rss_mb": min(rss), "peak_rss_mb_values": rss,
            "peak_rss_after_load_mb": min(r["peak_rss_after_load_mb"] for r in runs),
            "peak_rss_first_call_mb": min(r["peak_rss_first_call_mb"] for r in runs),
            "torch_loaded": runs[0]["torch_loaded"], "load_avg_1m": [r["load_avg_1m"] for r in runs],
            "ran": runs[0]["ran"]}


def bench_video(model: dict, frames=(16, 64), steps: int = 10, calls: int = 2, processes: int = 1, size: int = 128,
                context_stride: int = 4, decode_chunk_size: int = 16, guidance_scale: float = 7.5,
                device: str = "cpu", threads: int | None = None) -> dict:
    """One record: rows per (framework, num_frames) and per-frame-count ratios. ``processes`` fresh
    processes per configuration, the frameworks interleaved (and their order alternated) so that drift
    in the machine's load hits both."""
    f = model["vae_scale_factor"]
    motion = model["motion_max_seq_length"]
    rows, by_frames = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in frames:
            ctx = min(n, motion)
            lpath = os.path.join(tmp, f"latents{n}.npy")
            np.save(lpath, _latents((1, 4, n, size // f, size // f), seed=0))
            runs: dict[str, list[dict]] = {fw: [] for fw in FRAMEWORKS}
            outs = {}
            for i in range(processes):
                for fw in (FRAMEWORKS if i % 2 == 0 else FRAMEWORKS[::-1]):
                    spec = {"model": model, "latents": lpath, "num_frames": n, "steps": steps, "calls": calls,
                            "prompt": PROMPT, "negative_prompt": NEGATIVE, "guidance_scale": guidance_scale,
                            "height": size, "width": size, "context_length": ctx, "context_stride": context_stride,
                            "decode_chunk_size": decode_chunk_size, "device": device, "threads": threads,
                            "frames_out": os.path.join(tmp, f"{fw}{n}.npy")}
                    spath = os.path.join(tmp, f"{fw}{n}.json")
                    with open(spath, "w") as fh:
                        json.dump(spec, fh)
                    runs[fw].append(_spawn(["video", fw, spath], timeout=1800))
                    outs[fw] = np.load(spec["frames_out"])
                    os.remove(spec["frames_out"])
            fg, df = (_row(fw, n, runs[fw]) for fw in FRAMEWORKS)
            rows += [fg, df]
            by_frames[str(n)] = {
                "context_length": ctx, "long_video": n > motion,
                "speedup_s_per_frame": df["s_per_frame"] / fg["s_per_frame"],
                "ratio_peak_rss": df["peak_rss_mb"] / fg["peak_rss_mb"],
                "max_abs_diff": float(np.abs(outs["fastgen"].astype(np.float64) - outs["diffusers"]).max()),
                "frames_shape": list(outs["fastgen"].shape)}
    return {"model": model["name"], "description": model["description"], "motion_max_seq_length": motion,
            "steps": steps, "guidance_scale": guidance_scale, "height": size, "width": size,
            "context_stride": context_stride, "context_weighting": "pyramid", "decode_chunk_size": decode_chunk_size,
            "calls_per_process": calls, "processes_per_config": processes,
            "threads": threads or "library defaults (torch: cores, ORT: cores)",
            "prompt": PROMPT, "negative_prompt": NEGATIVE,
            "latents": "fastgen.randn((1, 4, frames, size/8, size/8), seed=0), the same array for both",
            "scheduler": "DDIM (the model's scheduler config) on both sides",
            "rows": rows, "by_frames": by_frames,
            "note": ("within the motion length both sides run one window (the same computation); beyond it "
                     "fastgen windows the whole UNet (activations of one window) and diffusers FreeNoise "
                     "windows only the motion modules (spatial layers over all frames at once): see each "
                     "row's 'ran'")}
