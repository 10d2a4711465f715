"""The OpenAI images API as the official ``openai`` client calls it, against a real uvicorn server on
127.0.0.1: images.generate (b64_json and url), images.edit (img2img, and inpainting with an RGBA mask),
images.create_variation; every image bit-equal to the pipeline called directly, with the CLI's PNG text
chunks. Also: /openapi.json describes every endpoint."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

import fastgen  # noqa: E402
from engines import tiny_engine  # noqa: E402
from fastgen.image import generation_info  # noqa: E402
from fastgen.serve import create_app  # noqa: E402
from PIL import Image  # noqa: E402
from servers import serving  # noqa: E402

STEPS = 3
KEY = "k3y"


@pytest.fixture(scope="module")
def pipe():
    return fastgen.Pipeline.load(tiny_engine("sd")[1])


@pytest.fixture(scope="module")
def server(pipe):
    app = create_app({"sd": pipe}, api_key=KEY, warmup=False, max_batch=4, max_wait_ms=50)
    with serving(app) as base:
        yield base, app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=120)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def png_file(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_generate_b64_bit_exact_with_png_text_chunks(client, pipe):
    r = client.images.generate(model="sd", prompt="a red cat", n=2, size="64x64", response_format="b64_json",
                               quality="standard", user="u1", moderation="auto", background="opaque",
                               extra_body={"seed": 11, "steps": STEPS, "negative_prompt": "blurry"})
    assert isinstance(r.created, int) and len(r.data) == 2 and r.output_format == "png" and r.size == "64x64"
    want = pipe("a red cat", negative_prompt="blurry", num_inference_steps=STEPS, seed=11, height=64, width=64,
                num_images_per_prompt=2)
    req = pipe.validate("a red cat", negative_prompt="blurry", num_inference_steps=STEPS, seed=11, height=64,
                        width=64)
    info = {("prompt" if k == "prompt" else f"fastgen:{k}"): str(v) for k, v in generation_info(pipe, req, 11).items()}
    for d, w in zip(r.data, want.images):
        raw = base64.b64decode(d.b64_json)
        np.testing.assert_array_equal(pixels(raw), np.asarray(w))
        assert Image.open(io.BytesIO(raw)).text == info  # the chunks `fastgen generate` writes


def test_generate_url_quality_and_refusals(client, server, pipe):
    r = client.images.generate(model="sd", prompt="a cat", size="64x64", response_format="url", quality="low",
                               extra_body={"seed": 2})
    url = r.data[0].url
    assert url.startswith(server[0] + "/v1/files/file-") and url.endswith(".png")
    got = httpx.get(url)  # a capability link: no API key needed
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    low = max(1, round(pipe.default_steps * 0.5))  # quality "low": half the engine's default steps
    want = pipe("a cat", num_inference_steps=low, seed=2, height=64, width=64).images[0]
    np.testing.assert_array_equal(pixels(got.content), np.asarray(want))
    r = client.images.generate(model="sd", prompt="a cat", size="64x64", output_format="jpeg", output_compression=80,
                               extra_body={"seed": 2, "steps": STEPS})
    assert base64.b64decode(r.data[0].b64_json)[:3] == b"\xff\xd8\xff" and r.output_format == "jpeg"
    for kwargs, needle in ((dict(style="vivid"), "'style' is not supported"),
                           (dict(quality="hd", extra_body={"steps": 4}), "give 'quality' 'hd' or 'steps'"),
                           (dict(background="transparent"), "'background'"),
                           (dict(output_format="svg"), "'output_format'"),
                           (dict(size="100x100"), "multiple of 8"),
                           (dict(n=9), "'n' must be in [1, 8]"),
                           (dict(partial_images=2), "'partial_images' needs streaming")):
        with pytest.raises(openai.BadRequestError) as ei:
            client.images.generate(model="sd", prompt="a cat", **kwargs)
        assert ei.value.status_code == 400 and needle in ei.value.message, ei.value.message
    with pytest.raises(openai.NotFoundError):
        client.images.generate(model="dall-e-3", prompt="a cat")
    bad = openai.OpenAI(base_url=server[0] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.images.generate(model="sd", prompt="a cat")


def test_edit_img2img_and_inpaint_bit_exact(client, pipe):
    rng = np.random.default_rng(0)
    img = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    r = client.images.edit(model="sd", image=("in.png", png_file(img), "image/png"), prompt="a dog", size="64x64",
                           extra_body={"seed": 6, "steps": STEPS, "strength": 0.7})
    want = pipe.img2img("a dog", image=img, strength=0.7, num_inference_steps=STEPS, seed=6, height=64, width=64)
    np.testing.assert_array_equal(pixels(base64.b64decode(r.data[0].b64_json)), np.asarray(want.images[0]))
    # OpenAI's mask: an RGBA image whose transparent pixels are to be edited
    rgba = np.full((64, 64, 4), 255, np.uint8)
    rgba[16:48, 16:48, 3] = 0
    r = client.images.edit(model="sd", image=("in.png", png_file(img), "image/png"),
                           mask=("mask.png", png_file(rgba), "image/png"), prompt="a dog", n=2,
                           extra_body={"seed": 7, "steps": STEPS})
    white = np.zeros((64, 64), np.uint8)
    white[16:48, 16:48] = 255
    want = pipe.inpaint("a dog", image=img, mask_image=white, num_inference_steps=STEPS, seed=7,
                        num_images_per_prompt=2)
    assert len(r.data) == 2
    for d, w in zip(r.data, want.images):
        np.testing.assert_array_equal(pixels(base64.b64decode(d.b64_json)), np.asarray(w))
    with pytest.raises(openai.BadRequestError) as ei:
        client.images.edit(model="sd", image=("x.png", b"not a png", "image/png"), prompt="a dog")
    assert "not a readable image" in ei.value.message
    with pytest.raises(openai.BadRequestError) as ei:
        client.images.edit(model="sd", image=("in.png", png_file(img), "image/png"), prompt="a dog",
                           input_fidelity="high")
    assert "'input_fidelity' is not supported" in ei.value.message


def test_create_variation_bit_exact(client, pipe):
    img = (np.random.default_rng(3).random((64, 64, 3)) * 255).astype(np.uint8)
    r = client.images.create_variation(model="sd", image=("in.png", png_file(img), "image/png"), n=1, size="64x64",
                                       extra_body={"seed": 3, "steps": STEPS})
    want = pipe.img2img("", image=img, strength=0.7, num_inference_steps=STEPS, seed=3, height=64, width=64)
    np.testing.assert_array_equal(pixels(base64.b64decode(r.data[0].b64_json)), np.asarray(want.images[0]))


def test_openapi_describes_every_endpoint(server):
    base, app = server
    spec = httpx.get(base + "/openapi.json").json()  # open: the API reference needs no key
    paths = spec["paths"]
    for path, method in (("/v1/images/generations", "post"), ("/v1/images/edits", "post"),
                         ("/v1/images/variations", "post"), ("/v1/generate", "post"), ("/v1/captions", "post"),
                         ("/v1/videos", "post"), ("/v1/jobs/{job_id}", "get"), ("/v1/jobs/{job_id}", "delete"),
                         ("/v1/files/{file_id}", "get"), ("/v1/models", "get"), ("/healthz", "get"),
                         ("/readyz", "get"), ("/metrics", "get")):
        op = paths[path][method]
        assert op.get("summary"), (path, method)
        if method == "post":
            content = op["requestBody"]["content"]
            assert ("multipart/form-data" if "images/" in path and "generations" not in path
                    else "application/json") in content, (path, content)
            assert "400" in op["responses"] and "200" in op["responses"]
    assert spec["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    assert paths["/v1/images/edits"]["post"]["security"] == [{"bearer": []}]  # this server has a key
    assert "security" not in paths["/healthz"]["get"] and "security" not in paths["/v1/files/{file_id}"]["get"]
    schemas = spec["components"]["schemas"]
    gen = schemas["ImagesGenerateRequest"]["properties"]
    for field in ("prompt", "model", "n", "size", "quality", "style", "response_format", "output_format",
                  "background", "user", "seed", "steps"):
        assert field in gen, field
    assert {"prompt", "image", "mask", "strength", "stream", "async"} <= set(schemas["GenerateRequest"]["properties"])
    assert "ImagesResponse" in schemas and "Job" in schemas and "ErrorResponse" in schemas
    docs = httpx.get(base + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
