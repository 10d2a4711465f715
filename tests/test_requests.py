"""The request protocol: validate() -> typed request -> run(); every bad call argument is a FastgenError
naming the argument, and the pipeline still gives the same image afterwards (demo engine: fast)."""

from __future__ import annotations

import dataclasses
import gc
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import fastgen
from fastgen import InvalidArgumentError, ShapeError
from fastgen.outputs import TIMING_KEYS

KW = dict(num_inference_steps=3, seed=5)


@pytest.fixture(scope="module")
def pipe():
    return fastgen.Pipeline.load("demo")


@pytest.fixture(scope="module")
def reference(pipe):
    return np.asarray(pipe("a red circle on a blue background", output_type="np", **KW).images)


RGB = np.zeros((64, 64, 3), np.uint8)

# (keyword arguments, exception class, text the message must contain)
BAD_CALLS = [
    # misspelled / unknown keywords are refused, naming the closest valid one
    (dict(num_inference_step=5), InvalidArgumentError, "'num_inference_step' (did you mean 'num_inference_steps'?)"),
    (dict(foo=1), InvalidArgumentError, "'foo'"),
    (dict(device="cuda"), InvalidArgumentError, "'device'"),
    (dict(guidance=5.0), InvalidArgumentError, "did you mean 'guidance_scale'"),
    (dict(prompt_2="x"), InvalidArgumentError, "'prompt_2'"),  # an SDXL / SD3 keyword on an SD engine
    # numbers are numbers
    (dict(guidance_scale="7"), InvalidArgumentError, "guidance_scale must be a number, got str"),
    (dict(image=RGB, strength="0.5"), InvalidArgumentError, "strength must be a number, got str"),
    (dict(num_inference_steps=5.0), InvalidArgumentError, "num_inference_steps must be an int"),
    (dict(num_inference_steps=True), InvalidArgumentError, "num_inference_steps must be an int"),
    (dict(num_inference_steps=0), InvalidArgumentError, "num_inference_steps must be in [1, 1000]"),
    (dict(guidance_scale=float("nan")), InvalidArgumentError, "guidance_scale must be a finite number"),
    (dict(guidance_scale=-1), InvalidArgumentError, "guidance_scale must be a finite number"),
    (dict(guidance_scale=1e30), InvalidArgumentError, "guidance_scale must be a finite number in [0.0, 1000.0]"),
    (dict(guidance_rescale=2.0), InvalidArgumentError, "guidance_rescale"),
    (dict(eta=float("inf")), InvalidArgumentError, "eta"),
    (dict(seed=-1), InvalidArgumentError, "seed must be None or an int in [0, 2**63)"),
    (dict(seed=2**63), InvalidArgumentError, "seed"),
    (dict(seed="1"), InvalidArgumentError, "seed"),
    (dict(seed=1.0), InvalidArgumentError, "seed"),
    (dict(num_images_per_prompt=0), InvalidArgumentError, "num_images_per_prompt"),
    (dict(num_images_per_prompt=65), InvalidArgumentError, "num_images_per_prompt"),
    (dict(height=63), InvalidArgumentError, "height must be a multiple"),
    (dict(height="64"), InvalidArgumentError, "height must be an int"),
    (dict(width=65536), InvalidArgumentError, "width"),
    (dict(output_type="png"), InvalidArgumentError, "output_type must be one of"),
    (dict(output_type=None), InvalidArgumentError, "output_type"),
    (dict(scheduler="nope"), fastgen.FastgenError, "nope"),
    (dict(scheduler=3), InvalidArgumentError, "scheduler must be None, a name"),
    (dict(callback=3), InvalidArgumentError, "callback must be callable"),
    # prompts
    (dict(prompt="a \ud800 b"), InvalidArgumentError, "lone surrogate"),
    (dict(prompt=["ok", "\udfff"]), InvalidArgumentError, "prompt[1] is not valid Unicode"),
    (dict(negative_prompt="\ud800"), InvalidArgumentError, "negative_prompt is not valid Unicode"),
    (dict(prompt=[]), InvalidArgumentError, "prompt must be a string or a non-empty list"),
    (dict(prompt=None), InvalidArgumentError, "prompt is required"),
    (dict(prompt=b"bytes"), InvalidArgumentError, "prompt must be a string"),
    (dict(prompt="x" * 10_001), InvalidArgumentError, "the limit is 10000"),
    (dict(negative_prompt=["a", "b"]), InvalidArgumentError, "negative_prompt has 2 entries but prompt has 1"),
    # images and masks
    (dict(image=[]), InvalidArgumentError, "image is an empty list"),
    (dict(image=np.zeros((0, 0, 3), np.uint8)), InvalidArgumentError, "has no pixels"),
    (dict(image=Image.new("RGB", (0, 0))), InvalidArgumentError, "is 0x0"),
    (dict(image=np.zeros((4, 4, 2), np.uint8)), InvalidArgumentError, "1, 3 or 4 channels"),
    (dict(image=np.full((8, 8, 3), np.nan, np.float32)), InvalidArgumentError, "NaN"),
    (dict(image=3), InvalidArgumentError, "image must be a path, a PIL image or a numpy array"),
    (dict(image="/nonexistent/x.png"), InvalidArgumentError, "file not found"),
    (dict(image=np.zeros((5000, 4000, 3), np.uint8)), InvalidArgumentError, "larger than the limit"),
    (dict(image=[RGB, RGB, RGB]), InvalidArgumentError, "3 images cannot be spread over a batch of 1"),
    (dict(mask_image=RGB), InvalidArgumentError, "mask_image needs image="),
    (dict(image=RGB, mask_image=[]), InvalidArgumentError, "mask_image is an empty list"),
    (dict(strength=0.5), InvalidArgumentError, "strength= only applies with image="),
    (dict(image=RGB, strength=0.0), InvalidArgumentError, "strength must be a finite number in (0.0, 1.0]"),
    (dict(image=RGB, strength=0.1, num_inference_steps=2), InvalidArgumentError, "leaves no denoising step"),
    # latents
    (dict(latents=np.zeros((1, 4, 8, 8), np.float32)), ShapeError, "latents must have shape"),
    (dict(latents=[[0.0]]), ShapeError, "latents must be a numpy array"),
    (dict(latents=np.full((1, 4, 16, 16), np.nan, np.float32)), ShapeError, "finite"),
    (dict(latents=np.zeros((1, 4, 16, 16), np.int64)), ShapeError, "floating-point"),
]


@pytest.mark.parametrize("kwargs,exc,text", BAD_CALLS, ids=[str(i) for i in range(len(BAD_CALLS))])
def test_bad_call_arguments(pipe, reference, kwargs, exc, text):
    kwargs = dict(kwargs)
    prompt = kwargs.pop("prompt", "a red circle on a blue background")
    with pytest.raises(exc) as info:
        pipe(prompt, **{**KW, **kwargs})
    assert text in str(info.value), str(info.value)
    with pytest.raises(exc):  # validate alone says the same, without running anything
        pipe.validate(prompt, **{**KW, **kwargs})
    if text == BAD_CALLS[0][2]:  # once is enough to show the pipeline is unharmed
        again = np.asarray(pipe("a red circle on a blue background", output_type="np", **KW).images)
        np.testing.assert_array_equal(again, reference)


def test_positional_misuse_is_an_invalid_argument(pipe):
    with pytest.raises(InvalidArgumentError, match="too many positional arguments"):
        pipe.validate("a", "b")
    with pytest.raises(InvalidArgumentError, match="multiple values for argument 'prompt'"):
        pipe.validate("a", prompt="b")
    with pytest.raises(InvalidArgumentError, match="positional"):
        pipe("a", "b", 3)


def test_callback_results(pipe, reference):
    seen = []
    out = pipe("a red circle on a blue background", output_type="np", callback=lambda i, t, x: seen.append(i), **KW)
    np.testing.assert_array_equal(np.asarray(out.images), reference)
    assert seen == [0, 1, 2]
    stopped = []
    out = pipe("a red circle on a blue background", callback=lambda i, t, x: stopped.append(i) or False, **KW)
    assert stopped == [0] and out.timings["steps"] == 1 and len(out.images) == 1  # False stops after step 0


def test_validate_returns_a_complete_request(pipe, reference):
    req = pipe.validate("a red circle on a blue background", output_type="np", **KW)
    assert isinstance(req, fastgen.ImageRequest) and req.mode == "text2img"
    assert (req.num_inference_steps, req.seed, req.height, req.width) == (3, 5, 64, 64)
    assert req.guidance_scale == pipe.default_guidance and req.strength == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.seed = 1
    np.testing.assert_array_equal(np.asarray(pipe.run(req).images), reference)
    with pytest.raises(InvalidArgumentError, match="ImageRequest made by validate"):
        pipe.run({"prompt": "x"})
    img = pipe.validate("x", image=RGB, seed=1)
    assert img.mode == "img2img" and img.strength == 0.8 and len(img.images) == 1
    inp = pipe.validate("x", image=RGB, mask_image=RGB[:, :, 0], seed=1)
    assert inp.mode == "inpaint" and inp.strength == 1.0


def test_seed_default_is_random_and_recorded(pipe):
    a, b = pipe.validate("x"), pipe.validate("x")
    assert a.seed != b.seed and 0 <= a.seed < 2**63
    out = pipe("a red circle on a blue background", num_inference_steps=2, output_type="latent")
    again = pipe("a red circle on a blue background", num_inference_steps=2, output_type="latent", seed=out.seed)
    np.testing.assert_array_equal(out.images, again.images)


def test_timings_share_one_schema(pipe):
    out = pipe("a red circle on a blue background", image=RGB, **KW)
    assert set(out.timings) <= set(TIMING_KEYS) and "total" in out.timings
    assert {"text_encode", "vae_encode", "denoise", "vae_decode", "steps"} <= set(out.timings)
    assert out.timings["steps"] == 2  # strength 0.8 of 3 steps
    t2i = pipe("a red circle on a blue background", **KW).timings
    assert "vae_encode" not in t2i and t2i["steps"] == 3


@pytest.mark.parametrize("engine_dir,text", [
    (None, "engine_dir must be a path"), (5, "engine_dir must be a path"), (b"demo", "engine_dir must be a path"),
    ("", "not a valid path"), ("a\x00b", "not a valid path"), ("/nonexistent/engine", "not found"),
])
def test_load_refuses_bad_engine_dirs(engine_dir, text):
    with pytest.raises(fastgen.FastgenError, match=text):
        fastgen.Pipeline.load(engine_dir)


@pytest.mark.parametrize("kwargs,text", [
    (dict(backend="tensorflow"), "backend must be one of"), (dict(backend=None), "backend must be one of"),
    (dict(device="tpu"), "device must be one of"), (dict(device=0), "device must be one of"),
    (dict(providers="CPUExecutionProvider"), "providers must be a list"),
])
def test_load_refuses_bad_options(kwargs, text):
    with pytest.raises(InvalidArgumentError, match=text):
        fastgen.Pipeline.load("demo", **kwargs)


def test_close_and_session_cache_frees_engines(tmp_path):
    from fastgen.pipelines.base import cached_engines

    gc.collect()
    before = cached_engines()
    with fastgen.Pipeline.load("demo") as p:
        other = fastgen.Pipeline.load("demo")
        assert p.components is other.components  # a second load shares the sessions
        p("a red circle on a blue background", num_inference_steps=1, seed=0)
        assert "unet" in p.components.loaded()
    assert p.closed and "closed" in repr(p)
    with pytest.raises(fastgen.FastgenError, match="closed"):
        p("a red circle on a blue background", num_inference_steps=1, seed=0)
    other("a red circle on a blue background", num_inference_steps=1, seed=0)  # still open
    other.close()
    gc.collect()
    assert cached_engines() == before

    # a re-exported engine (new fastgen.json) gets new sessions, the old ones go with their pipelines
    import shutil

    from fastgen.pipelines.base import _demo_dir

    eng = tmp_path / "eng"
    shutil.copytree(_demo_dir(), eng)
    a = fastgen.Pipeline.load(eng)
    assert cached_engines() == before + 1
    text = (eng / "fastgen.json").read_text()
    os.replace(eng / "fastgen.json", eng / "old.json")
    (eng / "fastgen.json").write_text(text)
    b = fastgen.Pipeline.load(eng)
    assert a.components is not b.components and cached_engines() == before + 2
    del a
    gc.collect()
    assert cached_engines() == before + 1  # the old engine's sessions went with their last pipeline
    b.close()
    gc.collect()
    assert cached_engines() == before


def test_cli_generate_imports_no_exporter_or_torch(tmp_path):
    code = ("import sys; from fastgen.cli import main; "
            f"rc = main(['generate', 'a red circle on a blue background', '--steps', '2', '-o', {str(tmp_path / 'x.png')!r}]); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('fastgen_export', 'torch', 'diffusers', "
            "'transformers')); print('LOADED', bad); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "LOADED []" in r.stdout, r.stdout
    assert (tmp_path / "x.png").exists()


def test_cli_has_no_phantom_commands_and_reports_bad_input(tmp_path):
    from fastgen.cli import build_parser, main

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"export", "build-trt", "optimize", "generate", "info", "caption", "serve", "eval"}
    assert main(["generate", "x", "--steps", "0", "-o", str(tmp_path / "a.png")]) == 2
    (tmp_path / "file").write_text("")
    assert main(["generate", "x", "--steps", "1", "-o", str(tmp_path / "file" / "a.png")]) == 2


def test_video_writer_is_checked_before_the_first_frame(tmp_path, monkeypatch):
    """export_video (and so `fastgen generate` on a video engine) refuses an MP4 it cannot write before
    it asks the iterator for a frame: an iterator from iter_frames denoises on its first next()."""
    from fastgen.video_io import check_writer, export_video

    started = []

    def frames():
        started.append(True)
        yield np.zeros((8, 8, 3), np.float32)

    for name in ("av", "imageio_ffmpeg"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    with pytest.raises(fastgen.UnsupportedError, match="writing MP4 needs PyAV"):
        export_video(frames(), tmp_path / "x.mp4")
    assert started == []
    (tmp_path / "file").write_text("")
    for bad, text in ((tmp_path / "file" / "x.gif", "cannot be created"), (tmp_path / "x.avi", "unknown video suffix")):
        with pytest.raises(InvalidArgumentError, match=text):
            export_video(frames(), bad)
        assert started == []
    assert check_writer(tmp_path / "sub" / "x.gif").endswith("x.gif")
    export_video(frames(), tmp_path / "ok.gif", fps=4)
    assert started == [True]
