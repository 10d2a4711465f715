"""Smoke test of benchmarks/run_all.py: --quick on the tiny model only, one repeat, 2 steps.

Checks that every benchmark writes its JSON with the expected schema and that the figures exist. No
timing thresholds: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_ALL = os.path.join(ROOT, "benchmarks", "run_all.py")
STAGES = ("text_encode", "unet", "vae_decode", "loop_overhead", "total")


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0


def _benchmarks() -> tuple:
    saved = list(sys.path)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        from run_all import BENCHMARKS
    finally:
        sys.path[:] = saved  # run_all inserts its folder too
    return BENCHMARKS


@pytest.mark.slow
def test_run_all_quick_tiny(tmp_path):
    out = tmp_path / "out"
    # video: test_run_all_video_reduced; cpu_backends: test_run_all_cpu_backends_reduced
    only = ",".join(b for b in _benchmarks() if b not in ("video", "cpu_backends"))
    cmd = [sys.executable, RUN_ALL, "--quick", "--out", str(out), "--cache", str(tmp_path / "cache"),
           "--models", "tiny", "--captioners", "vit-gpt2-tiny", "--repeat", "1", "--steps", "2", "--only", only]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]

    def load(name):
        with open(out / f"{name}.json") as f:
            d = json.load(f)
        assert d["benchmark"] == name
        assert "date" in d["environment"] and "numpy" in d["environment"]
        assert "error" not in d, d.get("error")
        return d

    gpu = load("gpu")
    assert gpu["device"] == "cpu" and isinstance(gpu["cuda_available"], bool)
    assert gpu["status"].startswith("not run")

    lo = load("loop_overhead")
    assert lo["rows"] and all(_num(r["fastgen_us_per_step"]) and _num(r["speedup"]) for r in lo["rows"])

    (e2e,) = load("e2e")["models"]
    assert e2e["model"] == "tiny" and e2e["steps"] == 2
    for fw in ("fastgen", "diffusers"):
        for agg in ("min", "median"):
            assert all(_num(e2e[fw][agg][k]) for k in STAGES), (fw, agg)
    assert _num(e2e["speedup_total"])
    assert set(e2e["speedup_by_stage"]) == {"text_encode", "unet", "vae_decode", "loop_overhead"}

    cold = load("cold_start")
    for fw in ("fastgen", "diffusers"):
        assert _num(cold["import"]["rows"][fw]["import_s"]["min"])
    assert cold["import"]["rows"]["fastgen"]["torch_loaded"] is False
    (c,) = cold["models"]
    for fw in ("fastgen", "diffusers"):
        assert all(_num(c["rows"][fw][k]["min"]) for k in ("spawn_to_end_s", "import_s", "load_s", "first_call_s"))
    assert c["rows"]["fastgen"]["torch_loaded"] is False and c["rows"]["diffusers"]["torch_loaded"] is True

    (m,) = load("memory")["models"]
    assert all(m["rows"][fw]["peak_rss_mb"]["min"] > 0 for fw in ("fastgen", "diffusers"))
    assert _num(m["ratio_peak_rss"])

    (tp,) = load("throughput")["models"]
    assert {(r["framework"], r["callers"]) for r in tp["rows"]} == {(f, c) for f in ("fastgen", "diffusers")
                                                                     for c in (1, 2, 4)}
    assert all(r["images_per_s"] > 0 for r in tp["rows"])

    (bs,) = load("batch_scaling")["models"]
    assert {(r["framework"], r["num_images_per_prompt"]) for r in bs["rows"]} == {
        (f, n) for f in ("fastgen", "diffusers") for n in (1, 2, 4)}
    assert all(_num(r["s_per_image"]) for r in bs["rows"])

    (cap,) = load("captioning")["models"]
    assert cap["model"] == "vit-gpt2-tiny"
    assert [r["num_beams"] for r in cap["rows"]] == [1, 3]
    for r in cap["rows"]:
        assert _num(r["fastgen_captions_per_s"]) and _num(r["transformers_ms_per_token"])
        assert r["same_token_ids"] is True

    for png in ("loop_overhead", "e2e", "throughput", "batch_scaling", "cold_start_memory", "captioning"):
        assert (out / f"{png}.png").stat().st_size > 1000, png


def test_run_all_cuda_without_gpu_says_not_run(tmp_path):
    """--device cuda on a machine without CUDA writes 'not run' records, never numbers."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        from runners import cuda_available
    finally:
        sys.path.pop(0)
    if cuda_available():
        pytest.skip("this machine has a CUDA device")
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, RUN_ALL, "--out", str(out), "--device", "cuda", "--only", "e2e,captioning"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    for name in ("gpu", "e2e", "captioning"):
        with open(out / f"{name}.json") as f:
            d = json.load(f)
        assert d["status"] == "not run: no CUDA device"
        assert "models" not in d


@pytest.mark.slow
def test_run_all_video_reduced(tmp_path):
    """The video benchmark in a reduced mode (32 px, 1 step, one call per process, 8 and 20 frames on the
    16-frame motion module): the JSON says what each side ran, both sides produced numbers from fresh
    processes, and within the motion length the frames agree (the same computation)."""
    out = tmp_path / "out"
    cmd = [sys.executable, RUN_ALL, "--quick", "--only", "video", "--out", str(out), "--cache", str(tmp_path / "cache"),
           "--steps", "1", "--repeat", "1", "--video-frames", "8,20", "--video-size", "32"]
    # one torch thread: on a busy machine torch's 2-thread pool waits on descheduled workers (calls 10-25x
    # slower); the numbers are not checked here, only that both sides produced them
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    with open(out / "video.json") as f:
        d = json.load(f)
    assert d["benchmark"] == "video" and "error" not in d, d.get("error")
    (v,) = d["models"]
    assert "error" not in v, v.get("error")
    assert v["model"] == "animatediff-tiny" and v["motion_max_seq_length"] == 16
    assert (v["steps"], v["height"], v["width"], v["context_stride"]) == (1, 32, 32, 4)
    assert {(r["framework"], r["num_frames"]) for r in v["rows"]} == {(f, n) for f in ("fastgen", "diffusers")
                                                                       for n in (8, 20)}
    for r in v["rows"]:
        assert all(_num(r[k]) and r[k] > 0 for k in ("s_per_frame", "s_per_video", "first_call_s", "peak_rss_mb",
                                                    "peak_rss_after_load_mb", "load_s")), r
        assert r["processes"] == 1 and len(r["call_s"]) == 1 and len(r["call_s"][0]) == 1
        assert r["peak_rss_mb"] >= r["peak_rss_after_load_mb"]
        assert r["torch_loaded"] is (r["framework"] == "diffusers")
    ran = {(r["framework"], r["num_frames"]): r["ran"] for r in v["rows"]}
    assert ran[("fastgen", 8)]["windows"] == [[0, 8]] and ran[("diffusers", 8)]["free_noise"] is None
    assert ran[("fastgen", 20)]["windows"] == [[0, 16], [4, 20]]
    fn = ran[("diffusers", 20)]["free_noise"]
    assert (fn["context_length"], fn["context_stride"], fn["weighting_scheme"]) == (16, 4, "pyramid")
    assert fn["windows"] == [[0, 16], [4, 20]]
    b8, b20 = v["by_frames"]["8"], v["by_frames"]["20"]
    assert b8["long_video"] is False and b20["long_video"] is True and b20["context_length"] == 16
    assert b8["max_abs_diff"] < 2e-3  # one window: fastgen's frames are diffusers'
    assert b8["frames_shape"] == [1, 8, 32, 32, 3] and b20["frames_shape"] == [1, 20, 32, 32, 3]
    assert all(_num(b[k]) for b in (b8, b20) for k in ("speedup_s_per_frame", "ratio_peak_rss", "max_abs_diff"))
    assert (out / "video.png").stat().st_size > 1000


@pytest.mark.slow
def test_run_all_cpu_backends_reduced(tmp_path):
    """The CPU backends benchmark in a reduced mode: the tiny model at 64 px, 2 steps, one timed call per fresh
    process (2 rounds), 4 demo prompts. Every configuration either has a row or says why it did not run
    (optimum-intel when its venv cannot be made), fastgen's int8 variant is made and runs, fp32 paths of
    different runtimes give the same image (the same weights, latents and DDIM), and the targets are computed."""
    pytest.importorskip("openvino")
    out = tmp_path / "out"
    peer = os.path.join(os.path.expanduser("~"), ".cache", "fastgen-bench", "peer-venv")  # made once, kept
    cmd = [sys.executable, RUN_ALL, "--quick", "--only", "cpu_backends", "--out", str(out),
           "--cache", str(tmp_path / "cache"), "--cpu-model", "tiny", "--cpu-size", "64", "--steps", "2",
           "--repeat", "1", "--cpu-demo-prompts", "4", "--peer-venv", peer]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stderr[-3000:]
    with open(out / "cpu_backends.json") as f:
        d = json.load(f)
    assert d["benchmark"] == "cpu_backends" and "error" not in d, d.get("error")
    assert (d["model"], d["image_size"], d["steps"], d["guidance_scale"]) == ("tiny", 64, 2, 7.5)
    rows = {r["config"]: r for r in d["rows"]}
    assert set(rows) | set(d["skipped"]) == set(d["configs"]) and len(d["configs"]) == 9
    for name in ("diffusers-fp32", "diffusers-bf16", "fastgen-ort-fp32", "fastgen-ov-fp32", "fastgen-ov-bf16"):
        assert name in rows, d["skipped"].get(name)
    for name, why in d["skipped"].items():
        assert isinstance(why, str) and why, name
        if name.startswith("optimum"):
            assert why.startswith("not run"), why
    # this build has `fastgen optimize --int8`: the variant is made (calibrated as the optimum peer) and runs
    assert "fastgen-ov-int8" in rows, d["skipped"].get("fastgen-ov-int8")
    assert d["fastgen_int8"]["available"] is True
    assert d["fastgen_int8"]["calibration"] == {"prompts": ["a photo of a dog on the grass", "a red car on the street"],
                                                "steps": 2, "size": 64}
    assert rows["fastgen-ov-int8"]["ran"]["sessions"]["unet"]["precision"] == "int8"
    assert d["accuracy"]["fastgen-ov-int8"]["reference"] == "fastgen-ort-fp32"
    assert _num(d["targets"]["unet_call_bf16_vs_ort_fp32"]["value"])
    for r in rows.values():
        assert all(_num(r["min"][k]) and r["min"][k] > 0 for k in ("text_encode", "unet", "vae_decode", "total")), r
        assert r["unet_calls"] == 2 and "warning" not in r, r
        assert r["peak_rss_mb"] >= r["peak_rss_after_load_mb"] > 0
        assert r["torch_loaded"] is (r["framework"] != "fastgen")
        assert r["processes"] == 2 and len(r["totals"]) == 2 and len(r["load_avg_1m"][0]) == 2
    assert rows["fastgen-ov-bf16"]["ran"]["sessions"]["unet"]["precision"] == "bf16"
    # the same fp32 computation on different runtimes: the same image
    for c in d["cross_checks"]:
        assert c["max_abs"] < 2e-3, c
    assert {(c["a"], c["b"]) for c in d["cross_checks"]} >= {("fastgen-ort-fp32", "diffusers-fp32"),
                                                               ("fastgen-ov-fp32", "fastgen-ort-fp32")}
    assert d["accuracy"]["fastgen-ov-fp32"]["max_abs"] < 2e-3
    assert d["accuracy"]["fastgen-ov-bf16"]["reference"] == "fastgen-ort-fp32"
    assert d["accuracy"]["diffusers-bf16"]["psnr_db"] > 10
    t = d["targets"]
    assert t["ov_fp32_vs_ort_max_abs"]["met"] is True
    for k in ("e2e_best_fastgen_vs_diffusers_fp32", "unet_call_bf16_vs_ort_fp32", "second_cold_start_ov_vs_ort"):
        assert _num(t[k]["value"]) and isinstance(t[k]["met"], bool), (k, t[k])
    cold = d["cold_start"]
    assert cold["ov_sessions"]["unet"]["loaded_from_cache"] == 1  # the second start used the compile cache
    # quick: 2 rounds of processes + 1 cold-start pair; the first OpenVINO process compiled, the others did not
    assert len(cold["ort_values"]) == 3 and len(cold["ov_values"]) == 2 and cold["first_image_steps"] == 1
    if "optimum-fp32" in rows:
        assert d["optimum"]["versions"]["optimum-intel"] == "2.2.0"
        assert rows["optimum-fp32"]["ran"]["inference_precision_hint"]["unet"] != rows["optimum-bf16"]["ran"][
            "inference_precision_hint"]["unet"]
    demo = d["demo"]
    assert demo["prompts"] == 4 and [(r["backend"], r["precision"]) for r in demo["rows"]] == [
        ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]
    assert all(0 <= r["all"] <= 1 for r in demo["rows"])
    assert (out / "cpu_backends.png").stat().st_size > 1000
