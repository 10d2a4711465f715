"""Step caching (issue 17): end-to-end time with and without each cache, and the full network calls.

DeepCache (uniform, interval 3 and 5, branch 0) against cache off on the SD 1.5 UNet layout at reduced
width (``models.py`` "sd15-small", exported with ``--cache deepcache``), 20 and 50 DDIM steps, CFG,
128x128 by default (``--size``), one image; every setting is timed in the same run, alternating, so the ratios hold on a loaded
machine even when absolute times drift. PSNR of each cached image against the uncached one. With
``--openvino`` the same settings also run on OpenVINO bf16 (speed-ups against onnxruntime fp32 without
cache: the two multiply). JSON + plot in ``--out``.

    PYTHONPATH=python:export python benchmarks/step_cache.py --out benchmarks/results [--repeat 3] [--openvino]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import write_json  # noqa: E402
from models import DEFAULT_CACHE, diffusion_model, log  # noqa: E402

SETTINGS = [None, "deepcache:interval=3,branch=0", "deepcache:interval=5,branch=0"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def run(out: str, cache: str, repeat: int, steps_list=(20, 50), size: int = 128, openvino: bool = False) -> dict:
    import fastgen

    model = diffusion_model("sd15-small", cache)
    backends = [("onnxruntime", "fp32")] + ([("openvino", "bf16")] if openvino else [])
    pipes = {b: fastgen.Pipeline.load(model["engine"], backend=b[0], precision=b[1]) for b in backends}
    configs = [(b, s) for b in backends for s in SETTINGS]
    kw = dict(height=size, width=size, guidance_scale=7.5, scheduler="ddim", output_type="np", seed=1)
    for pipe in pipes.values():
        pipe("warm up", num_inference_steps=2, **kw)
        pipe("warm up", num_inference_steps=2, cache="deepcache:interval=2", **kw)
    rows = []
    for steps in steps_list:
        times: dict = {c: [] for c in configs}
        images, stats = {}, {}
        for r in range(repeat):  # alternate the settings so load changes hit them alike
            for c in configs:
                t0 = time.perf_counter()
                o = pipes[c[0]]("a photo of a cat", num_inference_steps=steps, cache=c[1], **kw)
                times[c].append(time.perf_counter() - t0)
                images[c], stats[c] = o.images, o.cache_stats
            log(f"{steps} steps, round {r + 1}: " + ", ".join(f"{c[0][0]} {c[0][1]} {c[1] or 'off'} {times[c][-1]:.2f}s"
                                                             for c in configs))
        ref = configs[0]  # onnxruntime fp32, cache off
        base = float(np.median(times[ref]))
        for c in configs:
            t = float(np.median(times[c]))
            rows.append({"steps": steps, "size": size, "backend": f"{c[0][0]} {c[0][1]}", "cache": c[1] or "off",
                         "seconds_median": t, "seconds": times[c], "speedup": base / t,
                         "full_calls": steps if c[1] is None else stats[c]["full_calls"], "network_calls": steps,
                         "psnr_vs_off": None if c == ref else psnr(images[c], images[ref])})
    payload = {"model": model["description"], "size": size, "call_seconds": call_costs(pipes[backends[0]], size), "scheduler": "DDIM", "guidance_scale": 7.5,
               "repeat": repeat, "load_avg": os.getloadavg(), "rows": rows}
    path = write_json(out, "step_cache", payload)
    plot(rows, os.path.join(out, "step_cache.png"))
    return {"json": path, "rows": rows}


def call_costs(pipe, size: int, repeat: int = 7) -> dict:
    """Minimum seconds of one full UNet call (with the deep feature) and one shallow call, CFG batch of 2."""
    from fastgen.pipelines.step_cache import DEEP_FEATURE_INPUT

    rec = pipe.manifest.config["step_cache"]["deepcache"]["branches"]["0"]
    full, shallow = pipe.session("unet"), pipe.session(rec["component"])
    lat = size // pipe.vae_scale_factor
    rng = np.random.default_rng(0)
    feeds = {"sample": rng.standard_normal((2, 4, lat, lat), dtype=np.float32),
             "timestep": np.full((2,), 500.0, np.float32),
             "encoder_hidden_states": rng.standard_normal((2, 77, 192), dtype=np.float32)}
    feature = full.run(feeds, ["noise_pred", rec["feature"]])[rec["feature"]]
    sfeeds = {k: v for k, v in feeds.items() if k in set(shallow.input_names)}
    sfeeds[DEEP_FEATURE_INPUT] = feature

    def best(fn):
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return min(ts)

    f = best(lambda: full.run(feeds, ["noise_pred", rec["feature"]]))
    sh = best(lambda: shallow.run(sfeeds, ["noise_pred"]))
    return {"full": f, "shallow_branch0": sh, "ratio": f / sh}


def plot(rows: list[dict], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    steps = sorted({r["steps"] for r in rows})
    for r in rows:
        r.setdefault("label", r["cache"] if r.get("backend", "onnxruntime fp32") == "onnxruntime fp32"
                     else f"{r['backend']}, {r['cache']}")
    kinds = list(dict.fromkeys(r["label"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    w = 0.8 / len(kinds)
    for i, k in enumerate(kinds):
        ys = [next(r["seconds_median"] for r in rows if r["steps"] == s and r["label"] == k) for s in steps]
        bars = ax.bar([j + i * w for j in range(len(steps))], ys, w, label=k)
        for b, s in zip(bars, steps):
            r = next(r for r in rows if r["steps"] == s and r["label"] == k)
            ax.annotate(f"{r['speedup']:.2f}x\n{r['full_calls']} full", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks([j + w * (len(kinds) - 1) / 2 for j in range(len(steps))], [f"{s} steps" for s in steps])
    ax.set_ylabel("end-to-end seconds (median)")
    ax.set_title(f"fastgen step caching, SD 1.5 layout at 0.3 width, {rows[0]['size']} px, CFG")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--cache", default=DEFAULT_CACHE, help="model cache directory")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--openvino", action="store_true", help="also OpenVINO bf16 (off and each cache)")
    ap.add_argument("--steps", default="20,50", help="comma-separated step counts (default 20,50)")
    ap.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    args = ap.parse_args(argv)
    res = run(args.out, args.cache, args.repeat, tuple(int(s) for s in args.steps.split(",")), size=args.size,
              openvino=args.openvino)
    for r in res["rows"]:
        print(f"{r['steps']:3d} steps  {r['backend']:17s} {r['cache']:34s} {r['seconds_median']:7.2f}s  {r['speedup']:.2f}x  "
              f"{r['full_calls']:2d}/{r['network_calls']} full  PSNR {r['psnr_vs_off']}")
    print(res["json"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
