"""TensorRT backend: runs the plans `fastgen build-trt` writes, within their optimisation profiles.

Needs the `tensorrt` and `cuda-python` packages and an NVIDIA GPU (pip install "fastgen[tensorrt]").
Shape checks against the recorded profiles run before anything touches the GPU, so a shape outside
the profile is refused with a clear message instead of producing garbage.

Not verified on hardware in this repository's CI (no GPU there); see the README.
"""

from __future__ import annotations

import threading

import numpy as np

from ..errors import BackendError, ShapeError, UnsupportedError
from .base import Session, describe


def check_profile(component: str, profile: dict, feeds: dict[str, np.ndarray]) -> None:
    """Raise ShapeError when a feed is outside the [min, max] dims of the plan's profile."""
    for name, arr in feeds.items():
        prof = profile.get(name)
        if prof is None:
            continue
        lo, hi = prof.get("min"), prof.get("max")
        shape = list(arr.shape)
        if lo is None or hi is None or len(lo) != len(shape):
            raise ShapeError(f"{component}: input {name!r} has rank {len(shape)}, the TensorRT profile expects "
                             f"min {lo} / max {hi}")
        for d, (a, b, v) in enumerate(zip(lo, hi, shape)):
            if not (a <= v <= b):
                raise ShapeError(f"{component}: input {name!r} shape {tuple(shape)} is outside the TensorRT "
                                 f"profile (dim {d} must be in [{a}, {b}]); rebuild the plan with "
                                 f"`fastgen build-trt --min/--max` covering this size")


class TrtSession(Session):
    def __init__(self, name: str, plan_path: str, profile: dict):
        self.name = name
        self.profile = profile
        try:
            import tensorrt as trt
            from cuda.bindings import runtime as cudart
        except ImportError as e:
            raise UnsupportedError(f"{name}: the TensorRT backend needs the 'tensorrt' and 'cuda-python' packages "
                                   f"and an NVIDIA GPU (pip install \"fastgen[tensorrt]\"): {e}") from e
        self._trt, self._cudart = trt, cudart
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0 or count < 1:
            raise UnsupportedError(f"{name}: no CUDA device available for TensorRT")
        logger = trt.Logger(trt.Logger.WARNING)
        with open(plan_path, "rb") as f:
            data = f.read()
        self._engine = trt.Runtime(logger).deserialize_cuda_engine(data)
        if self._engine is None:
            raise BackendError(f"{name}: could not deserialize TensorRT plan {plan_path} "
                               "(built with another TensorRT version or GPU?)")
        self._lock = threading.Lock()  # one execution context: calls are serialised
        self._ctx = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._in = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._out = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    @property
    def input_names(self):
        return list(self._in)

    @property
    def output_names(self):
        return list(self._out)

    def check_shapes(self, feeds):
        check_profile(self.name, self.profile, feeds)

    def run(self, feeds, outputs=None):
        self.check_shapes(feeds)
        cudart, trt = self._cudart, self._trt
        names = outputs or self._out
        with self._lock:
            ptrs = []
            try:
                for k in self._in:
                    a = np.ascontiguousarray(feeds[k])
                    self._ctx.set_input_shape(k, a.shape)
                    ptr = self._malloc(a.nbytes)
                    ptrs.append(ptr)
                    self._check(cudart.cudaMemcpy(ptr, a.ctypes.data, a.nbytes,
                                                  cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
                    self._ctx.set_tensor_address(k, ptr)
                host = {}
                for k in self._out:
                    shape = tuple(self._ctx.get_tensor_shape(k))
                    dtype = trt.nptype(self._engine.get_tensor_dtype(k))
                    host[k] = np.empty(shape, dtype)
                    ptr = self._malloc(host[k].nbytes)
                    ptrs.append(ptr)
                    self._ctx.set_tensor_address(k, ptr)
                if not self._ctx.execute_async_v3(0):
                    raise BackendError(f"{self.name}: TensorRT execution failed for inputs {describe(feeds)}")
                self._check(cudart.cudaStreamSynchronize(0))
                for k, p in zip(self._out, ptrs[len(self._in):]):
                    self._check(cudart.cudaMemcpy(host[k].ctypes.data, p, host[k].nbytes,
                                                  cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost))
            finally:
                for p in ptrs:
                    cudart.cudaFree(p)
        return {k: host[k].astype(np.float32, copy=False) for k in names}

    def _malloc(self, nbytes):
        err, ptr = self._cudart.cudaMalloc(max(int(nbytes), 1))
        self._check((err,))
        return ptr

    def _check(self, res):
        err = res[0] if isinstance(res, tuple) else res
        if int(err) != 0:
            raise BackendError(f"{self.name}: CUDA error {err}")
