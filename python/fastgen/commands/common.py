"""Command-line options shared by the runtime subcommands."""

from __future__ import annotations

import argparse

from ..backends import BACKENDS

PRECISION_CHOICES = ("fp32", "bf16", "auto", "int8")


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    """--backend, --device, --precision, --threads: how the engine's networks run."""
    p.add_argument("--backend", default="onnxruntime", choices=BACKENDS,
                   help="inference backend (default onnxruntime; openvino for bf16 on CPU)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES,
                   help="fp32: the exact path (default); bf16 / auto (bf16 where the CPU has it natively) "
                        "need --backend openvino; int8: the engine's int8 variant (`fastgen optimize ENGINE "
                        "--int8`); check a fast path with `fastgen eval`")
    p.add_argument("--threads", type=int, default=None,
                   help="most threads one network call uses (openvino; default: all cores)")


def load_options(args: argparse.Namespace) -> dict:
    return dict(backend=args.backend, device=args.device, precision=args.precision, threads=args.threads)
