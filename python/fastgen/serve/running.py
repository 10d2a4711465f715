"""How a request's work is answered: synchronously, as server-sent events, or as an async job."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .batching import Work
from .errors import ApiError, ClientGone, error_for


async def _until_disconnect(request: Request) -> None:
    while True:
        msg = await request.receive()
        if msg.get("type") == "http.disconnect":
            return


async def wait_result(service, work: Work, request: Request) -> dict:
    """The work's result; cancels the work when the client goes away or the request times out."""
    fut = asyncio.wrap_future(work.future)
    gone = asyncio.ensure_future(_until_disconnect(request))
    try:
        done, _ = await asyncio.wait({fut, gone}, timeout=service.timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if fut in done:
        exc = fut.exception()
        if exc is not None:
            raise error_for(exc) from exc  # a failed request is answered (500 for it alone), not re-raised
        return fut.result()
    service.cancel(work)
    fut.add_done_callback(lambda f: f.exception())  # retrieved: no "never retrieved" warnings
    if gone in done:
        raise ClientGone()
    raise ApiError(504, "timeout_error", f"the request did not finish within {service.timeout_s:g} s",
                   code="timeout")


def _event(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


def sse(service, work: Work, shape: Callable[[dict], dict]) -> StreamingResponse:
    """Server-sent events: queued, progress (with previews when asked), then result or error, [DONE]."""
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
    m = service.metrics

    async def gen():
        deadline = time.monotonic() + service.timeout_s
        finished = False
        try:
            yield _event("queued", {"model": work.engine})
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise asyncio.TimeoutError
                kind, data = await asyncio.wait_for(q.get(), left)
                if kind != "progress":
                    break
                yield _event("progress", data)
            finished = True
            exc = work.future.exception()
            if exc is None:
                yield _event("result", shape(work.future.result()))
            else:
                err = error_for(exc)
                m.errors.labels(type=err.type).inc()
                yield _event("error", err.body())
            yield "data: [DONE]\n\n"
        except asyncio.TimeoutError:
            m.errors.labels(type="timeout_error").inc()
            yield _event("error", ApiError(504, "timeout_error", "the request timed out", code="timeout").body())
        finally:
            if not finished:  # client gone or timeout: stop the work
                service.cancel(work)

    return StreamingResponse(gen(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def answer(service, request: Request, work: Work, shape: Callable[[dict], dict], endpoint: str, *,
                 stream: bool = False, async_: bool = False) -> Response:
    """Submit ``work`` and answer: 202 + a job (async_), SSE (stream), else the shaped result (200)."""
    if async_:
        job = service.jobs.create(work, endpoint, shape)
        try:
            service.submit(work)
        except Exception:
            service.jobs.discard(job["id"])
            raise
        return JSONResponse(job, 202)
    if stream:
        return sse(service, work, shape)
    service.submit(work)
    result = await wait_result(service, work, request)
    return JSONResponse(await asyncio.to_thread(shape, result))
