"""The demo model shipped in the package: real images offline, the colors and shapes asked for."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastgen

N_PROMPTS = 60


@pytest.fixture(scope="module")
def demo():
    return fastgen.demo()


def random_prompts(n, seed):
    from fastgen_export.demo_data import all_prompts

    prompts = all_prompts()
    rng = np.random.default_rng(seed)
    return [prompts[i] for i in rng.choice(len(prompts), size=n, replace=False)]


def test_demo_is_packaged_and_default(demo):
    assert demo.manifest.kind == "text2img"
    assert os.path.isdir(os.path.join(os.path.dirname(fastgen.__file__), "models", "demo"))
    assert fastgen.Pipeline.load("demo").engine_dir == demo.engine_dir


def test_demo_quality_colors_and_shapes(demo):
    """Pixel checks on fastgen's own outputs for random prompts of the grammar (seeded, so stable)."""
    from fastgen_export.demo_eval import evaluate

    prompts = random_prompts(N_PROMPTS, seed=2026)
    out = demo(prompts, seed=7, output_type="np")
    assert out.images.shape == (N_PROMPTS, 64, 64, 3)
    scores = evaluate(out.images, prompts)
    print("demo accuracy:", {k: v for k, v in scores.items() if k != "predictions"})
    # the README's figures (seeded run: the same on every machine); a change here must update the README
    assert scores["background"] == 1.0
    assert scores["color"] == 1.0
    assert scores["shape"] >= 59 / 60  # 98%; chance is 1/3


def test_cli_default_engine_is_the_demo(tmp_path):
    from PIL import Image

    from fastgen_export.demo_eval import classify

    out = tmp_path / "out.png"
    r = subprocess.run([sys.executable, "-m", "fastgen.cli", "generate", "a red circle on a blue background",
                        "-o", str(out), "--seed", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    im = Image.open(out)
    assert im.size == (64, 64)
    pred = classify(np.asarray(im))
    assert (pred.color, pred.background) == ("red", "blue")
