"""Export the trained demo pipeline into the package: ``python -m fastgen_export.ship_demo SRC``.

SRC is the diffusers folder ``python -m fastgen_export.train_demo --out SRC`` wrote. The engine goes
to python/fastgen/models/demo (shipped in the wheel), with the sampling defaults the demo was
evaluated at recorded in its manifest (``fastgen generate`` and ``Pipeline.__call__`` use them).
"""

from __future__ import annotations

import argparse
import json
import os

from .api import export

DEMO_DEFAULTS = {"default_steps": 25, "default_guidance_scale": 5.0}
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "python", "fastgen", "models", "demo")


def ship(src: str, out: str = DEFAULT_OUT) -> str:
    path = export(src, out, overwrite=True)
    mpath = os.path.join(path, "fastgen.json")
    with open(mpath, encoding="utf-8") as f:
        manifest = json.load(f)
    manifest["config"].update(DEMO_DEFAULTS)
    manifest["source"]["id"] = "fastgen demo (python -m fastgen_export.train_demo)"
    with open(mpath, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastgen_export.ship_demo", description=__doc__.splitlines()[0])
    ap.add_argument("src", help="trained diffusers folder (train_demo --out)")
    ap.add_argument("--out", default=DEFAULT_OUT)
    print(ship(ap.parse_args(argv).src, ap.parse_args(argv).out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
