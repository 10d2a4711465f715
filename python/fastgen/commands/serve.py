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
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on /v1/* (or set ${API_KEY_ENV})")
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


def parse_engines(items: list[str]) -> dict[str, str] | list[str]:
    named = {}
    plain = []
    for it in items:
        if "=" in it and not os.path.exists(it):
            name, path = it.split("=", 1)
            named[name] = path
        else:
            plain.append(it)
    if named and plain:
        raise InvalidArgumentError("name every engine (NAME=DIR) or none")
    return named or plain


def run(args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    check_bind(args.host, api_key)
    if not 1 <= args.port <= 65535:
        raise InvalidArgumentError(f"--port must be in [1, 65535], got {args.port}")
    for name in ("max_batch", "max_queue", "workers", "replicas", "max_images"):
        if getattr(args, name) < 1:
            raise InvalidArgumentError(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_wait_ms < 0 or args.timeout <= 0:
        raise InvalidArgumentError("--max-wait-ms must be >= 0 and --timeout > 0")
    engines = parse_engines(args.engines)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()] if args.sizes else None
    opts = dict(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                workers=args.workers, api_key=api_key, timeout_s=args.timeout, sizes=sizes,
                max_images=args.max_images, **load_options(args))
    if args.ray:
        from ..serve.ray import run_ray

        return run_ray(engines, host=args.host, port=args.port, replicas=args.replicas, **opts)
    try:
        import uvicorn
    except ImportError as e:
        raise UnsupportedError('serving needs the "serve" extra: pip install "fastgen[serve]"') from e
    from ..serve import create_app

    app = create_app(engines, **opts)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=30)
    return 0
