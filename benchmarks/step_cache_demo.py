"""The shipped demo model's accuracy with DeepCache (interval 3) against cache off (issue 17).

The demo engine ships without DeepCache graphs and its diffusers folder is not part of the repository, so
this script adds branch 0's graphs to a copy of the engine by ONNX graph surgery on its UNet: the deep
feature of branch 0 is the hidden state the last up block's last resnet concatenates with ``conv_in``'s
output (the first input of that block's last Concat); the full graph gets it as an extra output and the
shallow graph is the part of the UNet computing ``noise_pred`` from ``sample``, ``timestep`` and that
feature (``onnx.utils.Extractor``): conv_in, the time embedding, that resnet (and its attention, if
any), the output layers: exactly what DeepCacheSDHelper recomputes at a cached step of branch 0. ``--check``
first verifies the surgery on the tiny SD engine against the exporter's own ``--cache deepcache`` graphs.

    PYTHONPATH=python:export python benchmarks/step_cache_demo.py --out benchmarks/results [--num-prompts 60]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import write_json  # noqa: E402
from models import log  # noqa: E402


def last_up_feature(model) -> str:
    """The tensor branch 0 caches: the first input of the last up block's last Concat."""
    pat = re.compile(r"^(/model)?/up_blocks\.(\d+)/Concat(_(\d+))?$")
    best = None
    for n in model.graph.node:
        m = pat.match(n.name)
        if m and n.op_type == "Concat":
            key = (int(m.group(2)), int(m.group(4) or 0))
            if best is None or key > best[0]:
                best = (key, n.input[0])
    if best is None:
        raise SystemExit("no up-block Concat found: not a torchscript-exported diffusers UNet")
    return best[1]


def add_deepcache(engine: str, out: str) -> str:
    """Copy ``engine`` to ``out`` with branch 0's DeepCache graphs added (see the module docstring)."""
    import onnx
    from onnx import helper
    from onnx.utils import Extractor

    shutil.copytree(engine, out)
    path = os.path.join(out, "unet", "model.onnx")
    model = onnx.load(path)
    feature = last_up_feature(model)
    inferred = onnx.shape_inference.infer_shapes(model)
    info = next((v for v in inferred.graph.value_info if v.name == feature), None)
    shallow = Extractor(inferred).extract_model(["sample", "timestep", feature], ["noise_pred"])
    # rename the cut tensor to the engine format's input name
    for n in shallow.graph.node:
        n.input[:] = ["deep_feature" if i == feature else i for i in n.input]
    for i in shallow.graph.input:
        if i.name == feature:
            i.name = "deep_feature"
    del shallow.graph.value_info[:]
    os.makedirs(os.path.join(out, "unet_deepcache_b0"))
    onnx.save(shallow, os.path.join(out, "unet_deepcache_b0", "model.onnx"))
    model.graph.output.append(info if info is not None else helper.make_tensor_value_info(feature, 1, None))
    model.graph.output[-1].name = feature
    onnx.save(model, path)
    with open(os.path.join(out, "fastgen.json")) as f:
        man = json.load(f)
    unet = man["components"]["unet"]
    unet["outputs"]["deep_feature_b0"] = {"dtype": "float32", "shape": ["batch", "c", "h", "w"]}
    # the graph's output keeps its internal name; the manifest's feature name points at it
    man["components"]["unet_deepcache_b0"] = {
        "path": "unet_deepcache_b0/model.onnx", "dtype": unet["dtype"],
        "inputs": {k: v for k, v in unet["inputs"].items() if k in {i.name for i in shallow.graph.input}}
        | {"deep_feature": {"dtype": "float32", "shape": ["batch", "c", "h", "w"]}},
        "outputs": {"noise_pred": unet["outputs"]["noise_pred"]},
        "parity": {"passed": None, "skipped": True, "reason": "made by benchmarks/step_cache_demo.py graph surgery"}}
    del unet["outputs"]["deep_feature_b0"]
    man["config"]["step_cache"] = {"deepcache": {"branches": {"0": {"component": "unet_deepcache_b0",
                                                                    "feature": feature}}}}
    with open(os.path.join(out, "fastgen.json"), "w") as f:
        json.dump(man, f, indent=2)
    return out


def check_surgery(work: str) -> float:
    """Max |diff| between the surgery's DeepCache and the exporter's on the tiny SD model (CFG, interval 3)."""
    import fastgen
    from fastgen_export.api import export
    from fastgen_export.testing import build_tiny_pipeline

    src = build_tiny_pipeline("sd", os.path.join(work, "tiny-src"))
    plain = export(src, os.path.join(work, "tiny-plain"), log=None)
    exported = export(src, os.path.join(work, "tiny-dc"), log=None, cache="deepcache")
    cut = add_deepcache(plain, os.path.join(work, "tiny-cut"))
    kw = dict(num_inference_steps=9, guidance_scale=6.0, height=48, width=80, seed=2, output_type="np",
              cache="deepcache:interval=3")
    a = fastgen.Pipeline.load(exported)(["a red cat", "a dog"], **kw).images
    b = fastgen.Pipeline.load(cut)(["a red cat", "a dog"], **kw).images
    return float(np.abs(a - b).max())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--num-prompts", type=int, default=60)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--no-check", dest="check", action="store_false")
    args = ap.parse_args(argv)
    import fastgen
    from fastgen import evaluate
    from fastgen.pipelines.base import _demo_dir

    with tempfile.TemporaryDirectory(prefix="fastgen-dc-demo-") as work:
        payload: dict = {}
        if args.check:
            payload["surgery_vs_export_max_abs"] = check_surgery(work)
            log(f"surgery vs exporter on tiny SD: max |diff| {payload['surgery_vs_export_max_abs']:.3g}")
        eng = add_deepcache(_demo_dir(), os.path.join(work, "demo-dc"))
        pipe = fastgen.Pipeline.load(eng)
        rep = evaluate.compare(pipe, (pipe, {"cache": "deepcache:interval=3"}), num_prompts=args.num_prompts,
                               num_inference_steps=args.steps)
        print(rep.format_table())
        payload.update(num_prompts=args.num_prompts, steps=args.steps, cache="deepcache:interval=3,branch=0",
                       summary=rep.summary(), report=rep.to_json())
        path = write_json(args.out, "step_cache_demo", payload)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
