"""The `fastgen` command line: export | build-trt | generate | caption | info | bench | serve.

Subcommands that need heavy dependencies import them lazily, so `fastgen generate` never loads
torch, and `fastgen export` only needs the `export` extra.
"""

from __future__ import annotations

import argparse
import sys

from .errors import FastgenError


def _add_export(sub: argparse._SubParsersAction) -> None:
    try:
        from fastgen_export.cli import add_export_arguments, add_build_trt_arguments
    except ImportError:  # exporter not installed: keep the subcommands, explain on use
        add_export_arguments = add_build_trt_arguments = None
    p = sub.add_parser("export", help="export a diffusers / transformers checkpoint to an engine directory")
    if add_export_arguments is not None:
        add_export_arguments(p)
    else:
        p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_run_export)
    p = sub.add_parser("build-trt", help="build TensorRT plans for an engine directory")
    if add_build_trt_arguments is not None:
        add_build_trt_arguments(p)
    else:
        p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_run_build_trt)


def _exporter():
    try:
        import fastgen_export.cli as m
    except ImportError as e:
        raise FastgenError(
            f"the exporter needs the 'export' extra (pip install \"fastgen[export]\"): {e}") from e
    return m


def _run_export(args: argparse.Namespace) -> int:
    return _exporter().run_export(args)


def _run_build_trt(args: argparse.Namespace) -> int:
    return _exporter().run_build_trt(args)


# Each runtime subcommand module exposes add_arguments(parser) and run(args) -> int.
_RUNTIME_COMMANDS = {
    # name: (module, help)
    "generate": ("fastgen.commands.generate", "generate images (or video) from a prompt"),
    "info": ("fastgen.commands.info", "print an engine directory's manifest"),
    "caption": ("fastgen.commands.caption", "caption images with a captioning engine"),
    "bench": ("fastgen.commands.bench", "time an engine: load, per-step, end to end"),
    "serve": ("fastgen.commands.serve", "serve engines over HTTP"),
}


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="fastgen", description=__doc__.splitlines()[0])
    from . import __version__

    parser.add_argument("--version", action="version", version=f"fastgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_export(sub)
    for name, (modname, help_) in _RUNTIME_COMMANDS.items():
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name != modname:
                raise
            continue  # subcommand not built yet
        p = sub.add_parser(name, help=help_)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FastgenError as e:
        print(f"fastgen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
