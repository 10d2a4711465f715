"""Run every benchmark: fastgen (ONNX Runtime, no torch) vs diffusers / transformers (PyTorch), same run.

    python benchmarks/run_all.py [--quick] --out DIR [--device cpu|cuda] [--cache DIR] [--demo-src DIR]

Writes one JSON per benchmark into DIR (loop_overhead, e2e, cold_start, memory, throughput,
batch_scaling, captioning, video, gpu) and one PNG per figure. Models (see models.py): ``tiny`` (built from
fastgen_export.testing), ``sd15`` (the SD 1.5 architecture with random weights at a 32x32 latent; full
run only unless --models names it), ``demo`` (the shipped demo engine, when installed, with its diffusers
folder from --demo-src or /work/demo_train; otherwise recorded as skipped). Built and exported models are
cached under --cache, so reruns only measure. ``video``: text-to-video seconds per frame and peak RSS
(fresh process per configuration) on the tiny AnimateDiff model of models.py (16-frame motion module) at
16 and 64 frames: fastgen's context windows vs diffusers' FreeNoise beyond the motion length (video.py).
``cpu_backends`` (cpu_backends.py, issue 16): on the ``sd15`` model at 256 px / 10 steps (quick) or 512 px /
20 steps (full), fresh processes per configuration: diffusers fp32 / bf16 autocast, optimum-intel's
OVStableDiffusionPipeline fp32 / bf16 / hybrid int8 (in its own venv, made under --cache on first use by
peer_env.sh), fastgen onnxruntime fp32 and OpenVINO fp32 / bf16 / int8 (when this build has int8); stage
times, peak RSS, PSNR against each fp32 counterpart, the demo model's accuracy per precision, the issue's
target ratios.

With ``--device cuda`` the same benchmarks load fastgen with the CUDA execution provider (TensorRT when
the engine has plans) and diffusers / transformers on cuda; without a CUDA device every JSON says
"not run: no CUDA device" instead of holding numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import write_json  # noqa: E402

BENCHMARKS = ("loop_overhead", "e2e", "cold_start", "memory", "throughput", "batch_scaling", "captioning", "video",
              "cpu_backends")

# per-mode settings: steps / repeats per model; None = not run in that mode by default
SETTINGS = {
    "quick": {"models": ["tiny", "demo"], "captioners": ["vit-gpt2-tiny", "blip-tiny"],
              "steps": {"tiny": 10, "demo": 10, "sd15": 2}, "repeat": {"tiny": 3, "demo": 2, "sd15": 1},
              "cold_repeat": {"tiny": 2, "demo": 1, "sd15": 1}, "cold_calls": {"tiny": 2, "demo": 2, "sd15": 1},
              "import_repeat": 3, "callers": (1, 2, 4), "per_caller": 1, "tp_repeat": 1,
              "batches": (1, 2, 4), "cap_images": 4, "cap_tokens": 20, "cap_repeat": 3,
              "tp_models": ["tiny", "demo"],
              "video": {"frames": (16, 64), "steps": 2, "calls": 2, "processes": 1, "size": 64},
              "cpu_backends": {"model": "sd15"}},  # 256 px, 10 steps: cpu_backends.MODES
    "full": {"models": ["tiny", "demo", "sd15"], "captioners": ["vit-gpt2-tiny", "blip-tiny", "vit-gpt2-base"],
             "steps": {"tiny": 20, "demo": 20, "sd15": 2}, "repeat": {"tiny": 5, "demo": 3, "sd15": 1},
             "cold_repeat": {"tiny": 3, "demo": 2, "sd15": 1}, "cold_calls": {"tiny": 2, "demo": 2, "sd15": 1},
             "import_repeat": 5, "callers": (1, 2, 4), "per_caller": 2, "tp_repeat": 2,
             "batches": (1, 2, 4), "cap_images": 4, "cap_tokens": 20, "cap_repeat": 2,
             "tp_models": ["tiny", "demo"],
             "video": {"frames": (16, 64), "steps": 10, "calls": 3, "processes": 2, "size": 128},
             "cpu_backends": {"model": "sd15"}},  # 512 px, 20 steps
}
COLD_MODELS = {"quick": ["tiny", "demo"], "full": ["tiny", "demo", "sd15"]}


def _log(msg: str) -> None:
    print(f"[run_all {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _versions_and_threads(device: str) -> dict:
    info = {"device": device}
    try:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few minutes: fewer models, steps and repeats")
    ap.add_argument("--out", required=True, help="directory for the JSON and PNG files")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--cache", default=None, help="where built / exported models are kept (default "
                                                   "~/.cache/fastgen-bench)")
    ap.add_argument("--demo-src", default=None, help="diffusers folder of the demo model (default /work/demo_train "
                                                     "when it exists)")
    ap.add_argument("--models", default=None, help="comma list of text-to-image models: tiny, demo, sd15")
    ap.add_argument("--captioners", default=None,
                    help="comma list: vit-gpt2-tiny, blip-tiny, vit-gpt2-base ('' for none)")
    ap.add_argument("--only", default=None, help=f"comma list of benchmarks to run ({', '.join(BENCHMARKS)})")
    ap.add_argument("--steps", type=int, default=None, help="override the denoising steps of every model")
    ap.add_argument("--repeat", type=int, default=None, help="override every repeat count (min 1)")
    ap.add_argument("--video-frames", default=None,
                    help="comma list of video lengths (default 16,64; the motion module holds 16 frames)")
    ap.add_argument("--video-size", type=int, default=None, help="video height = width in pixels (a multiple of 16)")
    ap.add_argument("--video-threads", type=int, default=None,
                    help="pin torch and ONNX Runtime to this many threads in the video benchmark (default: their own)")
    ap.add_argument("--cpu-model", default=None, help="model of the cpu_backends benchmark (default sd15)")
    ap.add_argument("--cpu-size", type=int, default=None, help="cpu_backends image size (default 256 quick, 512 full)")
    ap.add_argument("--cpu-configs", default=None, help="comma list of cpu_backends configurations (default all)")
    ap.add_argument("--cpu-demo-prompts", type=int, default=None, help="cpu_backends demo accuracy prompts (default 60)")
    ap.add_argument("--peer-venv", default=None, help="the optimum-intel venv of cpu_backends (default CACHE/peer-venv)")
    args = ap.parse_args(argv)

    import models as M
    import plots
    from runners import cuda_available

    mode = "quick" if args.quick else "full"
    st = dict(SETTINGS[mode])
    cache = args.cache or M.DEFAULT_CACHE
    model_names = args.models.split(",") if args.models else st["models"]
    cap_names = ([c for c in args.captioners.split(",") if c] if args.captioners is not None else st["captioners"])
    only = set(args.only.split(",")) if args.only else set(BENCHMARKS)
    unknown = only - set(BENCHMARKS)
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    rep = (lambda n: max(1, args.repeat)) if args.repeat else (lambda n: n)
    steps_of = (lambda m: args.steps) if args.steps else (lambda m: st["steps"][m])
    os.makedirs(args.out, exist_ok=True)
    device = args.device
    started = time.perf_counter()
    common = {"mode": mode, **_versions_and_threads(device)}
    results: dict = {}

    # ---- GPU section: honest about where it has not run
    has_cuda = cuda_available()
    if device == "cuda" and not has_cuda:
        status = "not run: no CUDA device"
    elif device == "cuda":
        status = "run: every benchmark below used the CUDA device"
    else:
        status = ("not run: --device cpu (rerun with --device cuda)" if has_cuda else "not run: no CUDA device")
    write_json(args.out, "gpu", {**common, "status": status, "cuda_available": has_cuda})
    if device == "cuda" and not has_cuda:
        for name in sorted(only):
            write_json(args.out, name, {**common, "status": status})
        _log(f"{status}; wrote placeholder JSON for {', '.join(sorted(only))}")
        return 0

    def model(name):
        try:
            return M.diffusion_model(name, cache, demo_src=args.demo_src)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            return {"name": name, "skipped": f"not run: building / exporting failed: {e!r}"}

    def guarded(name, fn):
        if name not in only:
            return
        t0 = time.perf_counter()
        _log(f"{name} ...")
        try:
            payload = fn()
        except Exception as e:  # noqa: BLE001 - one failing benchmark must not lose the others
            traceback.print_exc()
            payload = {"error": repr(e)}
        payload = {**common, **payload, "elapsed_s": time.perf_counter() - t0}
        results[name] = payload
        write_json(args.out, name, payload)
        _log(f"{name} done in {payload['elapsed_s']:.0f}s")

    # ---- 1. loop overhead (its own script, its own JSON + PNG)
    if "loop_overhead" in only:
        import loop_overhead

        t0 = time.perf_counter()
        _log("loop_overhead ...")
        import torch

        threads = torch.get_num_threads()
        try:
            loop_overhead.main(["--out", args.out] + (["--quick"] if args.quick else []))
        finally:
            torch.set_num_threads(threads)  # loop_overhead pins torch to 1 thread; the others use the default
        _log(f"loop_overhead done in {time.perf_counter() - t0:.0f}s")

    t2i_benchmarks = {"e2e", "cold_start", "memory", "throughput", "batch_scaling"}
    models = {n: model(n) for n in model_names} if only & t2i_benchmarks else {}
    usable = {n: m for n, m in models.items() if "skipped" not in m}
    skipped = [{"model": n, "status": m["skipped"]} for n, m in models.items() if "skipped" in m]
    for s in skipped:
        _log(f"model {s['model']}: {s['status']}")

    import t2i

    def per_model(fn, names=None):
        recs = list(skipped) if names is None else [s for s in skipped if s["model"] in names]
        for n, m in usable.items():
            if names is not None and n not in names:
                continue
            _log(f"  {n}")
            try:
                recs.append(fn(n, m))
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                recs.append({"model": n, "error": repr(e)})
        return recs

    # ---- 2. end to end
    guarded("e2e", lambda: {"models": per_model(lambda n, m: t2i.e2e(m, steps_of(n), rep(st["repeat"][n]), device))})

    # ---- 3 + 4. cold start and memory (the same fresh processes)
    if only & {"cold_start", "memory"}:
        import cold_start

        cold_recs, mem_recs = [], []
        t0 = time.perf_counter()
        _log("cold_start + memory ...")
        imports = None
        try:
            imports = cold_start.import_time(rep(st["import_repeat"]))
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            imports = {"error": repr(e)}
        cold_names = [n for n in model_names if n in COLD_MODELS[mode] or args.models]
        for s in skipped:
            cold_recs.append(s)
            mem_recs.append(s)
        for n, m in usable.items():
            if n not in cold_names:
                continue
            _log(f"  {n}")
            try:
                c, mm = cold_start.cold_start_and_memory(m, steps_of(n), rep(st["cold_repeat"][n]),
                                                        calls=st["cold_calls"][n], device=device)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                c = mm = {"model": n, "error": repr(e)}
            cold_recs.append(c)
            mem_recs.append(mm)
        el = time.perf_counter() - t0
        results["import_time"] = imports
        for name, payload in (("cold_start", {"import": imports, "models": cold_recs}),
                              ("memory", {"models": mem_recs})):
            if name in only:
                payload = {**common, **payload, "elapsed_s": el}
                results[name] = payload
                write_json(args.out, name, payload)
        _log(f"cold_start + memory done in {el:.0f}s")

    # ---- 5. service throughput, 6. batch scaling
    tp_names = st["tp_models"] if not args.models else model_names
    guarded("throughput", lambda: {"models": per_model(
        lambda n, m: t2i.throughput(m, steps_of(n), rep(st["tp_repeat"]), st["callers"], st["per_caller"], device),
        tp_names)})
    guarded("batch_scaling", lambda: {"models": per_model(
        lambda n, m: t2i.batch_scaling(m, steps_of(n), rep(st["repeat"][n]), st["batches"], device), tp_names)})

    # ---- 7. captioning
    def caps():
        import captioning

        recs = []
        for c in cap_names:
            _log(f"  {c}")
            try:
                recs.append(captioning.bench_captioner(M.captioner(c, cache), st["cap_images"], st["cap_tokens"],
                                                       rep(st["cap_repeat"]), device=device))
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                recs.append({"model": c, "error": repr(e)})
        return {"models": recs}

    guarded("captioning", caps)

    # ---- 8. text-to-video (fresh processes per configuration)
    def video():
        import video as V

        vs = st["video"]
        frames = tuple(int(x) for x in args.video_frames.split(",")) if args.video_frames else vs["frames"]
        m = M.video_model("animatediff-tiny", cache)
        return {"models": [V.bench_video(m, frames=frames, steps=args.steps or vs["steps"], calls=rep(vs["calls"]),
                                         processes=rep(vs["processes"]),
                                         size=args.video_size or vs["size"], device=device,
                                         threads=args.video_threads)]}

    guarded("video", video)

    # ---- 9. CPU backends: diffusers / optimum-intel / fastgen at fp32, bf16, int8 (fresh processes)
    def cpu():
        if device != "cpu":
            return {"status": "not run: a CPU benchmark (run with --device cpu)"}
        import cpu_backends

        rec = cpu_backends.collect(args.quick, cache=cache, model_name=args.cpu_model or st["cpu_backends"]["model"],
                                   configs=args.cpu_configs.split(",") if args.cpu_configs else None,
                                   size=args.cpu_size, steps=args.steps, calls=args.repeat,
                                   demo_prompts=args.cpu_demo_prompts, peer_venv_dir=args.peer_venv)
        _log("cpu_backends:\n" + cpu_backends.summary(rec))
        return rec

    guarded("cpu_backends", cpu)

    # ---- figures
    results["e2e"] = results.get("e2e", {})
    made = plots.all_figures(args.out, results)
    _log(f"figures: {', '.join(os.path.basename(p) for p in made)}")
    _log(f"all done in {time.perf_counter() - started:.0f}s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
