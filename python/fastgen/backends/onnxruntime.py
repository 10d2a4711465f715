"""ONNX Runtime backend: CPU, or CUDA with IO binding."""

from __future__ import annotations

import os
import threading

import numpy as np

from ..errors import BackendError, InvalidArgumentError, ModelLoadError, ShapeError
from .base import Session, describe

_ORT_LOCK = threading.Lock()


def _ort():
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - onnxruntime is a hard dependency
        raise BackendError(f"onnxruntime is not installed: {e}") from e
    return onnxruntime


def default_providers(device: str) -> list[str]:
    ort = _ort()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendError("device='cuda' needs onnxruntime-gpu with the CUDA execution provider "
                               "(pip install \"fastgen[gpu]\"); available providers: "
                               + ", ".join(ort.get_available_providers()))
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise InvalidArgumentError(f"device must be 'cpu' or 'cuda', got {device!r}")


def _check_model_file(path: str, component: str) -> None:
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise ModelLoadError(f"component {component!r}: cannot read {path}: {e}") from e
    # An ONNX ModelProto starts with field 1 (ir_version, varint): byte 0x08.
    if size < 16 or not head.startswith(b"\x08"):
        raise ModelLoadError(f"component {component!r}: {path} is not an ONNX model (empty, truncated or garbage)")


# ONNX Runtime's full optimisation level adds layout transforms (NCHWc convolutions) on top of the basic
# graph rewrites. Measured on this project's CPU (benchmarks/RESULTS.md, cold start): SD 1.5's VAE decoder
# runs 13% faster with it and is optimised in 0.9 s, but the 3.4 GB UNet takes 8 s more to open (10.7 s
# vs 2.6 s) and runs no faster (1.93 s vs 1.93 s per call at 32x32 latents, 9.28 vs 9.41 s at 64x64).
# So graphs with more weights than this get the basic level. Pass session_options to choose yourself.
LARGE_MODEL_BYTES = 1 << 30


def model_bytes(path: str) -> int:
    """The ONNX file plus its external-data file (``model.onnx.data``), when there is one."""
    total = os.path.getsize(path)
    data = path + ".data"
    if os.path.exists(data):
        total += os.path.getsize(data)
    return total


def default_optimization_level(path: str):
    ort = _ort()
    if model_bytes(path) > LARGE_MODEL_BYTES:
        return ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.GraphOptimizationLevel.ORT_ENABLE_ALL


class OrtSession(Session):
    def __init__(self, name: str, path: str, *, device: str = "cpu", providers: list | None = None,
                 session_options=None, dtypes: dict[str, str] | None = None):
        ort = _ort()
        self.name = name
        self.path = path
        self.device = device
        _check_model_file(path, name)
        if providers is None:
            providers = default_providers(device)
        opts = session_options
        if opts is None:
            opts = ort.SessionOptions()
            opts.graph_optimization_level = default_optimization_level(path)
            opts.log_severity_level = 3
        try:
            with _ORT_LOCK:
                self._sess = ort.InferenceSession(path, sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception classes
            raise ModelLoadError(f"component {name!r}: onnxruntime could not load {path}: {e}") from e
        self._inputs = {i.name: i for i in self._sess.get_inputs()}
        self._outputs = [o.name for o in self._sess.get_outputs()]
        self._use_binding = device == "cuda"

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def input_shapes(self) -> dict[str, list]:
        return {k: list(v.shape) for k, v in self._inputs.items()}

    def _validate(self, feeds: dict[str, np.ndarray]) -> None:
        missing = [k for k in self._inputs if k not in feeds]
        extra = [k for k in feeds if k not in self._inputs]
        if missing or extra:
            raise ShapeError(f"{self.name}: inputs {sorted(feeds)} do not match the graph's {sorted(self._inputs)}")
        for k, arg in self._inputs.items():
            v = feeds[k]
            if len(arg.shape) != v.ndim:
                raise ShapeError(f"{self.name}: input {k!r} must have {len(arg.shape)} dims {arg.shape}, "
                                 f"got shape {v.shape}")
            for want, got in zip(arg.shape, v.shape):
                if isinstance(want, int) and want != got:
                    raise ShapeError(f"{self.name}: input {k!r} must have shape {arg.shape}, got {v.shape}")

    def run(self, feeds, outputs=None):
        self._validate(feeds)
        names = outputs or self._outputs
        try:
            if self._use_binding:
                return self._run_bound(feeds, names)
            res = self._sess.run(names, feeds)
        except Exception as e:
            raise BackendError(f"{self.name} failed in onnxruntime with inputs {describe(feeds)}: {e}") from e
        return dict(zip(names, res))

    def _run_bound(self, feeds, names):
        """CUDA path: bind inputs once, let ORT allocate outputs on the device, copy back."""
        binding = self._sess.io_binding()
        for k, v in feeds.items():
            binding.bind_cpu_input(k, np.ascontiguousarray(v))
        for n in names:
            binding.bind_output(n, "cuda")
        self._sess.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu()))
