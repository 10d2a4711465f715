"""`fastgen info ENGINE_DIR`: the engine's manifest, summarised (or raw with --json)."""

from __future__ import annotations

import argparse
import json
import os


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("engine_dir", nargs="?", default="demo")
    p.add_argument("--json", action="store_true", help="print fastgen.json as is (after validating it)")


def run(args: argparse.Namespace) -> int:
    from ..manifest import MANIFEST_NAME, load_manifest
    from ..pipelines.base import resolve_engine_dir

    m = load_manifest(resolve_engine_dir(args.engine_dir))  # validates the file first
    if args.json:  # the file's own text, not the normalised values (1 stays 1, not 1.0)
        with open(os.path.join(m.root, MANIFEST_NAME), encoding="utf-8") as f:
            print(json.dumps(json.load(f), indent=2))
        return 0
    src = m.data.get("source", {})
    exp = m.data.get("exporter", {})
    print(f"engine     {m.root}")
    print(f"kind       {m.kind}" + (f" ({m.family})" if m.family else ""))
    print(f"source     {src.get('id', '?')} [{src.get('class', '?')}]")
    print(f"exporter   {exp.get('name', '?')} {exp.get('version', '?')}, opset {exp.get('opset', '?')}, "
          f"dtype {exp.get('dtype', '?')}")
    if m.scheduler_config:
        print(f"scheduler  {m.scheduler_config.get('_class_name')}")
    print("components")
    for name, c in m.components.items():
        size = os.path.getsize(c.path)
        data = c.path + ".data"
        if os.path.exists(data):
            size += os.path.getsize(data)
        par = c.raw.get("parity") or {}
        par_s = f"parity max_abs {par['max_abs']:.2e}" if isinstance(par.get("max_abs"), (int, float)) else ""
        ins = ", ".join(f"{k}{v.get('shape', '')}" for k, v in c.inputs.items())
        print(f"  {name:16s} {size / 1e6:8.2f} MB  {c.dtype:5s} {par_s}")
        print(f"  {'':16s} in: {ins}")
    for k in ("latent_channels", "vae_scale_factor", "scaling_factor", "shift_factor", "default_height",
              "default_width", "max_size"):
        if k in m.config:
            print(f"{k:18s} {m.config[k]}")
    if "vae_scale_factor" in m.config and "latent_channels" in m.config:  # the sizes `validate` accepts
        from ..pipelines.stages import ImageGeometry

        g = ImageGeometry(m.config)
        print(f"{'sizes':18s} multiples of {g.multiple} in [{g.min_size}, {g.max_size}] per side, "
              f"at most {g.max_pixels} pixels")
    for name, v in (m.data.get("variants") or {}).items():
        comps = ", ".join(v.get("components") or {}) if isinstance(v, dict) else "?"
        print(f"variant    {name}: {v.get('backend', '?')} {v.get('method', '?')} ({comps}); "
              f"load with precision={name!r}" if isinstance(v, dict) else f"variant    {name}: malformed")
    if m.tensorrt:
        print(f"tensorrt   {m.tensorrt.get('version')} plans: {', '.join(m.tensorrt.get('plans', {}))}")
    return 0
