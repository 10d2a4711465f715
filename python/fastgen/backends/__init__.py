"""Inference backends behind one Session interface: onnxruntime (default), openvino and tensorrt."""

from __future__ import annotations

from ..errors import InvalidArgumentError, ManifestError
from ..manifest import Manifest, safe_path
from .base import Session
from .variants import check_variant, load_variant, variant_name  # noqa: F401  (check_variant: re-exported)

BACKENDS = ("onnxruntime", "openvino", "tensorrt")
# precisions each backend runs ("auto": the fastest the machine runs natively; "int8": the engine's int8
# variant made by `fastgen optimize ENGINE --int8`, see variants.py)
PRECISIONS = {"onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "auto", "int8"), "tensorrt": ("fp32",)}


def check_precision(backend: str, precision: str, device: str = "cpu") -> str:
    if backend == "openvino" and device != "cpu":
        raise InvalidArgumentError("backend='openvino' runs on device='cpu'")
    allowed = PRECISIONS.get(backend, ())
    if not isinstance(precision, str) or precision not in allowed:
        raise InvalidArgumentError(f"precision for backend {backend!r} must be one of {', '.join(allowed)}, "
                                   f"got {precision!r}")
    return precision


def open_session(manifest: Manifest, component: str, *, backend: str = "onnxruntime", device: str = "cpu",
                 providers=None, session_options=None, precision: str = "fp32", threads: int | None = None,
                 cpu_fallback: bool = False) -> Session:
    """Load one component of an engine with the chosen backend. With precision "int8" a component runs
    from the engine's int8 variant when the variant has it, else at fp32. ``cpu_fallback``: with
    device="cuda", warn and run on the CPU when ONNX Runtime's CUDA provider did not load (default: raise)."""
    spec = manifest.component(component)
    path = spec.path
    name = variant_name(backend, precision)
    if name is not None:
        path = load_variant(manifest, name, backend).paths.get(component)
        if path is None:  # not quantized: runs at fp32
            path, precision = spec.path, "fp32"
    if backend == "openvino":
        if device != "cpu":
            raise InvalidArgumentError("backend='openvino' runs on device='cpu'")
        from .openvino import OvSession

        return OvSession(component, path, precision=precision, threads=threads)
    if backend == "onnxruntime":
        from .onnxruntime import OrtSession

        return OrtSession(component, path, device=device, providers=providers, session_options=session_options,
                          cpu_fallback=cpu_fallback)
    if backend == "tensorrt":
        plans = manifest.tensorrt.get("plans", {})
        plan = plans.get(component)
        if plan is None:
            # components without a plan (e.g. tokenizer-side graphs) run in onnxruntime
            from .onnxruntime import OrtSession

            return OrtSession(component, spec.path, device="cuda" if device == "cuda" else "cpu",
                              providers=providers, session_options=session_options, cpu_fallback=cpu_fallback)
        if not isinstance(plan, dict):
            raise ManifestError(f"tensorrt plan record of {component!r} must be an object")
        from .tensorrt import TrtSession

        path = safe_path(manifest.root, plan.get("path"), f"tensorrt plan {component!r}")
        return TrtSession(component, path, plan.get("profile") or {})
    raise InvalidArgumentError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
