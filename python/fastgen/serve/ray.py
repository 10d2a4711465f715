"""Scale-out with Ray Serve: replicas each holding the engines' pipelines, batching with ``@serve.batch``.

The HTTP API is the same as ``fastgen serve`` (the same FastAPI app runs as each replica's ingress);
only the batching differs: Ray Serve's ``@serve.batch`` collects concurrent requests of a replica, and
the batch is split into groups of compatible requests (same engine, size, steps, scheduler, guidance),
each run as one network call with per-request seeds, exactly as the in-process batcher does.

    fastgen serve --ray --replicas 2 ./sd15            # CLI

    from ray import serve
    from fastgen.serve.ray import build_app
    serve.run(build_app({"sd": "/abs/path/sd15"}, replicas=2, max_batch=4), route_prefix="/")

Needs ``pip install "fastgen[ray]"`` (ray[serve], tested with the version pinned in that extra).
"""

from __future__ import annotations

import asyncio
import os
import time

from ray import serve

from .batching import QueueFullError, ShuttingDownError, Work
from .errors import error_for
from .service import Service


class RayService(Service):
    """The serving core with Ray Serve's batching instead of the thread batcher."""

    def __init__(self, engines, batch_fn, **kw):
        self._batch_fn = batch_fn
        self._queued = 0
        super().__init__(engines, **kw)

    def _make_batcher(self):
        return None

    def submit(self, work: Work) -> None:
        if self.closing:
            raise error_for(ShuttingDownError("the server is shutting down"))
        if self._queued >= self.max_queue:
            self.metrics.rejected.labels(engine=work.engine).inc()
            raise error_for(QueueFullError(f"the queue is full ({self.max_queue} requests waiting); retry later"))
        self._queued += 1
        self.metrics.queue_depth.labels(engine=work.engine).inc()
        task = asyncio.get_running_loop().create_task(self._batch_fn(work))

        def done(t: asyncio.Task) -> None:
            self._queued -= 1
            self.metrics.queue_depth.labels(engine=work.engine).dec()
            if work.future.done():
                return
            if t.cancelled():
                work.future.set_exception(ShuttingDownError("cancelled by the server"))
                return
            r = t.exception() or t.result()
            if isinstance(r, BaseException):
                work.future.set_exception(r)
            else:
                work.future.set_result(r)

        task.add_done_callback(done)

    def cancel(self, work: Work) -> None:
        if not work.future.done():
            self.metrics.cancelled.labels(engine=work.engine).inc()
        work.cancel()

    def close(self, drain: bool = True, timeout: float = 60.0) -> bool:
        self.closing = True
        end = time.monotonic() + timeout
        while drain and self._queued and time.monotonic() < end:
            time.sleep(0.05)
        return self._queued == 0

    def run_groups(self, works: list[Work]) -> list:
        """One Ray Serve batch -> results in order: compatible requests share one network call."""
        from ..errors import CancelledError

        results: dict[int, object] = {}
        groups: dict[object, list[Work]] = {}
        for w in works:
            if w.cancelled.is_set():
                results[id(w)] = CancelledError("request cancelled")
                continue
            groups.setdefault((w.engine, w.key) if w.key is not None else id(w), []).append(w)
        for g in groups.values():
            chunk: list[Work] = []
            for w in g + [None]:
                if w is None or (chunk and sum(x.size for x in chunk) + w.size > self.max_batch):
                    if chunk:
                        now = time.perf_counter()
                        for x in chunk:
                            x.t_start = now
                        self._on_batch(chunk)
                        for x, r in zip(chunk, self._run_batch(chunk)):
                            results[id(x)] = r
                    chunk = []
                if w is not None:
                    chunk.append(w)
        return [results[id(w)] for w in works]


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
@serve.ingress()
class FastgenDeployment:
    """A replica: the engines' pipelines, a RayService and the FastAPI app as its HTTP ingress."""

    def __init__(self, engines, app_opts: dict | None = None, **opts):
        self.app_opts = dict(app_opts or {})  # create_app's HTTP options: CORS, body caps and time limit
        mb = int(opts.get("max_batch", 4)) if opts.get("batching", True) else 1
        self._set_batching(mb, float(opts.get("max_wait_ms", 10.0)))
        self.service = RayService(engines, self.batched, **opts)

    def _set_batching(self, max_batch: int, max_wait_ms: float) -> None:
        try:
            self.batched.set_max_batch_size(max_batch)
            self.batched.set_batch_wait_timeout_s(max_wait_ms / 1000.0)
        except AttributeError:  # pragma: no cover - older Ray: the decorator's defaults stay
            pass

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def batched(self, works: list[Work]) -> list:
        return await asyncio.to_thread(self.service.run_groups, works)

    def __serve_build_asgi_app__(self):
        from .app import create_app

        return create_app(None, service=self.service, **self.app_opts)


def _abs_engines(engines):
    if isinstance(engines, dict):
        return {k: v if v == "demo" else os.path.abspath(v) for k, v in engines.items()}
    if isinstance(engines, (str, os.PathLike)):
        engines = [engines]
    return {os.path.basename(os.path.normpath(e)): (e if e == "demo" else os.path.abspath(e)) for e in engines}


def build_app(engines, *, replicas: int = 1, **opts):
    """A Ray Serve application: ``serve.run(build_app(...), route_prefix="/")``."""
    opts.pop("workers", None)  # one batch at a time per replica; scale with replicas
    return FastgenDeployment.options(num_replicas=int(replicas)).bind(_abs_engines(engines), **opts)


def run_ray(engines, *, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1, **opts) -> int:
    """``fastgen serve --ray``: start a local Ray instance, serve, block until interrupted."""
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1" if host in ("127.0.0.1", "localhost")
                 else None)
    serve.start(http_options={"host": host, "port": int(port)})
    serve.run(build_app(engines, replicas=replicas, **opts), name="fastgen", route_prefix="/")
    print(f"fastgen serve (ray, {replicas} replicas) on http://{host}:{port}", flush=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    import signal

    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
