"""``POST /v1/videos``: text-to-video and image-to-video jobs whose result is an MP4 or GIF file."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from dataclasses import replace
from typing import Literal, Optional

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import StreamingResponse
from pydantic import AliasChoices, Field

from .batching import Work
from ..video_io import export_video
from .errors import bad, error_for, validated
from .media import VIDEO_FORMATS, b64, decode_image, encode_video
from .running import answer
from .schemas import WITH_JOB, Body
from .service import Service

MAX_FRAMES = 1024


class VideosRequest(Body):
    """Text-to-video engines take a prompt; image-to-video ones (Stable Video Diffusion) an image and no
    prompt. Arguments a pipeline does not take are refused by its ``validate``."""

    model: Optional[str] = Field(None, validation_alias=AliasChoices("model", "engine"))
    prompt: Optional[str] = Field(None, description="text-to-video engines")
    image: Optional[str] = Field(None, description="image-to-video engines: the first frame, base64")
    negative_prompt: Optional[str] = None
    num_frames: Optional[int] = Field(None, description=f"at most {MAX_FRAMES} here")
    steps: Optional[int] = Field(None, validation_alias=AliasChoices("steps", "num_inference_steps"))
    guidance: Optional[float] = Field(None, validation_alias=AliasChoices("guidance", "guidance_scale"))
    height: Optional[int] = None
    width: Optional[int] = None
    seed: Optional[int] = None
    scheduler: Optional[str] = None
    guidance_rescale: Optional[float] = None
    eta: Optional[float] = None
    context_length: Optional[int] = None
    context_stride: Optional[int] = None
    context_weighting: Optional[str] = None
    decode_chunk_size: Optional[int] = None
    min_guidance_scale: Optional[float] = None
    max_guidance_scale: Optional[float] = None
    fps: Optional[float] = Field(None, description="image-to-video conditioning (and then the file's frame rate)")
    motion_bucket_id: Optional[float] = None
    noise_aug_strength: Optional[float] = None
    format: Literal["mp4", "gif"] = Field("mp4", description="the file made")
    frame_rate: Optional[float] = Field(None, description="the file's frames per second (default: fps or 8)")
    response_format: Literal["b64_json", "url"] = Field("b64_json", description="the file inline or as a link")
    async_: bool = Field(True, validation_alias=AliasChoices("async"), serialization_alias="async",
                         description="true (default): 202 with a job; false: wait for the file")
    stream: bool = Field(False, description="answer with the GIF file itself, sent as it is written, frame by "
                                            "frame (needs async: false and format: gif)")


class VideoData(Body):
    b64_json: Optional[str] = None
    url: Optional[str] = None
    content_type: str


class VideosResponse(Body):
    created: int
    model: str
    seed: int
    num_frames: int
    format: Literal["mp4", "gif"]
    data: list[VideoData]


_ARGS = ("negative_prompt", "num_frames", "guidance_rescale", "eta", "context_length", "context_stride",
         "context_weighting", "decode_chunk_size", "height", "width", "seed", "scheduler", "min_guidance_scale",
         "max_guidance_scale", "fps", "motion_bucket_id", "noise_aug_strength")


def video_work(service: Service, b: VideosRequest) -> Work:
    eng = service.engine(b.model, "video")
    from_image = getattr(eng.pipe, "kind", "") == "img2video"
    args = {k: getattr(b, k) for k in _ARGS if getattr(b, k) is not None}
    if b.steps is not None:
        args["num_inference_steps"] = service.check_cap("steps", b.steps, service.max_steps)
    if b.guidance is not None:
        args["guidance_scale"] = b.guidance
    service.check_cap("num_frames", b.num_frames, MAX_FRAMES)
    if from_image:
        if b.prompt is not None:
            raise bad("image-to-video engines take an 'image' and no 'prompt'", param="prompt")
        if b.image is None:
            raise bad("'image' is required (image-to-video engines take an image, no prompt)", param="image")
        first = decode_image("image", b.image)
    else:
        if b.image is not None:
            raise bad("text-to-video engines take a 'prompt' and no 'image'", param="image")
        if not b.prompt or not b.prompt.strip():
            raise bad("'prompt' is required and must be a non-empty string", param="prompt")
        first = b.prompt
    if b.stream and b.async_:
        raise bad("'stream' sends the file in the answer: give \"async\": false with it", param="stream")
    if b.stream and b.format != "gif":
        raise bad("'stream' needs \"format\": \"gif\" (a GIF is written front to back; an MP4's index is "
                  "written at its end)", param="stream")
    req = validated(eng.pipe.validate, first, output_type="np", **args)
    rate = b.frame_rate or b.fps or 8.0
    params = {"mode": "video", "request": req, "seed": req.seed, "format": b.format, "rate": rate,
              "call": (first, args)}
    if b.stream:  # the worker writes the file here; the answer reads it as it grows
        fd, params["stream_to"] = tempfile.mkstemp(suffix="." + b.format, prefix="fastgen-serve-")
        os.close(fd)
    return Work(engine=eng.name, key=None, params=params)


def _frames(service: Service, eng, w: Work):
    """The video's frames: one at a time from ``iter_frames`` when streaming a text-to-video engine that
    has it (frames reach the file while later ones decode), else the whole run's array."""
    req, cb = w.params["request"], service.progress_callback([w], w.params["request"].num_inference_steps)
    if w.params.get("stream_to") and getattr(eng.pipe, "kind", "") == "text2video" and hasattr(eng.pipe, "iter_frames"):
        first, args = w.params["call"]
        return eng.pipe.iter_frames(first, callback=cb, **args), None
    out = eng.pipe.run(replace(req, callback=cb))
    frames = np.asarray(out.frames)
    return (frames[0] if frames.ndim == 5 else frames), out  # (batch, frames, H, W, 3): one video per job


def execute(service: Service, eng, works: list[Work]) -> list:
    (w,) = works
    frames, out = _frames(service, eng, w)
    if out is not None:
        service.observe_stages(eng.name, getattr(out, "timings", None), ("text_encode", "image_encode", "denoise",
                                                                          "vae_decode"))
    t0 = time.perf_counter()
    res = {"seed": w.params["seed"]}
    if w.params.get("stream_to"):
        counted = _Counted(frames)
        export_video(counted, w.params["stream_to"], fps=w.params["rate"])
        res["num_frames"] = counted.n
    else:
        res["video"], res["num_frames"] = encode_video(frames, w.params["format"], w.params["rate"]), len(frames)
    service.metrics.stage.labels(engine=eng.name, stage="encode").observe(time.perf_counter() - t0)
    return [res]


class _Counted:
    def __init__(self, frames):
        self.it, self.n = iter(frames), 0

    def __iter__(self):
        for f in self.it:
            self.n += 1
            yield f


async def stream_file(service: Service, work: Work, content_type: str) -> StreamingResponse:
    """Submit ``work`` and answer with its file as the worker writes it. Errors before the first byte
    are answered as errors; a client that leaves cancels the work."""
    path = work.params["stream_to"]
    f = open(path, "rb")  # opened before the worker truncates and writes it: the same file
    work.future.add_done_callback(lambda _: os.path.exists(path) and os.unlink(path))
    try:
        service.submit(work)
        fut = asyncio.wrap_future(work.future)
        while not fut.done() and os.fstat(f.fileno()).st_size == 0:
            await asyncio.wait({fut}, timeout=0.05)
        if fut.done() and fut.exception() is not None:
            raise error_for(fut.exception())
    except BaseException:
        f.close()
        service.cancel(work)
        raise

    async def body():
        done = False
        try:
            while True:
                chunk = f.read(1 << 16)
                if chunk:
                    yield chunk
                elif done:
                    return
                else:
                    done = fut.done()  # one more read after the worker finished: the file's end
                    if not done:
                        await asyncio.wait({fut}, timeout=0.05)
        finally:
            f.close()
            if not fut.done():
                service.cancel(work)

    return StreamingResponse(body(), media_type=content_type, headers={"X-Seed": str(work.params["seed"])})


def router(service: Service) -> APIRouter:
    r = APIRouter(tags=["videos"])

    @r.post("/v1/videos", name="videos", response_model=VideosResponse,
            responses={**WITH_JOB, 200: {"content": {"application/json": {}, "video/mp4": {}, "image/gif": {}},
                                         "description": "the file's JSON (b64_json / url), or with stream the file"}},
            summary="Make a video file (MP4 or GIF): a job by default (GET /v1/jobs/{id}), or streamed")
    async def videos(body: VideosRequest, request: Request):
        work = await asyncio.to_thread(video_work, service, body)
        fmt, base = body.format, str(request.base_url)

        def shape(res: dict) -> dict:
            ct = VIDEO_FORMATS[fmt]
            item = ({"url": service.file_url(base, res["video"], ct, "." + fmt)} if body.response_format == "url"
                    else {"b64_json": b64(res["video"])})
            return {"created": int(time.time()), "model": work.engine, "seed": res["seed"],
                    "num_frames": res["num_frames"], "format": fmt, "data": [{**item, "content_type": ct}]}

        if body.stream:
            return await stream_file(service, work, VIDEO_FORMATS[fmt])
        return await answer(service, request, work, shape, "videos", async_=body.async_)

    return r
