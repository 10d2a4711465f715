"""Export-time parity: run an exported graph in ONNX Runtime (CPU) and compare it with torch.

The reference is always the float32 torch model, also for fp16 exports (so the figure says how far
the engine is from the original checkpoint, not from a half-precision copy of it). The bound is
``atol + rtol * max|reference|``: hidden states of real text encoders reach tens, noise predictions
about one, so a purely absolute bound would be either too loose or too strict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fastgen.errors import ExportError

__all__ = ["TOLERANCES", "tolerance_for", "compare", "skipped"]

#: dtype -> (atol, rtol)
TOLERANCES = {"fp32": (1e-3, 1e-3), "fp16": (2e-2, 2e-2)}


def tolerance_for(dtype: str, ref_max_abs: float, override: float | None = None) -> float:
    """The absolute bound for a component: ``override`` if given, else atol + rtol * max|ref|."""
    if override is not None:
        return float(override)
    atol, rtol = TOLERANCES[dtype]
    return atol + rtol * ref_max_abs


def skipped(reason: str) -> dict[str, Any]:
    return {"passed": None, "skipped": True, "reason": reason}


def _session(path: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    # no busy-waiting worker threads: exports often share the machine (and parity is a one-off run)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def compare(path: str, input_names: Sequence[str], output_names: Sequence[str], inputs: Sequence,
            reference: Sequence, *, dtype: str, tolerance: float | None = None) -> dict[str, Any]:
    """Run ``path`` on ``inputs`` (torch tensors) and compare every output with ``reference``.

    Returns the manifest's parity record. For fp16 graphs that ONNX Runtime's CPU provider cannot
    run (missing fp16 kernels), the record says so (``skipped``) instead of failing the export.
    """
    import numpy as np

    feeds = {n: t.detach().cpu().numpy() for n, t in zip(input_names, inputs)}
    try:
        outs = _session(path).run(list(output_names), feeds)
    except Exception as e:
        if dtype == "fp16":
            return skipped(f"ONNX Runtime CPU cannot run this fp16 graph: {str(e).splitlines()[0][:300]}")
        raise ExportError(f"ONNX Runtime failed to run {path}: {e}") from e
    per_output: dict[str, float] = {}
    ref_max = 0.0
    for name, got, want in zip(output_names, outs, reference):
        want = want.detach().float().cpu().numpy()
        if got.shape != want.shape:
            raise ExportError(f"{path}: output {name!r} has shape {list(got.shape)} in ONNX Runtime but "
                              f"{list(want.shape)} in torch")
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        per_output[name] = float(diff.max()) if np.isfinite(diff).all() else math.inf
        ref_max = max(ref_max, float(np.abs(want).max()))
    max_abs = max(per_output.values())
    tol = tolerance_for(dtype, ref_max, tolerance)
    return {
        "max_abs": _json_float(max_abs),
        "tolerance": tol,
        "passed": bool(max_abs <= tol),
        "outputs": {k: _json_float(v) for k, v in per_output.items()},
        "reference_max_abs": ref_max,
        "inputs": {n: list(a.shape) for n, a in feeds.items()},
        "reference": "torch float32",
        "provider": "CPUExecutionProvider",
    }


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else "inf"
