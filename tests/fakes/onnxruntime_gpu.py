"""A fake onnxruntime-gpu: the real onnxruntime (CPU) behind the GPU wheel's Python API.

Follows ``onnxruntime/capi/onnxruntime_inference_collection.py`` (InferenceSession, IOBinding, OrtValue
of onnxruntime 1.31): ``get_available_providers()`` lists the CUDA provider as the GPU wheel does, and
whether that provider really starts is the harness's choice (``cuda_loads``). When it does not, the
session comes up on the CPU provider alone and ``get_providers()`` says so, while nothing is raised:
the real behaviour of onnxruntime#23372 that fastgen must detect. "cuda" OrtValues hold a copy of their
data (device memory); every host -> device and device -> host copy is counted independently of the
product code (``uploads`` / ``downloads`` in bytes, per session), including the per-run copies ONNX Runtime
makes for ``bind_cpu_input`` and for CPU OrtValues bound to a CUDA session. The math runs on the CPU.
"""

from __future__ import annotations

import types
import warnings

import numpy as np
import onnxruntime as _ort

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


class FakeOrtGpu:
    def __init__(self, *, cuda_loads: bool = True, file: str | None = None):
        self.cuda_loads = cuda_loads
        self.file = file or __file__
        self.uploads = 0  # bytes host -> device
        self.downloads = 0  # bytes device -> host
        self.sessions: list = []

    def module(self) -> types.ModuleType:
        fake = self
        m = types.ModuleType("onnxruntime")
        m.__file__, m.__version__ = self.file, _ort.__version__
        for name in ("SessionOptions", "GraphOptimizationLevel", "RunOptions", "ExecutionMode", "NodeArg"):
            setattr(m, name, getattr(_ort, name))
        m.get_available_providers = lambda: [CUDA, CPU]  # the GPU wheel lists it whether or not it loads
        m.get_device = lambda: "GPU"

        class OrtValue:
            def __init__(self, real, device: str):
                self._real, self._device = real, device

            @classmethod
            def ortvalue_from_numpy(cls, numpy_obj, /, device_type="cpu", device_id=0, vendor_id=-1):
                dev = device_type.lower()
                if dev not in ("cpu", "cuda"):
                    raise RuntimeError(f"Unsupported device type: {device_type}")
                if dev == "cuda":
                    if not fake.cuda_loads:
                        raise RuntimeError("CUDA execution provider is not available: cannot allocate on cuda")
                    numpy_obj = np.array(numpy_obj, copy=True)
                    fake.uploads += numpy_obj.nbytes
                return cls(_ort.OrtValue.ortvalue_from_numpy(numpy_obj, "cpu", 0), dev)

            def device_name(self):
                return self._device

            def shape(self):
                return self._real.shape()

            def data_type(self):
                return self._real.data_type()

            def element_type(self):
                return self._real.element_type()

            def numpy(self):
                arr = np.array(self._real.numpy(), copy=True)
                if self._device == "cuda":
                    fake.downloads += arr.nbytes
                return arr

            def update_inplace(self, data):
                data = np.asarray(data)
                if list(data.shape) != list(self.shape()):
                    raise RuntimeError(f"update_inplace: shape mismatch {list(data.shape)} vs {self.shape()}")
                self._real.update_inplace(data)
                if self._device == "cuda":
                    fake.uploads += data.nbytes

        class IOBinding:
            def __init__(self, session):
                self._sess, self._real = session, session._real.io_binding()
                self._per_run_uploads: dict[str, int] = {}  # inputs ORT copies to the device at each run
                self._out_devices: list[str] = []

            def bind_cpu_input(self, name, arr_on_cpu):
                self._real.bind_cpu_input(name, arr_on_cpu)
                if self._sess._on_cuda:
                    self._per_run_uploads[name] = np.asarray(arr_on_cpu).nbytes

            def bind_ortvalue_input(self, name, ortvalue):
                if not isinstance(ortvalue, OrtValue):
                    raise AttributeError(f"'{type(ortvalue).__name__}' object has no attribute '_ortvalue'")
                self._real.bind_ortvalue_input(name, ortvalue._real)
                if self._sess._on_cuda and ortvalue._device == "cpu":
                    self._per_run_uploads[name] = int(np.prod(ortvalue.shape())) * ortvalue._real.numpy().itemsize
                else:
                    self._per_run_uploads.pop(name, None)

            def bind_output(self, name, device_type="cpu", device_id=0, element_type=None, shape=None,
                            buffer_ptr=None):
                if device_type.lower() == "cuda" and not self._sess._on_cuda:
                    raise RuntimeError("bind_output: no CUDA allocator in a session without the CUDA provider")
                self._real.bind_output(name, "cpu", 0)
                self._out_devices.append(device_type.lower())

            def bind_ortvalue_output(self, name, ortvalue):
                if not isinstance(ortvalue, OrtValue):
                    raise AttributeError(f"'{type(ortvalue).__name__}' object has no attribute '_ortvalue'")
                self._real.bind_ortvalue_output(name, ortvalue._real)
                self._out_devices.append(ortvalue._device)

            def get_outputs(self):
                return [OrtValue(v, d) for v, d in zip(self._real.get_outputs(), self._out_devices)]

            def copy_outputs_to_cpu(self):
                outs = [np.array(a, copy=True) for a in self._real.copy_outputs_to_cpu()]
                fake.downloads += sum(a.nbytes for a, d in zip(outs, self._out_devices) if d == "cuda")
                return outs

            def clear_binding_inputs(self):
                self._real.clear_binding_inputs()
                self._per_run_uploads.clear()

            def clear_binding_outputs(self):
                self._real.clear_binding_outputs()
                self._out_devices.clear()

        class InferenceSession:
            def __init__(self, path_or_bytes, sess_options=None, providers=None, provider_options=None, **kwargs):
                asked = [p[0] if isinstance(p, tuple) else p for p in providers or [CPU]]
                for p in asked:
                    if p not in (CUDA, CPU):
                        warnings.warn(f"Specified provider '{p}' is not in available provider names."
                                      f"Available providers: '{CUDA}, {CPU}'")
                self._on_cuda = CUDA in asked and fake.cuda_loads
                self._providers = ([CUDA] if self._on_cuda else []) + [CPU]
                self._real = _ort.InferenceSession(path_or_bytes, sess_options=sess_options, providers=[CPU])
                fake.sessions.append(self)

            def get_providers(self):
                return list(self._providers)

            def get_inputs(self):
                return self._real.get_inputs()

            def get_outputs(self):
                return self._real.get_outputs()

            def run(self, output_names, input_feed, run_options=None):
                if self._on_cuda:  # ORT copies the feeds up and the results down
                    fake.uploads += sum(np.asarray(v).nbytes for v in input_feed.values())
                outs = self._real.run(output_names, input_feed, run_options)
                if self._on_cuda:
                    fake.downloads += sum(o.nbytes for o in outs)
                return outs

            def io_binding(self):
                return IOBinding(self)

            def run_with_iobinding(self, iobinding, run_options=None):
                if not isinstance(iobinding, IOBinding) or iobinding._sess is not self:
                    raise TypeError("run_with_iobinding(): incompatible function arguments")
                fake.uploads += sum(iobinding._per_run_uploads.values())
                self._real.run_with_iobinding(iobinding._real, run_options)

        m.OrtValue, m.IOBinding, m.InferenceSession = OrtValue, IOBinding, InferenceSession
        return m
