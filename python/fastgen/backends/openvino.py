"""OpenVINO backend: the engine's ONNX files, compiled per input shape, fp32 or bf16; or its int8 variant.

- The same ONNX graphs ONNX Runtime runs; no re-export (``pip install "fastgen[openvino]"``). With
  ``precision="int8"`` a component runs from the OpenVINO IR (``model.xml`` + ``model.bin``) of the
  engine's int8 variant (``fastgen optimize ENGINE --int8``, see variants.py) when it has one; its int8
  ops run in int8 (VNNI / AMX where the CPU has them), the ops left in float run in bf16 where the CPU has
  bf16 instructions, else in f32 (see float_hint).
- **Static shapes.** Each distinct set of input shapes gets its own compiled model (the graph reshaped to
  those shapes and compiled), built on first use and kept in a bounded LRU per session. OpenVINO runs a
  static-shape model faster than the dynamic one, and a service sees few shapes. A captioner's KV-cache
  decoder (inputs ``past_key_values.*``), whose past length grows every token, is compiled once with
  dynamic shapes instead.
- **Compile cache on disk.** Compiled blobs go to OpenVINO's ``CACHE_DIR``
  (``$FASTGEN_CACHE_DIR/openvino/<precision>``, default ``~/.cache/fastgen/openvino/<precision>``), so a
  restarted service loads them instead of compiling again.
- **Converted-model cache.** Reading an ONNX file makes OpenVINO convert the whole graph and copy its
  weights into memory (SD 1.5's 3.4 GB UNet: seconds, and the copy stays resident beside the compiled
  model). The first load of a component therefore saves the converted model as OpenVINO IR
  (``model.xml`` + ``model.bin``) under ``<cache>/openvino/ir/<key>/``, keyed by the ONNX file's path, size and
  modification time (and its external data's) and the OpenVINO version; later loads read that IR, whose
  weights OpenVINO maps from the file instead of copying them. Written to a temporary folder and renamed,
  so a crash never leaves a half-written IR that a later load would trust. ``FASTGEN_OPENVINO_IR_CACHE=0``
  turns it off (the IR costs the component's size again on disk).
- **Precision.** ``"fp32"`` (exact path: OpenVINO's CPU plugin would otherwise pick bf16 by itself on
  CPUs with native bf16, so f32 is asked for explicitly), ``"bf16"`` (bf16 matrix work, f32 inputs and
  outputs) or ``"auto"`` (bf16 where a one-time probe measured it faster than f32 on this CPU, else fp32; see
  bf16_is_faster); ``"int8"``
  for the int8 IR graphs (compile cache ``int8-bf16`` or ``int8-f32``).
- **Threads.** One stream per compiled model; ``threads`` (default: OpenVINO's, all cores) bounds the
  threads one inference uses, so concurrent callers share the cores instead of oversubscribing them.
"""

from __future__ import annotations

import collections
import hashlib
import os
import shutil
import tempfile
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
    path = os.path.join(_cache_root(), "openvino", precision)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise BackendError(f"cannot create the OpenVINO compile cache {path!r} ({e.strerror}); set "
                           "FASTGEN_CACHE_DIR to a writable folder") from None
    return path


def _cache_root() -> str:
    return os.environ.get("FASTGEN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fastgen")


def ir_cache_enabled() -> bool:
    return os.environ.get("FASTGEN_OPENVINO_IR_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def ir_cache_path(onnx_path: str) -> str:
    """Where the converted IR of ``onnx_path`` is kept: ``<cache>/openvino/ir/<key>/model.xml``. The key covers
    the file's absolute path, size and mtime (and those of its external data) and the OpenVINO version, so an
    engine re-exported in place, or a new OpenVINO, converts again."""
    h = hashlib.sha256(_ov().get_version().encode())
    for f in (onnx_path, onnx_path + ".data"):
        f = os.path.abspath(f)
        try:
            st = os.stat(f)
        except FileNotFoundError:
            continue
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return os.path.join(_cache_root(), "openvino", "ir", h.hexdigest()[:24], "model.xml")


def read_model(path: str, ov_core):
    """Read a component's graph: its converted IR from the cache when there is one, else the file itself
    (an ONNX file is then converted once, saved as IR, and read back from it, so that the first and later
    loads compile the same model: the same compile-cache key). Returns (model, the path read)."""
    if not (path.endswith(".onnx") and ir_cache_enabled()):
        return ov_core.read_model(path), path
    ir = ir_cache_path(path)
    if os.path.isfile(ir):
        try:
            return ov_core.read_model(ir), ir
        except Exception:  # noqa: BLE001 - a damaged cache entry: drop it and convert again
            shutil.rmtree(os.path.dirname(ir), ignore_errors=True)
    model = ov_core.read_model(path)
    if _save_ir(model, ir):
        try:
            return ov_core.read_model(ir), ir
        except Exception:  # noqa: BLE001 - unreadable right after writing (disk trouble): use the ONNX model
            shutil.rmtree(os.path.dirname(ir), ignore_errors=True)
    return model, path


def _save_ir(model, ir: str) -> bool:
    """Save ``model`` as IR at ``ir``, atomically (temporary folder, then rename); a failure (a full disk, a
    read-only cache) only costs the next load the conversion again."""
    final = os.path.dirname(ir)
    parent = os.path.dirname(final)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-")
    except OSError:
        return False
    try:
        _ov().save_model(model, os.path.join(tmp, "model.xml"), compress_to_fp16=False)
        os.rename(tmp, final)
    except Exception:  # noqa: BLE001 - another process renamed first, or the disk is full: keep what exists
        shutil.rmtree(tmp, ignore_errors=True)
    return os.path.isfile(ir)


def native_bf16() -> bool:
    """True where the CPU has bf16 instructions at all (OpenVINO reports the BF16 capability)."""
    caps = core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in caps


_PROBE: dict[str, bool] = {}
_PROBE_LOCK = threading.Lock()
PROBE_MARGIN = 0.9  # bf16 must take under 90% of f32's CPU time to be "auto"'s pick


def bf16_is_faster() -> bool:
    """Whether bf16 runs diffusion work faster than f32 on this CPU: measured, not assumed.

    Having bf16 instructions is not enough. On an Intel Xeon with AVX512_BF16 but no AMX, the half-width SD 1.5
    UNet took 1.44x the CPU time in bf16 that it took in f32 (benchmarks/ov_startup.py), while on the AMD EPYC
    of issue 16's figures bf16 was 1.9x faster. So the first "auto" of a machine times a small
    graph with the UNet's three kinds of work (a 3x3 convolution, a linear layer and an attention) in both
    precisions, by CPU time (robust to other processes' load), interleaved, best of 5. The answer is kept
    in ``<cache>/openvino/probe.json`` keyed by CPU model, capabilities and OpenVINO version."""
    if not native_bf16():
        return False
    key = _probe_key()
    with _PROBE_LOCK:
        if key in _PROBE:
            return _PROBE[key]
        path = os.path.join(_cache_root(), "openvino", "probe.json")
        saved = _read_json(path)
        entry = saved.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("bf16_faster"), bool):
            _PROBE[key] = entry["bf16_faster"]
            return _PROBE[key]
        try:
            times = _probe_times()
        except Exception:  # noqa: BLE001 - a CPU plugin that cannot run the probe: the exact path, not saved
            return False
        faster = times["bf16"] < PROBE_MARGIN * times["f32"]
        _PROBE[key] = faster
        saved[key] = {"bf16_faster": faster, "cpu_seconds": times}
        _write_json(path, saved)
        return faster


def _probe_key() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    caps = ",".join(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return hashlib.sha256(f"{model}|{caps}|{_ov().get_version()}|{os.cpu_count()}".encode()).hexdigest()[:24]


def _probe_model():
    """Conv 3x3 (320 ch, 32x32, batch 2) -> linear 320->320 -> 8-head attention over the 1024 positions:
    the shapes of SD 1.5's first UNet block at 256 px."""
    ov = _ov()
    ops = ov.opset13
    rng = np.random.default_rng(0)
    c, hw, heads = 320, 32, 8

    def const(*shape):
        return ops.constant((rng.standard_normal(shape) * 0.05).astype(np.float32))

    x = ops.parameter([2, c, hw, hw], np.float32, name="x")
    y = ops.convolution(x, const(c, c, 3, 3), [1, 1], [1, 1], [1, 1], [1, 1])
    y = ops.transpose(ops.reshape(y, ops.constant(np.array([2, c, hw * hw], np.int64)), False),
                      ops.constant(np.array([0, 2, 1], np.int64)))
    y = ops.matmul(y, const(c, c), False, False)

    def heads_of(t):
        t = ops.reshape(t, ops.constant(np.array([2, hw * hw, heads, c // heads], np.int64)), False)
        return ops.transpose(t, ops.constant(np.array([0, 2, 1, 3], np.int64)))

    q, k, v = (heads_of(ops.matmul(y, const(c, c), False, False)) for _ in range(3))
    a = ops.softmax(ops.matmul(q, k, False, True), -1)
    return ov.Model([ops.matmul(a, v, False, False)], [x], "precision_probe")


def _probe_times(rounds: int = 5) -> dict[str, float]:
    import resource

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    model = _probe_model()
    x = np.random.default_rng(1).standard_normal((2, 320, 32, 32)).astype(np.float32)
    plain = _ov().Core()  # no compile cache: the probe must not leave blobs behind
    reqs = {p: plain.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": p, "NUM_STREAMS": "1"})
            .create_infer_request() for p in ("f32", "bf16")}
    best = {p: float("inf") for p in reqs}
    for p, req in reqs.items():
        req.infer({0: x})  # warm-up
    for _ in range(rounds):
        for p, req in reqs.items():
            t0 = cpu()
            req.infer({0: x})
            best[p] = min(best[p], cpu() - t0)
    return best


def _read_json(path: str) -> dict:
    import json

    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_json(path: str, data: dict) -> None:
    import json

    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs the next process the probe again


def float_hint(precision: str) -> str:
    """OpenVINO's INFERENCE_PRECISION_HINT for a resolved precision: the precision of the float work. For
    "int8", the ops the int8 graph leaves in float (the weight-compressed linear layers, softmax, norms) run
    in bf16 wherever the CPU has bf16 instructions, as the int8 accuracy gate was measured (SD 1.5's UNet on
    an AMX CPU: 1.10 s a call vs 1.58 s in f32). Not the "auto" probe: on a CPU without AMX the probe picks
    f32, and there the int8 demo engine lost 3.3 points of shape accuracy with an f32 remainder against 1.7
    with bf16 (60 prompts: one prompt apart, tests/test_int8.py allows 2 points); else f32."""
    if precision == "int8":
        return "bf16" if native_bf16() else "f32"
    return "bf16" if precision == "bf16" else "f32"


def resolve_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"precision for the openvino backend must be one of {', '.join(PRECISIONS)}, "
                                   f"got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_is_faster() else "fp32"
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
            self._model, self.source = read_model(path, core(self._cache))
        except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
            raise ModelLoadError(f"component {name!r}: OpenVINO could not read {path}: {e}") from e
        # shapes, not ports: a port keeps its model alive, and the model read from the IR cache is dropped
        # after each compile (see _graph)
        self._inputs = {p.get_any_name(): p.get_partial_shape() for p in self._model.inputs}
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
        self._graph_lock = threading.Lock()
        self._compile_locks: dict[tuple, threading.Lock] = {}
        self.compiles = 0  # shapes compiled (or loaded from the disk cache) by this session
        self.loaded_from_cache = 0  # of those, how many came from the disk cache

    def _graph(self):
        """The graph to reshape and compile. Read from the IR cache, it is dropped after each compile
        (OpenVINO maps its weights from the file: holding it kept SD 1.5-half's 0.84 GB of weights resident
        beside the compiled model's own copy) and read again, in well under a second, for the next shape."""
        with self._graph_lock:
            if self._model is None:
                try:
                    self._model = core(self._cache).read_model(self.source)
                except Exception:  # noqa: BLE001 - the cache folder was cleaned under a live session
                    try:
                        self._model, self.source = read_model(self.path, core(self._cache))
                    except Exception as e:  # noqa: BLE001
                        raise ModelLoadError(f"component {self.name!r}: OpenVINO could not read {self.path}: "
                                             f"{e}") from e
            return self._model

    def _release_graph(self) -> None:
        if self.source != self.path:  # re-reading the IR is cheap; an ONNX file (IR cache off) is not
            with self._graph_lock:
                self._model = None

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def input_shapes(self) -> dict[str, list]:
        return {k: [d.get_length() if d.is_static else None for d in ps] for k, ps in self._inputs.items()}

    def _validate(self, feeds: dict[str, np.ndarray]) -> None:
        missing = [k for k in self._inputs if k not in feeds]
        extra = [k for k in feeds if k not in self._inputs]
        if missing or extra:
            raise ShapeError(f"{self.name}: inputs {sorted(feeds)} do not match the graph's {sorted(self._inputs)}")
        for k, ps in self._inputs.items():
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
                model = self._graph()
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
                self._release_graph()
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
