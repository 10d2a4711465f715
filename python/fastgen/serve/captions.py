"""``POST /v1/captions``: image captioning. Prompt-less requests with equal settings share one call."""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import replace
from typing import Optional, Union

from fastapi import APIRouter, Request
from pydantic import AliasChoices, Field

from .batching import Work
from .errors import bad, validated
from .media import decode_image
from .running import answer
from .schemas import WITH_JOB, Body
from .service import Service

MAX_NEW_TOKENS = 512  # server policy caps; the pipeline's own rules apply within them
MAX_BEAMS = 16


class CaptionsRequest(Body):
    images: Union[str, list[str]] = Field(validation_alias=AliasChoices("images", "image"),
                                          description="base64 images (or data: URLs); one string or a list")
    model: Optional[str] = Field(None, validation_alias=AliasChoices("model", "engine"))
    prompt: Optional[str] = Field(None, description="a text prefix the caption continues (conditional captioning)")
    max_new_tokens: Optional[int] = Field(None, description=f"default 20, at most {MAX_NEW_TOKENS} here")
    num_beams: Optional[int] = Field(None, description=f"beam search width (default 1: greedy), at most {MAX_BEAMS}")
    num_return_sequences: Optional[int] = None
    length_penalty: Optional[float] = None
    repetition_penalty: Optional[float] = None
    no_repeat_ngram_size: Optional[int] = None
    async_: bool = Field(False, validation_alias=AliasChoices("async"), serialization_alias="async")


class CaptionsResponse(Body):
    created: int
    model: str
    captions: list[str] = Field(description="per image, num_return_sequences candidates, best first")


def caption_work(service: Service, b: CaptionsRequest) -> Work:
    eng = service.engine(b.model, "caption")
    images = [b.images] if isinstance(b.images, str) else b.images
    if not images:
        raise bad("'images' must be a non-empty list of base64 strings", param="images")
    if len(images) > service.max_images:
        raise bad(f"at most {service.max_images} images per request", param="images")
    pil = [decode_image(f"images[{i}]", s) for i, s in enumerate(images)]
    opt = {k: v for k, v in (("max_new_tokens", b.max_new_tokens), ("num_beams", b.num_beams),
                             ("num_return_sequences", b.num_return_sequences), ("length_penalty", b.length_penalty),
                             ("repetition_penalty", b.repetition_penalty),
                             ("no_repeat_ngram_size", b.no_repeat_ngram_size)) if v is not None}
    service.check_cap("max_new_tokens", b.max_new_tokens, MAX_NEW_TOKENS)
    service.check_cap("num_beams", b.num_beams, MAX_BEAMS)
    req = validated(eng.pipe.validate, pil, b.prompt, **opt)
    key = None
    if req.prompts is None and service.batching:
        key = ("caption", req.max_new_tokens, req.num_beams, req.num_return_sequences, req.length_penalty,
               req.repetition_penalty, req.no_repeat_ngram_size, str(req.early_stopping))
    return Work(engine=eng.name, key=key, params={"request": req}, size=len(req.images))


def execute(service: Service, eng, works: list[Work]) -> list:
    req = works[0].params["request"]
    if len(works) > 1:  # same settings (batch key), no prompts: one call over every request's images
        req = replace(req, images=tuple(im for w in works for im in w.params["request"].images))
    out = eng.pipe.run(req)
    service.observe_stages(eng.name, getattr(out, "timings", None), ("preprocess", "image_encode", "cross_kv",
                                                                      "text_decode"))
    per = req.num_return_sequences
    results, row = [], 0
    for w in works:
        k = len(w.params["request"].images) * per
        results.append({"captions": list(out.texts[row:row + k]), "batch": len(works)})
        row += k
    return results


def response(model: str, res: dict) -> dict:
    return {"created": int(time.time()), "model": model, "captions": res["captions"]}


def router(service: Service) -> APIRouter:
    r = APIRouter(tags=["captions"])

    @r.post("/v1/captions", name="captions", response_model=CaptionsResponse, responses=WITH_JOB,
            summary="Caption images (or answer 202 with a job when async)")
    async def captions(body: CaptionsRequest, request: Request):
        work = await asyncio.to_thread(caption_work, service, body)
        return await answer(service, request, work, functools.partial(response, work.engine), "captions",
                            async_=body.async_)

    return r
