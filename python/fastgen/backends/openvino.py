"""OpenVINO backend: the engine's ONNX files, compiled per input shape, fp32 or bf16; or its int8 variant.

- The same ONNX graphs ONNX Runtime runs; no re-export (``pip install "fastgen[openvino]"``). With
  ``precision="int8"`` a component runs from the OpenVINO IR (``model.xml`` + ``model.bin``) of the
  engine's int8 variant (``fastgen optimize ENGINE --int8``, see variants.py) when it has one; its int8
  ops run in int8 (VNNI / AMX where the CPU has them), the ops left in float run in bf16 where the CPU has
  native bf16, else in f32 (see float_hint).
- **Static shapes.** Each distinct set of input shapes gets its own compiled model (the graph reshaped to
  those shapes and compiled), built on first use and kept in a bounded LRU per session. OpenVINO runs a
  static-shape model faster than the dynamic one, and a service sees few shapes. A captioner's KV-cache
  decoder (inputs ``past_key_values.*``), whose past length grows every token, is compiled once with
  dynamic shapes instead.
- **Compile cache on disk.** Compiled blobs go to OpenVINO's ``CACHE_DIR``
  (``$FASTGEN_CACHE_DIR/openvino/<precision>``, default ``~/.cache/fastgen/openvino/<precision>``), so a
  restarted service loads them instead of compiling again.
- **Precision.** ``"fp32"`` (exact path: OpenVINO's CPU plugin would otherwise pick bf16 by itself on
  CPUs with native bf16, so f32 is asked for explicitly), ``"bf16"`` (bf16 matrix work, f32 inputs and
  outputs) or ``"auto"`` (bf16 where the CPU has native bf16 (AVX512_BF16 / AMX), else fp32); ``"int8"``
  for the int8 IR graphs (compile cache ``int8-bf16`` or ``int8-f32``).
- **Threads.** One stream per compiled model; ``threads`` (default: OpenVINO's, all cores) bounds the
  threads one inference uses, so concurrent callers share the cores instead of oversubscribing them.
"""

from __future__ import annotations

import collections
import os
import threading

import numpy as np

from ..errors import BackendError, InvalidArgumentError, ModelLoadError, ShapeError, UnsupportedError
from .base import Session, describe

PRECISIONS = ("fp32", "bf16", "auto", "int8")
DEFAULT_MAX_SHAPES = 8

_CORES: dict[str, object] = {}
_CORE_LOCK = threading.Lock()


def _ov():
    try:
        import openvino
    except ImportError as e:
        raise UnsupportedError('backend="openvino" needs OpenVINO: pip install "fastgen[openvino]"') from e
    return openvino


def core(precision: str = "fp32"):
    """The process's OpenVINO Core for one precision, with that precision's compile cache. (A CACHE_DIR
    given per compile_model call did not stay with that call: fp32 blobs landed in the bf16 folder.)"""
    with _CORE_LOCK:
        c = _CORES.get(precision)
        if c is None:
            c = _CORES[precision] = _ov().Core()
            c.set_property({"CACHE_DIR": cache_dir(precision)})
        return c


def cache_dir(precision: str) -> str:
    """The compile cache of one precision. OpenVINO's cache key leaves INFERENCE_PRECISION_HINT out (an
    fp32 blob was loaded for a bf16 compile, and ran to NaNs), so every precision has its own folder."""
    root = os.environ.get("FASTGEN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fastgen")
    path = os.path.join(root, "openvino", precision)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise BackendError(f"cannot create the OpenVINO compile cache {path!r} ({e.strerror}); set "
                           "FASTGEN_CACHE_DIR to a writable folder") from None
    return path


def native_bf16() -> bool:
    """True where the CPU runs bf16 matrix work natively (OpenVINO reports the BF16 capability)."""
    caps = core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in caps


def float_hint(precision: str) -> str:
    """OpenVINO's INFERENCE_PRECISION_HINT for a resolved precision: the precision of the float work. For
    "int8", the ops the int8 graph leaves in float (the weight-compressed linear layers, softmax, norms) run
    in bf16 where the CPU has native bf16, like "auto" (SD 1.5's UNet: 1.10 s a call vs 1.58 s in f32, at
    the same demo accuracy and PSNR), else in f32."""
    if precision == "int8":
        return "bf16" if native_bf16() else "f32"
    return "bf16" if precision == "bf16" else "f32"


def resolve_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"precision for the openvino backend must be one of {', '.join(PRECISIONS)}, "
                                   f"got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    return precision


class OvSession(Session):
    """One component on OpenVINO's CPU plugin, compiled per input shape."""

    def __init__(self, name: str, path: str, *, precision: str = "fp32", threads: int | None = None,
                 max_shapes: int = DEFAULT_MAX_SHAPES, static_shapes: bool | None = None):
        self.name, self.path = name, path
        self.precision = resolve_precision(precision)
        self.float_precision = float_hint(self.precision)
        # compile-cache folder: OpenVINO's cache key leaves the precision hint out (see cache_dir)
        self._cache = self.precision if self.precision != "int8" else f"int8-{self.float_precision}"
        self.max_shapes = int(max_shapes)
        try:
            self._model = core(self._cache).read_model(path)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
            raise ModelLoadError(f"component {name!r}: OpenVINO could not read {path}: {e}") from e
        self._inputs = {p.get_any_name(): p for p in self._model.inputs}
        self._outputs = [p.get_any_name() for p in self._model.outputs]
        # a KV-cache decoder sees a new past length every token: one dynamic compile serves them all
        self.static_shapes = (not any(k.startswith("past_key_values") for k in self._inputs)
                              if static_shapes is None else bool(static_shapes))
        self._config = {
            "INFERENCE_PRECISION_HINT": self.float_precision,
            "NUM_STREAMS": "1",
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads is not None:
            self._config["INFERENCE_NUM_THREADS"] = str(int(threads))
        self._compiled: collections.OrderedDict[tuple, object] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._compile_locks: dict[tuple, threading.Lock] = {}
        self.compiles = 0  # shapes compiled (or loaded from the disk cache) by this session
        self.loaded_from_cache = 0  # of those, how many came from the disk cache

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def input_shapes(self) -> dict[str, list]:
        return {k: [d.get_length() if d.is_static else None for d in p.get_partial_shape()]
                for k, p in self._inputs.items()}

    def _validate(self, feeds: dict[str, np.ndarray]) -> None:
        missing = [k for k in self._inputs if k not in feeds]
        extra = [k for k in feeds if k not in self._inputs]
        if missing or extra:
            raise ShapeError(f"{self.name}: inputs {sorted(feeds)} do not match the graph's {sorted(self._inputs)}")
        for k, port in self._inputs.items():
            ps = port.get_partial_shape()
            v = feeds[k]
            if ps.rank.is_static and ps.rank.get_length() != v.ndim:
                raise ShapeError(f"{self.name}: input {k!r} must have {ps.rank.get_length()} dims {ps}, "
                                 f"got shape {v.shape}")
            if not ps.compatible(_ov().PartialShape(list(v.shape))):
                raise ShapeError(f"{self.name}: input {k!r} must have shape {ps}, got {v.shape}")

    def compiled(self, feeds: dict[str, np.ndarray]):
        """The compiled model for these input shapes (LRU; compiled or loaded from the cache on first use)."""
        key = tuple((k, feeds[k].shape if self.static_shapes else None) for k in self._inputs)
        with self._lock:
            cm = self._compiled.get(key)
            if cm is not None:
                self._compiled.move_to_end(key)
                return cm
            lock = self._compile_locks.setdefault(key, threading.Lock())
        with lock:  # one compile per shape, other shapes compile concurrently
            with self._lock:
                cm = self._compiled.get(key)
            if cm is None:
                model = self._model
                if self.static_shapes:
                    model = model.clone()
                    model.reshape({k: _ov().PartialShape(list(shape)) for k, shape in key})
                try:
                    cm = core(self._cache).compile_model(model, "CPU", self._config)
                except Exception as e:
                    raise BackendError(f"{self.name}: OpenVINO could not compile for shapes {dict(key)}: {e}") from e
                try:
                    cached = bool(cm.get_property("LOADED_FROM_CACHE"))
                except Exception:  # noqa: BLE001 - older OpenVINO without the property
                    cached = False
                with self._lock:
                    self.compiles += 1
                    self.loaded_from_cache += cached
                    self._compiled[key] = cm
                    while len(self._compiled) > self.max_shapes:
                        self._compiled.popitem(last=False)
            with self._lock:
                self._compile_locks.pop(key, None)
        return cm

    def run(self, feeds, outputs=None):
        self._validate(feeds)
        names = outputs or self._outputs
        cm = self.compiled(feeds)
        try:
            req = cm.create_infer_request()
            res = req.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()}, share_inputs=True)
            return {n: np.array(res[n], copy=True) for n in names}
        except KeyError as e:
            raise BackendError(f"{self.name}: the graph has no output {e}; outputs: {self._outputs}") from None
        except Exception as e:
            raise BackendError(f"{self.name} failed in OpenVINO with inputs {describe(feeds)}: {e}") from e
