"""OpenVINO start-up and precision on this CPU, measured in CPU seconds (robust to other processes' load).

One SD 1.5-architecture UNet (``benchmarks/models.py`` SD15_UNET, random weights; ``--width-scale`` scales its
block widths, 0.5 = 0.88 GB of weights, 1.0 = the real 3.4 GB), exported to ONNX once. Then:

- **second cold start**: fresh processes, each spawn -> load -> first UNet call, with every cache warm:
  onnxruntime (``ort``), fastgen's OpenVINO session reading the ONNX file (``ov-onnx``, converted-IR cache off,
  compile cache warm: the previous design) and reading its converted IR (``ov-ir``, both caches warm). Rounds
  interleaved; CPU seconds (user + system, all threads), wall seconds and RSS after the call.
- **precision**: the UNet call (batch 2, 256 px) in OpenVINO f32 and bf16, CPU seconds, interleaved, best of
  ``--calls``; and what ``precision="auto"`` picks on this machine (the probe of fastgen.backends.openvino).

``python benchmarks/ov_startup.py --out benchmarks/results`` writes ov_startup.json and ov_startup.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "python"), os.path.join(HERE, "..", "export"), HERE]
MODES = ("ort", "ov-onnx", "ov-ir")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def feeds(latent: int = 32) -> dict:
    rng = np.random.default_rng(0)
    return {"sample": rng.standard_normal((2, 4, latent, latent)).astype(np.float32),
            "timestep": np.array([500.0, 500.0], np.float32),
            "encoder_hidden_states": rng.standard_normal((2, 77, 768)).astype(np.float32)}


def export_unet(cache: str, scale: float) -> str:
    path = os.path.join(cache, f"ov_startup_unet_x{scale:g}", "model.onnx")
    return path if os.path.exists(path) else export_sd15_unet(path, scale)


def export_sd15_unet(path: str, scale: float, attention: str = "sdpa") -> str:
    """Export the seeded SD 1.5-architecture UNet at ``scale`` width to ``path`` (``fastgen export
    --attention`` choice ``attention``)."""
    import torch
    from diffusers import UNet2DConditionModel
    from fastgen_export.attention import fused_attention
    from fastgen_export.onnx_utils import export_module

    from models import SD15_UNET

    cfg = dict(SD15_UNET, block_out_channels=tuple(int(c * scale) for c in SD15_UNET["block_out_channels"]))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg).eval()

    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.m(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]

    f = {k: torch.from_numpy(v) for k, v in feeds().items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with fused_attention(attention == "mha"):
        export_module(Wrapped(unet), tuple(f.values()), path + ".tmp", input_names=list(f),
                      output_names=["noise_pred"], opset=18,
                      dynamic_axes={"sample": {0: "b", 2: "h", 3: "w"}, "timestep": {0: "b"},
                                    "encoder_hidden_states": {0: "b"}})
    for suffix in ("", ".data"):
        if os.path.exists(path + ".tmp" + suffix):
            os.replace(path + ".tmp" + suffix, path + suffix)
    return path


def worker(mode: str, path: str) -> dict:
    """One process's cold start: load the component and run it once."""
    import psutil

    c0, t0 = cpu_seconds(), time.perf_counter()
    if mode == "ort":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = os.cpu_count()
        session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        session.run(None, feeds())
    else:
        os.environ["FASTGEN_OPENVINO_IR_CACHE"] = "1" if mode == "ov-ir" else "0"
        from fastgen.backends.openvino import OvSession

        session = OvSession("unet", path, precision="fp32")
        session.run(feeds())
    cpu, wall = cpu_seconds() - c0, time.perf_counter() - t0
    # with the session alive: what the loaded component holds; and the process's peak
    return {"mode": mode, "cpu_s": cpu, "wall_s": wall, "rss_mib": psutil.Process().memory_info().rss / 2**20,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def cold_starts(path: str, rounds: int) -> dict:
    def spawn(mode):
        p = subprocess.run([sys.executable, __file__, "--worker", mode, "--onnx", path], capture_output=True,
                           text=True, timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"{mode} worker failed: {p.stderr[-2000:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])

    for mode in ("ov-onnx", "ov-ir"):  # warm the compile caches (and convert the IR) first
        spawn(mode)
    runs = {m: [] for m in MODES}
    for _ in range(rounds):
        for m in MODES:
            runs[m].append(spawn(m))
    best = {m: min(r, key=lambda x: x["cpu_s"]) for m, r in runs.items()}
    return {"runs": runs, "best": best,
            "ov_ir_vs_ort_cpu": best["ort"]["cpu_s"] / best["ov-ir"]["cpu_s"],
            "ov_ir_vs_ov_onnx_cpu": best["ov-onnx"]["cpu_s"] / best["ov-ir"]["cpu_s"],
            "ov_ir_rss_vs_ov_onnx": best["ov-ir"]["rss_mib"] / best["ov-onnx"]["rss_mib"],
            "rss_mib": {m: best[m]["rss_mib"] for m in MODES}, "peak_rss_mib": {m: best[m]["peak_rss_mib"] for m in MODES}}


def precisions(path: str, calls: int) -> dict:
    from fastgen.backends import openvino as ovb

    sessions = {p: ovb.OvSession("unet", path, precision=p) for p in ("fp32", "bf16")}
    f = feeds()
    for s in sessions.values():
        s.run(f)
    best = {p: float("inf") for p in sessions}
    for _ in range(calls):
        for p, s in sessions.items():
            c0 = cpu_seconds()
            s.run(f)
            best[p] = min(best[p], cpu_seconds() - c0)
    return {"unet_call_cpu_s": best, "bf16_vs_fp32": best["fp32"] / best["bf16"],
            "native_bf16_instructions": ovb.native_bf16(), "auto_picks": ovb.resolve_precision("auto")}


def unet_bench_parser(doc: str, name: str, *, calls: int) -> argparse.ArgumentParser:
    """The options the UNet benchmarks share (output folder, model cache, width scale, rounds, calls)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", help=f"directory for {name}.json / .png")
    ap.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "fastgen-bench"))
    ap.add_argument("--width-scale", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--calls", type=int, default=calls)
    return ap


def cpu_name() -> str:
    return next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                platform.processor())


def plot(rec: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = rec["cold_start"]["best"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.bar(MODES, [best[m]["cpu_s"] for m in MODES], color=["#888", "#d9822b", "#2b7bd9"])
    a.set_ylabel("CPU seconds to the first UNet call")
    for i, m in enumerate(MODES):
        a.text(i, best[m]["cpu_s"], f"RSS {best[m]['rss_mib']:.0f} MiB\npeak {best[m]['peak_rss_mib']:.0f} MiB",
               ha="center", va="bottom", fontsize=8)
    a.set_title("second cold start (caches warm)")
    p = rec["precision"]["unet_call_cpu_s"]
    b.bar(list(p), list(p.values()), color=["#2b7bd9", "#9b59b6"])
    b.set_ylabel("CPU seconds per UNet call")
    b.set_title(f"OpenVINO precision (auto picks {rec['precision']['auto_picks']})")
    fig.suptitle(f"SD 1.5-arch UNet x{rec['width_scale']:g}, {rec['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = unet_bench_parser(__doc__, "ov_startup", calls=4)
    ap.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--onnx", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.onnx)))
        return
    if not args.out:
        ap.error("--out is required")
    os.environ["FASTGEN_CACHE_DIR"] = os.path.join(args.cache, "ov_startup_fastgen_cache")  # the workers inherit it
    path = export_unet(args.cache, args.width_scale)
    rec = {"width_scale": args.width_scale, "cpu": cpu_name(), "cores": os.cpu_count(),
           "load_before": os.getloadavg(), "cold_start": cold_starts(path, args.rounds),
           "precision": precisions(path, args.calls)}
    rec["load_after"] = os.getloadavg()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ov_startup.json"), "w") as f:
        json.dump(rec, f, indent=1)
    plot(rec, os.path.join(args.out, "ov_startup.png"))
    print(json.dumps({k: rec["cold_start"][k] for k in ("ov_ir_vs_ort_cpu", "ov_ir_vs_ov_onnx_cpu", "rss_mib",
                                                          "peak_rss_mib")} | rec["precision"], indent=1))


if __name__ == "__main__":
    main()
