"""The serving core, independent of the web framework: engines, policy, batched execution, jobs, files.

``Service`` is used by the FastAPI app (``fastgen.serve.app``) and by the Ray Serve deployment
(``fastgen.serve.ray``), so both answer the same API with the same validation and errors. What each
endpoint accepts, runs and answers lives in its own module (``images``, ``captions``, ``videos``).
"""

from __future__ import annotations

import atexit
import hmac
import os
import re
import threading
import time
import weakref
from typing import Any

from ..errors import CancelledError, InvalidArgumentError
from .batching import Batcher, QueueFullError, ShuttingDownError, Work
from .engines import Engine, load_engines
from .errors import ApiError, bad, error_for
from .files import FileStore
from .jobs import Jobs
from .media import PREVIEWS_PER_RUN, b64, encode_image, latent_preview
from .metrics import Metrics

_SIZE_RE = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")


def parse_size(s: Any) -> tuple[int, int] | None:
    """'WIDTHxHEIGHT' -> (width, height); 'auto' or None -> None (the engine's default)."""
    if s is None or s == "auto":
        return None
    m = _SIZE_RE.match(s) if isinstance(s, str) else None
    if not m:
        raise bad(f"'size' must look like '512x512' (width x height) or 'auto', got {s!r}", param="size")
    return int(m.group(1)), int(m.group(2))



_WARMING: "weakref.WeakSet[Service]" = weakref.WeakSet()
_LORA_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


@atexit.register
def _stop_warmups() -> None:
    """At interpreter exit, a warm-up thread still opening sessions would be torn down inside ONNX Runtime's
    C++ (SIGABRT: a script that only builds an app and dumps its OpenAPI schema exited with 139). Stop each
    warm-up after the component it is opening, and wait for that one."""
    services = list(_WARMING)
    for svc in services:
        svc.closing = True
    for svc in services:
        if svc._warmup_thread is not None:
            svc._warmup_thread.join()

class Service:
    def __init__(self, engines, *, max_batch: int = 4, max_wait_ms: float = 10.0, max_queue: int = 64,
                 workers: int = 1, api_key: str | None = None, timeout_s: float = 300.0,
                 sizes: list[str] | None = None, max_images: int = 8, max_steps: int = 150,
                 batching: bool = True, warmup: bool = True, backend: str = "onnxruntime", device: str = "cpu",
                 precision: str = "fp32", threads: int | None = None, files: FileStore | None = None,
                 variation_strength: float = 0.7, lora_dir: str | None = None):
        self.engines = load_engines(engines, backend=backend, device=device, precision=precision, threads=threads)
        self.api_key = api_key or None
        self.timeout_s = float(timeout_s)
        self.max_images = int(max_images)
        self.max_steps = int(max_steps)
        self.variation_strength = float(variation_strength)
        self.lora_dir = os.path.realpath(lora_dir) if lora_dir else None
        if self.lora_dir is not None and not os.path.isdir(self.lora_dir):
            raise InvalidArgumentError(f"LoRA directory not found: {lora_dir}")
        self.sizes = {parse_size(s) for s in sizes} if sizes else None
        self.batching = bool(batching)
        self.metrics = Metrics(max_batch)
        self.jobs = Jobs()
        self.files = files or FileStore()
        self.max_batch = int(max_batch) if batching else 1
        self.max_wait_ms, self.max_queue, self.workers = float(max_wait_ms), int(max_queue), int(workers)
        self.batcher = self._make_batcher()
        for name in self.engines:
            self.metrics.queue_depth.labels(engine=name).set(0)
        self.ready = threading.Event()
        self.closing = False
        self.load_error: str | None = None
        self._warmup_thread: threading.Thread | None = None
        if warmup:
            self._warmup_thread = threading.Thread(target=self._warmup, name="fastgen-serve-warmup", daemon=True)
            _WARMING.add(self)
            self._warmup_thread.start()
        else:
            self.ready.set()

    def _make_batcher(self):
        return Batcher(self._run_batch, max_batch=self.max_batch,
                       max_wait_s=self.max_wait_ms / 1000.0 if self.batching else 0.0, max_queue=self.max_queue,
                       workers=self.workers, on_batch=self._on_batch, on_depth=self._on_depth)

    # ------------------------------------------------------------------ lifecycle
    def _warmup(self) -> None:
        try:
            for e in self.engines.values():
                manifest = getattr(e.pipe, "manifest", None)
                for comp in getattr(manifest, "components", {}) or {}:
                    if self.closing:  # closed, or the interpreter is exiting (see _stop_warmups)
                        return
                    e.pipe.session(comp)
        except Exception as ex:  # noqa: BLE001 - reported by /readyz
            self.load_error = f"{type(ex).__name__}: {ex}"
            return
        self.ready.set()

    def close(self, drain: bool = True, timeout: float = 60.0) -> bool:
        self.closing = True
        return self.batcher.close(drain=drain, timeout=timeout)

    def authorized(self, headers) -> bool:
        """True without an API key, else when ``Authorization: Bearer KEY`` (or ``X-API-Key``) matches."""
        if self.api_key is None:
            return True
        got = headers.get("authorization") or ""
        got = got[7:].strip() if got.lower().startswith("bearer ") else (headers.get("x-api-key") or "")
        return hmac.compare_digest(got.encode("utf-8", "replace"), self.api_key.encode())

    # ------------------------------------------------------------------ metrics hooks
    def _on_batch(self, batch: list[Work]) -> None:
        eng = batch[0].engine
        self.metrics.batch_size.labels(engine=eng).observe(len(batch))
        self.metrics.batch_images.labels(engine=eng).observe(sum(w.size for w in batch))
        for w in batch:
            self.metrics.stage.labels(engine=eng, stage="queue").observe((w.t_start or time.perf_counter()) - w.t_submit)

    def _on_depth(self, counts: dict[str, int]) -> None:
        for name in self.engines:
            self.metrics.queue_depth.labels(engine=name).set(counts.get(name, 0))

    def observe_stages(self, engine: str, timings: dict | None, stages: tuple[str, ...]) -> None:
        for st, v in (timings or {}).items():
            if st in stages:
                self.metrics.stage.labels(engine=engine, stage=st).observe(v)

    # ------------------------------------------------------------------ request policy
    def engine(self, name: str | None, kind: str) -> Engine:
        if name is None:
            for e in self.engines.values():
                if e.kind == kind:
                    return e
            raise bad(f"no {kind} engine is being served", 404, code="model_not_found", param="model")
        e = self.engines.get(name)
        if e is None:
            raise bad(f"unknown model {name!r}; served: {', '.join(self.engines)}", 404, code="model_not_found",
                      param="model")
        if e.kind != kind:
            raise bad(f"model {name!r} is a {e.kind} engine, not a {kind} engine", param="model")
        return e

    def resolve_loras(self, loras: dict | None) -> dict | None:
        """A request's ``loras`` ({name: strength}) -> {file: strength} for the pipeline. Clients name files of
        the server's LoRA directory (``fastgen serve --lora-dir DIR``), never paths: a name is a file name with
        or without ``.safetensors``, no folder parts."""
        if not loras:
            return None
        if self.lora_dir is None:
            raise bad("this server takes no LoRAs: start it with --lora-dir DIR", param="loras")
        out = {}
        for name, strength in loras.items():
            if not _LORA_NAME.fullmatch(name):
                raise bad(f"LoRA name {name!r} must be a file name of the server's LoRA directory (letters, digits, "
                          "'.', '_', '-'; no folders)", param="loras")
            file = name if name.endswith(".safetensors") else name + ".safetensors"
            path = os.path.join(self.lora_dir, file)
            if not os.path.isfile(path):
                have = sorted(f[:-len(".safetensors")] for f in os.listdir(self.lora_dir) if f.endswith(".safetensors"))
                raise bad(f"no LoRA {name!r} on this server (have: {', '.join(have[:20]) or 'none'})", param="loras")
            out[path] = strength
        return out

    def check_cap(self, name: str, v: int | None, hi: int) -> int | None:
        """A server policy cap (``--max-images``, steps): the pipeline's own rules still apply after it."""
        if v is not None and not 1 <= v <= hi:
            raise bad(f"'{name}' must be in [1, {hi}] on this server, got {v}", param=name)
        return v

    def check_size(self, width: int, height: int) -> None:
        if self.sizes is not None and (width, height) not in self.sizes:
            allowed = ", ".join(f"{a}x{b}" for a, b in sorted(self.sizes))
            raise bad(f"size {width}x{height} is not allowed; allowed sizes: {allowed}", param="size")

    def file_url(self, base_url: str, data: bytes, content_type: str, suffix: str) -> str:
        return f"{base_url.rstrip('/')}/v1/files/{self.files.put(data, content_type, suffix)}"

    # ------------------------------------------------------------------ submitting
    def submit(self, work: Work) -> None:
        if self.closing:
            raise error_for(ShuttingDownError("the server is shutting down"))
        try:
            self.batcher.submit(work)
        except QueueFullError as e:
            self.metrics.rejected.labels(engine=work.engine).inc()
            raise error_for(e) from None
        except ShuttingDownError as e:
            raise error_for(e) from None

    def cancel(self, work: Work) -> None:
        if not work.future.done():
            self.metrics.cancelled.labels(engine=work.engine).inc()
        self.batcher.cancel(work)

    # ------------------------------------------------------------------ running (worker threads)
    def _run_batch(self, works: list[Work]) -> list:
        eng = self.engines[works[0].engine]
        t0 = time.perf_counter()
        self.metrics.inflight.labels(engine=eng.name).inc()
        try:
            try:
                results = self._execute(eng, works)
            except CancelledError as e:
                results = [e] * len(works)
            except Exception as e:  # noqa: BLE001
                if len(works) == 1:
                    results = [e]
                else:  # one request must not fail the others: run each alone
                    results = []
                    for w in works:
                        try:
                            results.extend(self._execute(eng, [w]))
                        except Exception as e1:  # noqa: BLE001
                            results.append(e1)
        finally:
            self.metrics.inflight.labels(engine=eng.name).dec()
        self.metrics.stage.labels(engine=eng.name, stage="batch").observe(time.perf_counter() - t0)
        return results

    def _execute(self, eng: Engine, works: list[Work]) -> list:
        from . import captions, images, videos

        run = {"image": images.execute, "caption": captions.execute, "video": videos.execute}[eng.kind]
        return run(self, eng, works)

    def progress_callback(self, works: list[Work], total: int, rows: list[tuple[int, int]] | None = None):
        """The pipeline callback of one batch: progress (and latent previews) to each request, and
        stop when every request of the batch is cancelled."""
        every = max(1, total // PREVIEWS_PER_RUN) if total else 1

        def cb(i, t, latents):
            step = i + 1
            for k, w in enumerate(works):
                if w.progress is None or w.cancelled.is_set():
                    continue
                preview = None
                try:
                    if (w.params.get("preview") and rows is not None and latents is not None
                            and (step % every == 0 or step == total)):
                        start, n = rows[k]
                        preview = [b64(encode_image(latent_preview(latents[r]))) for r in range(start, start + n)]
                    w.progress(step, total, preview)
                except Exception:  # noqa: BLE001 - a progress sink never breaks the batch
                    pass
            return not all(w.cancelled.is_set() for w in works)
        return cb


__all__ = ["Service", "ApiError", "InvalidArgumentError", "parse_size"]
