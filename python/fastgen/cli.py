"""The `fastgen` command line: export | build-trt | optimize | generate | caption | info | serve.

Subcommands that need heavy dependencies import them lazily, so `fastgen generate` never loads
torch, and `fastgen export` only needs the `export` extra.
"""

from __future__ import annotations

import argparse
import sys

from .errors import FastgenError


EXPORT_COMMANDS = {
    # name: (help, the exporter's argument function, its run function)
    "export": ("export a diffusers / transformers checkpoint to an engine directory",
               "add_export_arguments", "run_export"),
    "build-trt": ("build TensorRT plans for an engine directory", "add_build_trt_arguments", "run_build_trt"),
    "optimize": ("write an int8 variant into an engine directory (calibrated on real runs)",
                 "add_optimize_arguments", "run_optimize"),
}
# the extra each exporter subcommand needs (default "export")
COMMAND_EXTRAS = {"optimize": "quantize"}


def _add_export(sub: argparse._SubParsersAction, command: str | None) -> None:
    """The exporter's subcommands. Their arguments come from the exporter package, imported only when
    one of them runs (``fastgen generate`` never imports it)."""
    for name, (help_, add_name, run_name) in EXPORT_COMMANDS.items():
        p = sub.add_parser(name, help=help_ + f" (needs the '{COMMAND_EXTRAS.get(name, 'export')}' extra)")
        if name == command:
            exp = _exporter()
            getattr(exp, add_name)(p)
            p.set_defaults(func=getattr(exp, run_name))
        else:
            p.add_argument("rest", nargs=argparse.REMAINDER)


def _exporter():
    try:
        import fastgen_export.cli as m
    except ImportError as e:
        raise FastgenError(
            f"the exporter needs the 'export' extra (pip install \"fastgen[export]\"): {e}") from e
    return m


# Each runtime subcommand module exposes add_arguments(parser) and run(args) -> int.
_RUNTIME_COMMANDS = {
    # name: (module, help)
    "generate": ("fastgen.commands.generate", "generate images (or video) from a prompt"),
    "info": ("fastgen.commands.info", "print an engine directory's manifest"),
    "caption": ("fastgen.commands.caption", "caption images with a captioning engine"),
    "serve": ("fastgen.commands.serve", "serve engines over HTTP"),
    "eval": ("fastgen.commands.eval", "quality gate: PSNR / SSIM / accuracy / speed of configuration B against A"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; the exporter's arguments are added only when ``command`` is one of its subcommands."""
    import importlib

    parser = argparse.ArgumentParser(prog="fastgen", description=__doc__.splitlines()[0])
    from . import __version__

    parser.add_argument("--version", action="version", version=f"fastgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_export(sub, command)
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
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(command)
    except FastgenError as e:
        print(f"fastgen {command}: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FastgenError as e:
        print(f"fastgen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fastgen info --json | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
