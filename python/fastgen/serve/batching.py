"""Dynamic batching, in threads (independent of the event loop, so it works under any ASGI server).

Requests (``Work``) wait in one bounded queue. A dispatcher thread forms a batch only when a worker
is free: it takes the oldest request, waits until ``max_wait`` after that request arrived (or until
``max_batch`` images of compatible requests are waiting), removes the compatible requests and hands
them to a worker thread. Requests are compatible when their ``key`` is equal and not None.
Cancelled requests still waiting are answered with CancelledError and never run.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import CancelledError, FastgenError


class QueueFullError(FastgenError):
    """The server's queue is full: retry later (HTTP 429)."""


class ShuttingDownError(FastgenError):
    """The server is draining and accepts no new work (HTTP 503)."""


@dataclass(eq=False)
class Work:
    engine: str
    key: Any  # compatibility key; None: never merged with another request
    params: dict  # parsed request parameters
    size: int = 1  # images (rows) this request adds to a batch
    progress: Callable[[int, int], None] | None = None
    future: cf.Future = field(default_factory=cf.Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    t_submit: float = field(default_factory=time.perf_counter)
    t_start: float | None = None

    def cancel(self) -> None:
        self.cancelled.set()


class Batcher:
    """``runner(works) -> list[result | Exception]`` runs one batch (all works share engine and key)."""

    def __init__(self, runner: Callable[[list[Work]], list], *, max_batch: int = 4, max_wait_s: float = 0.01,
                 max_queue: int = 64, workers: int = 1, on_batch: Callable[[list[Work]], None] | None = None,
                 on_depth: Callable[[dict[str, int]], None] | None = None):
        if max_batch < 1 or max_queue < 1 or workers < 1 or max_wait_s < 0:
            raise ValueError("max_batch, max_queue and workers must be >= 1, max_wait_s >= 0")
        self.runner, self.max_batch, self.max_wait_s = runner, int(max_batch), float(max_wait_s)
        self.max_queue, self.workers = int(max_queue), int(workers)
        self.on_batch, self.on_depth = on_batch, on_depth
        self._pending: list[Work] = []
        self._cond = threading.Condition()
        self._slots = threading.Semaphore(self.workers)
        self._running = 0
        self._closing = False
        self._pool = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="fastgen-serve-worker")
        self._thread = threading.Thread(target=self._dispatch, name="fastgen-serve-dispatch", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ client side
    def submit(self, work: Work) -> cf.Future:
        with self._cond:
            if self._closing:
                raise ShuttingDownError("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                raise QueueFullError(f"the queue is full ({self.max_queue} requests waiting); retry later")
            self._pending.append(work)
            self._depth_changed()
            self._cond.notify_all()
        return work.future

    def cancel(self, work: Work) -> None:
        """Cancel a request: dropped if still waiting, its batch told to stop if all of it is cancelled."""
        work.cancel()
        with self._cond:
            if work in self._pending:
                self._pending.remove(work)
                self._depth_changed()
                if not work.future.done():
                    work.future.set_exception(CancelledError("request cancelled"))
            self._cond.notify_all()

    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._pending)

    @property
    def busy(self) -> int:
        with self._cond:
            return len(self._pending) + self._running

    def close(self, drain: bool = True, timeout: float | None = 60.0) -> bool:
        """Stop accepting work; with drain, wait until every queued and running request is answered."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            if not drain:
                for w in self._pending:
                    if not w.future.done():
                        w.future.set_exception(ShuttingDownError("the server shut down before this request ran"))
                self._pending.clear()
            while self._pending or self._running:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left if left is not None else 0.5)
            done = not self._pending and not self._running
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=drain)
        return done

    # ------------------------------------------------------------------ dispatcher
    def _depth_changed(self) -> None:
        if self.on_depth is not None:
            counts: dict[str, int] = {}
            for w in self._pending:
                counts[w.engine] = counts.get(w.engine, 0) + 1
            self.on_depth(counts)

    def _drop_cancelled(self) -> None:
        keep = []
        for w in self._pending:
            if w.cancelled.is_set():
                if not w.future.done():
                    w.future.set_exception(CancelledError("request cancelled"))
            else:
                keep.append(w)
        if len(keep) != len(self._pending):
            self._pending[:] = keep
            self._depth_changed()

    def _compatible(self, head: Work) -> list[Work]:
        batch, rows = [head], head.size
        if head.key is None:
            return batch
        for w in self._pending[1:]:
            if w.engine == head.engine and w.key == head.key and rows + w.size <= self.max_batch:
                batch.append(w)
                rows += w.size
        return batch

    def _dispatch(self) -> None:
        while True:
            self._slots.acquire()
            with self._cond:
                batch = None
                while batch is None:
                    self._drop_cancelled()
                    if not self._pending:
                        if self._closing:
                            self._slots.release()
                            self._cond.notify_all()
                            return
                        self._cond.wait(0.5)
                        continue
                    head = self._pending[0]
                    cand = self._compatible(head)
                    rows = sum(w.size for w in cand)
                    left = head.t_submit + self.max_wait_s - time.perf_counter()
                    if head.key is None or rows >= self.max_batch or left <= 0 or self._closing:
                        batch = cand
                    else:
                        self._cond.wait(left)
                ids = set(map(id, batch))
                self._pending[:] = [w for w in self._pending if id(w) not in ids]
                self._running += 1
                self._depth_changed()
            try:
                self._pool.submit(self._run, batch)
            except RuntimeError:  # pool shut down: answer rather than lose the requests
                self._finish(batch, [ShuttingDownError("the server shut down")] * len(batch))

    def _run(self, batch: list[Work]) -> None:
        now = time.perf_counter()
        for w in batch:
            w.t_start = now
        results: list
        try:
            if self.on_batch is not None:
                self.on_batch(batch)
            results = self.runner(batch)
            if len(results) != len(batch):
                raise RuntimeError(f"runner returned {len(results)} results for {len(batch)} requests")
        except BaseException as e:  # noqa: BLE001 - every request must be answered
            results = [e] * len(batch)
        self._finish(batch, results)

    def _finish(self, batch: list[Work], results: list) -> None:
        try:
            for w, r in zip(batch, results):
                if w.future.done():
                    continue
                if isinstance(r, BaseException):
                    w.future.set_exception(r)
                else:
                    w.future.set_result(r)
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()
            self._slots.release()
