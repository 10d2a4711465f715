"""The demo model's data generator and its pixel-rule evaluation (numpy only, fast)."""

import numpy as np
import pytest

from fastgen_export import demo_data, demo_eval
from fastgen_export.demo_data import COLORS, SHAPES, ShapeSpec


def test_batches_are_deterministic_per_seed():
    a, captions_a, _ = demo_data.make_batch(3, 16)
    b, captions_b, _ = demo_data.make_batch(3, 16)
    c, captions_c, _ = demo_data.make_batch(4, 16)
    assert a.dtype == np.uint8 and a.shape == (16, 64, 64, 3)
    np.testing.assert_array_equal(a, b)
    assert captions_a == captions_b
    assert not np.array_equal(a, c) or captions_a != captions_c
    stream_a, _, _ = demo_data.make_batch((0, 7), 4, 32)
    stream_b, _, _ = demo_data.make_batch((0, 7), 4, 32)
    np.testing.assert_array_equal(stream_a, stream_b)
    assert stream_a.shape == (4, 32, 32, 3)


def test_captions_follow_the_grammar():
    _, captions, specs = demo_data.make_batch(0, 200)
    for caption, spec in zip(captions, specs):
        assert caption == f"a {spec.color} {spec.shape} on a {spec.background} background"
        assert spec.color != spec.background
    assert {s.shape for s in specs} == set(SHAPES)
    assert {s.color for s in specs} == set(COLORS) == {s.background for s in specs}
    prompts = demo_data.all_prompts()
    assert len(prompts) == len(set(prompts)) == 3 * 6 * 5
    assert set(captions) <= set(prompts)
    words = set(demo_data.grammar_words())
    assert all(set(p.split()) <= words for p in prompts)


def test_parse_prompt_round_trip():
    for prompt in demo_data.all_prompts():
        assert demo_data.make_caption(*demo_data.parse_prompt(prompt)) == prompt
    assert demo_data.parse_prompt("  A Red Circle on a Blue background ") == ("circle", "red", "blue")
    for bad in ["a photo of a cat", "a red circle on a red background", "a pink circle on a blue background",
                "a red hexagon on a blue background", ""]:
        with pytest.raises(ValueError):
            demo_data.parse_prompt(bad)


@pytest.mark.parametrize("shape", SHAPES)
def test_pixels_have_the_pure_colors(shape):
    spec = ShapeSpec(shape, "yellow", "blue", cx=0.5, cy=0.5, size=0.5)
    img = demo_data.render(spec, 64)
    assert tuple(img[0, 0]) == tuple(img[-1, -1]) == COLORS["blue"]
    assert tuple(img[36, 32]) == COLORS["yellow"]  # inside every shape (the triangle is widest low)
    values = {tuple(p) for p in img.reshape(-1, 3)}
    assert COLORS["yellow"] in values and COLORS["blue"] in values
    # Anti-aliased edge pixels are blends of exactly the two colors: red == green, blue == 255 - red.
    assert all(r == g and b == 255 - r for r, g, b in values)


def test_shape_fill_ratios():
    ratios = {}
    for shape in SHAPES:
        mask = demo_data.shape_mask(shape, 64, 64, (12, 12, 52, 52))
        ratios[shape] = mask.sum() / 40 ** 2
    assert ratios["square"] == pytest.approx(1.0)
    assert ratios["circle"] == pytest.approx(np.pi / 4, abs=0.01)
    assert ratios["triangle"] == pytest.approx(0.5, abs=0.01)


def test_evaluation_classifies_clean_images():
    images, captions, specs = demo_data.make_batch(11, 120)
    result = demo_eval.evaluate(images.astype(np.float32) / 255.0, captions)
    assert result["n"] == 120
    assert result["background"] == result["color"] == result["shape"] == result["all"] == 1.0
    for pred, spec in zip(result["predictions"], specs):
        assert (pred.shape, pred.color, pred.background) == (spec.shape, spec.color, spec.background)


def test_evaluation_accepts_uint8_and_single_images_and_scores_mismatches():
    spec = ShapeSpec("circle", "red", "white")
    img = demo_data.render(spec)
    assert demo_eval.classify(img) == demo_eval.Prediction("circle", "red", "white")
    result = demo_eval.evaluate(img[None], ["a green square on a white background"])
    assert (result["background"], result["color"], result["shape"], result["all"]) == (1.0, 0.0, 0.0, 0.0)
    blank = np.full((64, 64, 3), 0.02, dtype=np.float32)  # nearly black, no shape at all
    assert demo_eval.classify(blank) == demo_eval.Prediction(None, None, "black")
    with pytest.raises(ValueError):
        demo_eval.evaluate(img[None], [])
    with pytest.raises(ValueError):
        demo_eval.as_float_nhwc(np.zeros((2, 3, 64, 64)))


def test_evaluation_tolerates_noise():
    images, captions, _ = demo_data.make_batch(5, 60)
    noisy = images / 255.0 + np.random.default_rng(0).normal(0, 0.08, images.shape)
    result = demo_eval.evaluate(noisy, captions)
    assert min(result["background"], result["color"], result["shape"]) >= 0.95
