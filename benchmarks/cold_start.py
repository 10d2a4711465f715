"""Cold start and memory: fresh processes (bench_worker.py), fastgen (no torch) vs diffusers.

- ``import_time``: wall time of ``python bench_worker.py import FW`` from spawn to the end of the import
  (interpreter start included) and the import alone (measured inside).
- ``cold_start``: spawn -> import -> load -> first image (the same call as the e2e benchmark).
- ``memory``: peak RSS (VmHWM from /proc/self/status, else getrusage) of that process after the first image and after
  ``calls`` images: what a worker process of each framework needs.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from runners import latents_for

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "bench_worker.py")
FRAMEWORKS = ("fastgen", "diffusers")


def _spawn(args: list[str], timeout: float = 900) -> dict:
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore")
    t0 = time.time()
    p = subprocess.run([sys.executable, WORKER, *args], capture_output=True, text=True, timeout=timeout, env=env)
    wall = time.time() - t0
    if p.returncode != 0:
        raise RuntimeError(f"worker {args[:2]} failed ({p.returncode}): {p.stderr[-2000:]}")
    line = [x for x in p.stdout.splitlines() if x.startswith("{")][-1]
    res = json.loads(line)
    res["spawn_to_end_s"] = res["t_end"] - t0
    res["process_wall_s"] = wall
    return res


def _summary(vals: list[float]) -> dict:
    return {"min": min(vals), "median": statistics.median(vals), "values": vals}


def import_time(repeat: int) -> dict:
    rows = {}
    for fw in FRAMEWORKS:
        runs = [_spawn(["import", fw]) for _ in range(repeat)]
        rows[fw] = {"spawn_to_imported_s": _summary([r["spawn_to_end_s"] for r in runs]),
                    "import_s": _summary([r["import_s"] for r in runs]),
                    "peak_rss_mb": _summary([r["peak_rss_mb"] for r in runs]),
                    "torch_loaded": runs[0]["torch_loaded"]}
    return {"rows": rows,
            "speedup_import": rows["diffusers"]["import_s"]["min"] / rows["fastgen"]["import_s"]["min"],
            "speedup_spawn_to_imported": (rows["diffusers"]["spawn_to_imported_s"]["min"]
                                          / rows["fastgen"]["spawn_to_imported_s"]["min"])}


def cold_start_and_memory(model: dict, steps: int, repeat: int, calls: int = 2, device: str = "cpu") -> tuple:
    """(cold_start record, memory record) for one model: `repeat` fresh processes per framework."""
    with tempfile.TemporaryDirectory() as tmp:
        mpath, lpath = os.path.join(tmp, "model.json"), os.path.join(tmp, "latents.npy")
        with open(mpath, "w") as f:
            json.dump(model, f)
        np.save(lpath, latents_for(model, 1))
        runs = {fw: [] for fw in FRAMEWORKS}
        for _ in range(repeat):  # interleave the frameworks so drift in machine load hits both
            for fw in FRAMEWORKS:
                runs[fw].append(_spawn(["generate", fw, mpath, lpath, str(steps), str(calls), device]))
    cold, mem = {}, {}
    for fw, rs in runs.items():
        cold[fw] = {k: _summary([r[k] for r in rs]) for k in ("spawn_to_end_s", "import_s", "load_s", "first_call_s")}
        cold[fw]["torch_loaded"] = rs[0]["torch_loaded"]
        mem[fw] = {k: _summary([r[k] for r in rs])
                   for k in ("peak_rss_after_load_mb", "peak_rss_first_image_mb", "peak_rss_mb")}
        if "warm_call_s" in rs[0]:
            mem[fw]["warm_call_s"] = _summary([r["warm_call_s"] for r in rs])
    base = {"model": model["name"], "description": model["description"], "steps": steps,
            "image_size": model["latent"] * model["vae_scale_factor"], "repeat": repeat}
    cold_rec = dict(base, rows=cold, speedup_first_image=(cold["diffusers"]["spawn_to_end_s"]["min"]
                                                          / cold["fastgen"]["spawn_to_end_s"]["min"]))
    mem_rec = dict(base, calls=calls, rows=mem,
                   ratio_peak_rss=mem["diffusers"]["peak_rss_mb"]["min"] / mem["fastgen"]["peak_rss_mb"]["min"])
    return cold_rec, mem_rec
