"""The OpenVINO backend: the same engines as ONNX Runtime, fp32 within 2e-3, bf16 finite, one compile per
shape (bounded), an on-disk compile cache per precision that a new process reuses, clear errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("openvino")

import fastgen  # noqa: E402
from engines import tiny_engine  # noqa: E402

H, W = 48, 80
RGB = (np.random.default_rng(0).random((H, W, 3)) * 255).astype(np.uint8)
MASK = np.zeros((H, W), np.uint8)
MASK[8:40, 16:64] = 255


@pytest.fixture(autouse=True, scope="module")
def _cache_dir(tmp_path_factory):
    # the process's cores keep the folder they were made with; tests of the cache itself use subprocesses
    os.environ.setdefault("FASTGEN_CACHE_DIR", str(tmp_path_factory.mktemp("ovcache")))


def _pair(eng, **kw):
    return fastgen.Pipeline.load(eng), fastgen.Pipeline.load(eng, backend="openvino", **kw)


CASES = [
    ("sd", dict()),
    ("sd", dict(image=RGB, strength=0.6)),
    ("sd", dict(image=RGB, mask_image=MASK, strength=0.9)),
    ("inpaint", dict(image=RGB, mask_image=MASK)),
    ("sdxl", dict(negative_prompt="blurry")),
    ("sd3", dict(negative_prompt="ugly")),
]


@pytest.mark.parametrize("kind,extra", CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
def test_fp32_equals_onnxruntime(kind, extra):
    ort, ov = _pair(tiny_engine(kind)[1])
    kw = dict(num_inference_steps=3, guidance_scale=4.0, height=H, width=W, seed=3, output_type="np", **extra)
    want = ort("a red cat", **kw).images
    got = ov("a red cat", **kw).images
    assert ov.precision == "fp32"
    assert np.abs(got - want).max() <= 2e-3


def test_bf16_runs_and_differs_from_fp32():
    eng = tiny_engine("sd")[1]
    fp32 = fastgen.Pipeline.load(eng, backend="openvino")
    bf16 = fastgen.Pipeline.load(eng, backend="openvino", precision="bf16")
    kw = dict(num_inference_steps=3, height=H, width=W, seed=3, output_type="np")
    a, b = fp32("a red cat", **kw).images, bf16("a red cat", **kw).images
    assert np.isfinite(b).all() and 0 < np.abs(a - b).max() < 0.5
    auto = fastgen.Pipeline.load(eng, backend="openvino", precision="auto")
    from fastgen.backends.openvino import bf16_is_faster

    expected = "bf16" if bf16_is_faster() else "fp32"
    assert auto.session("unet").precision == expected


def test_auto_precision_is_measured_once_per_machine(tmp_path, monkeypatch):
    from fastgen.backends import openvino as ovb

    monkeypatch.setenv("FASTGEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(ovb, "_PROBE", {})
    if not ovb.native_bf16():
        assert ovb.bf16_is_faster() is False and not (tmp_path / "openvino" / "probe.json").exists()
        return
    times = ovb._probe_times(rounds=2)
    assert set(times) == {"f32", "bf16"} and all(0 < t < 10 for t in times.values())
    # the probe follows the measurement: a CPU where bf16 is slower must get fp32
    monkeypatch.setattr(ovb, "_probe_times", lambda: {"f32": 1.0, "bf16": 1.2})
    assert ovb.bf16_is_faster() is False and ovb.resolve_precision("auto") == "fp32"
    saved = json.loads((tmp_path / "openvino" / "probe.json").read_text())
    assert [v["bf16_faster"] for v in saved.values()] == [False]
    # a new process reads the answer instead of measuring again
    monkeypatch.setattr(ovb, "_PROBE", {})
    monkeypatch.setattr(ovb, "_probe_times", lambda: pytest.fail("probed twice"))
    assert ovb.bf16_is_faster() is False
    # a damaged answer file is measured again, never trusted; a probe that cannot run means fp32
    (tmp_path / "openvino" / "probe.json").write_text(json.dumps({k: {"bf16_faster": "yes"} for k in saved}))
    monkeypatch.setattr(ovb, "_PROBE", {})

    def broken():
        raise RuntimeError("no CPU plugin")
    monkeypatch.setattr(ovb, "_probe_times", broken)
    assert ovb.bf16_is_faster() is False
    # and a CPU where bf16 is clearly faster gets bf16
    (tmp_path / "openvino" / "probe.json").unlink()
    monkeypatch.setattr(ovb, "_PROBE", {})
    monkeypatch.setattr(ovb, "_probe_times", lambda: {"f32": 1.0, "bf16": 0.5})
    assert ovb.resolve_precision("auto") == "bf16"


def _ir_dirs(root):
    ir = root / "openvino" / "ir"
    return sorted(p.name for p in ir.iterdir()) if ir.exists() else []


def test_converted_model_cache(tmp_path, monkeypatch):
    from fastgen.backends.openvino import OvSession, ir_cache_path

    monkeypatch.setenv("FASTGEN_CACHE_DIR", str(tmp_path))
    onnx_path = os.path.join(tiny_engine("sd")[1], "unet", "model.onnx")
    feeds = {"sample": np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32),
             "timestep": np.array([10.0, 10.0], np.float32),
             "encoder_hidden_states": np.random.default_rng(1).standard_normal((2, 77, 32)).astype(np.float32)}
    first = OvSession("unet", onnx_path)
    want = first.run(feeds)
    ir = ir_cache_path(onnx_path)
    assert first.source == ir and os.path.isfile(ir) and os.path.isfile(ir[:-4] + ".bin")
    assert len(_ir_dirs(tmp_path)) == 1  # no temporary folder left behind
    again = OvSession("unet", onnx_path)
    assert again.source == ir
    for k, v in again.run(feeds).items():
        np.testing.assert_array_equal(v, want[k])
    # the graph read from the IR is dropped after a compile and read again for the next shape
    assert again._model is None
    other = dict(feeds, sample=feeds["sample"][:, :, :6])
    assert again.run(other)["noise_pred"].shape == (2, 4, 6, 8) and again.compiles == 2
    # the cache folder cleaned under a live session: the ONNX file is converted again
    shutil.rmtree(tmp_path / "openvino" / "ir")
    assert again.run(dict(feeds, sample=feeds["sample"][:, :, :4]))["noise_pred"].shape == (2, 4, 4, 8)
    # a damaged entry is dropped and converted again, never trusted
    with open(ir, "w") as f:
        f.write("<net")
    healed = OvSession("unet", onnx_path)
    assert healed.source == ir and os.path.getsize(ir) > 100
    for k, v in healed.run(feeds).items():
        np.testing.assert_array_equal(v, want[k])
    # turned off: the ONNX file is read, nothing new is written
    monkeypatch.setenv("FASTGEN_OPENVINO_IR_CACHE", "0")
    assert OvSession("unet", onnx_path).source == onnx_path and len(_ir_dirs(tmp_path)) == 1


def test_converted_model_cache_follows_the_file(tmp_path, monkeypatch):
    from fastgen.backends.openvino import ir_cache_path

    monkeypatch.setenv("FASTGEN_CACHE_DIR", str(tmp_path))
    src = os.path.join(tiny_engine("sd")[1], "unet", "model.onnx")
    path = str(tmp_path / "model.onnx")
    shutil.copy(src, path)
    key = ir_cache_path(path)
    os.utime(path, ns=(1, 1))  # re-exported in place: a new modification time is a new key
    assert ir_cache_path(path) != key


def test_one_compile_per_shape_bounded_lru():
    from fastgen.backends.openvino import OvSession

    eng = tiny_engine("sd")[1]
    pipe = fastgen.Pipeline.load(eng)
    path = pipe.manifest.component("vae_decoder").path
    s = OvSession("vae_decoder", path, max_shapes=2)
    z = {h: fastgen.randn((1, 4, h, 8), seed=h) for h in (4, 6, 8)}
    s.run({"latent": z[4]})
    s.run({"latent": z[4]})
    assert s.compiles == 1
    s.run({"latent": z[6]})
    s.run({"latent": z[8]})  # evicts the 4-row shape
    assert s.compiles == 3 and len(s._compiled) == 2
    s.run({"latent": z[4]})
    assert s.compiles == 4
    with pytest.raises(fastgen.ShapeError, match="must have 4 dims"):
        s.run({"latent": z[4][0]})
    with pytest.raises(fastgen.ShapeError, match="do not match"):
        s.run({"sample": z[4]})


def test_threads_share_one_pipeline():
    eng = tiny_engine("sd")[1]
    pipe = fastgen.Pipeline.load(eng, backend="openvino", threads=1)
    kw = dict(num_inference_steps=2, height=H, width=W, output_type="np")
    want = {s: pipe("a red cat", seed=s, **kw).images for s in range(3)}
    got, errors = {}, []

    def work(s):
        try:
            got[s] = pipe("a red cat", seed=s, **kw).images
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=work, args=(s,)) for s in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    for s in range(3):
        np.testing.assert_array_equal(got[s], want[s])


def test_compile_cache_is_reused_by_a_new_process(tmp_path):
    code = ("import time, fastgen; t = time.perf_counter(); "
            "p = fastgen.Pipeline.load('demo', backend='openvino', precision='{prec}'); "
            "p('a red circle on a blue background', num_inference_steps=1, seed=0); "
            "print(sorted(s.loaded_from_cache for s in p.components._sessions.values()))")
    env = dict(os.environ, FASTGEN_CACHE_DIR=str(tmp_path))
    for prec, want in (("fp32", "[0, 0, 0]"), ("fp32", "[1, 1, 1]"), ("bf16", "[0, 0, 0]"), ("bf16", "[1, 1, 1]")):
        r = subprocess.run([sys.executable, "-c", code.format(prec=prec)], env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == want, (prec, r.stdout)
    assert sorted(os.listdir(tmp_path / "openvino")) == ["bf16", "fp32", "ir"]


@pytest.mark.parametrize("kwargs,text", [
    (dict(backend="openvino", precision="int4"), "precision for backend 'openvino' must be one of"),
    (dict(backend="onnxruntime", precision="bf16"), "precision for backend 'onnxruntime' must be one of fp32"),
    (dict(backend="openvino", threads=0), "threads must be in"),
    (dict(backend="openvino", threads="2"), "threads must be an int"),
])
def test_bad_options(kwargs, text):
    with pytest.raises(fastgen.InvalidArgumentError, match=text):
        fastgen.Pipeline.load("demo", **kwargs)


def test_openvino_on_cuda_is_refused():
    with pytest.raises(fastgen.InvalidArgumentError, match="runs on device='cpu'"):
        fastgen.Pipeline.load("demo", backend="openvino", device="cuda")


def test_cli_generate_with_openvino_bf16(tmp_path):
    from fastgen.cli import main

    out = tmp_path / "x.png"
    assert main(["generate", "a red circle on a blue background", "--steps", "3", "--seed", "1", "--backend",
                 "openvino", "--precision", "bf16", "-o", str(out)]) == 0
    assert out.exists()
    assert main(["generate", "x", "--precision", "bf16", "-o", str(out)]) == 2  # bf16 needs openvino
