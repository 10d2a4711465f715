"""The runtime as something users embed: bad input, unsafe manifests, threads, no torch import."""

import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastgen
from engines import tiny_engine


@pytest.fixture(scope="module")
def eng():
    return tiny_engine("sd")[1]


@pytest.fixture(scope="module")
def pipe(eng):
    return fastgen.Pipeline.load(eng)


def copy_engine(eng, tmp_path):
    dst = tmp_path / "engine"
    shutil.copytree(eng, dst)
    return dst


def edit_manifest(path, fn):
    m = json.loads((path / "fastgen.json").read_text())
    fn(m)
    (path / "fastgen.json").write_text(json.dumps(m))


# ----------------------------------------------------------------------------------- manifests

def test_missing_and_invalid_engine_dirs(tmp_path):
    with pytest.raises(fastgen.ManifestError, match="not found"):
        fastgen.Pipeline.load(tmp_path / "nope")
    with pytest.raises(fastgen.ManifestError, match="no fastgen.json"):
        fastgen.Pipeline.load(tmp_path)
    (tmp_path / "fastgen.json").write_text("{oops")
    with pytest.raises(fastgen.ManifestError, match="not valid JSON"):
        fastgen.Pipeline.load(tmp_path)
    (tmp_path / "fastgen.json").write_text("[]")
    with pytest.raises(fastgen.ManifestError):
        fastgen.Pipeline.load(tmp_path)


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside/model.onnx", "unet/../../x.onnx", "", "unet//model.onnx",
                                 "C:\\x\\model.onnx"])
def test_unsafe_paths_refused(eng, tmp_path, bad):
    d = copy_engine(eng, tmp_path)
    edit_manifest(d, lambda m: m["components"]["unet"].__setitem__("path", bad))
    with pytest.raises(fastgen.ManifestError):
        fastgen.Pipeline.load(d)


def test_symlink_escape_refused(eng, tmp_path):
    d = copy_engine(eng, tmp_path)
    outside = tmp_path / "outside.onnx"
    shutil.copy(d / "unet" / "model.onnx", outside)
    os.symlink(outside, d / "unet" / "link.onnx")
    edit_manifest(d, lambda m: m["components"]["unet"].__setitem__("path", "unet/link.onnx"))
    with pytest.raises(fastgen.ManifestError, match="outside"):
        fastgen.Pipeline.load(d)


def test_format_version_and_kind(eng, tmp_path):
    d = copy_engine(eng, tmp_path)
    edit_manifest(d, lambda m: m.__setitem__("format_version", 99))
    with pytest.raises(fastgen.ManifestError, match="format_version"):
        fastgen.Pipeline.load(d)
    edit_manifest(d, lambda m: (m.__setitem__("format_version", 1), m.__setitem__("kind", "teleport")))
    with pytest.raises(fastgen.ManifestError, match="kind"):
        fastgen.Pipeline.load(d)


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "empty"])
def test_damaged_model_files(eng, tmp_path, damage):
    d = copy_engine(eng, tmp_path)
    f = d / "unet" / "model.onnx"
    if damage == "missing":
        f.unlink()
        with pytest.raises(fastgen.ModelLoadError, match="unet"):
            fastgen.Pipeline.load(d)
        return
    data = f.read_bytes()
    f.write_bytes({"truncated": data[: len(data) // 3], "garbage": os.urandom(4096), "empty": b""}[damage])
    pipe = fastgen.Pipeline.load(d)  # lazy: the UNet loads on first use
    with pytest.raises(fastgen.ModelLoadError, match="unet"):
        pipe("a cat", num_inference_steps=2)


def test_bad_tokenizer_file(eng, tmp_path):
    d = copy_engine(eng, tmp_path)
    (d / "tokenizer" / "tokenizer.json").write_text("not a tokenizer")
    pipe = fastgen.Pipeline.load(d)
    with pytest.raises(fastgen.ModelLoadError, match="tokenizer"):
        pipe("a cat", num_inference_steps=2)


# ----------------------------------------------------------------------------------- arguments

@pytest.mark.parametrize("kwargs,match", [
    ({"height": 50}, "multiple"),
    ({"width": 4096 * 4}, "width"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"num_inference_steps": 2.5}, "num_inference_steps"),
    ({"guidance_scale": float("nan")}, "guidance_scale"),
    ({"guidance_scale": -1}, "guidance_scale"),
    ({"guidance_rescale": 2.0}, "guidance_rescale"),
    ({"output_type": "jpeg"}, "output_type"),
    ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
    ({"seed": -5}, "seed"),
    ({"seed": "x"}, "seed"),
    ({"latents": np.zeros((1, 4, 8, 8), np.float32)}, "latents"),
    ({"latents": [1, 2]}, "latents"),
    ({"latents": np.full((1, 4, 16, 16), np.nan, np.float32)}, "finite"),
    ({"negative_prompt": ["a", "b"]}, "negative_prompt"),
    ({"scheduler": "warp-drive"}, "unknown scheduler"),
    ({"callback": 3}, "callback"),
    ({"strength": 0.5}, "strength"),
])
def test_bad_arguments_raise_and_pipeline_survives(pipe, kwargs, match):
    with pytest.raises(fastgen.FastgenError, match=match):
        pipe("a cat", num_inference_steps=kwargs.pop("num_inference_steps", 2), **kwargs)
    out = pipe("a cat", num_inference_steps=2, seed=0, output_type="np")
    assert out.images.shape == (1, 64, 64, 3)


@pytest.mark.parametrize("prompt", [None, 3, [], ["ok", 4], {"a": 1}])
def test_bad_prompt_types(pipe, prompt):
    with pytest.raises(fastgen.InvalidArgumentError, match="prompt"):
        pipe(prompt, num_inference_steps=2)


def test_bad_images(pipe, tmp_path):
    with pytest.raises(fastgen.InvalidArgumentError, match="not found"):
        pipe.img2img("a cat", image=str(tmp_path / "none.png"), num_inference_steps=2)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(fastgen.InvalidArgumentError, match="not a readable image"):
        pipe.img2img("a cat", image=str(tmp_path / "junk.png"), num_inference_steps=2)
    with pytest.raises(fastgen.InvalidArgumentError, match="strength"):
        pipe.img2img("a cat", image=np.zeros((64, 64, 3), np.uint8), strength=1.5, num_inference_steps=2)
    with pytest.raises(fastgen.InvalidArgumentError):
        pipe.img2img("a cat", image=np.zeros((64, 64, 7), np.uint8), num_inference_steps=2)
    with pytest.raises(fastgen.InvalidArgumentError, match="mask"):
        pipe("a cat", mask_image=np.zeros((64, 64), np.uint8), num_inference_steps=2)


def test_session_errors_name_the_component(pipe):
    with pytest.raises(fastgen.ShapeError, match="unet"):
        pipe.session("unet").run({"sample": np.zeros((1, 4, 8), np.float32)})


def test_long_prompt_truncated_like_clip_tokenizer(eng):
    from transformers import CLIPTokenizer

    src = tiny_engine("sd")[0]
    ref = CLIPTokenizer.from_pretrained(os.path.join(src, "tokenizer"))
    prompt = " ".join(["red cat photo"] * 60)
    want = ref([prompt, "a cat"], padding="max_length", max_length=77, truncation=True).input_ids
    pipe = fastgen.Pipeline.load(eng)
    got = pipe.text.tokenizer("tokenizer")([prompt, "a cat"])
    np.testing.assert_array_equal(got, np.array(want))
    out = pipe(prompt, num_inference_steps=2, output_type="np")
    assert np.isfinite(out.images).all()


# ----------------------------------------------------------------------------------- embedding

def test_threads_share_one_pipeline(pipe):
    seeds = [1, 2, 3, 4]
    seq = {s: pipe("a red cat", num_inference_steps=3, seed=s, output_type="np").images for s in seeds}
    got = {}
    errors = []

    def work(s):
        try:
            got[s] = pipe("a red cat", num_inference_steps=3, seed=s, output_type="np").images
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in seeds]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    for s in seeds:
        np.testing.assert_array_equal(got[s], seq[s])


def test_second_load_shares_sessions(eng):
    a = fastgen.Pipeline.load(eng)
    a("a cat", num_inference_steps=1)
    b = fastgen.Pipeline.load(eng)
    assert b.session("unet") is a.session("unet")


def test_runtime_never_imports_torch(eng):
    code = f"""
import sys
import fastgen
pipe = fastgen.Pipeline.load({str(eng)!r})
pipe.img2img("a cat", image=__import__("numpy").zeros((64, 64, 3), "uint8"), num_inference_steps=2)
pipe("a cat", num_inference_steps=2)
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers", "fastgen_export"))
assert not bad, bad
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_cli_generate_and_info(eng, tmp_path):
    from PIL import Image

    out = tmp_path / "img.png"
    r = subprocess.run([sys.executable, "-m", "fastgen.cli", "generate", str(eng), "a red cat", "-o", str(out),
                        "--steps", "2", "--seed", "5", "--scheduler", "euler", "-n", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    im = Image.open(out)
    assert im.size == (64, 64)
    assert im.text["prompt"] == "a red cat" and im.text["fastgen:seed"] == "5"
    assert im.text["fastgen:scheduler"] == "euler"
    r = subprocess.run([sys.executable, "-m", "fastgen.cli", "generate", str(eng), "a cat", "--height", "50"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "multiple" in r.stderr
    r = subprocess.run([sys.executable, "-m", "fastgen.cli", "info", str(eng)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "unet" in r.stdout and "vae_scale_factor" in r.stdout


def test_info_prints_the_sizes_validate_accepts(capsys):
    """docs/api.md: sizes are multiples of size_multiple within [min_size, max_size] and max_pixels, and
    `fastgen info ENGINE` prints them (the demo's multiple is 16, not its VAE factor 4)."""
    from fastgen.cli import main

    assert main(["info", "demo"]) == 0
    assert "multiples of 16 in [16, 256] per side, at most 65536 pixels" in capsys.readouterr().out


def test_large_graphs_open_with_basic_optimisation(monkeypatch):
    """Graphs above LARGE_MODEL_BYTES (weights included) skip ORT's slow layout optimisation."""
    import onnxruntime as ort

    from fastgen.backends import onnxruntime as backend

    unet = os.path.join(tiny_engine("sd")[1], "unet", "model.onnx")
    assert backend.model_bytes(unet) >= os.path.getsize(unet)
    assert backend.default_optimization_level(unet) == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    monkeypatch.setattr(backend, "LARGE_MODEL_BYTES", backend.model_bytes(unet) - 1)
    assert backend.default_optimization_level(unet) == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    s = backend.OrtSession("unet", unet)  # still opens and runs at the basic level
    feeds = {i.name: np.zeros([d if isinstance(d, int) else 2 for d in i.shape],
                              np.float32 if "float" in i.type else np.int64) for i in s._sess.get_inputs()}
    assert all(np.isfinite(o).all() for o in s._sess.run(None, feeds))
