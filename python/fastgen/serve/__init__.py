"""`fastgen serve`: an HTTP service (OpenAI-compatible images API, dynamic batching, jobs, metrics).

Needs the ``serve`` extra (``pip install "fastgen[serve]"``): FastAPI and uvicorn are imported
only here, and only when an app is created.

    from fastgen.serve import create_app
    app = create_app({"sd": "./sd15"}, max_batch=4, max_wait_ms=10)   # any ASGI server runs it
"""

from __future__ import annotations

__all__ = ["create_app", "Service"]


def create_app(engines, **kwargs):
    """An ASGI (FastAPI) app serving ``engines``; see ``fastgen.serve.app.create_app``."""
    try:
        from .app import create_app as _create_app
    except ImportError as e:  # pragma: no cover - depends on the environment
        from ..errors import UnsupportedError

        raise UnsupportedError(f'serving needs the "serve" extra (pip install "fastgen[serve]"): {e}') from e
    return _create_app(engines, **kwargs)


def __getattr__(name):
    if name == "Service":
        from .service import Service

        return Service
    raise AttributeError(name)
