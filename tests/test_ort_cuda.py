"""ONNX Runtime on CUDA without a GPU: the IO-binding path on the real CPU provider, and the CUDA paths
(provider fallback detection, device-resident inputs) against the fake onnxruntime-gpu of tests/fakes."""

from __future__ import annotations

import os
import sys
import tomllib
import warnings
import weakref

import numpy as np
import pytest

import fastgen
from fakes.onnxruntime_gpu import FakeOrtGpu
from fastgen.backends import onnxruntime as ort_backend
from fastgen.errors import BackendError, InvalidArgumentError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sd_engine():
    from engines import tiny_engine

    return tiny_engine("sd")[1]


def _unet_feeds(m, step: int, emb: np.ndarray):
    rng = np.random.default_rng(step)
    return {"sample": rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
            "timestep": np.full((2,), 900 - 100 * step, np.float32), "encoder_hidden_states": emb}


def _emb(eng):
    m = fastgen.manifest.load_manifest(eng)
    shape = m.component("unet").inputs["encoder_hidden_states"]["shape"]
    return np.random.default_rng(9).standard_normal((2, *shape[1:])).astype(np.float32)


def test_io_binding_on_the_cpu_provider_equals_run(sd_engine):
    """The IO-binding code path (cached OrtValues, update_inplace, rebound outputs) runs on the real CPU
    provider and gives exactly what session.run gives, over a loop whose prompt embeddings are fixed."""
    path = os.path.join(sd_engine, "unet", "model.onnx")
    plain = ort_backend.OrtSession("unet", path)
    bound = ort_backend.OrtSession("unet", path, io_binding=True)
    assert bound._use_binding and not plain._use_binding
    emb = _emb(sd_engine)
    for step in range(4):
        feeds = _unet_feeds(None, step, emb)
        want = plain.run(feeds)
        got = bound.run(feeds)
        assert list(got) == list(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    assert bound.transfers["reused"] == 3  # the embeddings, from the second step on
    # a new shape (another batch) starts new device values; an in-place change of a cached input is seen
    feeds = {k: v[:1] for k, v in _unet_feeds(None, 5, emb).items()}
    np.testing.assert_array_equal(bound.run(feeds)["noise_pred"], plain.run(feeds)["noise_pred"])
    emb2 = emb[:1].copy()
    feeds["encoder_hidden_states"] = emb2
    bound.run(feeds)
    emb2 += 1.0
    np.testing.assert_array_equal(bound.run(feeds)["noise_pred"], plain.run(feeds)["noise_pred"])


class OrtGpu:
    def __init__(self, monkeypatch, **kw):
        from fastgen.pipelines import base

        self.fake = FakeOrtGpu(**kw)
        self.ort = self.fake.module()
        monkeypatch.setitem(sys.modules, "onnxruntime", self.ort)
        # pipelines share sessions per engine: none opened under another (fake) onnxruntime may be reused
        monkeypatch.setattr(base, "_COMPONENTS", weakref.WeakValueDictionary())


def test_cuda_provider_that_did_not_load_raises(sd_engine, monkeypatch, tmp_path):
    """Bug: get_available_providers() lists CUDA, the session silently ran on the CPU (onnxruntime#23372)."""
    g = OrtGpu(monkeypatch, cuda_loads=False, file=str(tmp_path / "onnxruntime" / "__init__.py"))
    path = os.path.join(sd_engine, "vae_decoder", "model.onnx")
    with pytest.raises(BackendError, match="CUDA provider did not load.*libonnxruntime_providers_cuda.so is missing"):
        ort_backend.OrtSession("vae_decoder", path, device="cuda")
    capi = tmp_path / "onnxruntime" / "capi"
    capi.mkdir(parents=True)
    (capi / "libonnxruntime_providers_cuda.so").write_bytes(b"not a library")
    with pytest.raises(BackendError, match="does not load: .*pip install \"onnxruntime-gpu\\[cuda,cudnn\\]\""):
        ort_backend.OrtSession("vae_decoder", path, device="cuda")
    with pytest.warns(RuntimeWarning, match="running on the CPU"):
        s = ort_backend.OrtSession("vae_decoder", path, device="cuda", cpu_fallback=True)
    assert s._device_type == "cpu"
    assert s.run({"latent": np.zeros((1, 4, 8, 8), np.float32)})["sample"].shape == (1, 3, 32, 32)
    assert g.fake.sessions


def test_pipeline_cpu_fallback_option(sd_engine, monkeypatch):
    OrtGpu(monkeypatch, cuda_loads=False)
    kw = dict(num_inference_steps=2, height=32, width=32, seed=1, output_type="np")
    with pytest.raises(BackendError, match="cpu_fallback=True"):
        fastgen.Pipeline.load(sd_engine, device="cuda")("a cat", **kw)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        img = fastgen.Pipeline.load(sd_engine, device="cuda", cpu_fallback=True)("a cat", **kw).images
    assert img.shape == (1, 32, 32, 3) and any("CUDA provider did not load" in str(x.message) for x in w)
    with pytest.raises(InvalidArgumentError, match="cpu_fallback must be a bool"):
        fastgen.Pipeline.load(sd_engine, device="cuda", cpu_fallback="yes")


def test_cpu_fallback_with_the_cpu_wheel(sd_engine):
    """Bug: with the CPU onnxruntime wheel (no CUDA provider at all), device="cuda", cpu_fallback=True raised
    BackendError from default_providers instead of warning and running on the CPU as documented."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    kw = dict(num_inference_steps=2, height=32, width=32, seed=1, output_type="np")
    with pytest.raises(BackendError, match="onnxruntime-gpu"):
        fastgen.Pipeline.load(sd_engine, device="cuda")("a cat", **kw)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        img = fastgen.Pipeline.load(sd_engine, device="cuda", cpu_fallback=True)("a cat", **kw).images
    ref = fastgen.Pipeline.load(sd_engine)("a cat", **kw).images
    assert np.array_equal(img, ref) and any("running on the CPU" in str(x.message) for x in w)


def test_cuda_pipeline_keeps_loop_invariants_on_the_device(sd_engine, monkeypatch):
    """Bug: IO binding re-uploaded every input each step. Under the fake GPU the images equal the CPU run,
    and the UNet's uploads are the embeddings once plus the latents and timestep of each step."""
    kw = dict(negative_prompt="ugly", num_inference_steps=5, guidance_scale=5.0, height=32, width=32, seed=2,
              output_type="np", scheduler="ddim")  # one UNet call per step (PNDM makes one more)
    want = fastgen.Pipeline.load(sd_engine)("a red cat", **kw).images
    g = OrtGpu(monkeypatch, cuda_loads=True)
    pipe = fastgen.Pipeline.load(sd_engine, device="cuda")
    got = pipe("a red cat", **kw).images
    np.testing.assert_array_equal(got, want)
    unet = pipe._components.session("unet")
    assert unet._device_type == "cuda" and unet._use_binding
    steps, batch = 5, 2  # CFG: prompt and negative prompt together
    latent = batch * 4 * 8 * 8 * 4  # 32 px / vae factor 4, float32
    emb = int(np.prod([batch, *pipe.manifest.component("unet").inputs["encoder_hidden_states"]["shape"][1:]])) * 4
    per_step = latent + batch * 4
    assert unet.transfers["upload_bytes"] == emb + steps * per_step
    assert unet.transfers["reused"] == steps - 1
    # the fake's own count (independent of the session's): the UNet's, plus the text encoder's input ids and
    # the VAE decoder's latent
    assert g.fake.uploads == emb + steps * per_step + batch * 77 * 8 + latent // 2
    assert unet.transfers["download_bytes"] == steps * latent  # the noise prediction, each step


def test_packaging_one_onnxruntime_per_install():
    """Bug: `pip install "fastgen[gpu]"` installed onnxruntime AND onnxruntime-gpu (onnxruntime#26996);
    cuda-python was allowed below 12.6.1 (no cuda.bindings) and above 12."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        proj = tomllib.load(f)["project"]

    def names(reqs):
        return {r.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip() for r in reqs}

    extras = proj["optional-dependencies"]
    assert not names(proj["dependencies"]) & {"onnxruntime", "onnxruntime-gpu"}
    assert "onnxruntime" in names(extras["cpu"]) and "onnxruntime-gpu" not in names(extras["cpu"])
    assert "onnxruntime-gpu" in names(extras["gpu"]) and "onnxruntime" not in names(extras["gpu"])
    for extra, reqs in extras.items():  # no extra pulls both, directly or through fastgen[...]
        assert not {"onnxruntime", "onnxruntime-gpu"} <= names(reqs), extra
    cuda = [r for r in extras["tensorrt"] if r.startswith("cuda-python")]
    assert cuda == ["cuda-python>=12.6.1,<13"]
    assert "onnxruntime-gpu" in names(extras["tensorrt"])  # components without a plan run on CUDA too
