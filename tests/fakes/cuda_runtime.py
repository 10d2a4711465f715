"""A fake ``cuda.bindings.runtime`` with host-simulated device memory.

Follows cuda-python's bindings (cuda-bindings 12.9, the real wheel is a test dependency): every call
returns a tuple whose first item is a ``cudaError_t`` (``(err,)`` for calls without a result, ``(err,
value)`` otherwise); the enums and the ``cudaStream_t`` type ARE the real wheel's, only the functions that
need a GPU are replaced. Device memory is a set of bytearrays at fake addresses far from any host
address; host addresses are read and written with ctypes, so a wrong pointer, size or copy kind fails the
way cudaMemcpy does (``cudaErrorInvalidValue``) instead of corrupting memory. Everything is recorded
(allocations, frees, copies with their stream and whether the host side was pinned, syncs) for the tests'
assertions.
"""

from __future__ import annotations

import ctypes
import types

from cuda.bindings import runtime as _real

cudaError_t = _real.cudaError_t
cudaMemcpyKind = _real.cudaMemcpyKind
cudaStream_t = _real.cudaStream_t
OK = cudaError_t.cudaSuccess
BAD = cudaError_t.cudaErrorInvalidValue
_DEVICE_BASE = 0x7E00_0000_0000  # fake device addresses: above any host mapping ctypes hands out here


class FakeCudaRuntime:
    """State of one fake GPU; ``module()`` is what ``from cuda.bindings import runtime`` returns."""

    def __init__(self, device_name: str = "NVIDIA Fake H100", device_count: int = 1):
        self.device_name, self.device_count = device_name, device_count
        self.device: dict[int, bytearray] = {}  # address -> memory
        self.pinned: dict[int, ctypes.Array] = {}
        self.streams: set[int] = set()
        self.mallocs = self.frees = self.host_allocs = self.host_frees = 0
        self.copies: list[dict] = []  # {"kind", "bytes", "stream", "pinned"}
        self.syncs: list[int] = []
        self._next = _DEVICE_BASE

    # ------------------------------------------------------------------ memory model helpers (harness side)
    def find(self, ptr: int, nbytes: int) -> tuple[bytearray, int] | None:
        """(buffer, offset) of a device range, or None when the range is not inside one allocation."""
        for base, buf in self.device.items():
            if base <= ptr and ptr + nbytes <= base + len(buf):
                return buf, ptr - base
        return None

    def read(self, ptr: int, nbytes: int) -> bytes:
        hit = self.find(ptr, nbytes)
        if hit is None:
            raise AssertionError(f"read of {nbytes} bytes at {ptr:#x} is outside every device allocation")
        buf, off = hit
        return bytes(buf[off:off + nbytes])

    def write(self, ptr: int, data: bytes) -> None:
        hit = self.find(ptr, len(data))
        if hit is None:
            raise AssertionError(f"write of {len(data)} bytes at {ptr:#x} overflows every device allocation")
        buf, off = hit
        buf[off:off + len(data)] = data

    def _is_pinned(self, ptr: int, nbytes: int) -> bool:
        return any(a <= ptr and ptr + nbytes <= a + ctypes.sizeof(b) for a, b in self.pinned.items())

    def _is_device(self, ptr: int) -> bool:
        return any(a <= ptr < a + len(b) for a, b in self.device.items())

    @property
    def live(self) -> int:
        return len(self.device)

    # ------------------------------------------------------------------ the API
    def module(self) -> types.ModuleType:
        m = types.ModuleType("cuda.bindings.runtime")
        m.__file__ = __file__
        m.cudaError_t, m.cudaMemcpyKind, m.cudaStream_t = cudaError_t, cudaMemcpyKind, cudaStream_t
        m.cudaStreamNonBlocking, m.cudaStreamDefault = _real.cudaStreamNonBlocking, _real.cudaStreamDefault
        m.cudaGetErrorString, m.cudaGetErrorName = _real.cudaGetErrorString, _real.cudaGetErrorName
        for name in ("cudaGetDeviceCount", "cudaMalloc", "cudaFree", "cudaMallocHost", "cudaFreeHost",
                     "cudaMemcpy", "cudaMemcpyAsync", "cudaStreamCreate", "cudaStreamCreateWithFlags",
                     "cudaStreamDestroy", "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaSetDevice"):
            setattr(m, name, getattr(self, name))
        return m

    def cudaGetDeviceCount(self):
        if self.device_count == 0:
            return (cudaError_t.cudaErrorNoDevice, 0)
        return (OK, self.device_count)

    def cudaSetDevice(self, device: int):
        return (OK,) if 0 <= int(device) < self.device_count else (cudaError_t.cudaErrorInvalidDevice,)

    def cudaMalloc(self, size: int):
        size = int(size)
        if size <= 0:
            return (BAD, 0)
        ptr = self._next
        self._next += (size + 0xFFF) & ~0xFFF  # 4 KiB aligned, never overlapping
        self.device[ptr] = bytearray(size)
        self.mallocs += 1
        return (OK, ptr)

    def cudaFree(self, devPtr):
        ptr = int(devPtr)
        if ptr == 0:
            return (OK,)
        if ptr not in self.device:
            return (BAD,)
        del self.device[ptr]
        self.frees += 1
        return (OK,)

    def cudaMallocHost(self, size: int):
        buf = (ctypes.c_char * int(size))()
        ptr = ctypes.addressof(buf)
        self.pinned[ptr] = buf
        self.host_allocs += 1
        return (OK, ptr)

    def cudaFreeHost(self, ptr):
        if int(ptr) not in self.pinned:
            return (BAD,)
        del self.pinned[int(ptr)]
        self.host_frees += 1
        return (OK,)

    def _copy(self, dst, src, count, kind, stream):
        if not isinstance(kind, cudaMemcpyKind):
            raise TypeError(f"Argument 'kind' is not instance of type (expected <class 'cudaMemcpyKind'>, "
                            f"found {type(kind)})")
        dst, src, count = int(dst), int(src), int(count)
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            if self._is_device(src) or self.find(dst, count) is None:
                return (BAD,)
            self.write(dst, ctypes.string_at(src, count))
            host = src
        elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            if self._is_device(dst) or self.find(src, count) is None:
                return (BAD,)
            ctypes.memmove(dst, self.read(src, count), count)
            host = dst
        else:  # the runtime never needs another kind
            raise AssertionError(f"unexpected copy kind {kind!r}")
        self.copies.append({"kind": kind.name, "bytes": count, "stream": stream,
                            "pinned": self._is_pinned(host, count)})
        return (OK,)

    def cudaMemcpy(self, dst, src, count, kind):
        return self._copy(dst, src, count, kind, None)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        return self._copy(dst, src, count, kind, int(stream))

    def cudaStreamCreate(self):
        ptr = self._next
        self._next += 0x1000
        self.streams.add(ptr)
        return (OK, cudaStream_t(ptr))

    def cudaStreamCreateWithFlags(self, flags):
        return self.cudaStreamCreate()

    def cudaStreamDestroy(self, stream):
        if int(stream) not in self.streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        self.streams.discard(int(stream))
        return (OK,)

    def cudaStreamSynchronize(self, stream):
        if int(stream) != 0 and int(stream) not in self.streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        self.syncs.append(int(stream))
        return (OK,)

    def cudaDeviceSynchronize(self):
        self.syncs.append(-1)
        return (OK,)
