"""benchmarks/gpu_check.py on a machine without a GPU: every part runs, fails with its reason in the JSON
(no part may crash the script, so the first GPU run is not spent on a typo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("diffusers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_without_gpu_writes_reasons(tmp_path):
    out = tmp_path / "gpu.json"
    # the fastgen the tests import (installed in CI, PYTHONPATH in a checkout): not the source folder, which
    # has no compiled core in a clean checkout
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), "--out", str(out),
                        "--model", "tiny", "--steps", "2", "--repeat", "1", "--cache", str(tmp_path / "cache")],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads(out.read_text())
    assert rec["env"]["one_onnxruntime"] is True
    for part in ("diffusers_fp32", "diffusers_fp16", "ort_cuda", "tensorrt"):
        assert "error" in rec[part], part
    assert "onnxruntime-gpu" in rec["ort_cuda"]["error"]  # device="cuda" on the CPU wheel says what to install
