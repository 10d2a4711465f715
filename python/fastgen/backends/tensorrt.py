"""TensorRT backend: runs the plans `fastgen build-trt` writes, within their optimisation profiles.

Needs TensorRT 10.x or 11.x, cuda-python (``cuda.bindings``, >= 12.6.1) and an NVIDIA GPU
(pip install "fastgen[tensorrt]"). Shape checks against the recorded profiles run before anything
touches the GPU, so a shape outside the profile is refused with a clear message instead of garbage.

One session holds one execution context, one non-blocking CUDA stream and, per IO tensor, a device
buffer and a pinned host staging buffer sized for the profile's maximum, allocated once at load and
freed by :meth:`TrtSession.close`. A call copies the inputs (cast to the engine's dtypes) into the
pinned buffers, uploads them, runs, downloads the requested outputs and synchronises the stream once.
Every TensorRT and CUDA call's result is checked; CUDA failures name the CUDA error code.

Verified against a strict fake of the TensorRT 10 / 11 and cuda-python APIs (tests/fakes, see
docs/gpu.md), not yet on hardware.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from ..errors import BackendError, ShapeError, UnsupportedError
from .base import Session, describe

SUPPORTED_MAJOR = (10, 11)


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


def trt_major(trt) -> int:
    """Major version of an imported tensorrt module; UnsupportedError outside 10.x / 11.x."""
    try:
        major = int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError) as e:
        raise UnsupportedError(f"cannot read the TensorRT version: {e}") from e
    if major not in SUPPORTED_MAJOR:
        raise UnsupportedError(f"TensorRT {trt.__version__} is not supported: fastgen runs TensorRT 10.x and 11.x")
    return major


def cuda_error_text(cudart, err) -> str:
    """``CUDA error 35 cudaErrorInsufficientDriver: CUDA driver version is insufficient ...``."""
    code = int(err)
    try:
        name = cudart.cudaGetErrorName(err)[1].decode()
        text = cudart.cudaGetErrorString(err)[1].decode()
    except Exception:  # an error code the bindings cannot name
        return f"CUDA error {code}"
    return f"CUDA error {code} {name}: {text}"


def cuda_device_count(cudart, what: str) -> int:
    """Number of CUDA devices, or UnsupportedError naming the CUDA error (no driver, no device...)."""
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or not count:
        reason = cuda_error_text(cudart, err) if int(err) != 0 else "no device"
        raise UnsupportedError(f"{what}: no usable CUDA device ({reason})")
    return int(count)


def numpy_dtype(trt, dtype, where: str) -> np.dtype:
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError as e:  # BF16 / FP8 / FP4 IO tensors have no numpy type
        raise UnsupportedError(f"{where}: IO tensor type {dtype} has no numpy equivalent; export the "
                               "component with float32 / float16 inputs and outputs") from e


def cast_feed(component: str, name: str, arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``arr`` as ``dtype`` (the engine's), C-contiguous; integer narrowing must not change a value."""
    arr = np.asarray(arr)
    if arr.dtype == dtype:
        return np.ascontiguousarray(arr)
    if np.issubdtype(dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ShapeError(f"{component}: input {name!r} must be integer ({dtype}), got {arr.dtype}")
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise ShapeError(f"{component}: input {name!r} has values outside the engine's {dtype} range "
                             f"[{info.min}, {info.max}]")
    return np.ascontiguousarray(arr.astype(dtype))


def host_output(arr: np.ndarray) -> np.ndarray:
    """An output in the runtime's types: half / float -> float32, integers and bools as they are."""
    return arr.astype(np.float32) if np.issubdtype(arr.dtype, np.floating) else arr


class _Cuda:
    """cuda.bindings.runtime calls with their ``(err, ...)`` results checked."""

    def __init__(self, cudart, owner: str):
        self.rt, self.owner = cudart, owner

    def __call__(self, fn: str, *args):
        res = getattr(self.rt, fn)(*args)
        err = res[0]
        if int(err) != 0:
            raise BackendError(f"{self.owner}: {fn} failed: {cuda_error_text(self.rt, err)}")
        return res[1] if len(res) > 1 else None


class _Buffer:
    """Device memory + pinned host staging for one IO tensor, sized for the profile's maximum."""

    def __init__(self, dtype: np.dtype, max_shape: tuple[int, ...]):
        self.dtype, self.max_shape = dtype, max_shape
        self.nbytes = max(int(np.prod(max_shape, dtype=np.int64)) * dtype.itemsize, 1)
        self.device = self.host = 0
        self.staging = None

    def allocate(self, cuda: _Cuda) -> None:
        self.device = int(cuda("cudaMalloc", self.nbytes))
        self.host = int(cuda("cudaMallocHost", self.nbytes))
        self.staging = np.frombuffer((ctypes.c_char * self.nbytes).from_address(self.host), np.uint8)

    def view(self, shape) -> np.ndarray:
        """The pinned host memory as an array of ``shape`` (no copy)."""
        n = int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize
        return self.staging[:n].view(self.dtype).reshape(shape)

    def free(self, cuda: _Cuda) -> None:
        self.staging = None
        if self.device:
            ptr, self.device = self.device, 0
            cuda("cudaFree", ptr)
        if self.host:
            ptr, self.host = self.host, 0
            cuda("cudaFreeHost", ptr)


class TrtSession(Session):
    def __init__(self, name: str, plan_path: str, profile: dict):
        self.name = name
        self.profile = profile
        self._buffers: dict[str, _Buffer] = {}
        self._stream = None
        try:
            import tensorrt as trt
            from cuda.bindings import runtime as cudart
        except ImportError as e:
            raise UnsupportedError(f"{name}: the TensorRT backend needs the 'tensorrt' and 'cuda-python' (>= 12.6.1, "
                                   f"for cuda.bindings) packages and an NVIDIA GPU (pip install \"fastgen[tensorrt]\"): "
                                   f"{e}") from e
        trt_major(trt)
        self._trt, self._cuda = trt, _Cuda(cudart, name)
        cuda_device_count(cudart, f"{name}: the TensorRT backend")
        with open(plan_path, "rb") as f:
            data = f.read()
        self._engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(data)
        if self._engine is None:
            raise BackendError(f"{name}: could not deserialize TensorRT plan {plan_path} (built with another "
                               f"TensorRT version than {trt.__version__} or another GPU? rebuild it with "
                               "`fastgen build-trt`)")
        self._ctx = self._engine.create_execution_context()
        if self._ctx is None:
            raise BackendError(f"{name}: TensorRT could not create an execution context (out of GPU memory?)")
        self._lock = threading.Lock()  # one execution context: calls are serialised
        eng = self._engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        self._in = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._out = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: numpy_dtype(trt, eng.get_tensor_dtype(n), f"{name}: {n!r}") for n in names}
        try:
            self._allocate()
        except BaseException:
            self.close()
            raise

    def _allocate(self) -> None:
        """One stream; device + pinned buffers at the profile maximum, bound to the context once."""
        cudart = self._cuda.rt
        self._stream = self._cuda("cudaStreamCreateWithFlags", cudart.cudaStreamNonBlocking)
        for n in self._in:
            max_shape = tuple(self._engine.get_tensor_profile_shape(n, 0)[2])
            self._set_shape(n, max_shape)
            self._buffers[n] = _Buffer(self._dtypes[n], max_shape)
        for n in self._out:
            max_shape = tuple(self._ctx.get_tensor_shape(n))
            if any(d < 0 for d in max_shape):
                raise BackendError(f"{self.name}: output {n!r} has data-dependent shape {max_shape}; "
                                   "not supported by the TensorRT backend")
            self._buffers[n] = _Buffer(self._dtypes[n], max_shape)
        for n, buf in self._buffers.items():
            buf.allocate(self._cuda)  # registered first: close() frees what was allocated before a failure
            if not self._ctx.set_tensor_address(n, buf.device):
                raise BackendError(f"{self.name}: TensorRT refused the device address of {n!r}")

    def _set_shape(self, name: str, shape) -> None:
        if not self._ctx.set_input_shape(name, tuple(int(d) for d in shape)):
            raise ShapeError(f"{self.name}: TensorRT refused shape {tuple(shape)} for input {name!r} "
                             f"(profile {self.profile.get(name)})")

    @property
    def input_names(self):
        return list(self._in)

    @property
    def output_names(self):
        return list(self._out)

    @property
    def stream(self) -> int:
        return int(self._stream)

    def check_shapes(self, feeds):
        check_profile(self.name, self.profile, feeds)

    def run(self, feeds, outputs=None):
        missing = [k for k in self._in if k not in feeds]
        if missing:
            raise ShapeError(f"{self.name}: missing inputs {missing} (the plan takes {self._in})")
        self.check_shapes(feeds)
        names = list(outputs or self._out)
        unknown = [k for k in names if k not in self._out]
        if unknown:
            raise ShapeError(f"{self.name}: unknown outputs {unknown} (the plan has {self._out})")
        arrays = {k: cast_feed(self.name, k, feeds[k], self._dtypes[k]) for k in self._in}
        h2d = self._cuda.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = self._cuda.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self._lock:
            if self._stream is None:
                raise BackendError(f"{self.name}: the TensorRT session is closed")
            for k, a in arrays.items():
                buf = self._buffers[k]
                self._set_shape(k, a.shape)
                if a.nbytes > buf.nbytes:
                    raise ShapeError(f"{self.name}: input {k!r} {a.shape} exceeds the profile maximum {buf.max_shape}")
                buf.view(a.shape)[...] = a
                self._cuda("cudaMemcpyAsync", buf.device, buf.host, a.nbytes, h2d, self._stream)
            if not self._ctx.execute_async_v3(self.stream):
                raise BackendError(f"{self.name}: TensorRT execution failed for inputs {describe(feeds)}")
            shapes = {k: tuple(self._ctx.get_tensor_shape(k)) for k in names}
            for k in names:
                buf = self._buffers[k]
                n = int(np.prod(shapes[k], dtype=np.int64)) * buf.dtype.itemsize
                if n > buf.nbytes or any(d < 0 for d in shapes[k]):
                    raise BackendError(f"{self.name}: output {k!r} shape {shapes[k]} exceeds its buffer")
                self._cuda("cudaMemcpyAsync", buf.host, buf.device, n, d2h, self._stream)
            self._cuda("cudaStreamSynchronize", self._stream)
            return {k: host_output(self._buffers[k].view(shapes[k]).copy()) for k in names}

    def close(self) -> None:
        """Free the device / pinned buffers and the stream (idempotent)."""
        lock = getattr(self, "_lock", None) or threading.Lock()
        with lock:
            buffers, self._buffers = self._buffers, {}
            for buf in buffers.values():
                buf.free(self._cuda)
            if self._stream is not None:
                stream, self._stream = self._stream, None
                self._cuda("cudaStreamDestroy", stream)

    def __del__(self):
        try:
            if getattr(self, "_cuda", None) is not None:
                self.close()
        except Exception:  # interpreter shutdown: the bindings may be gone
            pass
