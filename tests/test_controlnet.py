"""ControlNet (text-to-image) against diffusers' StableDiffusion(XL)ControlNetPipeline on tiny random models."""

import numpy as np
import pytest
import torch
from PIL import Image

import fastgen
from engines import tiny_engine
from fastgen_export import testing

KW = dict(num_inference_steps=4, guidance_scale=5.0, height=48, width=64, output_type="np")
CLASSES = {"sd": "StableDiffusionControlNetPipeline", "sdxl": "StableDiffusionXLControlNetPipeline"}


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)) for _ in range(2)]


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """Per family: (source, [ControlNet folders], engine with one ControlNet, engine with both)."""
    from fastgen_export.api import export

    root = tmp_path_factory.mktemp("controlnet")
    made = {}

    def get(kind):
        if kind not in made:
            src, _ = tiny_engine(kind)
            cns = [testing.build_tiny_controlnet(src, root / f"{kind}-cn{i}", seed=10 + i) for i in range(2)]
            one = export(src, root / f"{kind}-one", controlnet=cns[:1], log=None)
            two = export(src, root / f"{kind}-two", controlnet=cns, log=None)
            made[kind] = (src, cns, one, two)
        return made[kind]
    return get


def _reference(kind, src, nets):
    import diffusers

    kw = {"safety_checker": None, "requires_safety_checker": False} if kind == "sd" else {}
    ref = getattr(diffusers, CLASSES[kind]).from_pretrained(src, controlnet=nets, **kw)
    ref.set_progress_bar_config(disable=True)
    return ref


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_multi_controlnet_matches_diffusers(kind, engines):
    import diffusers

    src, cns, _, two = engines(kind)
    nets = [diffusers.ControlNetModel.from_pretrained(c) for c in cns]
    ref = _reference(kind, src, nets)
    pipe = fastgen.Pipeline.load(two)
    lat = fastgen.randn((1, 4, 12, 16), seed=3)
    base = pipe("a red cat", latents=lat, **KW).images
    for guess in (False, True):
        args = dict(controlnet_conditioning_scale=[0.7, 1.2], control_guidance_start=[0.0, 0.25],
                    control_guidance_end=[0.75, 1.0], guess_mode=guess)
        want = ref("a red cat", image=_images(), latents=torch.from_numpy(lat), **args, **KW).images
        got = pipe("a red cat", control_image=_images(), latents=lat, **args, **KW).images
        assert np.abs(got - want).max() < 2e-3
        assert np.abs(got - base).max() > 0.05


def test_single_controlnet_batch_and_no_control(engines):
    import diffusers

    src, cns, one, _ = engines("sd")
    ref = _reference("sd", src, diffusers.ControlNetModel.from_pretrained(cns[0]))
    pipe = fastgen.Pipeline.load(one)
    lat = fastgen.randn((4, 4, 12, 16), seed=5)
    kw = dict(KW, num_images_per_prompt=2, negative_prompt=["blurry", "ugly"])
    want = ref(["a cat", "a dog"], image=_images()[0], latents=torch.from_numpy(lat),
               controlnet_conditioning_scale=0.8, **kw).images
    got = pipe(["a cat", "a dog"], control_image=_images()[0], latents=lat, controlnet_conditioning_scale=0.8,
               **kw).images
    assert np.abs(got - want).max() < 2e-3
    # without a control image the plain UNet runs: the engine's images equal the ControlNet-free engine's
    plain = fastgen.Pipeline.load(tiny_engine("sd")[1])(["a cat", "a dog"], latents=lat, **kw).images
    assert np.array_equal(pipe(["a cat", "a dog"], latents=lat, **kw).images, plain)


def test_errors(engines):
    _, _, one, two = engines("sd")
    pipe2 = fastgen.Pipeline.load(two)
    bad = fastgen.InvalidArgumentError
    with pytest.raises(bad, match="list of 2 images"):
        pipe2("a cat", control_image=_images()[0])
    with pytest.raises(bad, match="has 1 entries but the engine has 2"):
        pipe2("a cat", control_image=_images(), controlnet_conditioning_scale=[1.0])
    with pytest.raises(bad, match="must be below"):
        pipe2("a cat", control_image=_images(), control_guidance_start=0.6, control_guidance_end=0.5)
    with pytest.raises(bad, match="needs control_image"):
        pipe2("a cat", controlnet_conditioning_scale=0.5)
    with pytest.raises(bad, match="finite"):
        pipe2("a cat", control_image=_images(), controlnet_conditioning_scale=float("nan"))
    with pytest.raises(fastgen.UnsupportedError, match="mask_image"):
        fastgen.Pipeline.load(one)("a cat", control_image=_images()[0], image=_images()[1], mask_image=_images()[0])
    with pytest.raises(fastgen.UnsupportedError, match="no ControlNet"):
        fastgen.Pipeline.load(tiny_engine("sd")[1])("a cat", control_image=_images()[0])


def test_cli_control_image(engines, tmp_path):
    from fastgen.cli import main

    _, _, _, two = engines("sd")
    paths = []
    for i, im in enumerate(_images()):
        paths.append(str(tmp_path / f"c{i}.png"))
        im.save(paths[-1])
    args = ["generate", two, "a cat", "--steps", "3", "--height", "48", "--width", "64", "--seed", "2",
            "--no-progress", "-o", str(tmp_path / "o.png"), "--control-image", paths[0], "--control-image", paths[1],
            "--controlnet-scale", "0.5", "--controlnet-scale", "1.5", "--control-end", "0.9"]
    assert main(args) == 0
    want = fastgen.Pipeline.load(two)("a cat", num_inference_steps=3, height=48, width=64, seed=2,
                                      control_image=paths, controlnet_conditioning_scale=[0.5, 1.5],
                                      control_guidance_end=0.9).images[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o.png").convert("RGB")), np.asarray(want))
    assert main(args[:-10] + ["--guess-mode"]) == 2  # guess mode without a control image
    assert main(args[:-8]) == 2  # one control image for two ControlNets


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_img2img_controlnet_matches_diffusers(kind, engines, monkeypatch):
    import importlib

    import diffusers

    src, cns, one, _ = engines(kind)
    cls = "StableDiffusionControlNetImg2ImgPipeline" if kind == "sd" else "StableDiffusionXLControlNetImg2ImgPipeline"
    kw = {"safety_checker": None, "requires_safety_checker": False} if kind == "sd" else {}
    ref = getattr(diffusers, cls).from_pretrained(src, controlnet=diffusers.ControlNetModel.from_pretrained(cns[0]),
                                                  **kw)
    ref.set_progress_bar_config(disable=True)
    init, control = _images()
    lat = fastgen.randn((1, 4, 12, 16), seed=7)
    # diffusers samples the VAE latent distribution and draws its own noise: use the mean and our noise
    m = importlib.import_module("diffusers.pipelines.controlnet.pipeline_controlnet_"
                                + ("img2img" if kind == "sd" else "sd_xl_img2img"))
    orig = m.retrieve_latents
    monkeypatch.setattr(m, "retrieve_latents", lambda out, generator=None, sample_mode="sample": orig(
        out, sample_mode="argmax"))
    monkeypatch.setattr(m, "randn_tensor", lambda shape, **k: torch.from_numpy(lat.copy()))
    args = dict(strength=0.6, controlnet_conditioning_scale=0.9, control_guidance_end=0.7, num_inference_steps=6,
                guidance_scale=5.0, height=48, width=64, output_type="np")
    want = ref("a red cat", image=init, control_image=control, **args).images
    got = fastgen.Pipeline.load(one)("a red cat", image=init, control_image=control, latents=lat, **args).images
    assert np.abs(got - want).max() < 2e-3


def test_canny_edges():
    from fastgen.image import canny

    a = np.zeros((64, 80, 3), np.uint8)
    a[16:48, 20:60] = 200
    e = np.asarray(canny(a))
    assert e.shape == (64, 80, 3) and set(np.unique(e)) == {0, 255} and (e[..., 0] == e[..., 2]).all()
    edge = e[..., 0] > 0
    rows, cols = np.where(edge.any(1))[0], np.where(edge.any(0))[0]
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (16, 48, 20, 60)  # the square's outline
    assert 120 <= edge.sum() <= 170 and not edge[19:45, 23:57].any()  # one pixel thick, nothing inside
    assert not np.asarray(canny(a, 1000, 2000)).any()  # a step of 200 is below these thresholds
    weak = a.copy()
    weak[16:48, 20:60] = 60  # sides: |gx| + |gy| = 4 x 60 = 240; corners more (both gradients non-zero)
    assert not np.asarray(canny(weak, 100, 1000)).any()  # nothing strong: nothing at all
    sides = (np.asarray(canny(weak, 100, 300))[..., 0] > 0).sum()  # strong corners, sides kept by hysteresis
    corners = (np.asarray(canny(weak, 250, 300))[..., 0] > 0).sum()  # sides below the low threshold
    assert sides > 100 and 0 < corners < 20
    with pytest.raises(fastgen.InvalidArgumentError, match="low_threshold"):
        canny(a, 200, 100)


def test_controlnet_with_loras_matches_diffusers(engines, tmp_path):
    """An engine exported with --lora-branches and --controlnet: LoRAs and a ControlNet in one request, as
    diffusers' ControlNet pipeline with load_lora_weights + set_adapters."""
    import diffusers
    from fastgen_export.api import export

    src, cns, _, _ = engines("sd")
    eng = export(src, tmp_path / "both", controlnet=cns[:1], lora_branches=True, log=None)
    a = testing.build_tiny_lora(src, tmp_path / "a.safetensors", seed=1, rank=4, alpha=2.0)
    b = testing.build_tiny_lora(src, tmp_path / "b.safetensors", seed=2, rank=3, text_encoders=False)
    ref = _reference("sd", src, diffusers.ControlNetModel.from_pretrained(cns[0]))
    ref.load_lora_weights(a, adapter_name="a")
    ref.load_lora_weights(b, adapter_name="b")
    ref.set_adapters(["a", "b"], adapter_weights=[0.8, 0.6])
    lat = fastgen.randn((1, 4, 12, 16), seed=3)
    want = ref("a red cat", image=_images()[0], latents=torch.from_numpy(lat), controlnet_conditioning_scale=0.9,
               **KW).images
    pipe = fastgen.Pipeline.load(eng)
    got = pipe("a red cat", control_image=_images()[0], latents=lat, controlnet_conditioning_scale=0.9,
               loras={a: 0.8, b: 0.6}, **KW).images
    assert np.abs(got - want).max() < 2e-3
    only_control = pipe("a red cat", control_image=_images()[0], latents=lat, controlnet_conditioning_scale=0.9,
                        **KW).images
    assert np.abs(got - only_control).max() > 0.05
    # an engine with ControlNet but no LoRA branches refuses the combination
    _, _, one, _ = engines("sd")
    with pytest.raises(fastgen.UnsupportedError):
        fastgen.Pipeline.load(one)("a cat", control_image=_images()[0], loras={a: 1.0})


def test_server_control_image(engines):
    """POST /v1/generate with control_image (one per ControlNet, base64) and the ControlNet keywords gives the
    pipeline's image; ControlNet keywords without a control image get 400."""
    import asyncio
    import base64
    import io

    import httpx

    from fastgen.serve import create_app

    _, _, _, two = engines("sd")
    app = create_app({"sd": two}, warmup=False)
    b64 = []
    for im in _images():
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        b64.append(base64.b64encode(buf.getvalue()).decode())
    body = {"prompt": "a cat", "seed": 4, "steps": 3, "size": "64x48", "control_image": b64,
            "controlnet_conditioning_scale": [0.6, 1.1], "control_guidance_end": 0.8}

    async def post(b):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=120) as c:
            return await c.post("/v1/generate", json=b)

    r = asyncio.run(post(body))
    assert r.status_code == 200, r.text
    want = fastgen.Pipeline.load(two)("a cat", seed=4, num_inference_steps=3, height=48, width=64,
                                      control_image=_images(), controlnet_conditioning_scale=[0.6, 1.1],
                                      control_guidance_end=0.8).images[0]
    got = Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"])))
    assert np.array_equal(np.asarray(got), np.asarray(want))
    r = asyncio.run(post({"prompt": "a cat", "guess_mode": True}))
    assert r.status_code == 400 and "control_image" in r.text
    app.state.service.close()
