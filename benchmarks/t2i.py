"""Text-to-image benchmarks, fastgen (ONNX Runtime) vs diffusers (PyTorch), in one process, same latents.

- ``e2e``: seconds per image and the stage breakdown (text encode, UNet, VAE decode, loop overhead).
- ``throughput``: images/s with 1, 2, 4 concurrent callers (threads) on one pipeline. fastgen pipelines are
  thread-safe; a diffusers pipeline is not (its scheduler holds per-call state), so its callers share a lock,
  which is how a service has to use it.
- ``batch_scaling``: num_images_per_prompt 1, 2, 4: seconds per call and per image.

Each function takes the model records of models.py and a settings dict; it returns JSON-ready rows.
"""

from __future__ import annotations

import gc
import statistics
import threading
import time

from runners import repeat_call, runner

FRAMEWORKS = ("fastgen", "diffusers")


def _free(*objs):
    del objs
    gc.collect()


def e2e(model: dict, steps: int, repeat: int, device: str = "cpu") -> dict:
    res = {"model": model["name"], "description": model["description"], "steps": steps, "guidance_scale": 7.5,
           "latent": f"1x4x{model['latent']}x{model['latent']}",
           "image_size": model["latent"] * model["vae_scale_factor"]}
    for fw in FRAMEWORKS:
        r = runner(fw, model, device)
        res[fw] = repeat_call(lambda: r(steps), repeat)
        if fw == "fastgen":
            res["fastgen"]["backend"] = r.backend
        r = None
        gc.collect()
    f, d = res["fastgen"], res["diffusers"]
    res["speedup_total"] = d["min"]["total"] / f["min"]["total"]
    res["speedup_total_median"] = d["median"]["total"] / f["median"]["total"]
    res["speedup_by_stage"] = {k: (d["min"][k] / f["min"][k] if f["min"][k] > 0 else None)
                               for k in ("text_encode", "unet", "vae_decode", "loop_overhead")}
    return res


def _concurrent(r, steps: int, callers: int, per_caller: int) -> float:
    """images/s: `callers` threads each making `per_caller` calls on the same runner."""
    errors = []
    barrier = threading.Barrier(callers + 1)

    def work(i):
        barrier.wait()
        try:
            for j in range(per_caller):
                r(steps, seed=100 * i + j)
        except Exception as e:  # noqa: BLE001 - reported in the JSON
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise RuntimeError(errors[0])
    return callers * per_caller / dt


def throughput(model: dict, steps: int, repeat: int, callers=(1, 2, 4), per_caller: int = 2,
               device: str = "cpu") -> dict:
    rows = []
    for fw in FRAMEWORKS:
        r = runner(fw, model, device)
        r(steps)  # warm-up
        for c in callers:
            vals = [_concurrent(r, steps, c, per_caller) for _ in range(repeat)]
            rows.append({"framework": fw, "callers": c, "images_per_s": max(vals),
                         "images_per_s_median": statistics.median(vals), "repeat": repeat,
                         "calls_per_caller": per_caller})
        r = None
        gc.collect()
    by = {(x["framework"], x["callers"]): x["images_per_s"] for x in rows}
    ratios = {str(c): by[("fastgen", c)] / by[("diffusers", c)] for c in callers}
    return {"model": model["name"], "steps": steps, "image_size": model["latent"] * model["vae_scale_factor"],
            "rows": rows, "speedup_by_callers": ratios,
            "note": "diffusers callers share a lock (its pipeline is not thread-safe); fastgen calls run "
                    "concurrently on one Pipeline"}


def batch_scaling(model: dict, steps: int, repeat: int, batches=(1, 2, 4), device: str = "cpu") -> dict:
    rows = []
    for fw in FRAMEWORKS:
        r = runner(fw, model, device)
        for n in batches:
            t = repeat_call(lambda: r(steps, n=n), repeat)
            rows.append({"framework": fw, "num_images_per_prompt": n, "s_per_call": t["min"]["total"],
                         "s_per_call_median": t["median"]["total"], "s_per_image": t["min"]["total"] / n,
                         "s_per_image_median": t["median"]["total"] / n, "repeat": repeat})
        r = None
        gc.collect()
    by = {(x["framework"], x["num_images_per_prompt"]): x["s_per_image"] for x in rows}
    ratios = {str(n): by[("diffusers", n)] / by[("fastgen", n)] for n in batches}
    return {"model": model["name"], "steps": steps, "image_size": model["latent"] * model["vae_scale_factor"],
            "rows": rows, "speedup_by_batch": ratios}
