"""`fastgen eval` / fastgen.evaluate: the quality gate of every fast path (issue 16)."""

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastgen
from fastgen import evaluate as ev
from fastgen.cli import main

STEPS = ["--steps", "4"]
PROMPTS = ["a red circle on a blue background", "a white square on a black background",
           "a yellow triangle on a green background"]


# ---------------------------------------------------------------- metrics

def ssim_reference(x, y, data_range=1.0):
    """Wang et al. 2004 written out window by window in float64: an 11x11 Gaussian (sigma 1.5) at each
    position where it lies inside the image, per channel, averaged."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    r = np.arange(-5, 6)
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5 ** 2))
    g /= g.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for ch in range(x.shape[2]):
        for i in range(x.shape[0] - 10):
            for j in range(x.shape[1] - 10):
                a, b = x[i:i + 11, j:j + 11, ch], y[i:i + 11, j:j + 11, ch]
                mx, my = (g * a).sum(), (g * b).sum()
                vx, vy = (g * (a - mx) ** 2).sum(), (g * (b - my) ** 2).sum()
                cxy = (g * (a - mx) * (b - my)).sum()
                vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def image_pairs():
    rng = np.random.default_rng(0)
    a = rng.random((32, 40, 3))
    yield a, rng.random((32, 40, 3))  # unrelated noise: SSIM near 0
    yield a, np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)  # a noisy copy
    smooth = np.cumsum(np.cumsum(rng.random((24, 24)), 0), 1)
    smooth /= smooth.max()
    yield smooth, np.clip(smooth * 0.9 + 0.03, 0, 1)  # grey, brightness / contrast change
    yield a.astype(np.float32), (a * 0.5).astype(np.float32)


@pytest.mark.parametrize("k", range(4))
def test_ssim_matches_the_float64_reference(k):
    x, y = list(image_pairs())[k]
    assert ev.ssim(x, y) == pytest.approx(ssim_reference(x, y), abs=1e-10)


@pytest.mark.parametrize("k", range(4))
def test_ssim_matches_scikit_image(k):
    metrics = pytest.importorskip("skimage.metrics")
    x, y = (np.asarray(v, np.float64) for v in list(image_pairs())[k])
    ref = metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                        data_range=1, channel_axis=-1 if x.ndim == 3 else None)
    assert abs(ev.ssim(x, y) - ref) < 1e-6


def test_psnr_and_ssim_basics():
    rng = np.random.default_rng(1)
    a = rng.random((16, 16, 3))
    assert ev.psnr(a, a) == math.inf and ev.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    b = a + 0.01  # MSE 1e-4 -> 40 dB
    assert ev.psnr(a, b) == pytest.approx(40.0)
    assert ev.psnr(a * 255, b * 255, data_range=255) == pytest.approx(40.0)
    for bad in [(a, a[:8]), (a, np.full_like(a, np.nan)), (a[:8, :8], a[:8, :8]), (a, a.astype(str))]:
        with pytest.raises(fastgen.ShapeError):
            ev.ssim(*bad) if bad[0].shape[0] == 8 else ev.psnr(*bad)
    with pytest.raises(fastgen.InvalidArgumentError, match="data_range"):
        ev.psnr(a, b, data_range=0)


# ---------------------------------------------------------------- options, prompts

def test_parse_options_and_configs():
    assert ev.parse_options("backend=openvino, precision=bf16,threads=2") == {
        "backend": "openvino", "precision": "bf16", "threads": 2}
    assert ev.parse_options(["scheduler=euler", "guidance_scale=7.5,eta=none"]) == {
        "scheduler": "euler", "guidance_scale": 7.5, "eta": None}
    for bad, text in [("backend", "not KEY=VALUE"), ("=x", "not KEY=VALUE"), ("a=1,a=2", "given twice")]:
        with pytest.raises(fastgen.InvalidArgumentError, match=text):
            ev.parse_options(bad, "--b")
    cfg = ev.Config.from_options("demo", {"precision": "bf16"})  # the design doc's `--b precision=bf16`
    assert (cfg.backend, cfg.precision, cfg.options) == ("openvino", "bf16", {})
    assert ev.Config.from_options("demo", {}).describe() == "onnxruntime fp32"
    with pytest.raises(fastgen.InvalidArgumentError, match="'seed' cannot be set per configuration"):
        ev.Config.from_options("demo", {"seed": 1})


def test_prompt_files(tmp_path):
    f = tmp_path / "p.txt"
    f.write_bytes("\ufeffa cat\n\n  a dog  \r\nun chat é\n".encode())
    assert ev.load_prompts(f) == ["a cat", "a dog", "un chat é"]
    bad = {
        "latin1.txt": ("caf\xe9\n".encode("latin-1"), "not UTF-8 text: byte 3 \\(line 1\\)"),
        "empty.txt": (b"\n  \n", "holds no prompts"),
        "long.txt": (b"x\n" * 1001, "1001 prompts; the limit is 1000"),
        "nul.txt": (b"a\x00b\n", "NUL"),
    }
    for name, (data, text) in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(fastgen.InvalidArgumentError, match=text):
            ev.load_prompts(tmp_path / name)
    with pytest.raises(fastgen.InvalidArgumentError, match="does not exist"):
        ev.load_prompts(tmp_path / "missing.txt")


def test_default_prompts(tmp_path):
    p = ev.default_prompts("demo", 12)
    assert p == ev.default_prompts("demo", 12) and len(set(p)) == 12 and all(map(ev.is_demo_prompt, p))
    assert len(ev.default_prompts("demo", 100)) == 100  # past the grammar's 90: repeats
    other = non_demo_engine(tmp_path)
    assert ev.default_prompts(other, 3) == list(ev.GENERIC_PROMPTS[:3])
    with pytest.raises(fastgen.InvalidArgumentError, match="--prompts FILE"):
        ev.default_prompts(other, 9)


def non_demo_engine(tmp_path):
    """A copy of the demo engine whose manifest does not say it is the demo."""
    dst = tmp_path / "other"
    if not dst.exists():
        shutil.copytree(fastgen.Pipeline.load("demo").engine_dir, dst)
        m = json.loads((dst / "fastgen.json").read_text())
        m["source"]["id"] = "some/other-model"
        (dst / "fastgen.json").write_text(json.dumps(m))
    return str(dst)


def test_the_classifier_is_in_the_runtime_and_re_exported():
    from fastgen_export import demo_data, demo_eval

    from fastgen import demo_eval as runtime

    assert demo_eval.classify is runtime.classify and demo_eval.evaluate is runtime.evaluate
    assert demo_data.parse_prompt is runtime.parse_prompt and demo_data.all_prompts() == runtime.all_prompts()
    with pytest.raises(fastgen.InvalidArgumentError):
        runtime.parse_prompt("a photo of a cat")


def test_the_runtime_imports_no_exporter_or_torch(tmp_path):
    code = ("import sys; from fastgen.cli import main; "
            f"rc = main(['eval', '--num-prompts', '1', '--steps', '1', '--out', {str(tmp_path)!r}]); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('fastgen_export', 'torch', 'diffusers', "
            "'transformers', 'scipy', 'skimage')); print('LOADED', bad); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "LOADED []" in r.stdout, r.stdout


# ---------------------------------------------------------------- real comparisons on the demo engine

def test_identical_configurations():
    report = ev.compare("demo", "demo", PROMPTS, seeds=[0, 1], num_inference_steps=4)
    assert len(report.items) == 6
    assert all(it["psnr"] == math.inf and it["ssim"] == pytest.approx(1.0, abs=1e-12) for it in report.items)
    assert report.identical == 6 and report.psnr_mean == math.inf
    assert report.accuracy["a"] == report.accuracy["b"] and report.accuracy_drop == 0
    d = report.to_json()
    assert d["summary"]["psnr"] == {"mean": None, "min": None} and d["items"][0]["psnr"] is None
    json.dumps(d, allow_nan=False)
    assert [c["passed"] for c in report.check(min_psnr=1000, min_ssim=1.0, max_accuracy_drop=0)] == [True] * 3
    assert "identical" in report.format_table()
    t = report.timings()
    assert t["a"]["n"] == t["b"]["n"] == 5 and t["a"]["first_call_s"] > 0 and t["speedup_b_vs_a"] > 0


def test_the_table_names_each_sides_steps_when_they_differ():
    report = ev.compare("demo", ("demo", {"num_inference_steps": 2}), PROMPTS[:1], num_inference_steps=1)
    assert report.call["num_inference_steps"] == 1 and report.call["b"]["num_inference_steps"] == 2
    head = report.format_table().splitlines()[2]
    assert "A 1 steps, guidance 5" in head and "B 2 steps, guidance 5" in head, head


def test_onnxruntime_and_openvino_fp32_agree():
    pytest.importorskip("openvino")
    with fastgen.Pipeline.load("demo") as pipe:  # a loaded pipeline is a configuration too
        report = ev.compare(pipe, ("demo", {"backend": "openvino"}), PROMPTS, num_inference_steps=4)
        assert not pipe.closed
    assert report.psnr_min > 60, report.format_table()
    assert report.ssim_min > 0.9999
    assert report.b["backend"] == "openvino" and report.b["precision"] == "fp32"
    assert report.accuracy["a"] == report.accuracy["b"]


def test_cli_openvino_bf16_vs_fp32_writes_json_and_grid(tmp_path, capsys):
    pytest.importorskip("openvino")
    from PIL import Image

    out = tmp_path / "out"
    rc = main(["eval", "demo", "--b", "precision=bf16", "--num-prompts", "3", "--seeds", "0,5", *STEPS,
               "--out", str(out), "--min-psnr", "15", "--min-ssim", "0.5", "--max-accuracy-drop", "100"])
    text = capsys.readouterr().out
    assert rc == 0, text
    d = json.loads((out / "eval.json").read_text())
    assert d["configurations"]["a"]["backend"] == "onnxruntime" and d["configurations"]["b"]["precision"] == "bf16"
    assert d["call"]["num_inference_steps"] == 4 and d["call"]["seeds"] == [0, 5]
    assert len(d["items"]) == 6 and all(isinstance(it["psnr"], float) and it["psnr"] > 15 for it in d["items"])
    assert 0.5 < d["summary"]["ssim"]["min"] <= d["summary"]["ssim"]["mean"] < 1
    assert set(d["summary"]["accuracy"]) == {"a", "b", "drop_points"}
    assert d["summary"]["timings"]["a"]["n"] == 5 and d["summary"]["timings"]["speedup_b_vs_a"] > 0
    assert d["gate"]["passed"] and len(d["gate"]["checks"]) == 3
    assert {"fastgen", "numpy", "onnxruntime", "openvino"} <= set(d["versions"])
    grid = Image.open(out / "grid.png")
    # 6 rows of 64x64 images enlarged to 128, 3 columns, 2-pixel gaps
    assert grid.size == (3 * 128 + 2 * 2, 6 * 128 + 5 * 2) == tuple(d["grid"]["size"])
    assert np.asarray(grid)[:128, :128].std() > 0  # an image, not the background
    assert "PSNR" in text and "SSIM" in text and "accuracy" in text and "gate      psnr_mean" in text


def test_cli_gate_exit_codes(tmp_path, capsys):
    pytest.importorskip("openvino")
    args = ["eval", "--b", "backend=openvino,precision=bf16", "--num-prompts", "2", *STEPS, "--out", str(tmp_path)]
    assert main(args + ["--min-psnr", "200"]) == 1  # bf16 is close to fp32, but not 200 dB close
    captured = capsys.readouterr()
    assert "psnr_mean" in captured.err and "FAIL" in captured.out
    assert json.loads((tmp_path / "eval.json").read_text())["gate"]["passed"] is False
    assert main(args + ["--min-psnr", "10", "--min-ssim", "0.9"]) == 0
    assert main(args + ["--min-ssim", "1"]) == 1
    # identical configurations pass any PSNR gate
    assert main(["eval", "--num-prompts", "1", "--steps", "2", "--out", str(tmp_path), "--min-psnr", "1000"]) == 0


def test_cli_two_engines_and_a_prompt_file(tmp_path, capsys):
    other = non_demo_engine(tmp_path)
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS[:2]) + "\n")
    rc = main(["eval", "demo", other, "--prompts", str(prompts), "--steps", "3", "--out", str(tmp_path / "o"),
               "--b", "scheduler=euler"])
    assert rc == 0
    d = json.loads((tmp_path / "o" / "eval.json").read_text())
    assert d["configurations"]["b"]["engine"] == other and d["configurations"]["b"]["options"] == {"scheduler": "euler"}
    assert [it["prompt"] for it in d["items"]] == PROMPTS[:2]
    assert d["summary"]["accuracy"] is not None  # grammar prompts are scored on any engine
    assert all(it["psnr"] is not None for it in d["items"])  # a different scheduler: different images
    # generic prompts on a non-demo engine: no accuracy, and the accuracy gate is refused up front
    assert main(["eval", other, "--num-prompts", "2", "--out", str(tmp_path / "x"), "--max-accuracy-drop", "1"]) == 2
    assert "demo grammar" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, text", [
    (["--a", "precison=fp32"], "unknown option 'precison' \\(did you mean 'precision'\\?\\); valid: backend, precision"),
    (["--b", "backend=openvino,num_inference_step=3"], "did you mean 'num_inference_steps'"),
    (["--b", "openvino"], "--b: 'openvino' is not KEY=VALUE"),
    (["--b", "backend=onnxruntime,precision=bf16"], "configuration B: precision for backend 'onnxruntime'"),
    (["--b", "backend=cuda"], "configuration B: backend must be one of"),
    (["--b", "threads=0"], "configuration B: threads must be in"),
    (["--b", "seed=3"], "'seed' cannot be set per configuration"),
    (["--a", "num_inference_steps=0"], "configuration A: num_inference_steps must be in"),
    (["--size", "65x64"], "multiple of 16"),
    (["--size", "4096x4096"], "configuration A: .*4096"),
    (["--size", "big"], "--size must be WIDTHxHEIGHT"),
    (["--seeds", "0,x"], "--seeds must be comma-separated ints"),
    (["--seeds", "1,1"], "duplicates"),
    (["--num-prompts", "0"], "--num-prompts must be in \\[1, 1000\\]"),
    (["--min-ssim", "2"], "--min-ssim must be a finite number in \\[-1.0, 1.0\\]"),
    (["--min-psnr", "nan"], "--min-psnr must be a finite number"),
    (["--max-accuracy-drop", "-1"], "--max-accuracy-drop must be"),
    (["--prompts", "/nonexistent/p.txt"], "does not exist"),
    (["demo", "demo", "demo"], "expected ENGINE \\[ENGINE_B\\]"),
    (["/nonexistent/engine"], "/nonexistent/engine"),
])
def test_cli_bad_input_exits_2_before_any_work(tmp_path, capsys, args, text):
    out = tmp_path / "out"
    assert main(["eval", *args, *STEPS, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastgen eval: error: ")
    assert __import__("re").search(text, err), err
    assert not out.exists()


def test_cli_bad_prompt_files_exit_2(tmp_path, capsys):
    for name, data, text in [("bin.txt", b"\xff\xfe\x00", "not UTF-8"), ("e.txt", b"", "no prompts"),
                             ("big.txt", b"a\n" * 1001, "limit is 1000")]:
        (tmp_path / name).write_bytes(data)
        assert main(["eval", "--prompts", str(tmp_path / name), "--out", str(tmp_path / "o")]) == 2
        assert text in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse: --prompts and --num-prompts exclude each other
        main(["eval", "--prompts", str(tmp_path / "e.txt"), "--num-prompts", "2"])
    assert e.value.code == 2


def test_api_errors():
    with pytest.raises(fastgen.InvalidArgumentError, match="does not take 'seed'"):
        ev.compare("demo", "demo", PROMPTS, seed=3)
    with pytest.raises(fastgen.InvalidArgumentError, match="configuration B must be"):
        ev.compare("demo", ("demo",), PROMPTS)
    with pytest.raises(fastgen.InvalidArgumentError, match="prompts must be a non-empty list"):
        ev.compare("demo", "demo", [])
    with pytest.raises(fastgen.InvalidArgumentError, match="prompts\\[1\\]"):
        ev.compare("demo", "demo", ["a", 3])
    with pytest.raises(fastgen.InvalidArgumentError, match="compare\\(\\): unknown option 'guidance'"):
        ev.compare("demo", "demo", PROMPTS, guidance=3.0)
    with pytest.raises(fastgen.InvalidArgumentError, match="cannot change an already loaded pipeline"):
        with fastgen.Pipeline.load("demo") as pipe:
            ev.compare(pipe, (pipe, {"precision": "bf16"}), PROMPTS)
    with pytest.raises(fastgen.InvalidArgumentError, match="needs prompts of the demo grammar"):
        ev.compare("demo", "demo", ["a photo of a cat"], num_inference_steps=1).check(max_accuracy_drop=1)
