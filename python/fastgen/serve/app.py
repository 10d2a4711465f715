"""The HTTP API (FastAPI): assembly of the endpoint modules, the system routes, errors and the guard.

The OpenAPI schema (``/openapi.json``, pages at ``/docs`` and ``/redoc``) is the API reference.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Optional

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from . import captions, images, videos
from .errors import ApiError, bad, error_for
from .files import FileStore
from .guard import Guard
from .schemas import ERRORS, Job, ModelList
from .service import Service

# routes that need no API key: liveness, readiness (without model names), the API reference, and the
# file links of response_format="url" (capabilities: 128-bit random ids that expire)
OPEN_PATHS = ("/healthz", "/readyz", "/openapi.json", "/docs", "/docs/", "/redoc", "/v1/files/")


def _error(e: ApiError, service: Service) -> JSONResponse:
    service.metrics.errors.labels(type=e.type).inc()
    return JSONResponse(e.body(), e.status, headers=e.headers)


def _validation_message(errors) -> tuple[str, Optional[str]]:
    parts, first = [], None
    for err in errors[:5]:
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path")]
        name = ".".join(loc)
        first = first or name or None
        if err.get("type") == "missing":
            parts.append(f"'{name}' is required")
        elif err.get("type") == "extra_forbidden":
            parts.append(f"unknown field '{name}'")
        elif err.get("type") == "json_invalid":
            parts.append(f"the request body is not valid JSON: {err.get('msg')}")
        else:
            parts.append(f"'{name}': {err.get('msg')}" if name else str(err.get("msg")))
    return "; ".join(parts), first


def system_router(service: Service) -> APIRouter:
    r = APIRouter()

    @r.get("/healthz", name="healthz", tags=["system"], summary="Liveness (no API key)")
    async def healthz():
        return {"status": "ok"}

    @r.get("/readyz", name="readyz", tags=["system"], responses={503: {"description": "loading or shutting down"}},
           summary="Readiness (no API key; model names only with the key, or when the server has none)")
    async def readyz(request: Request):
        if service.closing:
            return JSONResponse({"status": "shutting down"}, 503)
        if not service.ready.is_set():
            return JSONResponse({"status": "loading", "error": service.load_error}, 503)
        body = {"status": "ready"}
        if service.authorized(request.headers):
            body["models"] = list(service.engines)
        return body

    @r.get("/metrics", name="metrics", tags=["system"], response_class=Response, summary="Prometheus metrics")
    async def metrics():
        return Response(service.metrics.render(), media_type=service.metrics.CONTENT_TYPE)

    @r.get("/v1/models", name="models", tags=["system"], response_model=ModelList, summary="Served engines")
    async def models():
        return {"object": "list", "data": [e.describe() for e in service.engines.values()]}

    @r.get("/v1/jobs/{job_id}", name="jobs", tags=["jobs"], response_model=Job, responses=ERRORS,
           summary="An async job: status, progress, and the answer once it succeeded")
    async def job(job_id: str):
        return service.jobs.get(job_id)

    @r.delete("/v1/jobs/{job_id}", name="jobs_cancel", tags=["jobs"], response_model=Job, responses=ERRORS,
              summary="Cancel a job (it stops within a denoising step)")
    async def cancel_job(job_id: str):
        work = service.jobs.work(job_id)
        if work is not None:
            service.cancel(work)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.wrap_future(work.future), 2.0)
        return service.jobs.get(job_id)

    @r.get("/v1/files/{file_id}", name="files", tags=["files"], response_class=Response,
           responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}, "video/mp4": {},
                                        "image/gif": {}}}, 404: ERRORS[404]},
           summary="A generated file (response_format=url); expires after --file-ttl seconds")
    async def file(file_id: str):
        item = service.files.get(file_id)
        if item is None:
            raise bad(f"no file {file_id!r} (files expire after {service.files.ttl_s:g} s)", 404, "not_found_error",
                      code="file_not_found")
        return Response(item[1], media_type=item[0], headers={"Cache-Control": "private, max-age=60"})

    return r


def create_app(engines, *, max_batch: int = 4, max_wait_ms: float = 10.0, max_queue: int = 64, workers: int = 1,
               api_key: str | None = None, timeout_s: float = 300.0, sizes: list[str] | None = None,
               max_images: int = 8, max_steps: int = 150, batching: bool = True, warmup: bool = True,
               backend: str = "onnxruntime", device: str = "cpu", precision: str = "fp32", threads: int | None = None,
               cors_origins: list[str] | None = None, max_body_bytes: int = 32 << 20,
               max_buffered_bytes: int = 128 << 20, body_timeout_s: float = 30.0, file_ttl_s: float = 600.0,
               max_file_bytes: int = 256 << 20, variation_strength: float = 0.7, lora_dir: str | None = None,
               service: Service | None = None) -> FastAPI:
    """An ASGI app serving ``engines`` ({name: engine_dir or Pipeline} or a list of engine dirs).

    ``app.state.service`` is the serving core (metrics, batcher, jobs); shutting the app down (ASGI
    lifespan) drains the queue. No CORS headers unless ``cors_origins`` is given.
    """
    if service is None:
        service = Service(engines, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                          workers=workers, api_key=api_key, timeout_s=timeout_s, sizes=sizes, max_images=max_images,
                          max_steps=max_steps, batching=batching, warmup=warmup, backend=backend, device=device,
                          precision=precision, threads=threads, variation_strength=variation_strength,
                          lora_dir=lora_dir, files=FileStore(ttl_s=file_ttl_s, max_bytes=max_file_bytes))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(service.close, True, service.timeout_s)

    app = FastAPI(title="fastgen", version=_version(), lifespan=lifespan,
                  description="Diffusion image / video generation and captioning. With `--api-key`, send "
                              "`Authorization: Bearer KEY` on every route but " + ", ".join(OPEN_PATHS) + ".")
    app.state.service = service
    routers = [m.router(service) for m in (images, captions, videos)] + [system_router(service)]
    for r in routers:
        app.include_router(r)
    routes = [route for r in routers for route in r.routes]

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return _error(exc, service)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        message, param = _validation_message(exc.errors())
        return _error(ApiError(400, "invalid_request_error", message, code="invalid_argument", param=param), service)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        typ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error(ApiError(exc.status_code, typ, f"{request.method} {request.url.path}: {exc.detail}",
                               code=typ), service)

    @app.exception_handler(Exception)
    async def internal(request, exc: Exception):
        return _error(error_for(exc), service)

    if service.api_key is not None:
        _document_key(app)
    post_types = {}
    for route in routes:
        if "POST" in getattr(route, "methods", ()):
            multipart = route.path in ("/v1/images/edits", "/v1/images/variations")
            post_types[route.path] = "multipart/form-data" if multipart else "application/json"
    app.add_middleware(Guard, service=service, routes=routes, post_types=post_types, open_paths=OPEN_PATHS,
                       max_body_bytes=max_body_bytes, max_buffered_bytes=max_buffered_bytes,
                       body_timeout_s=body_timeout_s)
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "X-API-Key"])
    return app


def _document_key(app: FastAPI) -> None:
    """The schema says which operations need ``Authorization: Bearer KEY`` (the guard enforces it)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path, ops in schema["paths"].items():
                if not any(path == p or (p.endswith("/") and path.startswith(p)) for p in OPEN_PATHS):
                    for op in ops.values():
                        op["security"] = [{"bearer": []}]
        return app.openapi_schema

    app.openapi = openapi


def _version() -> str:
    try:
        from .. import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "0"
