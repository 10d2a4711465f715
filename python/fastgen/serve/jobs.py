"""Asynchronous jobs: id -> status / progress / the answer the request would have had; bounded."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Callable

from ..errors import CancelledError
from .batching import Work
from .errors import ApiError, bad, error_for

FINISHED = ("succeeded", "failed", "cancelled")


class Jobs:
    """Oldest finished jobs are dropped past ``max_jobs``; 429 when that many are still pending."""

    def __init__(self, max_jobs: int = 256):
        self.max_jobs = max_jobs
        self._jobs: dict[str, dict] = {}
        self._works: dict[str, Work] = {}
        self._lock = threading.Lock()

    def create(self, work: Work, endpoint: str, shape: Callable[[dict], dict]) -> dict:
        """A job for ``work``; its ``result`` is ``shape(result)`` (the synchronous answer's body)."""
        jid = "job_" + uuid.uuid4().hex
        job = {"id": jid, "object": "job", "endpoint": endpoint, "model": work.engine, "status": "queued",
               "created": int(time.time()), "progress": None}
        with self._lock:
            self._evict()
            self._jobs[jid] = job
            self._works[jid] = work
        user_progress = work.progress

        def progress(step, total, preview=None):
            with self._lock:
                job["status"] = "running"
                job["progress"] = {"step": step, "total": total}
            if user_progress:
                user_progress(step, total, preview)

        work.progress = progress
        work.future.add_done_callback(lambda f: self._done(jid, f, shape))
        return dict(job)

    def _done(self, jid: str, f, shape) -> None:
        exc = f.exception()
        result = err = None
        if exc is None:
            try:
                result = shape(f.result())
            except Exception as e:  # noqa: BLE001 - a job always ends
                exc = e
        if exc is not None and not isinstance(exc, CancelledError):
            err = error_for(exc).body()["error"]
        with self._lock:
            job = self._jobs.get(jid)
            self._works.pop(jid, None)
            if job is None:
                return
            job["finished"] = int(time.time())
            if exc is None:
                job["status"], job["result"] = "succeeded", result
            elif isinstance(exc, CancelledError):
                job["status"] = "cancelled"
            else:
                job["status"], job["error"] = "failed", err

    def _evict(self) -> None:
        if len(self._jobs) < self.max_jobs:
            return
        for jid in [j for j, v in self._jobs.items() if v["status"] in FINISHED]:
            if len(self._jobs) < self.max_jobs:
                break
            del self._jobs[jid]
        if len(self._jobs) >= self.max_jobs:
            raise ApiError(429, "rate_limit_error", f"{self.max_jobs} jobs are pending; retry later",
                           {"Retry-After": "5"}, code="too_many_jobs")

    def discard(self, jid: str) -> None:
        with self._lock:
            self._jobs.pop(jid, None)
            self._works.pop(jid, None)

    def get(self, jid: str) -> dict:
        with self._lock:
            job = self._jobs.get(jid)
            if job is None:
                raise bad(f"no job {jid!r}", 404, "not_found_error", code="job_not_found")
            return dict(job)

    def work(self, jid: str) -> Work | None:
        with self._lock:
            if jid not in self._jobs:
                raise bad(f"no job {jid!r}", 404, "not_found_error", code="job_not_found")
            return self._works.get(jid)
