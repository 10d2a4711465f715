"""ONNX Runtime backend: CPU, or CUDA with IO binding.

On CUDA (onnxruntime-gpu: ``pip install "fastgen[gpu]"``) a session is checked after creation: when
the CUDA provider failed to load (missing CUDA / cuDNN libraries, both onnxruntime wheels installed),
ONNX Runtime silently runs on the CPU; fastgen raises a BackendError naming the cause instead, or warns
and goes on when ``cpu_fallback=True``.

IO binding (default on CUDA) keeps each input's last value on the device as an OrtValue: an input equal
to the previous call's (the prompt embeddings, time ids, ... of a denoising loop) is not uploaded again,
a changed one of the same shape is written into the same device buffer (``update_inplace``), and the
outputs are bound to the previous call's device buffers when the shapes repeat. The latents still move
every step (the C++ loop's CFG / scheduler step runs on the host): the latents up, the noise prediction
down. :attr:`OrtSession.transfers` counts what moved.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import warnings

import numpy as np

from ..errors import BackendError, InvalidArgumentError, ModelLoadError, ShapeError
from .base import Session, describe

_ORT_LOCK = threading.Lock()


def _ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendError(f"onnxruntime is not installed: pip install \"fastgen[cpu]\" (CPU) or "
                           f"\"fastgen[gpu]\" (CUDA), not both: {e}") from e
    return onnxruntime


CUDA = "CUDAExecutionProvider"


def cuda_provider_problem(ort) -> str:
    """Why ONNX Runtime's CUDA provider did not start, as far as can be told without ONNX Runtime's log."""
    capi = os.path.join(os.path.dirname(os.path.abspath(ort.__file__)), "capi")
    lib = "onnxruntime_providers_cuda.dll" if sys.platform == "win32" else "libonnxruntime_providers_cuda.so"
    path = os.path.join(capi, lib)
    if not os.path.exists(path):
        return (f"{lib} is missing from {capi}: is the CPU wheel 'onnxruntime' installed over 'onnxruntime-gpu'? "
                "(pip uninstall -y onnxruntime onnxruntime-gpu && pip install \"fastgen[gpu]\")")
    try:
        ctypes.CDLL(path)
    except OSError as e:
        return (f"{lib} does not load: {e} (install the CUDA 12 and cuDNN 9 libraries, e.g. "
                "pip install \"onnxruntime-gpu[cuda,cudnn]\")")
    return f"{lib} loads, but the CUDA provider did not start (no usable GPU or driver? see ONNX Runtime's log)"


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
                 session_options=None, dtypes: dict[str, str] | None = None, cpu_fallback: bool = False,
                 io_binding: bool | None = None):
        ort = _ort()
        self.name = name
        self.path = path
        self.device = device
        _check_model_file(path, name)
        if providers is None:
            try:
                providers = default_providers(device)
            except BackendError as e:  # the CPU wheel: no CUDA provider at all
                if not (device == "cuda" and cpu_fallback):
                    raise
                warnings.warn(f"component {name!r}: {e}; running on the CPU (cpu_fallback=True)", RuntimeWarning,
                              stacklevel=2)
                providers = default_providers("cpu")
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
        self._check_provider(ort, providers, cpu_fallback)
        self._inputs = {i.name: i for i in self._sess.get_inputs()}
        self._outputs = [o.name for o in self._sess.get_outputs()]
        on_cuda = CUDA in self._sess.get_providers()
        self._use_binding = on_cuda if io_binding is None else bool(io_binding)
        self._device_type = "cuda" if on_cuda else "cpu"
        self._bind_lock = threading.Lock()
        self._bound_in: dict[str, tuple[np.ndarray, object]] = {}  # name -> (host copy, OrtValue)
        self._bound_out: tuple[tuple, list] | None = None  # (input shapes, OrtValues) of the last call
        self.transfers = {"uploads": 0, "upload_bytes": 0, "reused": 0, "downloads": 0, "download_bytes": 0}

    def _check_provider(self, ort, providers, cpu_fallback: bool) -> None:
        """A CUDA session that came up without the CUDA provider (onnxruntime#23372) raises, or warns."""
        asked = [p[0] if isinstance(p, tuple) else p for p in providers or ()]
        if CUDA not in asked or CUDA in self._sess.get_providers():
            return
        msg = (f"component {self.name!r}: ONNX Runtime's CUDA provider did not load, the session would run on "
               f"{', '.join(self._sess.get_providers())}: {cuda_provider_problem(ort)}")
        if not cpu_fallback:
            raise BackendError(msg + "; pass cpu_fallback=True to run on the CPU anyway")
        warnings.warn(msg + "; running on the CPU (cpu_fallback=True)", RuntimeWarning, stacklevel=3)

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
        """IO binding: inputs kept on the device between calls (see the module docstring)."""
        ort = _ort()
        dev = self._device_type
        with self._bind_lock:  # the cached device values are this session's: one bound call at a time
            binding = self._sess.io_binding()
            shapes = []
            for k in self._inputs:
                v = np.ascontiguousarray(feeds[k])
                shapes.append((k, v.shape, v.dtype.str))
                binding.bind_ortvalue_input(k, self._device_input(ort, k, v, dev))
            key = tuple(shapes)
            reuse = self._bound_out is not None and self._bound_out[0] == key and self._bound_out[2] == names
            for i, n in enumerate(names):
                if reuse:
                    binding.bind_ortvalue_output(n, self._bound_out[1][i])
                else:
                    binding.bind_output(n, dev)
            self._sess.run_with_iobinding(binding)
            self._bound_out = (key, binding.get_outputs(), list(names))
            result = {}
            for n, arr in zip(names, binding.copy_outputs_to_cpu()):
                arr = np.array(arr, copy=True)  # a host copy: the device buffer is reused next call
                if dev != "cpu":
                    self.transfers["downloads"] += 1
                    self.transfers["download_bytes"] += arr.nbytes
                result[n] = arr
            return result

    def _device_input(self, ort, name: str, v: np.ndarray, dev: str):
        """The OrtValue for input ``name``: the cached one when ``v`` equals the last value, updated in
        place when only the content changed, a new one otherwise."""
        cached = self._bound_in.get(name)
        if cached is not None:
            host, ov = cached
            if host.shape == v.shape and host.dtype == v.dtype:
                if np.array_equal(host, v):
                    self.transfers["reused"] += 1
                    return ov
                ov.update_inplace(v)
                host[...] = v
                self._count_upload(v, dev)
                return ov
        ov = ort.OrtValue.ortvalue_from_numpy(v.copy(), dev, 0)
        self._bound_in[name] = (v.copy(), ov)
        self._count_upload(v, dev)
        return ov

    def _count_upload(self, v: np.ndarray, dev: str) -> None:
        if dev != "cpu":
            self.transfers["uploads"] += 1
            self.transfers["upload_bytes"] += v.nbytes
