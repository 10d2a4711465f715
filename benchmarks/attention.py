"""Denoiser attention as exported by ``fastgen export --attention sdpa`` (MatMul / Softmax / MatMul) vs
``--attention mha`` (ONNX Runtime's fused com.microsoft.MultiHeadAttention), per UNet call.

One SD 1.5-architecture UNet (``benchmarks/models.py`` SD15_UNET, random weights, ``--width-scale`` 0.5 by
default), exported twice from the same weights. Each configuration (backend onnxruntime / OpenVINO fp32 x
attention x latent size 32 / 64 = 256 / 512 px, batch 2, 77 tokens) runs in its own process (fastgen's own
sessions: ``OrtSession``, ``OvSession``), so its peak RSS is its own: one warm-up call, then ``--calls`` calls
timed in CPU seconds (user + system, all threads: robust to other processes' load). Rounds of all
configurations are interleaved; the best call over rounds is reported, and the largest peak RSS.

``python benchmarks/attention.py --out benchmarks/results`` writes attention.json and attention.png.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "python"), os.path.join(HERE, "..", "export"), HERE]
BACKENDS = ("onnxruntime", "openvino")
ATTENTIONS = ("sdpa", "mha")

from ov_startup import cpu_name, cpu_seconds, export_sd15_unet, feeds, unet_bench_parser  # noqa: E402


def export_unets(cache: str, scale: float) -> dict[str, str]:
    """The UNet exported with each attention (same seeded weights); cached by path."""
    paths = {a: os.path.join(cache, f"attention_unet_x{scale:g}_{a}", "model.onnx") for a in ATTENTIONS}
    return {a: p if os.path.exists(p) else export_sd15_unet(p, scale, a) for a, p in paths.items()}


def worker(backend: str, path: str, latent: int, calls: int) -> dict:
    """One configuration in this process: load, warm up, time ``calls`` calls; output and peak RSS."""
    if backend == "onnxruntime":
        from fastgen.backends.onnxruntime import OrtSession

        sess = OrtSession("unet", path)
    else:
        from fastgen.backends.openvino import OvSession

        sess = OvSession("unet", path, precision="fp32")
    f = feeds(latent)
    out = sess.run(f)["noise_pred"]  # warm-up (OpenVINO compiles the static shape here)
    times = []
    for _ in range(calls):
        c0 = cpu_seconds()
        sess.run(f)
        times.append(cpu_seconds() - c0)
    np.save(os.environ["ATTN_BENCH_OUT"], out.reshape(-1)[:4096])
    return {"cpu_s": times, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(paths: dict[str, str], latents: list[int], rounds: int, calls: int, scratch: str) -> dict:
    configs = [(b, a, n) for n in latents for b in BACKENDS for a in ATTENTIONS]
    runs: dict[str, list] = {}
    heads: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for b, a, n in configs:
            key = f"{b}/{a}/{n}"
            out = os.path.join(scratch, key.replace("/", "_") + ".npy")
            p = subprocess.run([sys.executable, __file__, "--worker", b, "--onnx", paths[a], "--latent", str(n),
                                "--calls", str(calls)], capture_output=True, text=True, timeout=3600,
                               env=dict(os.environ, ATTN_BENCH_OUT=out))
            if p.returncode != 0:
                raise RuntimeError(f"{key} worker failed: {p.stderr[-2000:]}")
            runs.setdefault(key, []).append(json.loads(p.stdout.strip().splitlines()[-1]))
            heads[key] = np.load(out)
            print(key, runs[key][-1], file=sys.stderr, flush=True)
    table = {}
    for b, a, n in configs:
        key = f"{b}/{a}/{n}"
        ref = heads[f"onnxruntime/sdpa/{n}"]
        table[key] = {"backend": b, "attention": a, "latent": n, "px": n * 8,
                      "cpu_s": min(min(r["cpu_s"]) for r in runs[key]),
                      "peak_rss_mib": max(r["peak_rss_mib"] for r in runs[key]),
                      "max_abs_vs_ort_sdpa": float(np.abs(heads[key] - ref).max())}
    speedup = {f"{b}/{n}": table[f"{b}/sdpa/{n}"]["cpu_s"] / table[f"{b}/mha/{n}"]["cpu_s"]
               for n in latents for b in BACKENDS}
    rss = {f"{b}/{n}": table[f"{b}/sdpa/{n}"]["peak_rss_mib"] / table[f"{b}/mha/{n}"]["peak_rss_mib"]
           for n in latents for b in BACKENDS}
    return {"runs": runs, "table": table, "mha_speedup_cpu": speedup, "sdpa_over_mha_peak_rss": rss}


def plot(rec: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = rec["table"]
    groups = [f"{b}\n{n * 8}px" for n in rec["latents"] for b in BACKENDS]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, field, label in ((axes[0], "cpu_s", "CPU seconds per UNet call"),
                             (axes[1], "peak_rss_mib", "peak RSS (MiB)")):
        x = np.arange(len(groups))
        for i, (a, color) in enumerate(zip(ATTENTIONS, ("#888", "#2b7bd9"))):
            vals = [t[f"{b}/{a}/{n}"][field] for n in rec["latents"] for b in BACKENDS]
            ax.bar(x + (i - 0.5) * 0.38, vals, 0.38, label=a, color=color)
        ax.set_xticks(x, groups)
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(f"SD 1.5-arch UNet x{rec['width_scale']:g}, batch 2, fp32: --attention sdpa vs mha "
                 f"({rec['cpu']}, {rec['cores']} cores)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = unet_bench_parser(__doc__, "attention", calls=2)
    ap.add_argument("--latents", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    ap.add_argument("--onnx", help=argparse.SUPPRESS)
    ap.add_argument("--latent", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.onnx, args.latent, args.calls)))
        return
    if not args.out:
        ap.error("--out is required")
    os.environ["FASTGEN_CACHE_DIR"] = os.path.join(args.cache, "attention_fastgen_cache")  # workers inherit it
    paths = export_unets(args.cache, args.width_scale)
    scratch = os.path.join(args.cache, "attention_outputs")
    os.makedirs(scratch, exist_ok=True)
    rec = {"width_scale": args.width_scale, "latents": args.latents, "batch": 2, "cpu": cpu_name(),
           "cores": os.cpu_count(), "load_before": os.getloadavg(), "rounds": args.rounds, "calls": args.calls,
           **measure(paths, args.latents, args.rounds, args.calls, scratch)}
    rec["load_after"] = os.getloadavg()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "attention.json"), "w") as f:
        json.dump(rec, f, indent=1)
    plot(rec, os.path.join(args.out, "attention.png"))
    print(json.dumps({"table": rec["table"], "mha_speedup_cpu": rec["mha_speedup_cpu"],
                      "sdpa_over_mha_peak_rss": rec["sdpa_over_mha_peak_rss"]}, indent=1))


if __name__ == "__main__":
    main()
