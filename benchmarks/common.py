"""Shared helpers of the benchmark scripts: timing, environment record, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone


def environment() -> dict:
    import numpy

    env = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "numpy": numpy.__version__,
    }
    for mod in ("fastgen", "onnxruntime", "torch", "diffusers", "transformers"):
        m = sys.modules.get(mod)
        if m is not None:
            env[mod] = getattr(m, "__version__", "?")
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timeit(fn, *, repeat: int = 5, number: int = 1, warmup: int = 1) -> dict:
    """Run fn `warmup` times, then `repeat` rounds of `number` calls; seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return {"min": min(times), "median": statistics.median(times), "max": max(times), "repeat": repeat,
            "number": number}


def write_json(out_dir: str, name: str, payload: dict) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    payload = {"benchmark": name, "environment": environment(), **payload}
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    return path
