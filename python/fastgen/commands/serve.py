"""`fastgen serve ENGINE_DIR [ENGINE_DIR ...]`: an HTTP service with dynamic batching (see fastgen.serve)."""

from __future__ import annotations

import argparse
import ipaddress
import os

from .common import add_backend_arguments, load_options
from ..errors import InvalidArgumentError, UnsupportedError

API_KEY_ENV = "FASTGEN_API_KEY"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("engines", nargs="+", metavar="ENGINE_DIR",
                   help="engine directories (or 'demo'); NAME=DIR names one (the API's 'model' field)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; a non-loopback address needs --api-key)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=4, help="images merged into one network call (1: no batching)")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a request waits for batch mates")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before answering 429")
    p.add_argument("--workers", type=int, default=1, help="batches run at the same time (threads)")
    p.add_argument("--timeout", type=float, default=300.0, help="per-request timeout, seconds")
    p.add_argument("--sizes", default=None, help="allowed sizes, comma separated (e.g. 512x512,768x512)")
    p.add_argument("--max-images", type=int, default=8, help="most images (n) per request")
    p.add_argument("--max-steps", type=int, default=150, help="most denoising steps per request")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on every route but /healthz, /readyz, the API "
                        f"reference and /v1/files/ links (or set ${API_KEY_ENV})")
    p.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                   help="allow browser pages from ORIGIN (repeatable); no CORS headers without it")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body, MiB (413 above)")
    p.add_argument("--max-buffered-mb", type=float, default=128.0,
                   help="request bodies held at once, all clients together, MiB (503 above)")
    p.add_argument("--header-timeout", type=float, default=10.0, help="seconds to receive a request's headers")
    p.add_argument("--body-timeout", type=float, default=30.0, help="seconds to receive a request's body (408)")
    p.add_argument("--file-ttl", type=float, default=600.0,
                   help="seconds a response_format=url file stays under /v1/files/")
    p.add_argument("--variation-strength", type=float, default=0.7,
                   help="img2img strength of /v1/images/variations when the request gives none")
    p.add_argument("--lora-dir", default=None, metavar="DIR",
                   help="LoRA .safetensors files requests may name in 'loras' ({name: strength}; engines exported "
                        "with --lora-branches)")
    add_backend_arguments(p)
    p.add_argument("--ray", action="store_true", help="serve with Ray Serve (pip install \"fastgen[ray]\")")
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (with --ray)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without an API key."""
    if not is_loopback(host) and not api_key:
        raise InvalidArgumentError(
            f"refusing to listen on {host!r} without an API key: anyone who can reach it could use the server. "
            f"Give --api-key KEY (or set {API_KEY_ENV}), or bind to 127.0.0.1")


def parse_engines(items: list[str]) -> dict[str, str]:
    """NAME=DIR names an engine; a plain DIR (or ``demo``) is named after its folder (``sd15-2`` for a
    second ``sd15``), so ``fastgen serve demo ./sd15`` serves ``demo`` and ``sd15``."""
    named: dict[str, str] = {}
    plain = []
    for it in items:
        if "=" in it and not os.path.exists(it):
            name, path = it.split("=", 1)
            if name in named:
                raise InvalidArgumentError(f"two engines are named {name!r}")
            named[name] = path
        else:
            plain.append(it)
    for path in plain:
        base = os.path.basename(os.path.normpath(path)) or "engine"
        name, i = base, 2
        while name in named:
            name, i = f"{base}-{i}", i + 1
        named[name] = path
    return named


def run(args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    check_bind(args.host, api_key)
    if not 1 <= args.port <= 65535:
        raise InvalidArgumentError(f"--port must be in [1, 65535], got {args.port}")
    for name in ("max_batch", "max_queue", "workers", "replicas", "max_images"):
        if getattr(args, name) < 1:
            raise InvalidArgumentError(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("max_steps",):
        if getattr(args, name) < 1:
            raise InvalidArgumentError(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_wait_ms < 0 or args.timeout <= 0:
        raise InvalidArgumentError("--max-wait-ms must be >= 0 and --timeout > 0")
    for name in ("max_body_mb", "max_buffered_mb", "header_timeout", "body_timeout", "file_ttl"):
        if not getattr(args, name) > 0:
            raise InvalidArgumentError(f"--{name.replace('_', '-')} must be > 0")
    if not 0 < args.variation_strength <= 1:
        raise InvalidArgumentError("--variation-strength must be in (0, 1]")
    engines = parse_engines(args.engines)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()] if args.sizes else None
    opts = dict(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                workers=args.workers, api_key=api_key, timeout_s=args.timeout, sizes=sizes,
                max_images=args.max_images, max_steps=args.max_steps, variation_strength=args.variation_strength,
                lora_dir=args.lora_dir, **load_options(args))
    app_opts = dict(cors_origins=args.cors_origin, max_body_bytes=int(args.max_body_mb * (1 << 20)),
                    max_buffered_bytes=int(args.max_buffered_mb * (1 << 20)), body_timeout_s=args.body_timeout)
    if args.ray:  # Ray's own HTTP proxy receives the requests: --header-timeout does not apply there
        from ..serve.ray import run_ray

        return run_ray(engines, host=args.host, port=args.port, replicas=args.replicas, app_opts=app_opts, **opts)
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise UnsupportedError('serving needs the "serve" extra: pip install "fastgen[serve]"') from e
    from ..serve import create_app
    from ..serve.server import make_server

    app = create_app(engines, file_ttl_s=args.file_ttl, **app_opts, **opts)
    make_server(app, args.host, args.port, header_timeout_s=args.header_timeout, log_level=args.log_level,
                timeout_graceful_shutdown=30).run()
    return 0
