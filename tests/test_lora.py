"""LoRA through the engines' LoRA branches: parity with diffusers' load_lora_weights + set_adapters, exact base
images, switching, kohya naming, fusion at export, and the errors."""

import os
import struct

import numpy as np
import pytest
import torch

import fastgen
from engines import tiny_engine
from fastgen_export import testing

BRANCHES = {"lora_branches": True}
KW = dict(num_inference_steps=4, guidance_scale=5.0, height=48, width=64, output_type="np")
CHANNELS = {"sd": 4, "sdxl": 4, "sd3": 16}


def _latents(kind, seed=3, batch=1):
    return fastgen.randn((batch, CHANNELS[kind], 12, 16), seed=seed)


def _max_diff(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    """Per family: LoRA a (rank 4, alpha 2: scale 0.5, UNet + text encoders), b (rank 3, alpha = rank)."""
    root = tmp_path_factory.mktemp("loras")
    made = {}

    def get(kind):
        if kind not in made:
            src, _ = tiny_engine(kind, export_options=BRANCHES)
            made[kind] = (testing.build_tiny_lora(src, root / kind / "a.safetensors", seed=1, rank=4, alpha=2.0),
                          testing.build_tiny_lora(src, root / kind / "b.safetensors", seed=2, rank=3))
        return made[kind]
    return get


@pytest.mark.parametrize("kind", ["sd", "sdxl", "sd3"])
def test_matches_diffusers_set_adapters(kind, loras):
    src, eng = tiny_engine(kind, export_options=BRANCHES)
    a, b = loras(kind)
    ref = testing.load_tiny_pipeline(src)
    ref.set_progress_bar_config(disable=True)
    ref.load_lora_weights(a, adapter_name="a")
    ref.load_lora_weights(b, adapter_name="b")
    ref.set_adapters(["a", "b"], adapter_weights=[0.8, 0.6])
    lat = _latents(kind)
    want = ref("a red cat", latents=torch.from_numpy(lat), **KW).images
    pipe = fastgen.Pipeline.load(eng)
    got = pipe("a red cat", latents=lat, loras={a: 0.8, b: 0.6}, **KW).images
    base = pipe("a red cat", latents=lat, **KW).images
    assert _max_diff(got, want) < 2e-3
    assert _max_diff(got, base) > 0.05  # the LoRAs change the image: the comparison above is not vacuous


def test_exact_base_and_switching(loras):
    _, plain = tiny_engine("sd")
    _, eng = tiny_engine("sd", export_options=BRANCHES)
    a, b = loras("sd")
    lat = _latents("sd", batch=2)
    pipe = fastgen.Pipeline.load(eng)
    free = fastgen.Pipeline.load(plain)(["a red cat", "a dog"], latents=lat, **KW).images

    def run(lr=None):
        return pipe(["a red cat", "a dog"], latents=lat, loras=lr, **KW).images

    first_a = run({a: 0.7})
    seq = [run({b: 1.0}), run(), run({a: 0.7}), run({})]
    assert np.array_equal(seq[1], free) and np.array_equal(seq[3], free)  # no LoRA: the LoRA-free engine's image
    assert np.array_equal(seq[2], first_a)  # A -> B -> none -> A gives A's image again
    assert not np.array_equal(seq[0], first_a)


def test_strength_zero_and_order(loras):
    _, eng = tiny_engine("sd", export_options=BRANCHES)
    a, b = loras("sd")
    pipe = fastgen.Pipeline.load(eng)
    lat = _latents("sd")
    base = pipe("a cat", latents=lat, **KW).images
    assert np.array_equal(pipe("a cat", latents=lat, loras={a: 0.0}, **KW).images, base)  # strength 0: no branch
    ab = pipe("a cat", latents=lat, loras={a: 0.5, b: 0.3}, **KW).images
    ba = pipe("a cat", latents=lat, loras=[(b, 0.3), (a, 0.5)], **KW).images
    assert _max_diff(ab, ba) < 1e-5


def test_kohya_names_equal_diffusers(loras, tmp_path):
    src, eng = tiny_engine("sd", export_options=BRANCHES)
    peft = testing.build_tiny_lora(src, tmp_path / "p.safetensors", seed=5, rank=4, alpha=1.0)
    kohya = testing.build_tiny_lora(src, tmp_path / "k.safetensors", seed=5, rank=4, alpha=1.0, kohya=True)
    pipe = fastgen.Pipeline.load(eng)
    lat = _latents("sd")
    want = pipe("a cat", latents=lat, loras={peft: 0.9}, **KW).images
    got = pipe("a cat", latents=lat, loras={kohya: 0.9}, **KW).images
    assert _max_diff(got, want) < 1e-6


def test_fused_export_equals_branch(loras, tmp_path):
    from fastgen_export.api import export

    src, eng = tiny_engine("sd", export_options=BRANCHES)
    a, _ = loras("sd")
    fused = export(src, tmp_path / "fused", lora=[(a, 0.8)], log=None)
    lat = _latents("sd")
    want = fastgen.Pipeline.load(eng)("a cat", latents=lat, loras={a: 0.8}, **KW).images
    pipe = fastgen.Pipeline.load(fused)
    assert pipe.manifest.data["lora_fused"][0]["scale"] == 0.8
    assert _max_diff(pipe("a cat", latents=lat, **KW).images, want) < 1e-4
    with pytest.raises(fastgen.UnsupportedError, match="no LoRA branches"):
        pipe("a cat", loras={a: 1.0}, **KW)


def _save(path, tensors, metadata=None):
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, str(path), metadata=metadata)
    return str(path)


def test_errors(loras, tmp_path):
    _, eng = tiny_engine("sd", export_options=BRANCHES)
    a, _ = loras("sd")
    xl_a, _ = loras("sdxl")
    pipe = fastgen.Pipeline.load(eng)
    mod = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    bad = fastgen.InvalidArgumentError
    with pytest.raises(bad, match="matches nothing"):
        pipe("a cat", loras={_save(tmp_path / "x.safetensors", {"unet.no.such.layer.lora_A.weight": np.ones((2, 8)),
                                                                "unet.no.such.layer.lora_B.weight": np.ones((8, 2))}): 1})
    with pytest.raises(bad, match="rank 130, above this engine's maximum 128"):
        pipe("a cat", loras={_save(tmp_path / "r.safetensors", {f"{mod}.lora_A.weight": np.zeros((130, 64)),
                                                                f"{mod}.lora_B.weight": np.zeros((64, 130))}): 1})
    with pytest.raises(bad, match="summed rank .* is 130"):
        half = _save(tmp_path / "h.safetensors", {f"{mod}.lora_A.weight": np.zeros((65, 64)),
                                                  f"{mod}.lora_B.weight": np.zeros((64, 65))})
        other = _save(tmp_path / "h2.safetensors", {f"{mod}.lora_A.weight": np.ones((65, 64)),
                                                    f"{mod}.lora_B.weight": np.ones((64, 65))})
        pipe("a cat", loras={half: 1, other: 1})
    with pytest.raises(bad, match="another base model"):
        pipe("a cat", loras={xl_a: 1.0})  # an SDXL LoRA on an SD engine
    with pytest.raises(bad, match="strength.*finite"):
        pipe("a cat", loras={a: float("nan")})
    data = open(a, "rb").read()
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(data[: len(data) // 2])
    with pytest.raises(bad, match="not a valid safetensors file"):
        pipe("a cat", loras={str(damaged): 1.0})
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 10) + b"not json!!" + b"\0" * 16)
    with pytest.raises(bad, match="not a valid safetensors file"):
        pipe("a cat", loras={str(garbage): 1.0})
    with pytest.raises(bad, match="NaN"):
        pipe("a cat", loras={_save(tmp_path / "n.safetensors", {f"{mod}.lora_A.weight": np.full((2, 64), np.nan),
                                                                f"{mod}.lora_B.weight": np.ones((64, 2))}): 1})
    pickle = tmp_path / "a.ckpt"
    pickle.write_bytes(b"\x80\x04")
    with pytest.raises(bad, match="never pickle"):
        pipe("a cat", loras={str(pickle): 1.0})
    with pytest.raises(bad, match="cannot read"):
        pipe("a cat", loras={str(tmp_path / "missing.safetensors"): 1.0})
    with pytest.raises(bad, match="loras must be"):
        pipe("a cat", loras="a.safetensors")
    with pytest.raises(fastgen.UnsupportedError, match="no LoRA branches"):
        fastgen.Pipeline.load(tiny_engine("sd")[1])("a cat", loras={a: 1.0})
    with pytest.raises(fastgen.UnsupportedError, match="onnxruntime backend"):
        fastgen.Pipeline.load(eng, backend="openvino")("a cat", loras={a: 1.0})


def test_cached_by_content_hash(loras, tmp_path):
    from fastgen import lora

    a, _ = loras("sd")
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(open(a, "rb").read())
    assert lora.load_lora(a) is lora.load_lora(str(copy))  # same content: one parsed file
    assert lora.load_lora(a) is lora.load_lora(a)
    os.utime(copy, ns=(1, 1))
    assert lora.load_lora(str(copy)).sha256 == lora.load_lora(a).sha256


def test_cli_generate_and_export_lora(loras, tmp_path):
    from PIL import Image

    from fastgen.cli import main

    src, eng = tiny_engine("sd", export_options=BRANCHES)
    a, b = loras("sd")
    args = ["generate", eng, "a cat", "--steps", "3", "--height", "48", "--width", "64", "--seed", "4",
            "--no-progress"]
    assert main(args + ["--lora", f"{a}:0.8", "--lora", b, "-o", str(tmp_path / "l.png")]) == 0
    want = fastgen.Pipeline.load(eng)("a cat", num_inference_steps=3, height=48, width=64, seed=4,
                                      loras={a: 0.8, b: 1.0}).images[0]
    got = Image.open(tmp_path / "l.png")
    assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(want))
    assert "a.safetensors:0.8" in got.text["fastgen:loras"]
    assert main(args + ["--lora", f"{a}:nan", "-o", str(tmp_path / "n.png")]) == 2
    assert main(["export", src, str(tmp_path / "fused"), "-q", "--no-parity", "--lora", f"{a}:0.5"]) == 0
    assert fastgen.Pipeline.load(tmp_path / "fused").manifest.data["lora_fused"][0]["scale"] == 0.5
    assert main(["export", src, str(tmp_path / "bad"), "-q", "--no-parity", "--lora", str(tmp_path / "x.bin")]) == 2



def test_server_takes_loras_by_name_from_its_lora_dir(loras, tmp_path):
    """POST /v1/generate {"loras": {name: strength}} names files of `fastgen serve --lora-dir`: the image equals
    the pipeline's with those files; paths, unknown names and a server without a LoRA directory get 400."""
    import asyncio
    import base64
    import io
    import shutil

    import httpx
    from PIL import Image

    from fastgen.serve import create_app

    a, _ = loras("sd")
    shutil.copy(a, tmp_path / "style.safetensors")
    eng = tiny_engine("sd", export_options=BRANCHES)[1]
    body = {"prompt": "a red cat", "steps": 3, "seed": 4, "height": 48, "width": 64}

    async def post(app, bodies):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1",
                                     timeout=120) as c:
            return [await c.post("/v1/generate", json=b) for b in bodies]

    app = create_app({"sd": eng}, warmup=False, lora_dir=str(tmp_path))
    ok, plain, dotted, escape, unknown = asyncio.run(post(app, [
        dict(body, loras={"style": 0.8}), body, dict(body, loras={"style.safetensors": 0.8}),
        dict(body, loras={"../style": 0.8}), dict(body, loras={"nope": 0.8})]))
    pipe = fastgen.Pipeline.load(eng)
    kw = dict(num_inference_steps=3, seed=4, height=48, width=64)
    want = np.asarray(pipe("a red cat", loras={str(tmp_path / "style.safetensors"): 0.8}, **kw).images[0])
    pixels = [np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"]))))
              for r in (ok, plain, dotted)]
    np.testing.assert_array_equal(pixels[0], want)
    np.testing.assert_array_equal(pixels[2], want)
    np.testing.assert_array_equal(pixels[1], np.asarray(pipe("a red cat", **kw).images[0]))
    assert np.abs(pixels[0].astype(int) - pixels[1]).max() > 0  # the LoRA changed the image
    assert escape.status_code == 400 and "no folders" in escape.text
    assert unknown.status_code == 400 and "have: style" in unknown.text
    app.state.service.close()
    bare = create_app({"sd": eng}, warmup=False)
    (r,) = asyncio.run(post(bare, [dict(body, loras={"style": 0.8})]))
    assert r.status_code == 400 and "--lora-dir" in r.text
    bare.state.service.close()
