"""Command-line front ends: ``fastgen export`` / ``fastgen build-trt`` and ``python -m fastgen_export``."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_export_arguments", "run_export", "add_build_trt_arguments", "run_build_trt",
           "add_optimize_arguments", "run_optimize", "main"]


def _log(prefix: str):
    def log(msg: str) -> None:
        print(f"{prefix}: {msg}", file=sys.stderr, flush=True)

    return log


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    from fastgen.manifest import ATTENTIONS, DEFAULT_ATTENTION

    p.add_argument("src", metavar="SRC", help="diffusers pipeline folder (save_pretrained layout) or hub id")
    p.add_argument("out", metavar="OUT", help="engine directory to write")
    p.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
                   help="weights / compute dtype of text encoders and denoiser (VAE stays fp32; default fp32)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 17 (default 18)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing engine directory at OUT")
    p.add_argument("--optimize", action="store_true",
                   help="apply ONNX Runtime basic graph optimisations offline (and onnxslim if installed)")
    p.add_argument("--no-parity", dest="parity", action="store_false",
                   help="skip the ONNX Runtime vs torch parity check")
    p.add_argument("--tolerance", type=float, default=None,
                   help="absolute parity tolerance for every component (default: per dtype)")
    p.add_argument("--fifo-unet", action=argparse.BooleanOptionalAction, default=True,
                   help="AnimateDiff sources: also export unet_fifo, the per-frame-timestep UNet that "
                        "`fastgen generate --long-video fifo` needs (default: exported; --no-fifo-unet leaves "
                        "it out and halves the UNet's disk size)")
    p.add_argument("--lora-branches", action="store_true",
                   help="image pipelines: also export text encoder / denoiser graphs with LoRA side inputs, so "
                        "requests can use any LoRAs (generate --lora FILE:SCALE) without a re-export")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="fuse a LoRA .safetensors into the weights permanently, at strength SCALE (default 1); "
                        "repeatable")
    p.add_argument("--controlnet", action="append", default=[], metavar="DIR",
                   help="image pipelines (SD 1.x / 2.x, SDXL): export this diffusers ControlNetModel folder as "
                        "controlnet_<i> (repeatable), with the UNet taking its residuals")
    p.add_argument("--cache", action="append", default=None, metavar="KIND[:branch=N]",
                   help="add step-cache graphs (repeatable): deepcache[:branch=N] (SD / SDXL / AnimateDiff UNets; branch 0 by "
                        "default), first_block (SD3); then `fastgen generate --cache ...` can use them")
    p.add_argument("--attention", choices=ATTENTIONS, default=DEFAULT_ATTENTION,
                   help="denoiser and VAE attention: sdpa = ONNX-standard MatMul/Softmax (runs everywhere, TensorRT "
                        "included); mha = ONNX Runtime's fused com.microsoft.MultiHeadAttention (on ONNX Runtime "
                        "CPU at 512 px ~1.15x faster, 3x less memory; OpenVINO reads it too; not TensorRT) "
                        "(default sdpa)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def run_export(args: argparse.Namespace) -> int:
    from fastgen.lora import parse_lora_arg

    from .api import export

    out = export(args.src, args.out, dtype=args.dtype, opset=args.opset, overwrite=args.overwrite,
                 optimize=args.optimize, parity=args.parity, tolerance=args.tolerance,
                 fifo_unet=getattr(args, "fifo_unet", True), cache=getattr(args, "cache", None),
                 lora_branches=getattr(args, "lora_branches", False),
                 lora=[parse_lora_arg(v) for v in getattr(args, "lora", [])],
                 controlnet=getattr(args, "controlnet", []),
                 attention=getattr(args, "attention", "sdpa"),
                 log=None if getattr(args, "quiet", False) else _log("fastgen export"))
    print(out)
    return 0


def add_build_trt_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("engine_dir", metavar="ENGINE_DIR", help="engine directory written by `fastgen export`")
    p.add_argument("--components", nargs="+", default=None, metavar="NAME",
                   help="components to build (default: all in the manifest)")
    p.add_argument("--min", dest="min_shape", default=None, metavar="BxHxW",
                   help="smallest batch x height x width in pixels (default 1 x half the default size)")
    p.add_argument("--opt", dest="opt_shape", default=None, metavar="BxHxW",
                   help="shape to tune for (default 1 x the default size)")
    p.add_argument("--max", dest="max_shape", default=None, metavar="BxHxW",
                   help="largest shape (default 4 x 1.5 times the default size)")
    p.add_argument("--no-fp16", dest="fp16", action="store_false", help="build fp32 plans")
    p.add_argument("--precision", dest="precisions", action="append", default=[], metavar="NAME=PREC",
                   help="precision of one component's plan: fp32, fp16 or bf16 (repeatable; default fp16, the "
                        "VAEs fp32; TensorRT 11 takes the precision from the ONNX export)")
    p.add_argument("--no-cfg", dest="cfg", action="store_false",
                   help="do not double the text encoder / denoiser batch for classifier-free guidance")
    p.add_argument("--timing-cache", default=None, metavar="PATH", help="TensorRT timing cache file (read + updated)")
    p.add_argument("--workspace", type=float, default=None, metavar="GiB", help="builder workspace limit in GiB")


def run_build_trt(args: argparse.Namespace) -> int:
    from .trt import build_trt

    from fastgen.errors import ExportError

    workspace = int(args.workspace * 1024**3) if args.workspace else None
    precisions = {}
    for item in args.precisions:
        name, sep, prec = item.partition("=")
        if not sep or not name or not prec:
            raise ExportError(f"--precision takes NAME=PREC (e.g. vae_decoder=fp16), got {item!r}")
        precisions[name.strip()] = prec.strip()
    build_trt(args.engine_dir, args.components, min_shapes=args.min_shape, opt_shapes=args.opt_shape,
              max_shapes=args.max_shape, fp16=args.fp16, timing_cache=args.timing_cache, workspace=workspace,
              cfg=args.cfg, precisions=precisions, log=_log("fastgen build-trt"))
    return 0


def add_optimize_arguments(p: argparse.ArgumentParser) -> None:
    from .optimize import DEFAULT_FORMAT, DEFAULT_NUM_PROMPTS, FORMATS, MAX_CALIBRATION_STEPS

    p.add_argument("engine_dir", metavar="ENGINE", help="engine directory written by `fastgen export`")
    p.add_argument("--int8", action="store_true", required=True,
                   help="write an int8 variant (run it with --backend openvino --precision int8)")
    p.add_argument("--int8-format", choices=tuple(FORMATS), default=DEFAULT_FORMAT,
                   help="openvino (default): NNCF hybrid quantization, OpenVINO IR in int8/, variant 'int8'; "
                        "ort-qdq: ONNX Runtime static QDQ of the denoiser in int8-ort/, variant 'int8-ort' "
                        "(--backend onnxruntime --precision int8)")
    p.add_argument("--calibration-prompts", metavar="FILE", default=None,
                   help="calibration prompts, one a line (default: a built-in list; the demo engine: its grammar)")
    p.add_argument("--num-calibration-prompts", type=int, default=None, metavar="N",
                   help=f"how many prompts to calibrate on (default {DEFAULT_NUM_PROMPTS}; with a file: all of it)")
    p.add_argument("--calibration-steps", type=int, default=None, metavar="N",
                   help=f"denoising steps per calibration prompt (default: the engine's, at most "
                        f"{MAX_CALIBRATION_STEPS}); every step's denoiser inputs are a calibration sample")
    p.add_argument("--height", type=int, default=None, help="calibration image height (default: the engine's)")
    p.add_argument("--width", type=int, default=None, help="calibration image width (default: the engine's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration runs and prompt draw (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def run_optimize(args: argparse.Namespace) -> int:
    from .optimize import optimize

    record = optimize(args.engine_dir, int8=args.int8, int8_format=args.int8_format,
                      calibration_prompts_file=args.calibration_prompts, calibration_steps=args.calibration_steps,
                      num_calibration_prompts=args.num_calibration_prompts, height=args.height,
                      width=args.width, seed=args.seed,
                      log=None if args.quiet else _log("fastgen optimize"))
    comps = ", ".join(f"{c} ({v['method']})" for c, v in record["components"].items())
    print(f"{args.engine_dir}: int8 variant ({record['method']}, backend {record['backend']}): {comps}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m fastgen_export SRC OUT [options]``."""
    from fastgen.errors import FastgenError

    parser = argparse.ArgumentParser(prog="python -m fastgen_export",
                                     description="export a diffusers pipeline to a fastgen engine directory")
    add_export_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_export(args)
    except FastgenError as e:
        print(f"fastgen export: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
