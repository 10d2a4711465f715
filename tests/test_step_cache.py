"""Step caching (issue 17): the cache= field, the C++ policies, DeepCache against the authors' helper and
TaylorSeer against diffusers' hook, on tiny engines."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastgen
from fastgen import _core
from fastgen.cache import parse_cache
from engines import tiny_engine

H, W = 48, 80
PROMPTS = ["a photo of a red cat", "a blue dog on a circle"]
DEEPCACHE = {"cache": ["deepcache", "deepcache:branch=3", "deepcache:branch=1"]}


def max_diff(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


# ------------------------------------------------------------------------------------ settings

def test_parse_spec_strings_and_dicts():
    s = parse_cache("deepcache:interval=2,branch=3,uniform=false")
    assert (s.kind, s["interval"], s["branch"], s["uniform"], s["pow"]) == ("deepcache", 2, 3, False, 1.4)
    assert s.describe() == "deepcache:interval=2,branch=3,uniform=false,pow=1.4,center=15"
    assert parse_cache(s.describe()) == s
    assert parse_cache({"kind": "fbcache", "threshold": 0.1}) == parse_cache("first_block:threshold=0.1")
    assert parse_cache(None) is None


@pytest.mark.parametrize("bad, words", [
    ("magic", ["unknown cache kind", "deepcache, first_block, taylorseer"]),
    ("deepcache:interval=0", ["interval", "[1, 1000]"]),
    ({"kind": "taylorseer", "interval": -1}, ["interval", "[1, 1000]"]),
    ("first_block:threshold=nan", ["threshold", "finite"]),
    ({"kind": "first_block", "threshold": float("inf")}, ["threshold", "finite"]),
    ("deepcache:steps=3", ["unknown option 'steps'", "interval, branch"]),
    ("deepcache:interval", ["key=value"]),
    (3, ["spec string"]),
])
def test_bad_settings_name_the_valid_range(bad, words):
    with pytest.raises(fastgen.InvalidArgumentError) as e:
        parse_cache(bad)
    for w in words:
        assert w in str(e.value)


def test_kind_not_exported_names_the_export_flag():
    _, eng = tiny_engine("sd")  # exported without --cache: an engine of before step caching
    pipe = fastgen.Pipeline.load(eng)
    with pytest.raises(fastgen.InvalidArgumentError, match="--cache deepcache"):
        pipe("a cat", cache="deepcache", num_inference_steps=2, height=32, width=32)
    with pytest.raises(fastgen.InvalidArgumentError, match="SD3"):
        pipe("a cat", cache="taylorseer", num_inference_steps=2, height=32, width=32)
    out = pipe("a cat", num_inference_steps=2, height=32, width=32, output_type="np")  # still runs without
    assert out.cache_stats is None and out.images.shape == (1, 32, 32, 3)


def test_branch_not_exported():
    _, eng = tiny_engine("sd", export_options=DEEPCACHE)
    with pytest.raises(fastgen.InvalidArgumentError, match=r"exported branches \[0, 1, 3\].*branch=4"):
        fastgen.Pipeline.load(eng)("a cat", cache="deepcache:branch=4", num_inference_steps=2, height=32, width=32)


# ------------------------------------------------------------------------------------ C++ policies

def _deepcache_reference_schedule():
    """sample_from_quad_center as the authors' DeepCache pipeline defines it (read from the package)."""
    import DeepCache

    path = os.path.join(os.path.dirname(DeepCache.__file__), "sd", "pipeline_stable_diffusion.py")
    src = open(path).read()
    ns = {"np": np}
    exec(src[src.index("def sample_from_quad_center"):src.index("def rescale_noise_cfg")], ns)
    return ns["sample_from_quad_center"]


@pytest.mark.parametrize("steps, interval, center, power", [(50, 3, 15, 1.4), (50, 5, 10, 1.4), (20, 3, 5, 1.3),
                                                            (25, 2, 8, 1.5)])
def test_deepcache_nonuniform_steps_equal_the_package(steps, interval, center, power):
    ref = _deepcache_reference_schedule()
    n = steps // interval + (steps % interval != 0)
    with np.errstate(all="ignore"), pytest.warns(np.exceptions.ComplexWarning):
        want = sorted(int(i) for i in ref(steps, n, center, power)[0])
    assert _core.deepcache_full_steps(steps, interval, False, power, center) == want


def test_deepcache_uniform_steps():
    assert _core.deepcache_full_steps(10, 3) == [0, 3, 6, 9]
    assert _core.deepcache_full_steps(4, 1) == [0, 1, 2, 3]


def test_first_block_relative_l1():
    fbc = _core.FirstBlockCache(0.1)
    r = np.ones(8, np.float32)
    assert fbc.should_compute(r)  # first step
    assert not fbc.should_compute(r * 1.05)  # change 0.05 <= 0.1: cached, reference kept
    assert abs(fbc.last_change - 0.05) < 1e-6
    assert fbc.should_compute(r * 1.2)  # 0.2 against the kept reference
    assert not fbc.should_compute(r * 1.25)  # now against 1.2: 0.0417


def test_taylorseer_extrapolates_linearly():
    ts = _core.TaylorSeer(interval=2, disable_before=2, disable_after=-1, max_order=1)
    full = []
    for step in range(6):
        f = ts.next_step()
        full.append(f)
        x = np.full(3, 2.0 * step + 1.0, np.float32)
        if f:
            ts.update(x)
        else:
            np.testing.assert_allclose(ts.predict(x), x)  # a line is extrapolated exactly
    # diffusers: full when step < warmup or (step - warmup - 1) % interval == 0
    assert full == [True, True, False, True, False, True]


# ------------------------------------------------------------------------------------ DeepCache vs the authors

def _deepcache_reference(src, cls_name, branch, interval, prompts, lat, **kw):
    import diffusers
    import torch
    from DeepCache import DeepCacheSDHelper

    extra = {"safety_checker": None, "requires_safety_checker": False} if "XL" not in cls_name else {}
    ref = getattr(diffusers, cls_name).from_pretrained(src, **extra)
    ref.set_progress_bar_config(disable=True)
    helper = DeepCacheSDHelper(pipe=ref)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:
        return ref(prompts, latents=torch.from_numpy(lat), output_type="np", **kw).images
    finally:
        helper.disable()


@pytest.mark.parametrize("branch", [0, 1, 3])
def test_deepcache_sd_equals_deepcache_helper(branch):
    src, eng = tiny_engine("sd", export_options=DEEPCACHE)
    pipe = fastgen.Pipeline.load(eng)
    lat = fastgen.randn((2, 4, H // 4, W // 4), seed=3)
    kw = dict(num_inference_steps=8, guidance_scale=6.0, height=H, width=W)  # CFG batch of 4 rows
    want = _deepcache_reference(src, "StableDiffusionPipeline", branch, 3, PROMPTS, lat, **kw)
    out = pipe(PROMPTS, latents=lat, output_type="np", cache=f"deepcache:interval=3,branch={branch}", **kw)
    plain = pipe(PROMPTS, latents=lat, output_type="np", **kw).images
    assert max_diff(out.images, want) < 2e-3
    assert max_diff(plain, want) > 1e-2  # the cached steps did change the result: the test can fail
    st = out.cache_stats
    assert st["full_steps"] == [0, 3, 6] and st["full_calls"] == 3 and st["steps"] == 9  # PNDM: 9 calls
    assert st["cached_steps"] == [1, 2, 4, 5, 7, 8]


def test_deepcache_sdxl_equals_deepcache_helper():
    src, eng = tiny_engine("sdxl", export_options={"cache": ["deepcache", "deepcache:branch=3"]})
    pipe = fastgen.Pipeline.load(eng)
    lat = fastgen.randn((2, 4, H // 4, W // 4), seed=4)
    kw = dict(num_inference_steps=7, guidance_scale=5.0, height=H, width=W, negative_prompt=["blurry", "dark"])
    for branch in (0, 3):
        want = _deepcache_reference(src, "StableDiffusionXLPipeline", branch, 2, PROMPTS, lat, **kw)
        got = pipe(PROMPTS, latents=lat, output_type="np", cache=f"deepcache:interval=2,branch={branch}", **kw)
        assert max_diff(got.images, want) < 2e-3
        assert got.cache_stats["full_steps"] == [0, 2, 4, 6]


def test_deepcache_nonuniform_runs_its_schedule():
    _, eng = tiny_engine("sd", export_options=DEEPCACHE)
    out = fastgen.Pipeline.load(eng)("a cat", num_inference_steps=20, height=32, width=32, scheduler="ddim",
                                     cache="deepcache:interval=3,uniform=false,center=5,pow=1.3", output_type="np")
    assert out.cache_stats["full_steps"] == _core.deepcache_full_steps(20, 3, False, 1.3, 5)


# ------------------------------------------------------------------------------------ TaylorSeer vs diffusers

def test_taylorseer_sd3_equals_diffusers_hook():
    import diffusers
    import torch
    from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache

    # lite mode (use_lite_mode=True) fails on SD3 in diffusers 0.42 (its last block returns no encoder states,
    # which the skipped-block hook records); the same proj_out extrapolation without skipping the blocks
    src, eng = tiny_engine("sd3")
    ref = diffusers.StableDiffusion3Pipeline.from_pretrained(src, text_encoder_3=None, tokenizer_3=None)
    ref.set_progress_bar_config(disable=True)
    pipe = fastgen.Pipeline.load(eng)
    lat = fastgen.randn((2, pipe.latent_channels, 16, 16), seed=6)
    kw = dict(num_inference_steps=9, guidance_scale=4.0, height=64, width=64)
    apply_taylorseer_cache(ref.transformer, TaylorSeerCacheConfig(cache_interval=3, disable_cache_before_step=2,
                                                                  max_order=2, cache_identifiers=["^proj_out$"],
                                                                  taylor_factors_dtype=torch.float32))
    from diffusers.models.cache_utils import CacheMixin

    # SD3's transformer is no CacheMixin and its pipeline sets no cache context: set one for the whole call
    with CacheMixin.cache_context(ref.transformer, "cond_uncond"):
        want = ref(PROMPTS, latents=torch.from_numpy(lat), output_type="np", **kw).images
    got = pipe(PROMPTS, latents=lat, output_type="np", cache="taylorseer:interval=3,warmup=2,order=2", **kw)
    plain = pipe(PROMPTS, latents=lat, output_type="np", **kw).images
    assert max_diff(got.images, want) < 2e-3
    assert max_diff(plain, want) > 1e-3
    assert got.cache_stats["full_steps"] == [0, 1, 3, 6]


# ------------------------------------------------------------------------------------ CLI and PNG

def test_cli_cache_and_png_text_chunk(tmp_path):
    from PIL import Image

    _, eng = tiny_engine("sd", export_options=DEEPCACHE)
    out = tmp_path / "x.png"
    env = dict(os.environ)  # the fastgen the tests import (installed in CI): the source folder has no _core there
    r = subprocess.run([sys.executable, "-m", "fastgen.cli", "generate", eng, "a cat", "-o", str(out), "--steps", "6",
                        "--height", "32", "--width", "32", "--cache", "deepcache:interval=2", "--no-progress"],
                       capture_output=True, text=True, env=env,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr
    assert "3 of 6 steps in full" in r.stderr or "of 7 steps in full" in r.stderr
    assert Image.open(out).text["fastgen:cache"].startswith("deepcache:interval=2,branch=0")
    bad = subprocess.run([sys.executable, "-m", "fastgen.cli", "generate", eng, "a cat", "-o", str(out),
                          "--cache", "deepcache:interval=0"], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert bad.returncode != 0 and "[1, 1000]" in bad.stderr


# ------------------------------------------------------------------------------------ First-Block Cache vs diffusers

def _fbc_reference(src, threshold, prompts, lat, **kw):
    """StableDiffusion3Pipeline with diffusers' apply_first_block_cache; returns (images, full-step flags)."""
    import diffusers
    import torch
    from diffusers.hooks import FirstBlockCacheConfig, HookRegistry, apply_first_block_cache
    from diffusers.models.cache_utils import CacheMixin

    ref = diffusers.StableDiffusion3Pipeline.from_pretrained(src, text_encoder_3=None, tokenizer_3=None)
    ref.set_progress_bar_config(disable=True)
    tr = ref.transformer
    # diffusers 0.42's tail hook subtracts the last block's encoder output, which SD3's last block
    # (context_pre_only) returns as None: let it return its encoder input instead. The transformer drops the
    # encoder states after the last block, so its output is unchanged; only the hook can run.
    last = tr.transformer_blocks[-1]
    last_forward = last.forward

    def forward(hidden_states, encoder_hidden_states, temb, joint_attention_kwargs=None):
        e, h = last_forward(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states, temb=temb,
                            joint_attention_kwargs=joint_attention_kwargs)
        return (encoder_hidden_states if e is None else e), h

    last.forward = forward
    apply_first_block_cache(tr, FirstBlockCacheConfig(threshold=threshold))
    hook = HookRegistry.check_if_exists_or_initialize(tr.transformer_blocks[0]).get_hook("fbc_leader_block_hook")
    decide, decisions = hook._should_compute_remaining_blocks, []

    def record(residual):
        decisions.append(decide(residual))
        return decisions[-1]

    hook._should_compute_remaining_blocks = record
    with CacheMixin.cache_context(tr, "cond_uncond"):  # SD3's pipeline sets no cache context
        images = ref(prompts, latents=torch.from_numpy(lat), output_type="np", **kw).images
    return images, decisions


@pytest.mark.parametrize("threshold", [0.3, 0.6])
def test_first_block_cache_sd3_equals_diffusers_hook(threshold):
    src, eng = tiny_engine("sd3", export_options={"cache": "first_block"})
    pipe = fastgen.Pipeline.load(eng)
    lat = fastgen.randn((2, pipe.latent_channels, 16, 16), seed=8)
    kw = dict(num_inference_steps=10, guidance_scale=4.0, height=64, width=64)  # CFG batch
    want, decisions = _fbc_reference(src, threshold, PROMPTS, lat, **kw)
    got = pipe(PROMPTS, latents=lat, output_type="np", cache=f"first_block:threshold={threshold}", **kw)
    full = [i for i, d in enumerate(decisions) if d]
    assert got.cache_stats["full_steps"] == full  # the same skipped steps
    assert 1 < len(full) < 10  # some steps cached, some not: the comparison means something
    assert max_diff(got.images, want) < 2e-3
    plain = pipe(PROMPTS, latents=lat, output_type="np", **kw).images
    assert max_diff(plain, want) > 1e-3


def test_eval_compares_cache_on_against_off():
    from fastgen import evaluate

    _, eng = tiny_engine("sd", export_options=DEEPCACHE)
    rep = evaluate.compare(eng, (eng, {"cache": "deepcache:interval=3"}), prompts=["a cat", "a dog"],
                           num_inference_steps=6, height=32, width=32)
    psnrs = rep.psnr_values
    assert all(20 < p < 80 for p in psnrs)  # close to cache off, but not equal


# ------------------------------------------------------------------------------------ DeepCache over AnimateDiff

def test_deepcache_animatediff_equals_deepcache_helper():
    import diffusers
    import torch
    from DeepCache import DeepCacheSDHelper

    src, eng = tiny_engine("animatediff", export_options={"cache": ["deepcache", "deepcache:branch=3"],
                                                          "fifo_unet": False})
    vid = fastgen.Pipeline.load(eng)
    frames, h, w = 6, 48, 64
    lat = fastgen.randn((2, 4, frames, h // 8, w // 8), seed=3)
    kw = dict(num_frames=frames, num_inference_steps=7, guidance_scale=6.0, height=h, width=w,
              negative_prompt=["blurry", "ugly"])
    ref = diffusers.AnimateDiffPipeline.from_pretrained(src)
    ref.set_progress_bar_config(disable=True)
    for branch in (0, 3):
        helper = DeepCacheSDHelper(pipe=ref)
        helper.set_params(cache_interval=3, cache_branch_id=branch)
        helper.enable()
        try:
            want = ref(PROMPTS, latents=torch.from_numpy(lat), output_type="np", **kw).frames
        finally:
            helper.disable()
        got = vid(PROMPTS, latents=lat, cache=f"deepcache:interval=3,branch={branch}", **kw)
        assert max_diff(got.frames, want) < 2e-3
        assert got.cache_stats["full_steps"] == [0, 3, 6]
    plain = vid(PROMPTS, latents=lat, **kw).frames
    assert max_diff(plain, want) > 1e-3
    with pytest.raises(fastgen.UnsupportedError, match="one context window"):
        vid("a cat", cache="deepcache", num_frames=12, context_length=8, num_inference_steps=2, height=32, width=32)
