"""The request protocol on the other tasks (text-to-video, image-to-video, captioning): bad arguments are
FastgenErrors naming the argument, validate() returns the task's request, defaults agree across tasks,
and the pipelines still give the same output afterwards. Also the OpenVINO backend on these tasks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import fastgen
from engines import tiny_engine
from fastgen import InvalidArgumentError, ShapeError

IMG = Image.fromarray((np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8))
VID = dict(num_frames=4, num_inference_steps=2, height=32, width=32)
SVD = dict(num_frames=3, num_inference_steps=2, height=32, width=32)


@pytest.fixture(scope="module")
def vid():
    return fastgen.Pipeline.load(tiny_engine("animatediff")[1])


@pytest.fixture(scope="module")
def svd():
    return fastgen.Pipeline.load(tiny_engine("svd")[1])


@pytest.fixture(scope="module")
def cap():
    return fastgen.Pipeline.load(tiny_engine("vit-gpt2")[1])


VIDEO_BAD = [
    (dict(num_frame=8), InvalidArgumentError, "did you mean 'num_frames'"),
    (dict(strength=0.5), InvalidArgumentError, "'strength'"),
    (dict(num_frames="8"), InvalidArgumentError, "num_frames must be an int"),
    (dict(num_frames=0), InvalidArgumentError, "num_frames must be in"),
    (dict(guidance_scale="7"), InvalidArgumentError, "guidance_scale must be a number"),
    (dict(context_length=99), InvalidArgumentError, "exceeds the motion module's length"),
    (dict(context_stride=0), InvalidArgumentError, "context_stride must be in"),
    (dict(context_weighting="gauss"), InvalidArgumentError, "context_weighting must be one of"),
    (dict(long_video="diagonal"), InvalidArgumentError, "long_video must be one of"),
    (dict(decode_chunk_size=0), InvalidArgumentError, "decode_chunk_size"),
    (dict(output_type="mp4"), InvalidArgumentError, "output_type must be one of"),
    (dict(seed=-3), InvalidArgumentError, "seed must be None or an int"),
    (dict(prompt="\ud800"), InvalidArgumentError, "lone surrogate"),
    (dict(prompt=[]), InvalidArgumentError, "non-empty list"),
    (dict(callback="no"), InvalidArgumentError, "callback must be callable"),
    (dict(window_callback=1), InvalidArgumentError, "window_callback must be callable"),
    (dict(latents=np.zeros((1, 4, 3, 4, 4), np.float32)), ShapeError, "latents must have shape"),
    (dict(num_videos_per_prompt=17), InvalidArgumentError, "num_videos_per_prompt"),
]


@pytest.mark.parametrize("kwargs,exc,text", VIDEO_BAD, ids=[str(i) for i in range(len(VIDEO_BAD))])
def test_video_bad_arguments(vid, kwargs, exc, text):
    kwargs = dict(kwargs)
    prompt = kwargs.pop("prompt", "a cat")
    with pytest.raises(exc) as info:
        vid(prompt, **{**VID, **kwargs})
    assert text in str(info.value), str(info.value)


def test_video_request_defaults_and_same_output_after_errors(vid):
    req = vid.validate("a cat", **VID)
    assert isinstance(req, fastgen.VideoRequest) and req.long_video == "context"
    assert req.guidance_scale == vid.default_guidance and req.context_length == 4
    assert vid.validate("a cat").seed != vid.validate("a cat").seed  # random, as images (was 0)
    a = vid("a cat", seed=2, **VID)
    with pytest.raises(InvalidArgumentError):
        vid("a cat", seed=2, num_frame=3)
    b = vid("a cat", seed=2, **VID)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert set(a.timings) <= set(fastgen.outputs.TIMING_KEYS) and a.timings["steps"] == 2
    with pytest.raises(InvalidArgumentError, match="takes no num_videos_per_prompt"):
        vid.iter_frames("a cat", num_videos_per_prompt=2)
    frames = list(vid.iter_frames("a cat", seed=2, **VID))
    np.testing.assert_array_equal(np.stack(frames), a.frames[0])


SVD_BAD = [
    (dict(num_frame=3), InvalidArgumentError, "did you mean 'num_frames'"),
    (dict(prompt="a cat"), InvalidArgumentError, "'prompt'"),
    (dict(image=None), InvalidArgumentError, "image is required"),
    (dict(image=[]), InvalidArgumentError, "image is an empty list"),
    (dict(image=Image.new("RGB", (0, 0))), InvalidArgumentError, "is 0x0"),
    (dict(fps="7"), InvalidArgumentError, "fps must be a number"),
    (dict(fps=0), InvalidArgumentError, "fps must be a finite number in [1.0"),
    (dict(motion_bucket_id=float("nan")), InvalidArgumentError, "motion_bucket_id"),
    (dict(noise_aug_strength=-1), InvalidArgumentError, "noise_aug_strength"),
    (dict(max_guidance_scale="3"), InvalidArgumentError, "max_guidance_scale must be a number"),
    (dict(latents=np.zeros((1, 2, 4, 4, 4), np.float32)), ShapeError, "latents must have shape"),
    (dict(image_noise=np.zeros((1, 3, 8, 8), np.float32)), ShapeError, "image_noise must have shape"),
    (dict(output_type="gif"), InvalidArgumentError, "output_type"),
]


@pytest.mark.parametrize("kwargs,exc,text", SVD_BAD, ids=[str(i) for i in range(len(SVD_BAD))])
def test_image_to_video_bad_arguments(svd, kwargs, exc, text):
    kwargs = dict(kwargs)
    image = kwargs.pop("image", IMG)
    with pytest.raises(exc) as info:
        svd(image, **{**SVD, **kwargs})
    assert text in str(info.value), str(info.value)


def test_image_to_video_request_and_defaults(svd):
    req = svd.validate(IMG, **SVD)
    assert isinstance(req, fastgen.ImageToVideoRequest) and req.decode_chunk_size == 3
    assert svd.validate(IMG).seed != svd.validate(IMG).seed  # random, as images (was 0)
    a, b = svd(IMG, seed=4, **SVD), svd(IMG, seed=4, **SVD)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert {"image_encode", "vae_encode", "denoise", "vae_decode", "total"} <= set(a.timings)


CAPTION_BAD = [
    (dict(num_beam=2), InvalidArgumentError, "did you mean 'num_beams'"),
    (dict(images=None), InvalidArgumentError, "images is required"),
    (dict(images=[]), InvalidArgumentError, "images is an empty list"),
    (dict(images=[IMG, np.zeros((0, 4, 3), np.uint8)]), InvalidArgumentError, "images[1]"),
    (dict(num_beams="2"), InvalidArgumentError, "num_beams must be an int"),
    (dict(num_beams=2, num_return_sequences=3), InvalidArgumentError, "num_return_sequences must be in [1, 2]"),
    (dict(max_new_tokens=0), InvalidArgumentError, "max_new_tokens"),
    (dict(length_penalty=float("inf")), InvalidArgumentError, "length_penalty"),
    (dict(repetition_penalty=0), InvalidArgumentError, "repetition_penalty"),
    (dict(early_stopping="sometimes"), InvalidArgumentError, "early_stopping"),
    (dict(prompt="a photo of"), fastgen.UnsupportedError, "does not take a text prompt"),  # ViT-GPT2
]


@pytest.mark.parametrize("kwargs,exc,text", CAPTION_BAD, ids=[str(i) for i in range(len(CAPTION_BAD))])
def test_caption_bad_arguments(cap, kwargs, exc, text):
    kwargs = dict(kwargs)
    images = kwargs.pop("images", [IMG])
    with pytest.raises(exc) as info:
        cap(images, **kwargs)
    assert text in str(info.value), str(info.value)


def test_caption_request_and_same_output_after_errors(cap):
    req = cap.validate([IMG, IMG], num_beams=2)
    assert isinstance(req, fastgen.CaptionRequest) and len(req.images) == 2 and req.prompts is None
    a = cap([IMG], num_beams=2, max_new_tokens=5)
    with pytest.raises(InvalidArgumentError):
        cap([IMG], num_beams=2, max_new_token=5)
    b = cap([IMG], num_beams=2, max_new_tokens=5)
    assert a.token_ids == b.token_ids
    assert set(a.timings) <= set(fastgen.outputs.TIMING_KEYS)
    assert {"preprocess", "image_encode", "text_decode", "decoder_steps", "total"} <= set(a.timings)


def test_blip_prompts_are_validated():
    blip = fastgen.Pipeline.load(tiny_engine("blip")[1])
    with pytest.raises(InvalidArgumentError, match="prompt has 1 entries|has 2 entries but"):
        blip([IMG], prompt=["a", "b"], max_new_tokens=3)
    with pytest.raises(InvalidArgumentError, match="lone surrogate"):
        blip([IMG], prompt="\ud800", max_new_tokens=3)
    assert len(blip([IMG, IMG], prompt="a photo of", max_new_tokens=3).texts) == 2


# ------------------------------------------------------------------------------- OpenVINO on every task


@pytest.mark.parametrize("task", ["animatediff", "svd", "vit-gpt2", "blip"])
def test_openvino_fp32_equals_onnxruntime_on_every_task(task):
    pytest.importorskip("openvino")
    eng = tiny_engine(task)[1]
    ort, ov = fastgen.Pipeline.load(eng), fastgen.Pipeline.load(eng, backend="openvino")
    if task == "animatediff":
        a, b = (p("a cat", seed=1, **VID).frames for p in (ort, ov))
    elif task == "svd":
        a, b = (p(IMG, seed=1, **SVD).frames for p in (ort, ov))
    else:
        a, b = (p([IMG, IMG], num_beams=2, max_new_tokens=6) for p in (ort, ov))
        assert a.token_ids == b.token_ids
        dec = ov.session("text_decoder")
        assert not dec.static_shapes and dec.compiles == 1  # one dynamic compile for every past length
        return
    assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 2e-3
