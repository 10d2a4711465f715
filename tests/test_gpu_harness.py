"""The TensorRT backend and `fastgen build-trt` end to end on the strict fake TensorRT 10 / 11 + CUDA
runtime of tests/fakes (no GPU needed). Each test names the GPU bug it guards against; docs/gpu.md lists
what this verifies and what still needs hardware."""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("cuda.bindings.runtime")  # the real wheel: its enums and error strings are used

import fastgen  # noqa: E402
from fakes.cuda_runtime import FakeCudaRuntime  # noqa: E402
from fakes.tensorrt_api import FakeTensorRT  # noqa: E402
from fastgen.backends import tensorrt as trt_backend  # noqa: E402
from fastgen.errors import BackendError, ExportError, ShapeError, UnsupportedError  # noqa: E402
from fastgen_export import trt as trt_build  # noqa: E402

VERSIONS = ("10.16.1", "11.1.0")
DEVICE = "NVIDIA Fake H100"


class Gpu:
    """One fake GPU with one fake TensorRT version installed as the `tensorrt` / `cuda.bindings` modules."""

    def __init__(self, version: str, device: str = DEVICE):
        self.cuda = FakeCudaRuntime(device)
        self.fake = FakeTensorRT(version, self.cuda)
        self.trt = self.fake.module()
        self.cudart = self.cuda.module()

    def install(self, monkeypatch):
        import cuda.bindings

        monkeypatch.setitem(sys.modules, "tensorrt", self.trt)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", self.cudart)
        monkeypatch.setattr(cuda.bindings, "runtime", self.cudart, raising=False)
        monkeypatch.setattr(trt_build, "_gpu_name", lambda: self.cuda.device_name)
        return self


@pytest.fixture(params=VERSIONS)
def gpu(request, monkeypatch):
    return Gpu(request.param).install(monkeypatch)


def _toy_onnx(path, *, ids_dtype=onnx.TensorProto.INT32):
    """y = 2 x + ids (float), z = ids + 1 (ids' dtype): int inputs and an int output, like NVIDIA's demo
    text encoders (int32 input_ids)."""
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Constant", [], ["two"], value=helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])),
         helper.make_node("Mul", ["x", "two"], ["x2"]),
         helper.make_node("Cast", ["ids"], ["idsf"], to=TensorProto.FLOAT),
         helper.make_node("Unsqueeze", ["idsf", "axis"], ["idsf2"]),
         helper.make_node("Add", ["x2", "idsf2"], ["y"]),
         helper.make_node("Constant", [], ["one"], value=helper.make_tensor("one", ids_dtype, [], [1])),
         helper.make_node("Add", ["ids", "one"], ["z"])],
        "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("ids", ids_dtype, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("z", ids_dtype, ["batch"])],
        [helper.make_tensor("axis", TensorProto.INT64, [1], [1])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return str(path)


TOY_PROFILE = {"x": {"min": [1, 4], "opt": [2, 4], "max": [4, 4]}, "ids": {"min": [1], "opt": [2], "max": [4]}}


def _toy_plan(gpu, tmp_path, *, precision="fp32", cache=b""):
    onnx_path = _toy_onnx(tmp_path / "toy.onnx")
    logger = gpu.trt.Logger(gpu.trt.Logger.WARNING)
    plan, cache = trt_build._build_one(gpu.trt, logger, onnx_path, TOY_PROFILE, precision=precision, workspace=1 << 20,
                                       cache_bytes=cache)
    path = tmp_path / "toy.plan"
    path.write_bytes(plan)
    return str(path), cache


def _feeds(batch=3):
    x = np.arange(batch * 4, dtype=np.float32).reshape(batch, 4)
    ids = np.arange(7, 7 + batch, dtype=np.int64)  # the runtime's tokenizers give int64
    return x, ids


# ------------------------------------------------------------------------------------------------ building


def test_build_one_fp16_uses_the_flag_on_10_and_strong_typing_on_11(gpu, tmp_path):
    """Bug: BuilderFlag.FP16 does not exist on TensorRT 11 (AttributeError on the default fp16 build)."""
    calls = []
    real = gpu.trt.Builder

    def spy(logger):
        b = real(logger)
        make = b.create_builder_config
        b.create_builder_config = lambda: calls.append(make()) or calls[-1]
        return b

    gpu.trt.Builder = spy
    path, _ = _toy_plan(gpu, tmp_path, precision="fp16")
    assert os.path.getsize(path) > 0
    flags = calls[0].flags_set
    if gpu.fake.major == 10:
        assert flags == {"FP16"}
    else:
        assert not hasattr(gpu.trt.BuilderFlag, "FP16") and flags == set()
    assert [m for s, m in gpu.fake.log if s == "ERROR"] == []


def test_trt10_refuses_fp16_flag_on_strongly_typed_network(monkeypatch, tmp_path):
    g = Gpu("10.16.1").install(monkeypatch)
    b = g.trt.Builder(g.trt.Logger())
    net = b.create_network(1 << g.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED.value)
    assert g.trt.OnnxParser(net, None).parse_from_file(_toy_onnx(tmp_path / "t.onnx"))
    cfg = b.create_builder_config()
    cfg.set_flag(g.trt.BuilderFlag.FP16)
    p = b.create_optimization_profile()
    for k, v in TOY_PROFILE.items():
        p.set_shape(k, v["min"], v["opt"], v["max"])
    cfg.add_optimization_profile(p)
    assert b.build_serialized_network(net, cfg) is None  # the fake is as strict as TensorRT here


def test_timing_cache_from_another_gpu_is_refused_reported_and_replaced(monkeypatch, tmp_path):
    """Bug: set_timing_cache returns False for another device's cache, get_timing_cache() is then None and
    `.serialize()` crashed after the full build, so no plan was written."""
    other = Gpu("11.1.0", device="NVIDIA Other GPU").install(monkeypatch)
    _, cache_a = _toy_plan(other, tmp_path)
    assert cache_a.startswith(b"FAKETRTCACHE")
    g = Gpu("11.1.0").install(monkeypatch)
    logs = []
    plan, cache_b = trt_build._build_one(g.trt, g.trt.Logger(), _toy_onnx(tmp_path / "t.onnx"), TOY_PROFILE,
                                         precision="fp32", workspace=None, cache_bytes=cache_a, log=logs.append)
    assert plan and cache_b and cache_b != cache_a
    assert "refused" in logs[0] and "another GPU" in logs[0]
    # and the same device's cache is reused
    logs.clear()
    trt_build._build_one(g.trt, g.trt.Logger(), _toy_onnx(tmp_path / "t.onnx"), TOY_PROFILE, precision="fp32",
                         workspace=None, cache_bytes=cache_b, log=logs.append)
    assert logs[0].startswith("timing cache reused")


def test_build_one_reports_parse_and_profile_errors(gpu, tmp_path):
    with pytest.raises(ExportError, match="cannot parse"):
        trt_build._build_one(gpu.trt, gpu.trt.Logger(), str(tmp_path / "missing.onnx"), {}, precision="fp32",
                             workspace=None, cache_bytes=b"")
    bad = {"x": {"min": [4, 4], "opt": [2, 4], "max": [1, 4]}, "ids": TOY_PROFILE["ids"]}
    with pytest.raises(ExportError, match="refused the profile of 'x'"):
        trt_build._build_one(gpu.trt, gpu.trt.Logger(), _toy_onnx(tmp_path / "t.onnx"), bad, precision="fp32",
                             workspace=None, cache_bytes=b"")
    with pytest.raises(ExportError, match="failed to build"):  # no profile for the dynamic inputs
        trt_build._build_one(gpu.trt, gpu.trt.Logger(), _toy_onnx(tmp_path / "t.onnx"), {}, precision="fp32",
                             workspace=None, cache_bytes=b"")


def test_plan_precisions_vae_fp32_and_strong_typing():
    """Bug: fp16 was applied to every component, the SDXL VAE included (it overflows in fp16)."""
    m = {"components": {"unet": {"dtype": "fp32"}, "vae_decoder": {"dtype": "fp32"}, "text_encoder": {"dtype": "fp16"}}}
    names = ["unet", "vae_decoder", "text_encoder"]
    assert trt_build.plan_precisions(m, names, 10) == {"unet": "fp16", "vae_decoder": "fp32", "text_encoder": "fp16"}
    assert trt_build.plan_precisions(m, names, 10, precisions={"vae_decoder": "fp16"})["vae_decoder"] == "fp16"
    assert set(trt_build.plan_precisions(m, names, 10, fp16=False).values()) == {"fp32"}
    logs = []
    assert trt_build.plan_precisions(m, names, 11, log=logs.append) == \
        {"unet": "fp32", "vae_decoder": "fp32", "text_encoder": "fp16"}  # 11: the ONNX graph's precision
    assert "strongly typed" in logs[0]
    with pytest.raises(ExportError, match="--dtype fp16"):
        trt_build.plan_precisions(m, names, 11, precisions={"unet": "fp16"})
    with pytest.raises(ExportError, match="must be one of"):
        trt_build.plan_precisions(m, names, 10, precisions={"unet": "int4"})
    with pytest.raises(ExportError, match="not built"):
        trt_build.plan_precisions(m, ["unet"], 10, precisions={"vae_decoder": "fp32"})


# ------------------------------------------------------------------------------------------------ running


def test_session_casts_inputs_and_keeps_output_dtypes(gpu, tmp_path):
    """Bugs: int64 input_ids copied as raw bytes into an int32 engine input; outputs cast to float32
    whatever their type."""
    plan, _ = _toy_plan(gpu, tmp_path)
    s = trt_backend.TrtSession("toy", plan, TOY_PROFILE)
    x, ids = _feeds()
    out = s.run({"x": x, "ids": ids})
    np.testing.assert_array_equal(out["y"], 2 * x + ids[:, None])
    assert out["z"].dtype == np.int32
    np.testing.assert_array_equal(out["z"], ids + 1)
    with pytest.raises(ShapeError, match="outside the engine's int32 range"):
        s.run({"x": x, "ids": np.array([1, 2, 2**40])})
    s.close()


def test_session_buffers_stream_and_pinned_copies(gpu, tmp_path):
    """Bugs: cudaMalloc / cudaFree of every tensor on every call, pageable copies, the legacy default
    stream (execute_async_v3(0)), more than one synchronisation per call; frees must equal mallocs."""
    plan, _ = _toy_plan(gpu, tmp_path)
    s = trt_backend.TrtSession("toy", plan, TOY_PROFILE)
    cuda = gpu.cuda
    allocated = cuda.mallocs
    assert allocated == 4 and cuda.host_allocs == 4  # one device + one pinned buffer per IO tensor
    for batch in (1, 4, 2, 3):
        x, ids = _feeds(batch)
        np.testing.assert_array_equal(s.run({"x": x, "ids": ids}, ["y"])["y"], 2 * x + ids[:, None])
    assert cuda.mallocs == allocated and cuda.frees == 0  # reused across calls
    assert [e["stream"] for e in gpu.fake.executions] == [s.stream] * 4 and s.stream != 0
    assert not any("default stream" in m for _, m in gpu.fake.log)
    assert all(c["pinned"] and c["stream"] == s.stream for c in cuda.copies)
    assert len(cuda.copies) == 4 * 3  # 2 uploads + the 1 requested download per call
    assert cuda.syncs == [s.stream] * 4  # one synchronisation per call
    s.close()
    s.close()  # idempotent
    assert cuda.frees == cuda.mallocs and cuda.host_frees == cuda.host_allocs and cuda.live == 0
    assert not cuda.streams
    with pytest.raises(BackendError, match="closed"):
        s.run(dict(zip(("x", "ids"), _feeds())))


def test_session_refuses_shapes_outside_the_profile(gpu, tmp_path):
    """Bug: set_input_shape's bool was ignored, so a refused shape ran on stale dims."""
    plan, _ = _toy_plan(gpu, tmp_path)
    x, ids = _feeds(6)
    with pytest.raises(ShapeError, match="outside the TensorRT profile"):
        trt_backend.TrtSession("toy", plan, TOY_PROFILE).run({"x": x, "ids": ids})
    # without the recorded profile, TensorRT's own refusal (set_input_shape -> False) is still caught
    s = trt_backend.TrtSession("toy", plan, {})
    with pytest.raises(ShapeError, match="TensorRT refused shape"):
        s.run({"x": x, "ids": ids})
    with pytest.raises(ShapeError, match="missing inputs"):
        s.run({"x": x})
    with pytest.raises(ShapeError, match="unknown outputs"):
        s.run(dict(zip(("x", "ids"), _feeds())), ["nope"])


def test_session_checks_every_trt_result(gpu, tmp_path, monkeypatch):
    """Bug: a None execution context (out of memory) was used; a None engine, another version's plan."""
    plan, _ = _toy_plan(gpu, tmp_path)
    from fakes import tensorrt_api

    monkeypatch.setattr(tensorrt_api._Engine, "create_execution_context", lambda self, strategy=None: None)
    with pytest.raises(BackendError, match="execution context"):
        trt_backend.TrtSession("toy", plan, TOY_PROFILE)
    monkeypatch.undo()
    other = Gpu("11.1.0" if gpu.fake.major == 10 else "10.16.1").install(monkeypatch)
    with pytest.raises(BackendError, match="could not deserialize"):
        trt_backend.TrtSession("toy", plan, TOY_PROFILE)
    assert other.cuda.mallocs == 0


def test_cuda_errors_name_the_code_and_leak_nothing(gpu, tmp_path, monkeypatch):
    plan, _ = _toy_plan(gpu, tmp_path)
    from cuda.bindings import runtime as real

    n = {"calls": 0}
    malloc = gpu.cuda.cudaMalloc

    def failing(size):
        n["calls"] += 1
        return (real.cudaError_t.cudaErrorMemoryAllocation, 0) if n["calls"] == 3 else malloc(size)

    monkeypatch.setattr(gpu.cudart, "cudaMalloc", failing)
    with pytest.raises(BackendError, match="cudaMalloc failed: CUDA error 2 cudaErrorMemoryAllocation"):
        trt_backend.TrtSession("toy", plan, TOY_PROFILE)
    assert gpu.cuda.live == 0 and gpu.cuda.host_frees == gpu.cuda.host_allocs and not gpu.cuda.streams


def test_no_usable_device_with_the_real_cuda_bindings(monkeypatch, tmp_path):
    """Bug: "no CUDA device" without the CUDA error code. Runs the real cuda-bindings wheel, which imports
    without a GPU and reports the missing driver."""
    import cuda.bindings
    from cuda.bindings import runtime as real

    err, count = real.cudaGetDeviceCount()
    if int(err) == 0 and count:
        pytest.skip("this machine has a CUDA device")
    g = Gpu("11.1.0")
    monkeypatch.setitem(sys.modules, "tensorrt", g.trt)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", real)
    monkeypatch.setattr(cuda.bindings, "runtime", real)
    with pytest.raises(UnsupportedError, match=rf"no usable CUDA device \(CUDA error {int(err)} cudaError"):
        trt_backend.TrtSession("unet", str(tmp_path / "none.plan"), {})


def test_unsupported_tensorrt_version(monkeypatch, tmp_path):
    g = Gpu("9.3.0").install(monkeypatch)
    with pytest.raises(UnsupportedError, match="TensorRT 9.3.0 is not supported"):
        trt_backend.TrtSession("unet", str(tmp_path / "x.plan"), {})
    assert g.cuda.mallocs == 0


def test_check_profile():
    prof = {"x": {"min": [1, 4], "max": [2, 4]}}
    trt_backend.check_profile("c", prof, {"x": np.zeros((2, 4)), "other": np.zeros(3)})
    with pytest.raises(ShapeError, match=r"dim 0 must be in \[1, 2\]"):
        trt_backend.check_profile("c", prof, {"x": np.zeros((3, 4))})
    with pytest.raises(ShapeError, match="rank 1"):
        trt_backend.check_profile("c", prof, {"x": np.zeros(4)})


# ------------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def sd_engine():
    from engines import tiny_engine

    return tiny_engine("sd")[1]


def test_build_trt_and_pipeline_match_onnxruntime(gpu, sd_engine, tmp_path):
    """`fastgen build-trt` then Pipeline.load(backend="tensorrt") under each fake version: the images equal
    the onnxruntime backend's (the fake runs each plan's ONNX on the CPU), every buffer is freed."""
    eng = tmp_path / "engine"
    shutil.copytree(sd_engine, eng)
    logs = []
    section = trt_build.build_trt(eng, min_shapes="1x32x32", opt_shapes="1x64x64", max_shapes="2x64x64",
                                  timing_cache=tmp_path / "cache.bin", log=logs.append)
    assert section["version"] == gpu.fake.version
    plans = section["plans"]
    assert plans["vae_decoder"]["precision"] == "fp32"
    assert plans["unet"]["precision"] == ("fp16" if gpu.fake.major == 10 else "fp32")  # fp32 export on 11
    assert all(p["strongly_typed"] == (gpu.fake.major == 11) for p in plans.values())
    assert (tmp_path / "cache.bin").stat().st_size > 0
    assert any("timing cache new" in m for m in logs) and any("timing cache reused" in m for m in logs)
    kw = dict(num_inference_steps=3, guidance_scale=5.0, height=64, width=64, seed=3, output_type="np")
    want = fastgen.Pipeline.load(eng)("a red cat", **kw).images
    with fastgen.Pipeline.load(eng, backend="tensorrt") as pipe:
        got = pipe("a red cat", **kw).images
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert gpu.fake.executions and {e["stream"] for e in gpu.fake.executions} != {0}
    import gc

    gc.collect()
    assert gpu.cuda.live == 0 and gpu.cuda.frees == gpu.cuda.mallocs


def test_dtype_helpers(gpu):
    trt = gpu.trt
    assert trt_backend.numpy_dtype(trt, trt.DataType.HALF, "c") == np.float16
    with pytest.raises(UnsupportedError, match="no numpy equivalent"):
        trt_backend.numpy_dtype(trt, trt.DataType.BF16, "c: 'x'")
    a = trt_backend.cast_feed("c", "x", np.ones((2, 3), np.float64)[:, ::2], np.dtype(np.float16))
    assert a.dtype == np.float16 and a.flags.c_contiguous
    with pytest.raises(ShapeError, match="must be integer"):
        trt_backend.cast_feed("c", "ids", np.ones(3, np.float32), np.dtype(np.int32))
    assert trt_backend.host_output(np.ones(2, np.float16)).dtype == np.float32
    assert trt_backend.host_output(np.ones(2, np.bool_)).dtype == np.bool_


def test_gpu_name_from_nvidia_smi(monkeypatch, tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA Fake H100'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert trt_build._gpu_name() == "NVIDIA Fake H100"
    smi.write_text("#!/bin/sh\nexit 9\n")
    with pytest.raises(UnsupportedError, match="no device"):
        trt_build._gpu_name()
