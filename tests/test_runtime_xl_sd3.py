"""SDXL and SD3 engines against diffusers, same latents."""

import numpy as np
import pytest
import torch

import fastgen
from engines import tiny_engine
from test_runtime_sd import diffusers_pipe, max_diff

H, W = 48, 80


@pytest.mark.parametrize("negative", [None, "blurry"])
def test_sdxl_text2img_matches_diffusers(negative):
    src, eng = tiny_engine("sdxl")
    ref = diffusers_pipe(src, "StableDiffusionXLPipeline")
    pipe = fastgen.Pipeline.load(eng)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    sched = ref.scheduler.__class__.__name__
    lat = fastgen.randn((2, 4, H // 4, W // 4), seed=4)
    kw = dict(negative_prompt=negative, num_inference_steps=5, guidance_scale=5.0, height=H, width=W,
              num_images_per_prompt=2)
    want = ref("a red cat", latents=torch.from_numpy(lat), output_type="np", **kw).images
    got = pipe("a red cat", latents=lat, output_type="np", **kw).images
    assert sched in fastgen.schedulers.available()
    assert max_diff(got, want) < 2e-3


@pytest.mark.parametrize("kind", ["sd3", "sd3_t5"])
def test_sd3_text2img_matches_diffusers(kind):
    src, eng = tiny_engine(kind)
    extra = {} if kind == "sd3_t5" else {"text_encoder_3": None, "tokenizer_3": None}
    ref = diffusers_pipe(src, "StableDiffusion3Pipeline", **extra)
    pipe = fastgen.Pipeline.load(eng)
    assert type(pipe).__name__ == "StableDiffusion3Pipeline"
    assert pipe.manifest.has("text_encoder_3") == (kind == "sd3_t5")
    c = pipe.latent_channels
    lat = fastgen.randn((1, c, H // 4, W // 4), seed=8)
    kw = dict(negative_prompt="ugly", num_inference_steps=5, guidance_scale=4.0, height=H, width=W)
    want = ref("a red cat", latents=torch.from_numpy(lat), output_type="np", **kw).images
    got = pipe("a red cat", latents=lat, output_type="np", **kw).images
    assert max_diff(got, want) < 2e-3
