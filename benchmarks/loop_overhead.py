"""Per-step cost of the denoising loop itself, with a no-op network.

fastgen: fastgen.sample_loop (C++: CFG batch, guidance, scheduler step), the network a callback that
returns a preallocated array. diffusers: the loop of StableDiffusionPipeline.__call__ (torch.cat,
scale_model_input, chunk, guidance, scheduler.step) with the same no-op network. Same scheduler
config, steps and latents; reports microseconds per step and the speed-up ratio.

    python benchmarks/loop_overhead.py [--quick] --out bench_out
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import timeit, write_json  # noqa: E402

SD_BASE = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000,
           "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False}
SCHEDULERS = {
    "DDIM": "DDIMScheduler",
    "DPM++ 2M": "DPMSolverMultistepScheduler",
    "Euler": "EulerDiscreteScheduler",
    "Euler a": "EulerAncestralDiscreteScheduler",
    "PNDM": "PNDMScheduler",
    "DDPM": "DDPMScheduler",
    "UniPC": "UniPCMultistepScheduler",
    "LCM": "LCMScheduler",
}


def fastgen_loop(cls: str, shape, steps: int, guidance: float):
    import fastgen
    from fastgen import schedulers

    cfg = dict(SD_BASE, _class_name=cls)
    lat = fastgen.randn(shape, seed=0)
    rows = shape[0] * (2 if guidance > 1 else 1)
    pred = np.full((rows, *shape[1:]), 0.01, np.float32)

    def noop(x, t):
        return pred

    def run():
        s = schedulers.from_config(cfg)
        s.set_timesteps(steps)
        s.manual_seed(0)
        fastgen.sample_loop(s, lat * np.float32(s.init_noise_sigma), noop, guidance_scale=guidance)

    return run


def diffusers_loop(cls: str, shape, steps: int, guidance: float):
    import diffusers
    import torch

    sched_cls = getattr(diffusers, cls)
    cfg = dict(SD_BASE)
    lat = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    rows = shape[0] * (2 if guidance > 1 else 1)
    pred = torch.full((rows, *shape[1:]), 0.01)
    gen = torch.Generator().manual_seed(0)

    def run():
        s = sched_cls.from_config(cfg)
        s.set_timesteps(steps)
        x = lat * s.init_noise_sigma
        with torch.no_grad():
            for t in s.timesteps:
                inp = torch.cat([x] * 2) if guidance > 1 else x
                inp = s.scale_model_input(inp, t)
                noise_pred = pred  # the no-op network
                if guidance > 1:
                    u, c = noise_pred.chunk(2)
                    noise_pred = u + guidance * (c - u)
                kw = {"generator": gen} if "generator" in s.step.__code__.co_varnames else {}
                x = s.step(noise_pred, t, x, **kw, return_dict=False)[0]

    return run


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args(argv)
    import torch

    from fastgen import schedulers

    torch.set_num_threads(1)  # the loop is latency-bound; one thread is diffusers' best case here
    available = set(schedulers.available())
    shapes = {"1x4x64x64": (1, 4, 64, 64), "1x4x128x128": (1, 4, 128, 128)}
    if not args.quick:
        shapes["16x4x64x64 (16 frames)"] = (16, 4, 64, 64)
    names = ["DDIM", "DPM++ 2M", "Euler"] if args.quick else list(SCHEDULERS)
    repeat = 3 if args.quick else 5
    rows = []
    for name in names:
        cls = SCHEDULERS[name]
        if cls not in available:
            print(f"skip {name}: not in this build", file=sys.stderr)
            continue
        for label, shape in shapes.items():
            f = timeit(fastgen_loop(cls, shape, args.steps, 7.5), repeat=repeat)
            d = timeit(diffusers_loop(cls, shape, args.steps, 7.5), repeat=repeat)
            row = {"scheduler": name, "class": cls, "shape": label, "steps": args.steps,
                   "fastgen_us_per_step": f["min"] / args.steps * 1e6,
                   "fastgen_us_per_step_median": f["median"] / args.steps * 1e6,
                   "diffusers_us_per_step": d["min"] / args.steps * 1e6,
                   "diffusers_us_per_step_median": d["median"] / args.steps * 1e6}
            row["speedup"] = row["diffusers_us_per_step"] / row["fastgen_us_per_step"]
            rows.append(row)
            print(f"{name:10s} {label:24s} fastgen {row['fastgen_us_per_step']:8.1f} us/step   "
                  f"diffusers {row['diffusers_us_per_step']:8.1f} us/step   x{row['speedup']:.1f}")
    path = write_json(args.out, "loop_overhead", {"rows": rows, "guidance_scale": 7.5, "torch_threads": 1})
    _plot(rows, os.path.join(args.out, "loop_overhead.png"))
    print("wrote", path)
    return {"rows": rows}


def _plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    labels = [f"{r['scheduler']}\n{r['shape'].split(' ')[0]}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.7), 4))
    ax.bar(x - 0.2, [r["diffusers_us_per_step"] for r in rows], 0.4, label="diffusers (torch)")
    ax.bar(x + 0.2, [r["fastgen_us_per_step"] for r in rows], 0.4, label="fastgen (C++)")
    ax.set_yscale("log")
    ax.set_ylabel("loop overhead, µs / step (log)")
    ax.set_xticks(x, labels, fontsize=7)
    ax.legend()
    ax.set_title("Denoising-loop overhead per step, no-op network, CFG 7.5")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
