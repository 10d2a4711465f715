"""The HTTP API (Starlette): OpenAI-compatible images, full generation, captions, jobs, SSE, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .service import ApiError, Service, bad, error_for


def _json(data: Any, status: int = 200, headers: dict | None = None) -> Response:
    return JSONResponse(data, status_code=status, headers=headers)


async def _body(service: Service, request: Request) -> Any:
    cl = request.headers.get("content-length")
    if cl is not None and cl.isdigit() and int(cl) > service.max_body_bytes:
        raise bad(f"request body larger than {service.max_body_bytes} bytes", 413)
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > service.max_body_bytes:
            raise bad(f"request body larger than {service.max_body_bytes} bytes", 413)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"the request body is not valid JSON: {e}") from None


async def _until_disconnect(request: Request) -> None:
    while True:
        msg = await request.receive()
        if msg.get("type") == "http.disconnect":
            return


class ClientGone(Exception):
    pass


def create_app(engines, *, max_batch: int = 4, max_wait_ms: float = 10.0, max_queue: int = 64, workers: int = 1,
               api_key: str | None = None, timeout_s: float = 300.0, sizes: list[str] | None = None,
               max_images: int = 8, batching: bool = True, warmup: bool = True, backend: str = "onnxruntime",
               device: str = "cpu", precision: str = "fp32", threads: int | None = None,
               service: Service | None = None) -> Starlette:
    """An ASGI app serving ``engines`` ({name: engine_dir or Pipeline} or a list of engine dirs).

    ``app.state.service`` is the serving core (metrics, batcher, jobs); shutting the app down (ASGI
    lifespan) drains the queue.
    """
    if service is None:
        service = Service(engines, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                          workers=workers, api_key=api_key, timeout_s=timeout_s, sizes=sizes, max_images=max_images,
                          batching=batching, warmup=warmup, backend=backend, device=device,
                          precision=precision, threads=threads)
    m = service.metrics

    def endpoint(name: str, auth: bool = True):
        def deco(fn):
            async def handler(request: Request) -> Response:
                t0 = time.perf_counter()
                try:
                    if auth:
                        service.check_auth(request.headers)
                    resp = await fn(request)
                except ClientGone:
                    resp = Response(status_code=499)
                except Exception as e:  # noqa: BLE001 - every request gets an answer
                    err = error_for(e)
                    m.errors.inc(type=err.type)
                    resp = _json(err.body(), err.status, err.headers)
                m.requests.inc(endpoint=name, code=resp.status_code)
                if not isinstance(resp, StreamingResponse):
                    m.stage.observe(time.perf_counter() - t0, engine="all", stage=f"request:{name}")
                return resp
            return handler
        return deco

    async def wait_result(work, request: Request) -> dict:
        fut = asyncio.wrap_future(work.future)
        gone = asyncio.ensure_future(_until_disconnect(request))
        try:
            done, _ = await asyncio.wait({fut, gone}, timeout=service.timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if fut in done:
            return fut.result()
        service.cancel(work)
        fut.add_done_callback(lambda f: f.exception())  # retrieved: no "never retrieved" warnings
        if gone in done:
            raise ClientGone()
        raise ApiError(504, "timeout_error", f"the request did not finish within {service.timeout_s:g} s")

    def sse(work, request: Request, shape) -> StreamingResponse:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def progress(step, total, preview=None):
            data = {"step": step, "total": total}
            if preview is not None:
                data["preview"] = preview
            loop.call_soon_threadsafe(q.put_nowait, ("progress", data))

        work.progress = progress
        service.submit(work)
        work.future.add_done_callback(lambda f: loop.call_soon_threadsafe(q.put_nowait, ("done", None)))

        def event(kind: str, data: dict) -> str:
            return f"event: {kind}\ndata: {json.dumps(data)}\n\n"

        async def gen():
            deadline = time.monotonic() + service.timeout_s
            finished = False
            try:
                yield event("queued", {"model": work.engine})
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise asyncio.TimeoutError
                    kind, data = await asyncio.wait_for(q.get(), left)
                    if kind == "progress":
                        yield event("progress", data)
                    else:
                        break
                finished = True
                exc = work.future.exception()
                if exc is None:
                    yield event("result", shape(work.future.result()))
                else:
                    err = error_for(exc)
                    m.errors.inc(type=err.type)
                    yield event("error", err.body())
                yield "data: [DONE]\n\n"
            except asyncio.TimeoutError:
                m.errors.inc(type="timeout_error")
                yield event("error", ApiError(504, "timeout_error", "the request timed out").body())
            finally:
                if not finished:  # client gone or timeout: stop the work
                    service.cancel(work)

        return StreamingResponse(gen(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def run_work(request: Request, work, opts, shape, endpoint_name: str) -> Response:
        if opts.get("async"):
            job = service.jobs.create(work, endpoint_name)
            try:
                service.submit(work)
            except Exception:
                service.jobs.discard(job["id"])
                raise
            return _json(job, 202)
        if opts.get("stream"):
            return sse(work, request, shape)
        service.submit(work)
        return _json(shape(await wait_result(work, request)))

    @endpoint("healthz", auth=False)
    async def healthz(request):
        return _json({"status": "ok"})

    @endpoint("readyz", auth=False)
    async def readyz(request):
        if service.closing:
            return _json({"status": "shutting down"}, 503)
        if not service.ready.is_set():
            return _json({"status": "loading", "error": service.load_error}, 503)
        return _json({"status": "ready", "models": list(service.engines)})

    @endpoint("metrics", auth=False)
    async def metrics(request):
        return Response(m.render(), media_type=m.CONTENT_TYPE)

    @endpoint("models")
    async def models(request):
        return _json({"object": "list", "data": [e.describe() for e in service.engines.values()]})

    @endpoint("images")
    async def images(request):
        work, opts = service.parse_generate(await _body(service, request), openai=True)
        return await run_work(request, work, opts, lambda r: service.images_response(r, work.engine), "images")

    @endpoint("generate")
    async def generate(request):
        work, opts = service.parse_generate(await _body(service, request))

        def shape(r):
            out = service.images_response(r, work.engine)
            out["batch"] = r["batch"]
            out["timings"] = r["timings"]
            return out

        return await run_work(request, work, opts, shape, "generate")

    @endpoint("captions")
    async def captions(request):
        work, opts = service.parse_caption(await _body(service, request))
        return await run_work(request, work, opts,
                              lambda r: {"created": int(time.time()), "model": work.engine,
                                         "captions": r["captions"]}, "captions")

    @endpoint("videos")
    async def videos(request):
        work, opts = service.parse_video(await _body(service, request))
        return await run_work(request, work, opts, lambda r: r, "videos")

    @endpoint("jobs")
    async def job(request):
        jid = request.path_params["job_id"]
        if request.method == "DELETE":
            work = service.jobs.work(jid)
            if work is not None:
                service.cancel(work)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.wrap_future(work.future), 2.0)
            return _json(service.jobs.get(jid))
        return _json(service.jobs.get(jid))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(service.close, True, service.timeout_s)

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/images/generations", images, methods=["POST"]),
        Route("/v1/generate", generate, methods=["POST"]),
        Route("/v1/captions", captions, methods=["POST"]),
        Route("/v1/videos", videos, methods=["POST"]),
        Route("/v1/jobs/{job_id}", job, methods=["GET", "DELETE"]),
    ]

    async def not_found(request, exc):
        status = getattr(exc, "status_code", 404)
        typ = "not_found_error" if status == 404 else "invalid_request_error"
        return _json({"error": {"message": f"{request.method} {request.url.path}: {getattr(exc, 'detail', '')}",
                                "type": typ}}, status)

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found})
    app.state.service = service
    return app
