"""`fastgen export --attention mha`: the denoiser's and the VAE's attention as ONNX Runtime's fused
com.microsoft.MultiHeadAttention node. Images equal the default (sdpa) engine's on onnxruntime and OpenVINO,
the graphs really hold the fused node (and no Softmax), the manifest records it, text encoders stay standard,
build-trt refuses it, and `fastgen optimize --int8` still works on such an engine."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import fastgen
from engines import tiny_engine
from fastgen.errors import ExportError, UnsupportedError
from fastgen.manifest import MANIFEST_NAME

onnx = pytest.importorskip("onnx")

H, W = 48, 80
KINDS = ("sd", "sdxl", "sd3")
FUSED = {"sd": ("unet", "vae_decoder", "vae_encoder"), "sdxl": ("unet", "vae_decoder", "vae_encoder"),
         "sd3": ("transformer", "vae_decoder", "vae_encoder")}


@pytest.fixture(autouse=True, scope="module")
def _cache_dir(tmp_path_factory):
    os.environ.setdefault("FASTGEN_CACHE_DIR", str(tmp_path_factory.mktemp("ovcache")))


def _engines(kind: str) -> tuple[str, str]:
    """(default engine, mha engine) of the same tiny source."""
    from fastgen_export.api import export

    src, default = tiny_engine(kind)
    mha = default + "-mha"
    if not os.path.isdir(mha):
        export(src, mha, attention="mha", log=None)
    return default, mha


def _manifest(engine: str) -> dict:
    with open(os.path.join(engine, MANIFEST_NAME), encoding="utf-8") as f:
        return json.load(f)


def _ops(engine: str, component: str) -> list[tuple[str, str]]:
    path = os.path.join(engine, _manifest(engine)["components"][component]["path"])
    return [(n.domain, n.op_type) for n in onnx.load(path, load_external_data=False).graph.node]


@pytest.mark.parametrize("kind", KINDS)
def test_graphs_and_manifest(kind):
    default, mha = _engines(kind)
    data = _manifest(mha)
    assert data["exporter"]["attention"] == "mha"
    for name, entry in data["components"].items():
        ops = _ops(mha, name)
        if name in FUSED[kind]:
            assert entry["attention"] == "mha"
            assert ("com.microsoft", "MultiHeadAttention") in ops
            assert ("", "Softmax") not in ops, name
            model = onnx.load(os.path.join(mha, entry["path"]), load_external_data=False)
            domains = {o.domain: o.version for o in model.opset_import}
            assert domains.get("com.microsoft") == 1 and domains[""] == 18 and model.ir_version <= 10
        else:  # text encoders: masked attention stays standard
            assert "attention" not in entry and all(d == "" for d, _ in ops), name
    assert ("", "Softmax") in _ops(default, FUSED[kind][0])
    assert all("attention" not in e for e in _manifest(default)["components"].values())


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("kind", KINDS)
def test_images_equal_default_engine(kind, backend):
    if backend == "openvino":
        pytest.importorskip("openvino")
    default, mha = _engines(kind)
    kw = dict(num_inference_steps=3, guidance_scale=4.0, height=H, width=W, seed=3, output_type="np")
    want = fastgen.Pipeline.load(default)("a red cat", **kw).images
    got = fastgen.Pipeline.load(mha, backend=backend)("a red cat", **kw).images
    assert np.abs(got - want).max() <= 2e-3


def test_build_trt_refuses_mha():
    from fastgen_export.trt import build_trt

    _, mha = _engines("sd")
    with pytest.raises(UnsupportedError, match="fastgen export --attention sdpa"):
        build_trt(mha, ["unet"])
    with pytest.raises(UnsupportedError, match="unet, vae_decoder"):
        build_trt(mha)


def test_bad_attention_option(tmp_path):
    from fastgen_export.api import export

    src, _ = tiny_engine("sd")
    with pytest.raises(ExportError, match="attention must be one of sdpa, mha"):
        export(src, str(tmp_path / "e"), attention="flash", log=None)
    with pytest.raises(ExportError, match="diffusion pipelines only"):
        export(tiny_engine("vit-gpt2")[0], str(tmp_path / "c"), attention="mha", log=None)


def test_cli_option(tmp_path):
    from fastgen_export.cli import main

    src, _ = tiny_engine("sd")
    out = tmp_path / "e"
    assert main([src, str(out), "--attention", "mha", "--no-parity", "-q"]) == 0
    assert _manifest(str(out))["components"]["unet"]["attention"] == "mha"


@pytest.mark.parametrize("fmt", ["openvino", "ort-qdq"])
def test_int8_optimize_on_mha_engine(fmt, tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import shutil

    from fastgen_export.optimize import optimize

    _, mha = _engines("sd")
    engine = str(tmp_path / "engine")
    shutil.copytree(mha, engine)
    optimize(engine, int8_format=fmt, num_calibration_prompts=2, calibration_steps=2)
    backend = "openvino" if fmt == "openvino" else "onnxruntime"
    kw = dict(num_inference_steps=3, guidance_scale=4.0, height=H, width=W, seed=3, output_type="np")
    fp32 = fastgen.Pipeline.load(engine)("a red cat", **kw).images
    int8 = fastgen.Pipeline.load(engine, backend=backend, precision="int8")("a red cat", **kw).images
    assert np.isfinite(int8).all()
    assert np.abs(int8 - fp32).mean() < 0.1


def _frames(engine: str, kind: str) -> np.ndarray:
    pipe = fastgen.Pipeline.load(engine)
    if kind == "animatediff":
        lat = fastgen.randn((1, 4, 4, H // 8, W // 8), seed=3)
        return pipe("a red cat", latents=lat, num_frames=4, num_inference_steps=2, guidance_scale=4.0, height=H,
                    width=W).frames
    rng = np.random.RandomState(1)
    img = rng.uniform(0, 255, (40, 56, 3)).astype(np.uint8)
    h, w, f = 32, 48, 3
    return pipe(img, latents=fastgen.randn((1, f, 4, h // 2, w // 2), seed=3),
                image_noise=rng.standard_normal((1, 3, h, w)).astype(np.float32), height=h, width=w, num_frames=f,
                num_inference_steps=2, decode_chunk_size=2).frames


@pytest.mark.parametrize("kind,fused", [("animatediff", ("unet", "unet_fifo")), ("svd", ("unet",))])
def test_video_denoisers(kind, fused):
    default, mha = _engines(kind)
    comps = _manifest(mha)["components"]
    for name in fused:
        assert comps[name]["attention"] == "mha" and ("", "Softmax") not in _ops(mha, name)
    assert np.abs(_frames(mha, kind) - _frames(default, kind)).max() <= 2e-3


def test_fp16_export_with_mha(tmp_path):
    """--dtype fp16: the fused node runs in fp16 on ONNX Runtime's CPU provider too."""
    from fastgen_export.api import export

    src, _ = tiny_engine("sd")
    engines = {a: export(src, str(tmp_path / a), dtype="fp16", attention=a, log=None) for a in ("sdpa", "mha")}
    assert _manifest(engines["mha"])["components"]["unet"]["attention"] == "mha"
    kw = dict(num_inference_steps=3, guidance_scale=4.0, height=H, width=W, seed=3, output_type="np")
    a, b = (fastgen.Pipeline.load(engines[k])("a red cat", **kw).images for k in ("sdpa", "mha"))
    assert np.abs(a - b).max() <= 5e-3


@pytest.mark.parametrize("kind,cache,use", [
    ("sd", "deepcache", "deepcache:interval=2"),
    ("sd3", "first_block", "first_block:threshold=0.3"),
])
def test_step_cache_graphs(kind, cache, use):
    """The step-cache graphs (DeepCache's full / shallow UNets, SD3's First-Block split) are denoisers too."""
    _, default = tiny_engine(kind, export_options={"cache": cache})
    _, mha = tiny_engine(kind, export_options={"cache": cache, "attention": "mha"})
    comps = _manifest(mha)["components"]
    denoisers = [n for n in comps if n.startswith(("unet", "transformer"))]
    assert len(denoisers) > 1
    for name in denoisers:
        assert ("", "Softmax") not in _ops(mha, name), name
    # every denoiser graph is fused (a DeepCache shallow branch without attention layers records "sdpa")
    assert all(comps[n]["attention"] in ("mha", "sdpa") for n in denoisers)
    assert sum(comps[n]["attention"] == "mha" for n in denoisers) >= (1 if kind == "sd" else 2)
    kw = dict(num_inference_steps=4, guidance_scale=4.0, height=64, width=64, seed=3, output_type="np", cache=use)
    want = fastgen.Pipeline.load(default)("a red cat", **kw).images
    got = fastgen.Pipeline.load(mha)("a red cat", **kw).images
    assert np.abs(got - want).max() <= 2e-3
