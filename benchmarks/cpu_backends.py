"""CPU backends (issue 16): fastgen on ONNX Runtime / OpenVINO (fp32, bf16, int8) vs diffusers (fp32, bf16
autocast) vs optimum-intel's OVStableDiffusionPipeline (fp32, bf16, hybrid int8), same model and latents.

    python benchmarks/cpu_backends.py [--quick] --out DIR [--cache DIR] [--configs a,b] [--size PX] [--steps N]

Model: benchmarks/models.py ``sd15`` (the SD 1.5 architecture, random weights). Quick: 256 px, 10 steps;
full: 512 px, 20 steps; one image, CFG 7.5 (UNet batch 2), DDIM on every side (the engine's / folder's
scheduler config with DDIMScheduler; the folder's own default is PNDM), the same prompt, negative prompt
and ``fastgen.randn`` latents.

Every configuration runs in **fresh processes** (``worker`` mode of this file; quick: 2 rounds, the
configurations interleaved across frameworks and the order reversed in the second round; the fastest
timed call is reported): import, load, a first call of 1 step at the image size (it compiles every static
shape, reads the weights, does onnxruntime's first-run work: the process's cold start), then ``calls``
timed calls with per-stage timings (text encode, UNet total, VAE decode), the peak RSS (VmHWM) after load,
after the first call and at the end, and the machine's 1-minute load at start and end. fastgen's OpenVINO
compile cache starts empty (``FASTGEN_CACHE_DIR`` = CACHE/ov-compile-cache, cleared per run), so the first
fastgen OpenVINO process of a precision compiles and later ones load the compiled blobs: the **second cold
start** of a service (new process -> load -> first image) is the fastest of those processes against the
fastest onnxruntime process (``cold_rounds`` more pairs of them run at the end).

optimum-intel 2.2.0 cannot be installed next to this repository's diffusers 0.42.1 / transformers 5.23
(it pins transformers < 5.6 and huggingface-hub < 1.22); ``benchmarks/peer_env.sh`` makes its own venv
under ``--cache`` on first use (CPU torch 2.13.0 pinned) and it runs there, on a copy of the same diffusers
folder (the text encoder's weights renamed to the ``text_model.`` keys transformers 5.5 reads), exported by
optimum itself from that local folder (``export=True``), statically reshaped to the image size
(``pipe.reshape``), as optimum's docs advise for CPU. Its int8 is hybrid quantization
(``OVWeightQuantizationConfig(bits=8, quant_method="hybrid")``: int8 weights of MatMul / Embedding layers,
int8 activations of the others); the calibration data are UNet inputs collected with optimum's own
``InferRequestWrapper`` over a few prompts at the quick size and steps (optimum's default, 200 samples of
conceptual_captions at 512 px and 50 steps, needs a hub download and ~30 min here).

fastgen int8 (``fastgen optimize ENGINE --int8``, precision="int8") runs when this build has it, its
variant made once with the peer's calibration settings (the same prompts, steps and size:
``--calibration-prompts / --calibration-steps / --height / --width``); otherwise the JSON says
"int8: not available in this build".

Accuracy: PSNR of each fast path against its fp32 counterpart (diffusers bf16 vs diffusers fp32, fastgen
OpenVINO bf16 / int8 vs fastgen onnxruntime fp32, optimum bf16 / int8 vs optimum fp32), the max abs
difference of fastgen OpenVINO fp32 vs onnxruntime fp32 (target <= 2e-3), cross-framework fp32 checks,
and the demo model's colour / shape accuracy (60 prompts, 25 steps, as tests/test_demo.py) per backend
and precision. Ratios and the issue's targets are printed and stored under ``targets``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

T_START = time.time()
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PROMPT = "a photo of a cat on a red car"
NEGATIVE = "blurry"
GUIDANCE = 7.5
SCHEDULER = "DDIMScheduler"
CALIBRATION_PROMPTS = ("a photo of a dog on the grass", "a red car on the street", "a man with a blue table",
                       "two cats sitting in the car")

# name -> (framework, backend, precision)
CONFIGS = {
    "diffusers-fp32": ("diffusers", "torch", "fp32"),
    "diffusers-bf16": ("diffusers", "torch", "bf16"),
    "optimum-fp32": ("optimum", "openvino", "fp32"),
    "optimum-bf16": ("optimum", "openvino", "bf16"),
    "optimum-int8": ("optimum", "openvino", "int8"),
    "fastgen-ort-fp32": ("fastgen", "onnxruntime", "fp32"),
    "fastgen-ov-fp32": ("fastgen", "openvino", "fp32"),
    "fastgen-ov-bf16": ("fastgen", "openvino", "bf16"),
    "fastgen-ov-int8": ("fastgen", "openvino", "int8"),
}
# run order: frameworks interleaved, so drift in the machine's load spreads over all of them
ORDER = ("diffusers-fp32", "fastgen-ort-fp32", "optimum-fp32", "fastgen-ov-fp32", "diffusers-bf16",
         "fastgen-ov-bf16", "optimum-bf16", "fastgen-ov-int8", "optimum-int8")
# table / plot order: by framework
DISPLAY = ("diffusers-fp32", "diffusers-bf16", "optimum-fp32", "optimum-bf16", "optimum-int8", "fastgen-ort-fp32",
           "fastgen-ov-fp32", "fastgen-ov-bf16", "fastgen-ov-int8")
# PSNR of a fast path against its fp32 counterpart
REFERENCE = {"diffusers-bf16": "diffusers-fp32", "optimum-bf16": "optimum-fp32", "optimum-int8": "optimum-fp32",
             "fastgen-ov-fp32": "fastgen-ort-fp32", "fastgen-ov-bf16": "fastgen-ort-fp32",
             "fastgen-ov-int8": "fastgen-ort-fp32"}
# the same fp32 computation by different runtimes: the images should agree (same weights, latents, scheduler)
CROSS_CHECKS = (("fastgen-ort-fp32", "diffusers-fp32"), ("optimum-fp32", "diffusers-fp32"),
                ("fastgen-ov-fp32", "fastgen-ort-fp32"), ("fastgen-ov-fp32", "optimum-fp32"))
STAGES = ("text_encode", "unet", "vae_decode", "total")
# rounds: fresh processes per configuration (interleaved, min taken); calls: timed calls per process;
# first_steps: each process's first call, at the image size (it compiles every static shape and does
# onnxruntime's first-run work): the cold-start image; cold_rounds: extra onnxruntime / OpenVINO process pairs
MODES = {"quick": {"size": 256, "steps": 10, "rounds": 2, "calls": 1, "first_steps": 1, "cold_rounds": 1,
                   "demo_prompts": 60},
         "full": {"size": 512, "steps": 20, "rounds": 1, "calls": 1, "first_steps": 1, "cold_rounds": 2,
                  "demo_prompts": 60}}
TARGETS = {"e2e_best_fastgen_vs_diffusers_fp32": 4.0, "e2e_vs_optimum_same_precision": 1.1,
           "unet_call_bf16_vs_ort_fp32": 2.0, "second_cold_start_ov_vs_ort": 1.0, "ov_fp32_vs_ort_max_abs": 2e-3}
INT8_MISSING = "int8: not available in this build"
PEER_SCRIPT = os.path.join(HERE, "peer_env.sh")


def _log(msg: str) -> None:
    print(f"[cpu_backends {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _rss_mb() -> float:
    """Peak RSS of this process image in MiB (VmHWM; ru_maxrss would carry a big parent's peak over fork)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ============================================================================ worker (a fresh process)

def _timed(obj, attr: str, acc: dict, key: str, count: dict | None = None) -> None:
    """Replace obj.attr by a wrapper adding its wall time to acc[key] (and counting calls)."""
    orig = getattr(obj, attr)

    def wrapper(*a, **kw):
        t0 = time.perf_counter()
        try:
            return orig(*a, **kw)
        finally:
            acc[key] += time.perf_counter() - t0
            if count is not None:
                count[key] = count.get(key, 0) + 1

    setattr(obj, attr, wrapper)


def _load_diffusers(spec: dict):
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(spec["src"], safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    acc, count = {"text_encode": 0.0, "unet": 0.0, "vae_decode": 0.0}, {}
    _timed(pipe.text_encoder, "forward", acc, "text_encode", count)
    _timed(pipe.unet, "forward", acc, "unet", count)
    _timed(pipe.vae, "decode", acc, "vae_decode", count)
    bf16 = spec["precision"] == "bf16"
    ran = {"pipeline": "diffusers.StableDiffusionPipeline", "scheduler": type(pipe.scheduler).__name__,
           "torch_threads": torch.get_num_threads(),
           "precision": ("fp32 weights, torch.autocast('cpu', dtype=torch.bfloat16) around the call" if bf16
                         else "fp32"),
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}

    def call(steps: int):
        lat = torch.from_numpy(spec["_latents"])
        for k in acc:
            acc[k] = 0.0
        count.clear()
        t0 = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            img = pipe(spec["prompt"], negative_prompt=spec["negative_prompt"], num_inference_steps=steps,
                       guidance_scale=spec["guidance_scale"], height=spec["size"], width=spec["size"], latents=lat,
                       output_type="np").images
        total = time.perf_counter() - t0
        return img, {**acc, "total": total, "unet_calls": count.get("unet", 0)}

    return call, ran


def _load_optimum(spec: dict):
    import torch
    from diffusers import DDIMScheduler
    from optimum.intel import OVStableDiffusionPipeline

    prec = spec["precision"]
    # fp32 / bf16: asked for explicitly (OpenVINO's CPU plugin picks bf16 by itself on CPUs with native bf16);
    # int8: the hint left to OpenVINO, as a user of the quantized model gets it
    ov_config = {"fp32": {"INFERENCE_PRECISION_HINT": "f32"}, "bf16": {"INFERENCE_PRECISION_HINT": "bf16"}}.get(prec, {})
    pipe = OVStableDiffusionPipeline.from_pretrained(spec["ov_dir"], compile=False, ov_config=dict(ov_config))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.reshape(batch_size=1, height=spec["size"], width=spec["size"], num_images_per_prompt=1)
    pipe.compile()
    pipe.set_progress_bar_config(disable=True)
    acc, count = {"text_encode": 0.0, "unet": 0.0, "vae_decode": 0.0}, {}
    _timed(pipe.text_encoder, "forward", acc, "text_encode", count)
    _timed(pipe.unet, "forward", acc, "unet", count)
    _timed(pipe.vae_decoder, "forward", acc, "vae_decode", count)
    hints = {}
    for name in ("text_encoder", "unet", "vae_decoder"):
        try:
            hints[name] = str(getattr(pipe, name).request.get_property("INFERENCE_PRECISION_HINT"))
        except Exception as e:  # noqa: BLE001 - recorded, not fatal
            hints[name] = f"? ({e!r})"
    ran = {"pipeline": "optimum.intel.OVStableDiffusionPipeline", "scheduler": type(pipe.scheduler).__name__,
           "ov_config": ov_config, "static_shapes": f"reshape(batch_size=1, height={spec['size']}, "
                                                    f"width={spec['size']}, num_images_per_prompt=1)",
           "inference_precision_hint": hints, "model_dir": spec["ov_dir"]}

    def call(steps: int):
        lat = torch.from_numpy(spec["_latents"])
        for k in acc:
            acc[k] = 0.0
        count.clear()
        t0 = time.perf_counter()
        img = pipe(spec["prompt"], negative_prompt=spec["negative_prompt"], num_inference_steps=steps,
                   guidance_scale=spec["guidance_scale"], height=spec["size"], width=spec["size"], latents=lat,
                   output_type="np").images
        total = time.perf_counter() - t0
        return img, {**acc, "total": total, "unet_calls": count.get("unet", 0)}

    return call, ran


def _load_fastgen(spec: dict):
    import fastgen

    pipe = fastgen.Pipeline.load(spec["engine"], backend=spec["backend"], precision=spec["precision"])
    ran = {"pipeline": type(pipe).__name__, "backend": spec["backend"], "precision": spec["precision"],
           "scheduler": SCHEDULER}

    def call(steps: int):
        out = pipe(spec["prompt"], negative_prompt=spec["negative_prompt"], num_inference_steps=steps,
                   guidance_scale=spec["guidance_scale"], height=spec["size"], width=spec["size"],
                   latents=spec["_latents"], scheduler=SCHEDULER, output_type="np")
        t = out.timings
        return out.images, {"text_encode": t["text_encode"], "unet": t["denoise"], "vae_decode": t["vae_decode"],
                            "total": t["total"], "unet_calls": int(t.get("steps", 0))}

    def sessions():
        info = {}
        for name, s in pipe.components._sessions.items():
            rec = {"type": type(s).__name__}
            for k in ("precision", "compiles", "loaded_from_cache"):
                if hasattr(s, k):
                    rec[k] = getattr(s, k)
            cms = list(getattr(s, "_compiled", {}).values())
            if cms:
                try:
                    rec["inference_precision_hint"] = str(cms[0].get_property("INFERENCE_PRECISION_HINT"))
                except Exception:  # noqa: BLE001
                    pass
            info[name] = rec
        return info

    ran["_sessions"] = sessions
    return call, ran


def _versions(fw: str) -> dict:
    out = {}
    mods = {"diffusers": ("torch", "diffusers", "transformers"),
            "optimum": ("torch", "diffusers", "transformers", "openvino", "nncf", "optimum.intel", "huggingface_hub"),
            "fastgen": ("fastgen", "onnxruntime", "openvino")}[fw]
    for m in mods:
        try:
            mod = __import__(m, fromlist=["_"])
            v = getattr(mod, "__version__", None)
            if v is None and m == "optimum.intel":
                from importlib.metadata import version

                v = version("optimum-intel")
            out[m] = v
        except Exception:  # noqa: BLE001 - e.g. openvino not installed for fastgen-ort
            pass
    return out


def worker(spec_path: str) -> dict:
    """One configuration in this fresh process (the ``worker`` mode)."""
    import numpy as np

    with open(spec_path) as f:
        spec = json.load(f)
    spec["_latents"] = np.load(spec["latents"])
    load_avg = [os.getloadavg()[0]]
    fw = spec["framework"]
    t0 = time.perf_counter()
    if fw == "fastgen":
        import fastgen  # noqa: F401
    else:
        import torch  # noqa: F401
        if fw == "optimum":
            from optimum.intel import OVStableDiffusionPipeline  # noqa: F401
        else:
            from diffusers import StableDiffusionPipeline  # noqa: F401
    res = {"config": spec["config"], "framework": fw, "import_s": time.perf_counter() - t0,
           "versions": _versions(fw)}
    t0 = time.perf_counter()
    call, ran = {"diffusers": _load_diffusers, "optimum": _load_optimum, "fastgen": _load_fastgen}[fw](spec)
    res["load_s"] = time.perf_counter() - t0
    res["peak_rss_after_load_mb"] = _rss_mb()
    first_steps = spec["first_steps"] or spec["steps"]
    img, t = call(first_steps)
    res["t_first_end"] = time.time()
    res["first_call"] = {**t, "steps": first_steps}
    res["peak_rss_first_call_mb"] = _rss_mb()
    calls = []
    for _ in range(spec["calls"]):
        img, t = call(spec["steps"])
        calls.append(t)
    res["calls"] = calls
    res["peak_rss_mb"] = _rss_mb()
    sessions = ran.pop("_sessions", None)
    if sessions is not None:
        ran["sessions"] = sessions()
    res["ran"] = ran
    res["load_avg_1m"] = load_avg + [os.getloadavg()[0]]
    res["torch_loaded"] = "torch" in sys.modules
    res["t_start_in_process"] = T_START
    if spec.get("image_out"):
        np.save(spec["image_out"], np.asarray(img, dtype=np.float32))
    res["image_shape"] = list(np.asarray(img).shape)
    return res


# ============================================================================ the optimum-intel peer (its venv)

def peer_export(src: str, out: str) -> dict:
    """(peer venv) optimum's own export of the diffusers folder ``src`` to OpenVINO IR in ``out``."""
    from optimum.intel import OVStableDiffusionPipeline
    from transformers import CLIPTextModel

    # the text encoder must load whole: a key it cannot map would be initialised at random
    _, info = CLIPTextModel.from_pretrained(os.path.join(src, "text_encoder"), output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        raise RuntimeError(f"the peer's transformers does not read the text encoder's weights: {bad}")
    t0 = time.perf_counter()
    pipe = OVStableDiffusionPipeline.from_pretrained(src, export=True, compile=False, load_in_8bit=False)
    pipe.save_pretrained(out)
    return {"export_s": time.perf_counter() - t0}


def peer_int8(fp32_dir: str, out: str, size: int, steps: int, prompts: list[str]) -> dict:
    """(peer venv) optimum's hybrid int8 quantization of the exported fp32 pipeline, calibrated on the UNet
    inputs of ``prompts`` at ``size`` px, ``steps`` DDIM steps (collected with optimum's InferRequestWrapper)."""
    import nncf
    from diffusers import DDIMScheduler
    from optimum.intel import OVConfig, OVQuantizer, OVStableDiffusionPipeline, OVWeightQuantizationConfig
    from optimum.intel.openvino.quantization import InferRequestWrapper, OVCalibrationDataset

    t0 = time.perf_counter()
    pipe = OVStableDiffusionPipeline.from_pretrained(fp32_dir, compile=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.compile()
    pipe.set_progress_bar_config(disable=True)
    data: list = []
    pipe.unet.request = InferRequestWrapper(pipe.unet.request, data)
    for p in prompts:
        pipe(p, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=GUIDANCE, height=size,
             width=size)
    pipe.unet.request = pipe.unet.request.request
    t1 = time.perf_counter()
    qc = OVWeightQuantizationConfig(bits=8, quant_method="hybrid", num_samples=len(data))
    OVQuantizer(pipe).quantize(ov_config=OVConfig(quantization_config=qc),
                               calibration_dataset=OVCalibrationDataset({"unet": nncf.Dataset(data)}),
                               save_directory=out)
    return {"calibration_samples": len(data), "calibration_prompts": list(prompts), "calibration_size": size,
            "calibration_steps": steps, "collect_s": t1 - t0, "quantize_s": time.perf_counter() - t1,
            "quantization_config": "OVWeightQuantizationConfig(bits=8, quant_method='hybrid', "
                                   f"num_samples={len(data)})"}


# ============================================================================ parent side

def _spawn(python: str, args: list[str], *, env: dict | None = None, timeout: float = 3600) -> dict:
    t0 = time.time()
    p = subprocess.run([python, os.path.abspath(__file__), *args], capture_output=True, text=True, timeout=timeout,
                       env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{os.path.basename(python)} {args[0]} failed ({p.returncode}): {p.stderr[-3000:]}")
    line = [x for x in p.stdout.splitlines() if x.startswith("{")][-1]
    res = json.loads(line)
    res["process_wall_s"] = time.time() - t0
    if "t_first_end" in res:
        res["spawn_to_first_image_s"] = res["t_first_end"] - t0
    return res


def _peer_env() -> dict:
    """The environment of a peer-venv child: no PYTHONPATH (this repository's packages stay out of it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def peer_venv(venv: str) -> dict:
    """{'python', 'versions', 'setup_s'} of the optimum-intel venv (made on first use), or {'error': why}."""
    done = os.path.join(venv, ".peer-done")
    t0 = time.perf_counter()
    if not os.path.isfile(done):
        _log(f"making the optimum-intel venv {venv} (benchmarks/peer_env.sh, a few minutes once)")
        p = subprocess.run(["bash", PEER_SCRIPT, venv], capture_output=True, text=True, timeout=3600)
        if p.returncode != 0 or not os.path.isfile(done):
            err = [x for x in (p.stderr + p.stdout).splitlines() if not x.startswith("WARNING: Location")]
            return {"error": f"peer_env.sh failed ({p.returncode}): " + "\n".join(err[-20:])}
    pins = {}
    with open(done) as f:
        for line in f:
            if "==" in line:
                k, v = line.strip().split("==", 1)
                pins[k.lower()] = v
    keep = ("torch", "diffusers", "transformers", "optimum", "optimum-intel", "openvino", "nncf", "huggingface-hub",
            "huggingface_hub", "numpy")
    return {"python": os.path.join(venv, "bin", "python"), "versions": {k: pins[k] for k in keep if k in pins},
            "setup_s": time.perf_counter() - t0, "venv": venv}


def _peer_src(src: str, dst: str) -> None:
    """A copy of the diffusers folder the peer's transformers 5.5 reads: everything linked but the text
    encoder's weights, whose keys transformers 5.23 saved without the ``text_model.`` prefix."""
    from safetensors.numpy import load_file, save_file

    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if name != "text_encoder" and not os.path.exists(os.path.join(dst, name)):
            os.symlink(os.path.join(src, name), os.path.join(dst, name))
    te_src, te_dst = os.path.join(src, "text_encoder"), os.path.join(dst, "text_encoder")
    os.makedirs(te_dst, exist_ok=True)
    for name in os.listdir(te_src):
        if not name.endswith(".safetensors"):
            shutil.copy(os.path.join(te_src, name), te_dst)
            continue
        w = load_file(os.path.join(te_src, name))
        save_file({(k if k.startswith("text_model.") else "text_model." + k): v for k, v in w.items()},
                  os.path.join(te_dst, name), metadata={"format": "pt"})


def optimum_models(model: dict, cache: str, peer: dict, *, cal_size: int, cal_steps: int,
                   cal_prompts: int = 2, want_int8: bool = True) -> dict:
    """The peer's OpenVINO IR folders (fp32 export, hybrid int8), made once and kept under the model's cache
    folder: {'fp32': dir, 'int8': dir, 'export': {...}, 'int8_info': {...}} or with 'int8_error' / 'error'."""
    root = os.path.join(os.path.dirname(model["src"]), "optimum")
    os.makedirs(root, exist_ok=True)
    src = os.path.join(root, "src")
    fp32, int8 = os.path.join(root, "ov-fp32"), os.path.join(root, f"ov-int8-hybrid-{cal_size}px-{cal_steps}steps")
    out: dict = {"fp32": fp32, "peer_src": src}
    env = _peer_env()
    if not os.path.isfile(os.path.join(fp32, ".done")):
        shutil.rmtree(fp32, ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)
        _peer_src(model["src"], src)
        _log(f"optimum: exporting {model['name']} to OpenVINO IR ({fp32})")
        info = _spawn(peer["python"], ["peer-export", src, fp32], env=env)
        with open(os.path.join(fp32, ".done"), "w") as f:
            json.dump(info, f)
    with open(os.path.join(fp32, ".done")) as f:
        out["export"] = json.load(f)
    if want_int8:
        if not os.path.isfile(os.path.join(int8, ".done")):
            shutil.rmtree(int8, ignore_errors=True)
            _log(f"optimum: hybrid int8 quantization ({cal_prompts} prompts x {cal_steps} steps at {cal_size}px)")
            try:
                info = _spawn(peer["python"], ["peer-int8", fp32, int8, str(cal_size), str(cal_steps),
                                               json.dumps(list(CALIBRATION_PROMPTS[:cal_prompts]))], env=env)
                with open(os.path.join(int8, ".done"), "w") as f:
                    json.dump(info, f)
            except Exception as e:  # noqa: BLE001 - the int8 row says why
                out["int8_error"] = repr(e)[-2000:]
        if os.path.isfile(os.path.join(int8, ".done")):
            out["int8"] = int8
            with open(os.path.join(int8, ".done")) as f:
                out["int8_info"] = json.load(f)
    return out


def fastgen_int8(engine: str, calibration: dict | None = None) -> dict:
    """{'available': True, ...} when this build makes and runs int8 engines (``fastgen optimize ENGINE
    --int8``, an int8 variant in the engine directory, made once); else {'available': False, 'status':
    'int8: not available in this build (...)'}. ``calibration`` ({'prompts', 'steps', 'size'}) calibrates
    as the optimum peer does (the same prompts, steps and size); None: the command's defaults."""
    import importlib.util

    from fastgen.backends import PRECISIONS

    why = []
    if importlib.util.find_spec("fastgen_export.optimize") is None:
        why.append("no fastgen_export.optimize module")
    if "int8" not in PRECISIONS.get("openvino", ()):
        why.append(f"the openvino backend's precisions are {', '.join(PRECISIONS.get('openvino', ()))}")
    if why:
        return {"available": False, "status": f"{INT8_MISSING} ({'; '.join(why)})"}
    tag = "defaults" if calibration is None else "{prompts}p-{steps}s-{size}px".format(
        prompts=len(calibration["prompts"]), steps=calibration["steps"], size=calibration["size"])
    marker = os.path.join(engine, f".bench-int8-{tag}")
    if not os.path.isfile(marker):
        for old in os.listdir(engine):  # a re-run replaces the variant: the other calibrations' markers go
            if old.startswith(".bench-int8-"):
                os.remove(os.path.join(engine, old))
        cmd = [sys.executable, "-m", "fastgen.cli", "optimize", engine, "--int8", "-q"]
        with tempfile.TemporaryDirectory() as tmp:
            if calibration is not None:
                pfile = os.path.join(tmp, "prompts.txt")
                with open(pfile, "w") as f:
                    f.write("\n".join(calibration["prompts"]) + "\n")
                cmd += ["--calibration-prompts", pfile, "--num-calibration-prompts", str(len(calibration["prompts"])),
                        "--calibration-steps", str(calibration["steps"]), "--height", str(calibration["size"]),
                        "--width", str(calibration["size"])]
            _log(f"fastgen optimize {engine} --int8 ({tag})")
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=7200)
        if p.returncode != 0:
            return {"available": False, "status": f"{INT8_MISSING}: `fastgen optimize --int8` failed "
                                                  f"({p.returncode}): {p.stderr[-1500:]}"}
        with open(marker, "w") as f:
            json.dump({"optimize_s": time.perf_counter() - t0, "command": " ".join(cmd[2:]),
                       "calibration": calibration or "the command's defaults"}, f)
    with open(marker) as f:
        return {"available": True, **json.load(f)}


def _psnr(a, b) -> float | None:
    import numpy as np

    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return None if mse == 0 else 10.0 * float(np.log10(1.0 / mse))


def _row(name: str, runs: list[dict], steps: int) -> dict:
    """One configuration's row: stage timings of the fastest timed call over its processes, medians, RSS."""
    fw, backend, prec = CONFIGS[name]
    calls = sorted((c for r in runs for c in r["calls"]), key=lambda c: c["total"])
    best, med = calls[0], calls[len(calls) // 2]
    r0 = runs[0]
    row = {"config": name, "framework": fw, "backend": backend, "precision": prec, "processes": len(runs),
           "min": {k: best[k] for k in STAGES}, "median": {k: med[k] for k in STAGES},
           "totals": [c["total"] for c in calls], "unet_calls": best["unet_calls"],
           "unet_s_per_call": best["unet"] / max(1, best["unet_calls"]),
           "import_s": r0["import_s"], "load_s": r0["load_s"], "first_call_s": r0["first_call"]["total"],
           "first_call_steps": r0["first_call"]["steps"], "spawn_to_first_image_s": r0["spawn_to_first_image_s"],
           "peak_rss_after_load_mb": min(r["peak_rss_after_load_mb"] for r in runs),
           "peak_rss_first_call_mb": min(r["peak_rss_first_call_mb"] for r in runs),
           "peak_rss_mb": min(r["peak_rss_mb"] for r in runs), "peak_rss_mb_values": [r["peak_rss_mb"] for r in runs],
           "spawn_to_first_image_s_values": [r["spawn_to_first_image_s"] for r in runs],
           "torch_loaded": r0["torch_loaded"],
           "load_avg_1m": [r["load_avg_1m"] for r in runs], "versions": r0["versions"], "ran": r0["ran"]}
    if best["unet_calls"] != steps:
        row["warning"] = f"{best['unet_calls']} UNet calls for {steps} steps"
    return row


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def targets(rows: dict, cold: dict, acc: dict) -> dict:
    """The issue's target ratios from the rows (min timings), with met / missed."""
    def total(n):
        return rows[n]["min"]["total"] if n in rows and "min" in rows[n] else None

    fastgen = [n for n in rows if n.startswith("fastgen") and "min" in rows[n]]
    best = min(fastgen, key=total) if fastgen else None
    out = {}

    def put(key, value, target, note, higher=True):
        met = None if value is None else (value >= target if higher else value <= target)
        out[key] = {"value": value, "target": target, "met": met, "note": note}

    put("e2e_best_fastgen_vs_diffusers_fp32", _ratio(total("diffusers-fp32"), total(best)),
        TARGETS["e2e_best_fastgen_vs_diffusers_fp32"], f"best fastgen path: {best}")
    for prec in ("fp32", "bf16", "int8"):
        fg = [n for n in fastgen if rows[n]["precision"] == prec]
        fg_best = min(fg, key=total) if fg else None
        note = (f"{fg_best} vs optimum-{prec}" if fg_best else f"no fastgen {prec} path ran") + (
            "" if f"optimum-{prec}" in rows else f"; optimum-{prec} did not run")
        put(f"e2e_vs_optimum_{prec}", _ratio(total(f"optimum-{prec}"), total(fg_best)),
            TARGETS["e2e_vs_optimum_same_precision"], note)
    ort, bf = rows.get("fastgen-ort-fp32"), rows.get("fastgen-ov-bf16")
    put("unet_call_bf16_vs_ort_fp32",
        _ratio(ort and ort.get("unet_s_per_call"), bf and bf.get("unet_s_per_call")),
        TARGETS["unet_call_bf16_vs_ort_fp32"], "s per UNet call (batch 2), fastgen-ov-bf16 vs fastgen-ort-fp32")
    put("second_cold_start_ov_vs_ort", cold.get("ratio"), TARGETS["second_cold_start_ov_vs_ort"],
        cold.get("note", "not measured"))
    put("ov_fp32_vs_ort_max_abs", acc.get("fastgen-ov-fp32", {}).get("max_abs"), TARGETS["ov_fp32_vs_ort_max_abs"],
        "image max abs diff, [0, 1] floats, fastgen-ov-fp32 vs fastgen-ort-fp32",
        higher=False)
    return out


def bench_cpu_backends(model: dict, *, size: int, steps: int, calls: int = 1, rounds: int = 1,
                       first_steps: int | None = None,
                       configs=None, cache: str, cal_prompts: int = 2,
                       cold_rounds: int = 1, cal_size: int = 256, cal_steps: int = 10,
                       peer_venv_dir: str | None = None) -> dict:
    """The benchmark's record (rows per configuration, accuracy, cold start, targets)."""
    import numpy as np

    import fastgen

    configs = [c for c in ORDER if c in (configs or ORDER)]
    lat = size // model["vae_scale_factor"]
    rec: dict = {"model": model["name"], "description": model["description"], "image_size": size, "steps": steps,
                 "guidance_scale": GUIDANCE, "cfg_batch": 2, "scheduler": f"{SCHEDULER} on every side (the model's "
                 "scheduler config, class switched; the folder's default is PNDM)", "prompt": PROMPT,
                 "negative_prompt": NEGATIVE, "timed_calls_per_process": calls,
                 "first_call_steps": first_steps or steps, "rounds": rounds, "cold_rounds": cold_rounds,
                 "latents": f"fastgen.randn((1, 4, {lat}, {lat}), seed=0), the same array everywhere",
                 "threads": "library defaults (torch: cores, onnxruntime: cores, OpenVINO: cores)",
                 "configs": configs, "skipped": {}, "load_avg_1m_start": os.getloadavg()[0]}
    ov_cache = os.path.join(cache, "ov-compile-cache")
    shutil.rmtree(ov_cache, ignore_errors=True)  # the first OpenVINO process of a precision compiles
    fg_env = {**os.environ, "FASTGEN_CACHE_DIR": ov_cache, "PYTHONWARNINGS": "ignore"}

    # the peer
    peer, opt = None, None
    if any(c.startswith("optimum") for c in configs):
        peer = peer_venv(peer_venv_dir or os.path.join(cache, "peer-venv"))
        rec["optimum"] = {k: v for k, v in peer.items() if k != "python"}
        if "error" in peer:
            for c in configs:
                if c.startswith("optimum"):
                    rec["skipped"][c] = f"not run: the optimum-intel venv could not be made: {peer['error']}"
        else:
            try:
                opt = optimum_models(model, cache, peer, cal_size=cal_size, cal_steps=cal_steps,
                                     cal_prompts=cal_prompts, want_int8="optimum-int8" in configs)
                rec["optimum"].update({k: v for k, v in opt.items() if k not in ("fp32", "int8")})
                if "optimum-int8" in configs and "int8" not in opt:
                    rec["skipped"]["optimum-int8"] = f"not run: hybrid int8 quantization failed: {opt['int8_error']}"
            except Exception as e:  # noqa: BLE001
                for c in configs:
                    if c.startswith("optimum"):
                        rec["skipped"][c] = f"not run: optimum's export failed: {e!r}"[-2000:]
    # fastgen int8
    if "fastgen-ov-int8" in configs:
        # calibrated as the optimum peer: the same prompts, steps and size
        i8 = fastgen_int8(model["engine"], {"prompts": list(CALIBRATION_PROMPTS[:cal_prompts]), "steps": cal_steps,
                                             "size": cal_size})
        rec["fastgen_int8"] = i8
        if not i8["available"]:
            rec["skipped"]["fastgen-ov-int8"] = i8["status"]
    run = [c for c in configs if c not in rec["skipped"]]

    runs: dict[str, list[dict]] = {c: [] for c in run}
    images = {}
    with tempfile.TemporaryDirectory() as tmp:
        lpath = os.path.join(tmp, "latents.npy")
        np.save(lpath, np.ascontiguousarray(fastgen.randn((1, 4, lat, lat), seed=0), dtype=np.float32))

        def spec_for(name: str, n_calls: int, first: int | None, image: bool) -> str:
            fw, backend, prec = CONFIGS[name]
            spec = {"config": name, "framework": fw, "backend": backend, "precision": prec, "size": size,
                    "steps": steps, "calls": n_calls, "first_steps": first, "prompt": PROMPT,
                    "negative_prompt": NEGATIVE, "guidance_scale": GUIDANCE, "latents": lpath,
                    "src": model["src"], "engine": model["engine"],
                    "image_out": os.path.join(tmp, f"{name}.npy") if image else None}
            if fw == "optimum":
                spec["ov_dir"] = opt["int8" if prec == "int8" else "fp32"]
            path = os.path.join(tmp, f"{name}-{n_calls}.json")
            with open(path, "w") as f:
                json.dump(spec, f)
            return path

        def launch(name: str, n_calls: int, first: int | None, image: bool) -> dict:
            fw = CONFIGS[name][0]
            python = peer["python"] if fw == "optimum" else sys.executable
            env = _peer_env() if fw == "optimum" else fg_env
            _log(f"  {name} (fresh process, load {os.getloadavg()[0]:.1f})")
            return _spawn(python, ["worker", spec_for(name, n_calls, first, image)], env=env)

        failed: set[str] = set()
        for i in range(rounds):  # every configuration once per round, the order reversed every other round
            for name in (run if i % 2 == 0 else run[::-1]):
                if name in failed:
                    continue
                try:
                    runs[name].append(launch(name, calls, first_steps, i == 0))
                    if i == 0:
                        images[name] = np.load(os.path.join(tmp, f"{name}.npy"))
                    r = runs[name][-1]
                    _log(f"    {name}: {r['calls'][0]['total']:.2f} s/image (UNet {r['calls'][0]['unet']:.2f} s), "
                         f"peak RSS {r['peak_rss_mb']:.0f} MiB")
                except Exception as e:  # noqa: BLE001 - one failing configuration must not lose the others
                    rec["skipped"][name] = f"error: {e!r}"[-3000:]
                    failed.add(name)
        rows = {n: _row(n, rs, steps) for n, rs in runs.items() if n not in failed and rs}

        # second cold start: a service restarted with fastgen's OpenVINO compile cache warm, vs onnxruntime
        # (which has no compile cache): new process -> load -> first image (the processes' first call, a
        # `first_steps` image), the fastest of onnxruntime's processes vs the fastest of the best OpenVINO
        # path's processes that found the compile cache warm (the main rounds after the first, plus
        # `cold_rounds` more pairs of processes, interleaved)
        cold: dict = {}
        ov = [n for n in rows if n.startswith("fastgen-ov")]
        if "fastgen-ort-fp32" in rows and ov:
            best_ov = min(ov, key=lambda n: rows[n]["min"]["total"])
            ort_runs, ov_runs = list(runs["fastgen-ort-fp32"]), list(runs[best_ov][1:])
            try:
                for i in range(cold_rounds):
                    for name in (("fastgen-ort-fp32", best_ov) if i % 2 == 0 else (best_ov, "fastgen-ort-fp32")):
                        (ort_runs if name == "fastgen-ort-fp32" else ov_runs).append(launch(name, 0, first_steps,
                                                                                            False))
            except Exception as e:  # noqa: BLE001
                cold["error"] = repr(e)[-2000:]
            if ov_runs:
                o_s = [r["spawn_to_first_image_s"] for r in ort_runs]
                v_s = [r["spawn_to_first_image_s"] for r in ov_runs]
                first = first_steps or steps
                cold.update({
                    "ov_config": best_ov, "first_image_steps": first, "ort_s": min(o_s), "ort_values": o_s,
                    "ov_s": min(v_s), "ov_values": v_s, "ratio": min(o_s) / min(v_s),
                    "ort_load_s": [r["load_s"] for r in ort_runs],
                    "ort_first_call_s": [r["first_call"]["total"] for r in ort_runs],
                    "ov_load_s": [r["load_s"] for r in ov_runs],
                    "ov_first_call_s": [r["first_call"]["total"] for r in ov_runs],
                    "ov_sessions": ov_runs[-1]["ran"].get("sessions"),
                    "load_avg_1m": {"ort": [r["load_avg_1m"] for r in ort_runs],
                                    "ov": [r["load_avg_1m"] for r in ov_runs]},
                    "note": (f"new process -> load -> first image ({first} step{'s' * (first > 1)}, the image "
                             f"size), fastest of {len(o_s)} fastgen-ort-fp32 / of {len(v_s)} {best_ov} with "
                             "the compile cache warm"),
                    # the first start ever of each OpenVINO precision: the compile cache empty
                    "first_start_s": {n: runs[n][0]["spawn_to_first_image_s"] for n in rows
                                      if n.startswith("fastgen")}})
    rec["rows"] = [rows[n] for n in DISPLAY if n in rows]

    # accuracy: PSNR against the fp32 counterpart, max abs, cross-framework fp32 checks
    acc: dict = {}
    for name, ref in REFERENCE.items():
        if name in images and ref in images:
            d = np.abs(images[name].astype(np.float64) - images[ref])
            acc[name] = {"reference": ref, "psnr_db": _psnr(images[name], images[ref]), "max_abs": float(d.max()),
                         "mean_abs": float(d.mean())}
    cross = []
    for a, b in CROSS_CHECKS:
        if a in images and b in images:
            d = np.abs(images[a].astype(np.float64) - images[b])
            cross.append({"a": a, "b": b, "psnr_db": _psnr(images[a], images[b]), "max_abs": float(d.max())})
    rec["accuracy"] = acc
    rec["cross_checks"] = cross
    rec["image_shape"] = list(next(iter(images.values())).shape) if images else None
    rec["cold_start"] = cold
    rec["targets"] = targets(rows, cold, acc)
    rec["load_avg_1m_end"] = os.getloadavg()[0]
    return rec


def demo_accuracy(n_prompts: int = 60, steps: int = 25, int8: bool = False, cache: str | None = None) -> dict:
    """The demo model's colour / shape accuracy (tests/test_demo.py's prompts and seed) per backend and
    precision, with the seconds each batch took."""
    import numpy as np

    import fastgen
    from fastgen_export.demo_data import all_prompts
    from fastgen_export.demo_eval import evaluate

    prompts = all_prompts()
    rng = np.random.default_rng(2026)
    prompts = [prompts[i] for i in rng.choice(len(prompts), size=n_prompts, replace=False)]
    paths = [("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")]
    engine = "demo"
    res = {"prompts": n_prompts, "steps": steps, "seed": 7, "rows": []}
    if int8:
        from fastgen.pipelines.base import _demo_dir

        engine = os.path.join(cache, "demo-int8-engine")
        if not os.path.isfile(os.path.join(engine, ".bench-int8-defaults")):
            shutil.rmtree(engine, ignore_errors=True)
            shutil.copytree(_demo_dir(), engine)
        i8 = fastgen_int8(engine)
        if i8["available"]:
            paths.append(("openvino", "int8"))
        else:
            res["int8"] = i8["status"]
    else:
        res["int8"] = INT8_MISSING
    ref = None
    for backend, prec in paths:
        pipe = fastgen.Pipeline.load(engine, backend=backend, precision=prec)
        t0 = time.perf_counter()
        out = pipe(prompts, seed=7, num_inference_steps=steps, output_type="np")
        dt = time.perf_counter() - t0
        s = evaluate(out.images, prompts)
        row = {"backend": backend, "precision": prec, "s_per_batch": dt,
               **{k: s[k] for k in ("background", "color", "shape", "all")}}
        if ref is None:
            ref = out.images
        else:
            row["psnr_vs_ort_fp32_db"] = _psnr(out.images, ref)
            row["max_abs_vs_ort_fp32"] = float(np.abs(out.images.astype(np.float64) - ref).max())
        res["rows"].append(row)
        pipe.close()
    return res


# ============================================================================ printing

def summary(rec: dict) -> str:
    lines = [f"{rec['model']} {rec['image_size']}px, {rec['steps']} steps, CFG {rec['guidance_scale']}, DDIM"]
    lines.append(f"{'config':18s} {'total s':>8s} {'text s':>7s} {'UNet s':>8s} {'s/call':>7s} {'VAE s':>7s} "
                 f"{'peak MiB':>9s} {'PSNR dB':>8s}")
    for r in rec.get("rows", []):
        m = r["min"]
        a = rec["accuracy"].get(r["config"], {})
        ps = a.get("psnr_db")
        lines.append(f"{r['config']:18s} {m['total']:8.2f} {m['text_encode']:7.3f} {m['unet']:8.2f} "
                     f"{r['unet_s_per_call']:7.3f} {m['vae_decode']:7.2f} {r['peak_rss_mb']:9.0f} "
                     f"{'' if not a else ('inf' if ps is None else f'{ps:.1f}'):>8s}")
    for k, v in rec.get("skipped", {}).items():
        lines.append(f"{k:18s} {v[:150]}")
    lines.append("targets:")
    for k, t in rec.get("targets", {}).items():
        v = t["value"]
        vs = "—" if v is None else (f"{v:.2e}" if k.endswith("max_abs") else f"{v:.2f}x")
        met = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(f"  {k}: {vs} (target {t['target']}) {met}; {t['note']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256 px, 10 steps (default: full, 512 px, 20 steps)")
    ap.add_argument("--out", required=True, help="directory for cpu_backends.json / .png")
    ap.add_argument("--cache", default=None, help="models, the optimum venv, compile caches (default "
                                                  "~/.cache/fastgen-bench)")
    ap.add_argument("--model", default="sd15", help="a text-to-image model of benchmarks/models.py (default sd15)")
    ap.add_argument("--configs", default=None, help=f"comma list of {', '.join(ORDER)}")
    ap.add_argument("--size", type=int, default=None, help="image height = width in pixels")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--calls", type=int, default=None, help="timed calls per process (the fastest is reported)")
    ap.add_argument("--rounds", type=int, default=None, help="fresh processes per configuration (quick 2, full 1)")
    ap.add_argument("--first-steps", type=int, default=None, help="steps of each process's first call (0: --steps)")
    ap.add_argument("--demo-prompts", type=int, default=None, help="demo accuracy prompts (0: skip)")
    ap.add_argument("--cal-prompts", type=int, default=2, help="prompts of optimum's int8 calibration")
    ap.add_argument("--peer-venv", default=None, help="the optimum-intel venv (default CACHE/peer-venv; made there "
                                                      "by benchmarks/peer_env.sh when missing)")
    ap.add_argument("--cold-rounds", type=int, default=None, help="second-cold-start process pairs (0: none)")
    args = ap.parse_args(argv)
    sys.path.insert(0, HERE)
    import plots
    from common import write_json

    rec = collect(args.quick, cache=args.cache, model_name=args.model,
                  configs=args.configs.split(",") if args.configs else None, size=args.size, steps=args.steps,
                  calls=args.calls, rounds=args.rounds, first_steps=args.first_steps, demo_prompts=args.demo_prompts,
                  cal_prompts=args.cal_prompts, cold_rounds=args.cold_rounds, peer_venv_dir=args.peer_venv)
    write_json(args.out, "cpu_backends", rec)
    plots.cpu_backends(rec, os.path.join(args.out, "cpu_backends.png"))
    print(summary(rec))
    _log(f"done in {rec['elapsed_s']:.0f}s -> {args.out}")
    return 0


def collect(quick: bool, *, cache=None, model_name="sd15", configs=None, size=None, steps=None, calls=None,
            rounds=None, first_steps=None, demo_prompts=None, cal_prompts=2, cold_rounds=None, peer_venv_dir=None) -> dict:
    """Run the benchmark and return its record (run_all.py writes it as cpu_backends.json)."""
    sys.path.insert(0, HERE)
    import models as M

    mode = "quick" if quick else "full"
    st = MODES[mode]
    cache = cache or M.DEFAULT_CACHE
    t0 = time.perf_counter()
    bad = [c for c in (configs or ()) if c not in CONFIGS]
    if bad:
        raise ValueError(f"unknown configuration(s) {bad}; known: {', '.join(ORDER)}")
    model = M.diffusion_model(model_name, cache)
    size = size or st["size"]
    steps = steps or st["steps"]
    fs = st["first_steps"] if first_steps is None else (first_steps or None)
    rec = bench_cpu_backends(model, size=size, steps=steps, calls=calls or st["calls"],
                             rounds=rounds or st["rounds"], first_steps=fs,
                             configs=configs, cache=cache, cal_prompts=cal_prompts,
                             cold_rounds=st["cold_rounds"] if cold_rounds is None else cold_rounds,
                             cal_size=min(size, MODES["quick"]["size"]), cal_steps=min(steps, MODES["quick"]["steps"]),
                             peer_venv_dir=peer_venv_dir)
    n_demo = st["demo_prompts"] if demo_prompts is None else demo_prompts
    if n_demo:
        _log(f"demo accuracy ({n_demo} prompts)")
        try:
            rec["demo"] = demo_accuracy(n_demo, int8=bool((rec.get("fastgen_int8") or {}).get("available")),
                                        cache=cache)
        except Exception as e:  # noqa: BLE001
            rec["demo"] = {"error": repr(e)}
    return {"mode": mode, **rec, "elapsed_s": time.perf_counter() - t0}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        print(json.dumps(worker(sys.argv[2])), flush=True)
    elif len(sys.argv) > 1 and sys.argv[1] == "peer-export":
        print(json.dumps(peer_export(sys.argv[2], sys.argv[3])), flush=True)
    elif len(sys.argv) > 1 and sys.argv[1] == "peer-int8":
        print(json.dumps(peer_int8(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
                                   json.loads(sys.argv[6]))), flush=True)
    else:
        raise SystemExit(main())
