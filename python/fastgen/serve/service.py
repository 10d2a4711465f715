"""The serving core, independent of any web framework: engines, request parsing, batched execution, jobs.

``Service`` is used by the Starlette app (``fastgen.serve.app``) and by the Ray Serve deployment
(``fastgen.serve.ray``), so both answer the same API with the same validation and errors.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .. import image as imgproc
from .._args import MAX_PROMPT_CHARS
from ..image import MAX_INPUT_PIXELS
from ..errors import CancelledError, ConfigError, FastgenError, InvalidArgumentError, UnsupportedError
from ..sampling import randn
from .batching import Batcher, QueueFullError, ShuttingDownError, Work
from .metrics import Metrics

OPENAI_IGNORED = {"quality", "style", "user", "background", "moderation", "output_compression", "partial_images"}
_SIZE_RE = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")


class ApiError(Exception):
    """An error answer: HTTP status, OpenAI-style error type, message, extra headers."""

    def __init__(self, status: int, type_: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.type, self.message, self.headers = status, type_, message, headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type}}


def bad(message: str, status: int = 400, type_: str = "invalid_request_error") -> ApiError:
    return ApiError(status, type_, message)


def error_for(exc: BaseException) -> ApiError:
    """The answer for an exception raised while serving a request."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, QueueFullError):
        return ApiError(429, "rate_limit_error", str(exc), {"Retry-After": "1"})
    if isinstance(exc, ShuttingDownError):
        return ApiError(503, "unavailable_error", str(exc), {"Retry-After": "5"})
    if isinstance(exc, InvalidArgumentError):
        return ApiError(400, "invalid_request_error", str(exc))
    if isinstance(exc, CancelledError):
        return ApiError(499, "cancelled_error", str(exc) or "request cancelled")
    if isinstance(exc, FastgenError):
        return ApiError(500, "server_error", f"{type(exc).__name__}: {exc}")
    return ApiError(500, "server_error", f"internal error ({type(exc).__name__}): {exc}")


# ---------------------------------------------------------------------------------- field checks

def _get(body: dict, *names: str, default: Any = None) -> Any:
    found = [n for n in names if n in body and body[n] is not None]
    if len(found) > 1:
        raise bad(f"give only one of {', '.join(found)}")
    return body[found[0]] if found else default


def _int(name: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise bad(f"'{name}' must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise bad(f"'{name}' must be in [{lo}, {hi}], got {v}")
    return v


def _str(name: str, v: Any, *, required: bool = False, max_len: int = MAX_PROMPT_CHARS) -> str | None:
    if v is None:
        if required:
            raise bad(f"'{name}' is required")
        return None
    if not isinstance(v, str):
        raise bad(f"'{name}' must be a string, got {type(v).__name__}")
    if required and not v.strip():
        raise bad(f"'{name}' must not be empty")
    if len(v) > max_len:
        raise bad(f"'{name}' is longer than {max_len} characters")
    return v


def _bool(name: str, v: Any) -> bool:
    if v is None:
        return False
    if not isinstance(v, bool):
        raise bad(f"'{name}' must be true or false, got {type(v).__name__}")
    return v


def _or(v: Any, default: Any) -> Any:
    return default if v is None else v


def _validate(pipe, *args, **kwargs):
    """The pipeline's own request validation; its argument errors are the client's (400)."""
    try:
        return pipe.validate(*args, **kwargs)
    except (InvalidArgumentError, ConfigError, UnsupportedError) as e:
        raise bad(str(e)) from None


def decode_image(name: str, v: Any):
    """A base64 string (optionally a data: URL) -> PIL image."""
    from PIL import Image

    s = _str(name, v, required=True, max_len=64 << 20)
    if s.startswith("data:"):
        s = s.split(",", 1)[-1]
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise bad(f"'{name}' is not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.size[0] * im.size[1] > MAX_INPUT_PIXELS:
                raise bad(f"'{name}' is {im.size[0]}x{im.size[1]}: larger than {MAX_INPUT_PIXELS} pixels")
            im.load()
            return im.copy()
    except ApiError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds
        raise bad(f"'{name}' is not a readable image: {type(e).__name__}") from None


PREVIEWS_PER_RUN = 5
# latent -> RGB linear approximation for 4-channel SD latents (the usual "latent preview" factors)
_SD_RGB = np.array([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264],
                    [-0.184, -0.271, -0.473]], np.float32)


def latent_preview(lat: np.ndarray):
    """A cheap low-resolution RGB preview (PIL) of one latent (C, h, w), without the VAE."""
    from PIL import Image

    lat = np.asarray(lat, np.float32)
    if lat.shape[0] == 4:
        rgb = np.einsum("chw,ck->hwk", lat, _SD_RGB)
        rgb = (rgb + 1.0) * 0.5
    else:  # other latent spaces: the first three channels, normalized
        x = lat[:3] if lat.shape[0] >= 3 else np.repeat(lat[:1], 3, axis=0)
        x = (x - x.min()) / max(float(x.max() - x.min()), 1e-6)
        rgb = np.moveaxis(x, 0, -1)
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), "RGB")


def encode_png(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------- engines

@dataclass
class Engine:
    name: str
    pipe: Any
    kind: str  # "image" | "caption" | "video"
    root: str

    def describe(self) -> dict:
        return {"id": self.name, "object": "model", "kind": self.kind, "owned_by": "fastgen"}


def _kind_of(pipe) -> str:
    k = getattr(pipe, "kind", "") or getattr(getattr(pipe, "manifest", None), "kind", "")
    if k == "captioning":
        return "caption"
    if "video" in k:
        return "video"
    return "image"


def load_engines(engines, **load_options) -> dict[str, Engine]:
    """{name: dir | Pipeline} or [dir | Pipeline, ...] -> {name: Engine}. List names are directory names."""
    from ..pipelines import Pipeline

    items: list[tuple[str | None, Any]]
    if isinstance(engines, dict):
        items = list(engines.items())
    elif isinstance(engines, (str, os.PathLike)):
        items = [(None, engines)]
    else:
        items = [(None, e) for e in engines]
    if not items:
        raise InvalidArgumentError("serve at least one engine")
    out: dict[str, Engine] = {}
    for name, e in items:
        pipe = e if not isinstance(e, (str, os.PathLike)) else Pipeline.load(e, **load_options)
        root = getattr(pipe, "engine_dir", None) or str(e)
        if name is None:
            name = os.path.basename(os.path.normpath(os.fspath(e))) if isinstance(e, (str, os.PathLike)) else "engine"
            base, i = name, 2
            while name in out:
                name, i = f"{base}-{i}", i + 1
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._:/-]{1,128}", name):
            raise InvalidArgumentError(f"engine name {name!r}: use letters, digits and ._:/- only")
        if name in out:
            raise InvalidArgumentError(f"two engines are named {name!r}")
        out[name] = Engine(name, pipe, _kind_of(pipe), root)
    return out


# ---------------------------------------------------------------------------------- jobs

class Jobs:
    """Asynchronous jobs: id -> status / progress / result; bounded (oldest finished ones dropped)."""

    def __init__(self, max_jobs: int = 256):
        self.max_jobs = max_jobs
        self._jobs: dict[str, dict] = {}
        self._works: dict[str, Work] = {}
        self._lock = threading.Lock()

    def create(self, work: Work, endpoint: str) -> dict:
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
        work.future.add_done_callback(lambda f: self._done(jid, f))
        return dict(job)

    def _done(self, jid: str, f) -> None:
        with self._lock:
            job = self._jobs.get(jid)
            self._works.pop(jid, None)
            if job is None:
                return
            job["finished"] = int(time.time())
            exc = f.exception()
            if exc is None:
                job["status"], job["result"] = "succeeded", f.result()
            elif isinstance(exc, CancelledError):
                job["status"] = "cancelled"
            else:
                job["status"], job["error"] = "failed", error_for(exc).body()["error"]

    def _evict(self) -> None:
        if len(self._jobs) < self.max_jobs:
            return
        for jid in [j for j, v in self._jobs.items() if v["status"] in ("succeeded", "failed", "cancelled")]:
            if len(self._jobs) < self.max_jobs:
                break
            del self._jobs[jid]
        if len(self._jobs) >= self.max_jobs:
            raise ApiError(429, "rate_limit_error", f"{self.max_jobs} jobs are pending; retry later",
                           {"Retry-After": "5"})

    def discard(self, jid: str) -> None:
        with self._lock:
            self._jobs.pop(jid, None)
            self._works.pop(jid, None)

    def get(self, jid: str) -> dict:
        with self._lock:
            job = self._jobs.get(jid)
            if job is None:
                raise bad(f"no job {jid!r}", 404, "not_found_error")
            return dict(job)

    def work(self, jid: str) -> Work | None:
        with self._lock:
            if jid not in self._jobs:
                raise bad(f"no job {jid!r}", 404, "not_found_error")
            return self._works.get(jid)


# ---------------------------------------------------------------------------------- the service

class Service:
    def __init__(self, engines, *, max_batch: int = 4, max_wait_ms: float = 10.0, max_queue: int = 64,
                 workers: int = 1, api_key: str | None = None, timeout_s: float = 300.0,
                 sizes: list[str] | None = None, max_images: int = 8, max_steps: int = 150,
                 max_body_bytes: int = 32 << 20, batching: bool = True, warmup: bool = True,
                 backend: str = "onnxruntime", device: str = "cpu", precision: str = "fp32",
                 threads: int | None = None):
        self.engines = load_engines(engines, backend=backend, device=device, precision=precision, threads=threads)
        self.api_key = api_key or None
        self.timeout_s = float(timeout_s)
        self.max_images = int(max_images)
        self.max_steps = int(max_steps)
        self.max_body_bytes = int(max_body_bytes)
        self.sizes = None
        if sizes:
            self.sizes = {self._parse_size(s) for s in sizes}
        self.batching = bool(batching)
        self.metrics = Metrics(max_batch)
        self.jobs = Jobs()
        self.max_batch = int(max_batch) if batching else 1
        self.max_wait_ms, self.max_queue, self.workers = float(max_wait_ms), int(max_queue), int(workers)
        self.batcher = self._make_batcher()
        for name in self.engines:
            self.metrics.queue_depth.set(0, engine=name)
        self.ready = threading.Event()
        self.closing = False
        self.load_error: str | None = None
        if warmup:
            threading.Thread(target=self._warmup, name="fastgen-serve-warmup", daemon=True).start()
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
                    e.pipe.session(comp)
        except Exception as ex:  # noqa: BLE001 - reported by /readyz
            self.load_error = f"{type(ex).__name__}: {ex}"
            return
        self.ready.set()

    def close(self, drain: bool = True, timeout: float = 60.0) -> bool:
        self.closing = True
        return self.batcher.close(drain=drain, timeout=timeout)

    def check_auth(self, headers) -> None:
        if self.api_key is None:
            return
        import hmac

        got = headers.get("authorization") or ""
        got = got[7:].strip() if got.lower().startswith("bearer ") else (headers.get("x-api-key") or "")
        if not hmac.compare_digest(got.encode(), self.api_key.encode()):
            raise ApiError(401, "authentication_error", "missing or wrong API key (Authorization: Bearer KEY)",
                           {"WWW-Authenticate": "Bearer"})

    # ------------------------------------------------------------------ metrics hooks
    def _on_batch(self, batch: list[Work]) -> None:
        eng = batch[0].engine
        self.metrics.batch_size.observe(len(batch), engine=eng)
        self.metrics.batch_images.observe(sum(w.size for w in batch), engine=eng)
        for w in batch:
            self.metrics.stage.observe((w.t_start or time.perf_counter()) - w.t_submit, engine=eng, stage="queue")

    def _on_depth(self, counts: dict[str, int]) -> None:
        for name in self.engines:
            self.metrics.queue_depth.set(counts.get(name, 0), engine=name)

    # ------------------------------------------------------------------ parsing
    def engine(self, body: dict, kind: str) -> Engine:
        name = _get(body, "model", "engine")
        if name is None:
            for e in self.engines.values():
                if e.kind == kind:
                    return e
            raise bad(f"no {kind} engine is being served", 404, "model_not_found")
        if not isinstance(name, str):
            raise bad(f"'model' must be a string, got {type(name).__name__}")
        e = self.engines.get(name)
        if e is None:
            raise bad(f"unknown model {name!r}; served: {', '.join(self.engines)}", 404, "model_not_found")
        if e.kind != kind:
            raise bad(f"model {name!r} is a {e.kind} engine, not a {kind} engine")
        return e

    @staticmethod
    def _parse_size(s: Any) -> tuple[int, int]:
        if not isinstance(s, str):
            raise bad(f"'size' must be a string 'WIDTHxHEIGHT', got {type(s).__name__}")
        m = _SIZE_RE.match(s)
        if not m:
            raise bad(f"'size' must look like '512x512' (width x height), got {s!r}")
        return int(m.group(1)), int(m.group(2))

    def parse_generate(self, body: Any, *, openai: bool = False) -> tuple[Work, dict]:
        """A request body -> (Work, options {stream, async}). Raises ApiError (4xx)."""
        if not isinstance(body, dict):
            raise bad("the request body must be a JSON object")
        if openai:
            allowed = {"model", "prompt", "n", "size", "response_format", "stream", "async", "seed", "preview",
                       "negative_prompt", "steps", "num_inference_steps", "guidance", "guidance_scale",
                       "scheduler"} | OPENAI_IGNORED
        else:
            allowed = {"model", "engine", "prompt", "negative_prompt", "n", "num_images", "num_images_per_prompt",
                       "size", "height", "width", "steps", "num_inference_steps", "guidance", "guidance_scale",
                       "guidance_rescale", "eta", "seed", "scheduler", "image", "mask", "mask_image", "strength",
                       "stream", "async", "response_format", "output_format", "preview", "cache"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise bad(f"unknown field(s): {', '.join(unknown)}")
        eng = self.engine(body, "image")
        pipe = eng.pipe
        fmt = body.get("response_format")
        if fmt is not None and fmt != "b64_json":
            raise bad("'response_format' must be 'b64_json' (this server does not host URLs)")
        of = body.get("output_format")
        if of is not None and of != "png":
            raise bad("'output_format' must be 'png'")
        n = _int("n", _get(body, "n", "num_images", "num_images_per_prompt", default=1), 1, self.max_images)
        size = body.get("size")
        height, width = body.get("height"), body.get("width")
        if size is not None:
            if height is not None or width is not None:
                raise bad("give either 'size' or 'height'/'width'")
            width, height = self._parse_size(size)
        steps = _get(body, "steps", "num_inference_steps")
        if steps is not None:
            steps = _int("steps", steps, 1, self.max_steps)
        image = body.get("image")
        mask = _get(body, "mask", "mask_image")
        if mask is not None and image is None:
            raise bad("'mask' needs 'image' (inpainting)")
        prompt = body.get("prompt")
        if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
            raise bad("'prompt' is required and must not be empty")
        if not isinstance(prompt, str):
            raise bad(f"'prompt' must be a string, got {type(prompt).__name__}")
        # every pipeline argument is checked by the pipeline's own validate: one set of rules
        req = _validate(pipe, prompt, negative_prompt=body.get("negative_prompt"), num_images_per_prompt=n,
                        height=height, width=width, num_inference_steps=steps,
                        guidance_scale=_get(body, "guidance", "guidance_scale"),
                        guidance_rescale=_or(body.get("guidance_rescale"), 0.0), eta=_or(body.get("eta"), 0.0),
                        seed=body.get("seed"), scheduler=body.get("scheduler"),
                        image=None if image is None else decode_image("image", image),
                        mask_image=None if mask is None else decode_image("mask", mask),
                        strength=body.get("strength"), output_type="np", cache=body.get("cache"))
        if self.sizes is not None and (req.width, req.height) not in self.sizes:
            allowed = ", ".join(f"{a}x{b}" for a, b in sorted(self.sizes))
            raise bad(f"size {req.width}x{req.height} is not allowed; allowed sizes: {allowed}")
        opts = {"stream": _bool("stream", body.get("stream")), "async": _bool("async", body.get("async"))}
        preview = _bool("preview", body.get("preview"))
        if preview and not opts["stream"]:
            raise bad("'preview' needs 'stream': true (previews come with the progress events)")
        if opts["stream"] and opts["async"]:
            raise bad("give only one of 'stream' and 'async'")
        # the step count reported in progress events; stochastic samplers are never merged (per-row noise)
        try:
            total = pipe.denoising_steps(req)
            stochastic = pipe.make_scheduler(req.scheduler).is_stochastic(req.eta)
        except (InvalidArgumentError, ConfigError) as e:
            raise bad(str(e)) from None
        p = {"request": req, "preview": preview, "total_steps": total, "n": n, "seed": req.seed, "mode": req.mode}
        key = None
        # First-Block Cache decides from the whole batch's residual: such requests are never merged
        fbc = req.cache is not None and req.cache.kind == "first_block"
        if req.mode != "inpaint" and not stochastic and self.batching and not fbc:
            # one network call per batch: every setting that is not per-row must be equal (img2img: the
            # strength too; inpainting is never merged: given latents take another path than a seed there;
            # the step cache setting too)
            cfg = pipe.uses_cfg(req.guidance_scale)
            key = (req.mode, req.height, req.width, req.num_inference_steps, str(req.scheduler), cfg,
                   req.guidance_scale if cfg else None, req.guidance_rescale, req.eta, req.negative_prompts is None,
                   req.strength if req.mode == "img2img" else None, req.cache)
        return Work(engine=eng.name, key=key, params=p, size=n), opts

    def parse_caption(self, body: Any) -> tuple[Work, dict]:
        if not isinstance(body, dict):
            raise bad("the request body must be a JSON object")
        allowed = {"model", "engine", "image", "images", "prompt", "max_new_tokens", "num_beams",
                   "num_return_sequences", "length_penalty", "repetition_penalty", "no_repeat_ngram_size", "async"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise bad(f"unknown field(s): {', '.join(unknown)}")
        eng = self.engine(body, "caption")
        images = _get(body, "image", "images")
        if images is None:
            raise bad("'images' (a list of base64 images) is required")
        if isinstance(images, str):
            images = [images]
        if not isinstance(images, list) or not images:
            raise bad("'images' must be a non-empty list of base64 strings")
        if len(images) > self.max_images:
            raise bad(f"at most {self.max_images} images per request")
        pil = [decode_image(f"images[{i}]", s) for i, s in enumerate(images)]
        # server policy caps, then the pipeline's own validation
        max_new = _int("max_new_tokens", _or(body.get("max_new_tokens"), 20), 1, 512)
        beams = _int("num_beams", _or(body.get("num_beams"), 1), 1, 16)
        req = _validate(eng.pipe, pil, body.get("prompt"), max_new_tokens=max_new, num_beams=beams,
                        num_return_sequences=_or(body.get("num_return_sequences"), 1),
                        length_penalty=_or(body.get("length_penalty"), 1.0),
                        repetition_penalty=_or(body.get("repetition_penalty"), 1.0),
                        no_repeat_ngram_size=_or(body.get("no_repeat_ngram_size"), 0))
        p = {"request": req}
        opts = {"stream": False, "async": _bool("async", body.get("async"))}
        key = None
        if req.prompts is None and self.batching:
            key = ("caption", req.max_new_tokens, req.num_beams, req.num_return_sequences, req.length_penalty,
                   req.repetition_penalty, req.no_repeat_ngram_size, str(req.early_stopping))
        return Work(engine=eng.name, key=key, params=p, size=len(req.images)), opts

    def parse_video(self, body: Any) -> tuple[Work, dict]:
        if not isinstance(body, dict):
            raise bad("the request body must be a JSON object")
        eng = self.engine(body, "video")
        from_image = getattr(eng.pipe, "kind", "") == "img2video"
        if from_image:  # Stable Video Diffusion: an image, no prompt
            allowed = {"image", "num_frames", "num_inference_steps", "steps", "height", "width", "seed",
                       "min_guidance_scale", "max_guidance_scale", "fps", "motion_bucket_id", "noise_aug_strength",
                       "decode_chunk_size"}
        else:
            allowed = {"prompt", "negative_prompt", "num_frames", "num_inference_steps", "steps", "guidance_scale",
                       "guidance", "height", "width", "seed", "scheduler", "context_length", "context_stride",
                       "decode_chunk_size", "guidance_rescale", "eta", "context_weighting"}
        unknown = sorted(set(body) - allowed - {"model", "engine", "async"})
        if unknown:
            raise bad(f"unknown field(s): {', '.join(unknown)}")
        args = {k: v for k, v in body.items() if k in allowed and v is not None}
        for a, b in (("steps", "num_inference_steps"), ("guidance", "guidance_scale")):
            if a in args:
                if b in args:
                    raise bad(f"give only one of {a}, {b}")
                args[b] = args.pop(a)
        if "num_inference_steps" in args:
            args["num_inference_steps"] = _int("steps", args["num_inference_steps"], 1, self.max_steps)
        if "num_frames" in args:
            args["num_frames"] = _int("num_frames", args["num_frames"], 1, 1024)
        if from_image:
            if args.get("image") is None:
                raise bad("'image' is required (image-to-video engines take an image, no prompt)")
            first = decode_image("image", args.pop("image"))
        else:
            first = args.pop("prompt", None)
            if not isinstance(first, str) or not first.strip():
                raise bad("'prompt' is required and must be a non-empty string")
        req = _validate(eng.pipe, first, output_type="np", **args)
        p = {"mode": "video", "request": req, "seed": req.seed}
        return Work(engine=eng.name, key=None, params=p), {"stream": False, "async": True}

    # ------------------------------------------------------------------ submitting
    def submit(self, work: Work) -> None:
        if self.closing:
            raise error_for(ShuttingDownError("the server is shutting down"))
        try:
            self.batcher.submit(work)
        except QueueFullError as e:
            self.metrics.rejected.inc(engine=work.engine)
            raise error_for(e) from None
        except ShuttingDownError as e:
            raise error_for(e) from None

    def cancel(self, work: Work) -> None:
        if not work.future.done():
            self.metrics.cancelled.inc(engine=work.engine)
        self.batcher.cancel(work)

    # ------------------------------------------------------------------ running (worker threads)
    def _run_batch(self, works: list[Work]) -> list:
        eng = self.engines[works[0].engine]
        t0 = time.perf_counter()
        self.metrics.inflight.inc(engine=eng.name)
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
            self.metrics.inflight.dec(engine=eng.name)
        self.metrics.stage.observe(time.perf_counter() - t0, engine=eng.name, stage="batch")
        return results

    def _execute(self, eng: Engine, works: list[Work]) -> list:
        if eng.kind == "caption":
            return self._execute_caption(eng, works)
        if eng.kind == "video":
            return self._execute_video(eng, works)
        return self._execute_image(eng, works)

    def _callback(self, works: list[Work], total: int, rows: list[tuple[int, int]] | None = None):
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
                        preview = [encode_png(latent_preview(latents[r])) for r in range(start, start + n)]
                    w.progress(step, total, preview)
                except Exception:  # noqa: BLE001 - a progress sink never breaks the batch
                    pass
            return not all(w.cancelled.is_set() for w in works)
        return cb

    def _execute_image(self, eng: Engine, works: list[Work]) -> list:
        pipe = eng.pipe
        p0 = works[0].params
        req = p0["request"]
        rows, r0 = [], 0
        for w in works:
            rows.append((r0, w.params["n"]))
            r0 += w.params["n"]
        cb = self._callback(works, p0["total_steps"], rows)
        if len(works) == 1:
            req = replace(req, callback=cb)
        else:
            # one batched call: per-request rows, each request's noise from its own seed (as a lone request);
            # the works share every setting in their batch key, so the merged request stays valid
            reqs = [w.params["request"] for w in works]
            lh, lw = req.height // pipe.vae_scale_factor, req.width // pipe.vae_scale_factor
            latents = np.concatenate([randn((r.batch, pipe.latent_channels, lh, lw), r.seed) for r in reqs])
            negs = None if req.negative_prompts is None else tuple(
                ng for r in reqs for ng in r.negative_prompts for _ in range(r.num_images_per_prompt))
            req = replace(req, prompts=tuple(pr for r in reqs for pr in r.prompts for _ in range(r.num_images_per_prompt)),
                          negative_prompts=negs, num_images_per_prompt=1, latents=latents, callback=cb,
                          images=None if req.mode != "img2img" else tuple(
                              r.images[k % len(r.images)] for r in reqs for k in range(r.batch)))
        out = pipe.run(req)
        timings = dict(out.timings)
        for st in ("text_encode", "denoise", "vae_decode"):
            if st in timings:
                self.metrics.stage.observe(timings[st], engine=eng.name, stage=st)
        t0 = time.perf_counter()
        pils = imgproc.to_pil(np.asarray(out.images))
        results, row = [], 0
        for w in works:
            n = w.params["n"]
            imgs = [encode_png(im) for im in pils[row:row + n]]
            row += n
            results.append({"images": imgs, "seed": w.params["seed"], "batch": len(works), "timings": timings})
        self.metrics.stage.observe(time.perf_counter() - t0, engine=eng.name, stage="encode")
        return results

    def _execute_caption(self, eng: Engine, works: list[Work]) -> list:
        req = works[0].params["request"]
        if len(works) > 1:  # same settings (batch key), no prompts: one call over every request's images
            req = replace(req, images=tuple(im for w in works for im in w.params["request"].images))
        out = eng.pipe.run(req)
        for st, v in (getattr(out, "timings", None) or {}).items():
            if st in ("preprocess", "image_encode", "cross_kv", "text_decode"):
                self.metrics.stage.observe(v, engine=eng.name, stage=st)
        per = req.num_return_sequences
        results, row = [], 0
        for w in works:
            k = len(w.params["request"].images) * per
            results.append({"captions": list(out.texts[row:row + k]), "batch": len(works)})
            row += k
        return results

    def _execute_video(self, eng: Engine, works: list[Work]) -> list:
        (w,) = works
        req = w.params["request"]
        steps = req.num_inference_steps
        out = eng.pipe.run(replace(req, callback=self._callback(works, steps)))
        frames = np.asarray(out.frames)
        if frames.ndim == 5:  # (batch, frames, H, W, 3): one video per job
            frames = frames[0]
        for st, v in (getattr(out, "timings", None) or {}).items():
            if st in ("text_encode", "image_encode", "denoise", "vae_decode"):
                self.metrics.stage.observe(v, engine=eng.name, stage=st)
        return [{"frames": [encode_png(im) for im in imgproc.to_pil(frames)], "seed": req.seed,
                 "num_frames": int(frames.shape[0])}]

    # ------------------------------------------------------------------ answers
    @staticmethod
    def images_response(result: dict, model: str) -> dict:
        return {"created": int(time.time()), "model": model, "seed": result["seed"],
                "data": [{"b64_json": b, "seed": result["seed"]} for b in result["images"]]}
