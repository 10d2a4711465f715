"""Tiled VAE decoding equals diffusers' ``vae.enable_tiling()`` (overlapping tiles, linear seam blending)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

import fastgen
from engines import tiny_engine
from test_runtime_sd import diffusers_pipe, max_diff


@pytest.fixture(scope="module")
def engine():
    src, eng = tiny_engine("sd")
    with open(os.path.join(eng, "fastgen.json")) as f:
        assert json.load(f)["config"]["vae_sample_size"] == 64  # the exporter records the VAE's sample_size
    return src, eng


def test_engines_without_the_record_tile_at_512(engine, tmp_path):
    eng = tmp_path / "engine"
    shutil.copytree(engine[1], eng)
    m = json.loads((eng / "fastgen.json").read_text())
    del m["config"]["vae_sample_size"]  # an engine exported before the exporter recorded it
    (eng / "fastgen.json").write_text(json.dumps(m))
    vae = fastgen.Pipeline.load(eng).vae
    assert (vae.tile_sample_size, vae.tile_latent_size) == (512, 128)


@pytest.mark.parametrize("height,width", [(48, 128), (96, 96), (64, 64)])
def test_tiled_decode_matches_diffusers(engine, height, width):
    src, eng = engine
    ref = diffusers_pipe(src, "StableDiffusionPipeline", scheduler="DDIMScheduler")
    ref.vae.enable_tiling()
    pipe = fastgen.Pipeline.load(eng)
    assert pipe.vae.tile_sample_size == ref.vae.tile_sample_min_size == 64
    assert pipe.vae.tile_latent_size == ref.vae.tile_latent_min_size == 16
    lat = fastgen.randn((1, 4, height // 4, width // 4), seed=7)
    kw = dict(num_inference_steps=3, guidance_scale=5.0, height=height, width=width)
    want = ref("a red cat", latents=torch.from_numpy(lat), output_type="np", **kw).images
    got = pipe("a red cat", latents=lat, output_type="np", vae_tiling=True, scheduler="DDIMScheduler", **kw).images
    assert got.shape == (1, height, width, 3)
    assert max_diff(got, want) < 2e-3
    untiled = pipe("a red cat", latents=lat, output_type="np", scheduler="DDIMScheduler", **kw).images
    if height > 64 or width > 64:  # more than one tile: tiling changed the decode (so it ran)
        assert np.abs(untiled - got).max() > 1e-3
    else:  # one tile: diffusers decodes whole, and so do we
        np.testing.assert_array_equal(untiled, got)


def test_vae_tiling_must_be_a_bool(engine):
    pipe = fastgen.Pipeline.load(engine[1])
    with pytest.raises(fastgen.InvalidArgumentError, match="vae_tiling must be True or False"):
        pipe.validate("x", vae_tiling="yes")
