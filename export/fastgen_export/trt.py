"""TensorRT plans for an engine directory: ``trt/<component>.plan`` + the manifest's "tensorrt" record.

Supports TensorRT 10.x (weakly typed networks, fp16 through ``BuilderFlag.FP16``) and 11.x (strongly
typed networks only: the precision is the ONNX export's, see :func:`plan_precisions`). Written against
the real bindings' sources and tested end to end against the strict fake TensorRT / CUDA harness in
tests/fakes (docs/gpu.md says what that verifies); not yet run on hardware.

Profiles are given as batch x height x width in *pixels* (``--min 1x256x256 --opt 2x512x512 --max
4x768x768``) and converted per component input via the manifest's io shapes: ``batch`` -> batch,
``height`` / ``width`` -> pixels, ``latent_height`` / ``latent_width`` -> pixels / vae_scale_factor;
fixed dims (channels, text length) are kept. With ``cfg=True`` (default) the text encoders and the
denoiser get up to twice the batch (classifier-free guidance runs prompt and negative prompt together);
their minimum stays the unguided batch.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fastgen.errors import ExportError, UnsupportedError

from . import manifest as mf

__all__ = ["BHW", "parse_bhw", "default_profile", "profile_for", "record_plan", "plan_precisions", "build_trt"]

BHW = tuple[int, int, int]  # batch, height, width (pixels)
_CFG_DOUBLED = ("text_encoder", "text_encoder_2", "text_encoder_3", "unet", "transformer")
PRECISIONS = ("fp32", "fp16", "bf16")
#: built in fp32 unless asked otherwise: the SD / SDXL VAEs overflow in fp16
FP32_COMPONENTS = ("vae_decoder", "vae_encoder")


def parse_bhw(text: str) -> BHW:
    """``"2x512x768"`` -> (2, 512, 768): batch x height x width in pixels."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m:
        raise ExportError(f"bad shape {text!r}: expected BATCHxHEIGHTxWIDTH in pixels, e.g. 2x512x512")
    b, h, w = (int(g) for g in m.groups())
    if min(b, h, w) < 1:
        raise ExportError(f"bad shape {text!r}: every dimension must be >= 1")
    return b, h, w


def _round_to(x: float, m: int) -> int:
    return max(m, int(x // m) * m)


def default_profile(config: Mapping[str, Any]) -> tuple[BHW, BHW, BHW]:
    """(min, opt, max) when none is given: 1 x half-size, 1 x default size, 4 x 1.5 x default size."""
    m = int(config["size_multiple"])
    h, w = int(config["default_height"]), int(config["default_width"])
    lo, hi = int(config["min_size"]), int(config["max_size"])

    def clamp(x: float) -> int:
        return min(hi, max(lo, _round_to(x, m)))

    return (1, clamp(h / 2), clamp(w / 2)), (1, h, w), (4, clamp(h * 1.5), clamp(w * 1.5))


def _check_bhw(label: str, bhw: BHW, config: Mapping[str, Any]) -> None:
    m, lo, hi = int(config["size_multiple"]), int(config["min_size"]), int(config["max_size"])
    for side in bhw[1:]:
        if side % m or not lo <= side <= hi:
            raise ExportError(f"{label} size {bhw[1]}x{bhw[2]}: height and width must be multiples of {m} "
                              f"between {lo} and {hi} pixels")


def profile_for(manifest: Mapping[str, Any], component: str, min_bhw: BHW, opt_bhw: BHW, max_bhw: BHW, *,
                cfg: bool = True) -> dict[str, dict[str, list[int]]]:
    """TensorRT profile of one component: {input: {"min": dims, "opt": dims, "max": dims}}. Pure."""
    config = manifest["config"]
    comps = manifest["components"]
    if component not in comps:
        raise ExportError(f"engine has no component {component!r} (has: {', '.join(comps)})")
    for label, bhw in (("min", min_bhw), ("opt", opt_bhw), ("max", max_bhw)):
        _check_bhw(label, bhw, config)
    if not all(a <= b <= c for a, b, c in zip(min_bhw, opt_bhw, max_bhw)):
        raise ExportError(f"profile must satisfy min <= opt <= max in every dimension: "
                          f"{min_bhw} / {opt_bhw} / {max_bhw}")
    f = int(config["vae_scale_factor"])
    double = 2 if cfg and component in _CFG_DOUBLED else 1

    def resolve(shape: Iterable[int | str], bhw: BHW, batch_scale: int) -> list[int]:
        b, h, w = bhw
        dims = {"batch": b * batch_scale, "height": h, "width": w, "latent_height": h // f,
                "latent_width": w // f}
        out = []
        for d in shape:
            if isinstance(d, int):
                out.append(d)
            elif d in dims:
                out.append(dims[d])
            else:
                raise ExportError(f"{component}: unknown dynamic dimension {d!r} in the manifest")
        return out

    return {name: {"min": resolve(io["shape"], min_bhw, 1), "opt": resolve(io["shape"], opt_bhw, double),
                   "max": resolve(io["shape"], max_bhw, double)}
            for name, io in comps[component]["inputs"].items()}


def record_plan(manifest: dict[str, Any], component: str, *, path: str, profile: Mapping[str, Any], fp16: bool,
                version: str, device: str, built: str | None = None, precision: str | None = None,
                strongly_typed: bool | None = None) -> dict[str, Any]:
    """Add / replace one plan in ``manifest["tensorrt"]`` (in place) and return the record. Pure."""
    if component not in manifest.get("components", {}):
        raise ExportError(f"engine has no component {component!r}")
    trt_section = manifest.setdefault("tensorrt", {"version": version, "plans": {}})
    if trt_section.get("version") != version:  # plans of another TensorRT version cannot be mixed
        trt_section["plans"] = {}
        trt_section["version"] = version
    entry = {"path": mf.check_relative(path), "profile": {k: dict(v) for k, v in profile.items()},
             "fp16": bool(fp16), "built": built or mf.utc_now(), "device": device}
    if precision is not None:
        entry["precision"] = precision
    if strongly_typed is not None:
        entry["strongly_typed"] = bool(strongly_typed)
    trt_section["plans"][component] = entry
    return entry


def plan_precisions(manifest: Mapping[str, Any], names: Iterable[str], major: int, *, fp16: bool = True,
                    precisions: Mapping[str, str] | None = None,
                    log: Callable[[str], None] | None = None) -> dict[str, str]:
    """The precision each plan is built in. Pure.

    Default: fp16 for every component but the VAEs (:data:`FP32_COMPONENTS`: the SD / SDXL VAEs overflow
    in fp16, NVIDIA's demo keeps the SDXL VAE fp32), fp32 everywhere with ``fp16=False``; ``precisions``
    ({component: "fp32" | "fp16" | "bf16"}) overrides. TensorRT 10 builds weakly typed networks and
    gets fp16 / bf16 through a builder flag. TensorRT 11 builds strongly typed networks only, whose
    precision is the ONNX graph's (``fastgen export --dtype fp16``): a default that the graph does not
    have follows the graph (and says so), an explicit one is an ExportError.
    """
    log = log or (lambda msg: None)
    precisions = dict(precisions or {})
    names = list(names)
    for comp, p in precisions.items():
        if comp not in names:
            raise ExportError(f"precision given for {comp!r}, which is not built (building: {', '.join(names)})")
        if p not in PRECISIONS:
            raise ExportError(f"precision of {comp!r} must be one of {', '.join(PRECISIONS)}, got {p!r}")
    out = {}
    for name in names:
        explicit = name in precisions
        want = precisions.get(name) or ("fp16" if fp16 and name not in FP32_COMPONENTS else "fp32")
        graph = str(manifest["components"][name].get("dtype") or "fp32")
        if major >= 11 and want != graph:
            if explicit or not fp16:
                raise ExportError(f"{name}: TensorRT {major} builds strongly typed networks, whose precision is "
                                  f"the ONNX graph's ({graph}), so a {want} plan needs a {want} export "
                                  f"(`fastgen export --dtype {want}`); or build it with --precision {name}={graph}")
            log(f"{name}: TensorRT {major} is strongly typed: the ONNX graph is {graph}, so the plan is {graph} "
                f"(`fastgen export --dtype fp16` for fp16 plans)")
            want = graph
        out[name] = want
    return out


# ------------------------------------------------------------------------------------------- building


def _import_tensorrt():
    try:
        import tensorrt
    except ImportError as e:
        raise UnsupportedError("TensorRT plans need the tensorrt package and an NVIDIA GPU "
                               "(pip install \"fastgen[tensorrt]\"); tensorrt is not installed") from e
    return tensorrt


def _gpu_name() -> str:
    """Name of GPU 0, or UnsupportedError when there is none."""
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=30, check=True).stdout.strip().splitlines()
            if out and out[0].strip():
                return out[0].strip()
        except (OSError, subprocess.SubprocessError):
            pass
    raise UnsupportedError("TensorRT plans need an NVIDIA GPU; none was found (nvidia-smi reports no device)")


def _timing_cache(config, cache_bytes: bytes) -> tuple[Any, str]:
    """Attach a timing cache made from ``cache_bytes``; a cache TensorRT refuses (another GPU or version:
    ``set_timing_cache`` returns False) is replaced by an empty one. Returns (cache, what happened)."""
    cache = config.create_timing_cache(cache_bytes) if cache_bytes else None
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return cache, f"reused ({len(cache_bytes)} bytes)"
    status = (f"refused ({len(cache_bytes)} bytes made on another GPU or TensorRT version), started anew"
              if cache_bytes else "new")
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise ExportError("TensorRT could not create an empty timing cache")
    return cache, status


def _build_one(trt, logger, onnx_path: str, profile: Mapping[str, Mapping[str, list[int]]], *, precision: str,
               workspace: int | None, cache_bytes: bytes,
               log: Callable[[str], None] | None = None) -> tuple[bytes, bytes]:
    """One plan: TensorRT 10 takes fp16 / bf16 from a builder flag on a weakly typed network, TensorRT 11's
    strongly typed network takes it from the ONNX (see :func:`plan_precisions`). Returns (plan, cache)."""
    from fastgen.backends.tensorrt import trt_major

    log = log or (lambda msg: None)
    major = trt_major(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch always; 11: strongly typed always
    if network is None:
        raise ExportError("TensorRT could not create a network definition")
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):  # resolves model.onnx.data next to the graph
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if workspace:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    if major < 11 and precision != "fp32":
        config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16)
    _, cache_status = _timing_cache(config, cache_bytes)
    opt_profile = builder.create_optimization_profile()
    for name, p in profile.items():
        try:
            opt_profile.set_shape(name, p["min"], p["opt"], p["max"])
        except RuntimeError as e:  # the bindings raise for inconsistent shapes
            raise ExportError(f"TensorRT refused the profile of {name!r} {dict(p)}: {e}") from e
    if config.add_optimization_profile(opt_profile) < 0:
        raise ExportError(f"TensorRT refused the optimization profile {dict(profile)}")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT failed to build an engine for {onnx_path} (see the TensorRT log above)")
    cache = config.get_timing_cache()
    cache_out = bytes(cache.serialize()) if cache is not None else b""
    log(f"timing cache {cache_status}; {len(cache_out)} bytes after the build")
    return bytes(plan), cache_out


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _refuse_contrib_ops(manifest: Mapping[str, Any], names: Iterable[str]) -> None:
    """TensorRT's ONNX parser has no ONNX Runtime contrib ops: refuse graphs exported with --attention mha."""
    fused = [n for n in names if manifest["components"].get(n, {}).get("attention") == "mha"]
    if fused:
        raise UnsupportedError(f"{', '.join(fused)}: exported with --attention mha (ONNX Runtime's "
                               "com.microsoft.MultiHeadAttention), which TensorRT cannot parse; re-export the "
                               "engine with `fastgen export --attention sdpa` to build TensorRT plans")


def build_trt(engine_dir: str | os.PathLike, components: Iterable[str] | None = None, *,
              min_shapes: BHW | str | None = None, opt_shapes: BHW | str | None = None,
              max_shapes: BHW | str | None = None, fp16: bool = True, timing_cache: str | os.PathLike | None = None,
              workspace: int | None = None, cfg: bool = True, precisions: Mapping[str, str] | None = None,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build ``trt/<component>.plan`` for ``components`` (default: all) and record them in the manifest.

    Shapes are batch x height x width in pixels (tuples or "BxHxW" strings); missing ones come from
    :func:`default_profile`. ``workspace`` is in bytes. Precisions per component: see
    :func:`plan_precisions`. Returns the manifest's "tensorrt" section.
    """
    log = log or (lambda msg: None)
    engine_dir = os.fspath(engine_dir)
    manifest = mf.read_manifest(engine_dir)
    adapter_graphs = {rec.get("graph") for rec in (manifest.get("lora") or {}).get("components", {}).values()}
    control = manifest.get("controlnet") or {}
    adapter_graphs |= {c.get("component") for c in control.get("controlnets", [])} | {control.get("unet")}
    # default: every component but the LoRA / ControlNet graphs (their rank and residual axes have no TensorRT
    # profile yet)
    names = list(components) if components else [n for n in manifest["components"] if n not in adapter_graphs]
    d_min, d_opt, d_max = default_profile(manifest["config"])
    bhw = [parse_bhw(s) if isinstance(s, str) else tuple(s) if s is not None else d
           for s, d in ((min_shapes, d_min), (opt_shapes, d_opt), (max_shapes, d_max))]
    profiles = {n: profile_for(manifest, n, *bhw, cfg=cfg) for n in names}  # validate before any work
    _refuse_contrib_ops(manifest, names)

    trt = _import_tensorrt()
    from fastgen.backends.tensorrt import trt_major

    major = trt_major(trt)
    precision = plan_precisions(manifest, names, major, fp16=fp16, precisions=precisions, log=log)
    device = _gpu_name()
    logger = trt.Logger(trt.Logger.WARNING)
    cache_path = os.fspath(timing_cache) if timing_cache else None
    cache = b""
    if cache_path and os.path.isfile(cache_path):
        with open(cache_path, "rb") as f:
            cache = f.read()
    os.makedirs(os.path.join(engine_dir, "trt"), exist_ok=True)
    for name in names:
        t0 = time.perf_counter()
        onnx_path = os.path.join(engine_dir, manifest["components"][name]["path"])
        plan, new_cache = _build_one(trt, logger, onnx_path, profiles[name], precision=precision[name],
                                     workspace=workspace, cache_bytes=cache,
                                     log=lambda msg, name=name: log(f"{name}: {msg}"))
        cache = new_cache or cache
        rel = f"trt/{name}.plan"
        _write_atomic(os.path.join(engine_dir, rel), plan)
        record_plan(manifest, name, path=rel, profile=profiles[name], fp16=precision[name] == "fp16",
                    version=trt.__version__, device=device, precision=precision[name], strongly_typed=major >= 11)
        if cache_path and new_cache:
            _write_atomic(cache_path, cache)
        mf.write_manifest(engine_dir, manifest)
        log(f"{name}: {rel} ({precision[name]}, {len(plan) / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f}s")
    return manifest["tensorrt"]
