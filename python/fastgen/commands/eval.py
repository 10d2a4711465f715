"""`fastgen eval ENGINE [ENGINE_B] --a KEY=VALUE,... --b KEY=VALUE,...`: the quality gate.

The same prompts and seeds go through configuration A (default: onnxruntime fp32, the exact path) and B;
the command prints per-prompt PSNR / SSIM of B against A, the demo model's accuracy where it applies and
the timings, writes DIR/eval.json and DIR/grid.png, and exits 1 when a --min-psnr / --min-ssim /
--max-accuracy-drop threshold is not met (2 on bad input).
"""

from __future__ import annotations

import argparse
import re
import sys

from ..errors import InvalidArgumentError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.splitlines()[0].strip("`")
    p.add_argument("engines", nargs="*", metavar="ENGINE",
                   help="engine directory of A (default: the built-in demo) and, optionally, of B "
                        "(default: A's), e.g. an int8 variant")
    p.add_argument("--a", dest="a", action="append", default=None, metavar="KEY=VALUE,...",
                   help="configuration A: backend, precision, device, threads and request options such as "
                        "scheduler=euler or num_inference_steps=10 (default: backend=onnxruntime,precision=fp32)")
    p.add_argument("--b", dest="b", action="append", default=None, metavar="KEY=VALUE,...",
                   help="configuration B, the same keys (precision=bf16 alone picks backend=openvino)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompts", default=None, metavar="FILE", help="UTF-8 text file, one prompt per line (<= 1000)")
    src.add_argument("--num-prompts", type=int, default=None, metavar="N",
                     help="N default prompts: random prompts of the demo grammar (seeded), else a built-in list "
                          "of 8 (default 8)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; each prompt runs with each (default 0)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (engine default)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (engine default)")
    p.add_argument("--size", default=None, metavar="WIDTHxHEIGHT", help="image size, e.g. 512x512 (engine default)")
    p.add_argument("--out", default="fastgen-eval", metavar="DIR",
                   help="folder for eval.json and grid.png (default ./fastgen-eval)")
    p.add_argument("--min-psnr", type=float, default=None, metavar="DB",
                   help="gate: exit 1 when B's mean PSNR against A (over the images that differ) is below DB")
    p.add_argument("--min-ssim", type=float, default=None, metavar="X", help="gate: exit 1 when B's mean SSIM is below X")
    p.add_argument("--max-accuracy-drop", type=float, default=None, metavar="POINTS",
                   help="gate (demo-grammar prompts): exit 1 when B's accuracy (background, color and shape all "
                        "right) is more than POINTS percentage points below A's")
    p.add_argument("--diff-gain", type=float, default=10.0, help="amplification of |A-B| in grid.png (default 10)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_size(text: str) -> tuple[int, int]:
    """'512x512' (WIDTHxHEIGHT) or '512' -> (width, height)."""
    m = re.fullmatch(r"\s*(\d{1,6})\s*(?:[xX]\s*(\d{1,6}))?\s*", text)
    if m is None:
        raise InvalidArgumentError(f"--size must be WIDTHxHEIGHT such as 512x512, got {text!r}")
    w = int(m.group(1))
    return w, int(m.group(2)) if m.group(2) else w


def parse_seeds(text: str) -> list[int]:
    seeds = []
    for part in text.split(","):
        part = part.strip()
        if not re.fullmatch(r"\d{1,19}", part):
            raise InvalidArgumentError(f"--seeds must be comma-separated ints in [0, 2**63), such as 0,1; got {text!r}")
        seeds.append(int(part))
    return seeds


def run(args: argparse.Namespace) -> int:
    from .. import evaluate as ev
    from .generate import _bar, _progress_enabled

    engines = args.engines or ["demo"]
    if len(engines) > 2:
        raise InvalidArgumentError(f"expected ENGINE [ENGINE_B], got {len(engines)} engine arguments")
    engine_a, engine_b = engines[0], engines[-1]
    cfg_a = ev.Config.from_options(engine_a, ev.parse_options(args.a, "--a"))
    cfg_b = ev.Config.from_options(engine_b, ev.parse_options(args.b, "--b"))
    seeds = parse_seeds(args.seeds)
    call = {}
    if args.steps is not None:
        call["num_inference_steps"] = args.steps
    if args.guidance is not None:
        call["guidance_scale"] = args.guidance
    if args.size is not None:
        call["width"], call["height"] = parse_size(args.size)
    # the gate's thresholds, checked before any work
    from .._args import check_float, check_int

    if args.min_psnr is not None:
        check_float("--min-psnr", args.min_psnr)
    if args.min_ssim is not None:
        check_float("--min-ssim", args.min_ssim, -1.0, 1.0)
    if args.max_accuracy_drop is not None:
        check_float("--max-accuracy-drop", args.max_accuracy_drop, 0.0, 100.0)
    check_float("--diff-gain", args.diff_gain, 0.0, open_lo=True)
    if args.prompts is not None:
        prompts = ev.load_prompts(args.prompts)
    else:
        n = 8 if args.num_prompts is None else check_int("--num-prompts", args.num_prompts, 1, ev.MAX_PROMPTS)
        prompts = ev.default_prompts(engine_a, n)
    if args.max_accuracy_drop is not None and not all(map(ev.is_demo_prompt, prompts)):
        raise InvalidArgumentError("--max-accuracy-drop needs prompts of the demo grammar "
                                   "('a red circle on a blue background')")

    bar = _bar(2 * len(prompts) * len(seeds), _progress_enabled(args), "eval", "image")
    try:
        report = ev.compare(cfg_a, cfg_b, prompts, seeds, progress=(lambda: bar.update(1)) if bar else None, **call)
    finally:
        if bar is not None:
            bar.close()
    gate = report.check(args.min_psnr, args.min_ssim, args.max_accuracy_drop)
    json_path, grid_path = report.save(args.out, gate=gate, diff_gain=args.diff_gain)
    print(report.format_table())
    failed = [c for c in gate if not c["passed"]]
    for c in gate:
        op = "<=" if c["metric"].startswith("accuracy") else ">="
        value = "identical" if c["value"] == float("inf") else f"{c['value']:.4g}"
        print(f"gate      {c['metric']} {value} {op} {c['threshold']:g}: {'pass' if c['passed'] else 'FAIL'}")
    print(f"wrote     {json_path}, {grid_path}")
    if failed:
        print(f"fastgen eval: B is below the gate ({', '.join(c['metric'] for c in failed)})", file=sys.stderr)
        return 1
    return 0
