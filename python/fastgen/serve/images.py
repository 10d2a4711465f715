"""Image endpoints: the OpenAI images API (``/v1/images/generations``, ``/v1/images/edits``,
``/v1/images/variations``) and fastgen's own ``/v1/generate`` (every pipeline argument, SSE, jobs).

Request models (pydantic) -> ``image_work`` builds the pipeline request with the pipeline's own
``validate`` -> ``execute`` runs a batch of compatible requests as one network call (each request's
noise from its own seed: bit-equal to running it alone) -> ``shape`` makes the response body.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Annotated, Literal, Optional, Union

import numpy as np
from fastapi import APIRouter, Form, Request, UploadFile
from pydantic import AliasChoices, Field

from .. import image as imgproc
from ..sampling import randn
from .batching import Work
from .errors import bad, validated
from .media import IMAGE_FORMATS, b64, decode_image, decode_image_bytes, encode_image
from .running import answer
from .schemas import ERRORS, WITH_JOB, Body, FormBody
from .service import Service, parse_size

ResponseFormat = Literal["b64_json", "url"]
OutputFormat = Literal["png", "jpeg", "webp"]
Quality = Literal["auto", "standard", "low", "medium", "high", "hd", "xhigh", "max"]
# quality -> multiple of the engine's default step count (capped by the server's --max-steps)
QUALITY_STEPS = {"auto": 1.0, "standard": 1.0, "medium": 1.0, "low": 0.5, "high": 2.0, "hd": 2.0, "xhigh": 3.0,
                 "max": 4.0}


# ------------------------------------------------------------------------------------------ request models

class _Extras(Body):
    """fastgen's arguments beyond OpenAI's (the pipeline's names; its ``validate`` checks them)."""

    negative_prompt: Optional[str] = Field(None, description="what to steer away from")
    steps: Optional[int] = Field(None, validation_alias=AliasChoices("steps", "num_inference_steps"),
                                 description="denoising steps (default: the engine's; overrides quality)")
    guidance: Optional[float] = Field(None, validation_alias=AliasChoices("guidance", "guidance_scale"),
                                      description="classifier-free guidance scale (default: the engine's)")
    seed: Optional[int] = Field(None, description="[0, 2**63); the same seed gives the same image (default: random)")
    scheduler: Optional[str] = Field(None, description="a scheduler name or alias (ddim, euler, euler_a, dpm++, ...)")


class ImagesGenerateRequest(_Extras):
    """``client.images.generate(...)``: every field the ``openai`` client sends, plus fastgen's extras."""

    prompt: str = Field(min_length=1)
    model: Optional[str] = Field(None, description="a served engine (GET /v1/models); default: the first image one")
    n: Optional[int] = Field(None, description="images to make (at most the server's --max-images)")
    size: Optional[str] = Field(None, description="'WIDTHxHEIGHT' or 'auto' (the engine's default size)")
    quality: Optional[Quality] = Field(
        None, description="steps as a multiple of the engine's default: low 0.5x; auto, standard, medium 1x; "
                          "high, hd 2x; xhigh 3x; max 4x (capped by --max-steps); 'steps' overrides it")
    style: Optional[Literal["vivid", "natural"]] = Field(None, description="refused (400): no style control here")
    response_format: Optional[ResponseFormat] = Field(
        None, description="b64_json (default) or url: a link under /v1/files/ that expires (--file-ttl)")
    output_format: Optional[OutputFormat] = Field(None, description="png (default; with text chunks), jpeg, webp")
    output_compression: Optional[int] = Field(None, description="jpeg / webp quality, 0-100")
    background: Optional[Literal["auto", "opaque"]] = Field(None, description="images are opaque; transparent is refused")
    moderation: Optional[Literal["auto", "low"]] = Field(None, description="accepted; fastgen runs no moderation model")
    stream: Optional[bool] = Field(None, description="refused when true: use POST /v1/generate with stream")
    partial_images: Optional[int] = Field(None, description="refused when > 0 (needs stream)")
    user: Optional[str] = Field(None, description="an end-user id; accepted, not used")
    safety_identifier: Optional[str] = Field(None, description="an end-user id; accepted, not used")
    complexity: Optional[str] = Field(None, description="refused: SVG output is not made here")
    frame_count: Optional[int] = Field(None, description="refused: use POST /v1/videos")
    frame_duration_ms: Optional[int] = Field(None, description="refused: use POST /v1/videos")
    svg: Optional[dict] = Field(None, description="refused: SVG output is not made here")


class GenerateRequest(_Extras):
    """``POST /v1/generate``: every argument of the image pipelines, images as base64 (or data: URLs)."""

    prompt: str = Field(min_length=1)
    model: Optional[str] = Field(None, validation_alias=AliasChoices("model", "engine"))
    n: Optional[int] = Field(None, validation_alias=AliasChoices("n", "num_images", "num_images_per_prompt"))
    size: Optional[str] = Field(None, description="'WIDTHxHEIGHT'; or give height and width")
    height: Optional[int] = None
    width: Optional[int] = None
    guidance_rescale: Optional[float] = None
    eta: Optional[float] = Field(None, description="DDIM eta (0: deterministic)")
    image: Optional[str] = Field(None, description="img2img / inpaint input image, base64 or a data: URL")
    mask: Optional[str] = Field(None, validation_alias=AliasChoices("mask", "mask_image"),
                                description="inpainting mask (white: repaint), base64; needs image")
    strength: Optional[float] = Field(None, description="img2img / inpaint strength (0, 1]")
    stream: bool = Field(False, description="answer with server-sent events: queued, progress, result")
    async_: bool = Field(False, validation_alias=AliasChoices("async"), serialization_alias="async",
                         description="answer 202 with a job (GET /v1/jobs/{id})")
    preview: bool = Field(False, description="low-resolution latent previews in the progress events (needs stream)")
    response_format: Optional[ResponseFormat] = None
    output_format: Optional[OutputFormat] = None
    output_compression: Optional[int] = None
    cache: Optional[Union[str, dict]] = Field(None, description="step caching, as the API's cache=: "
                                              "'deepcache:interval=3', {'kind': 'first_block', ...}; default off")
    loras: Optional[dict[str, float]] = Field(None, description="LoRAs by name from the server's --lora-dir, with "
                                              "strengths: {'style': 0.8}; the engine needs --lora-branches")
    control_image: Optional[Union[str, list[str]]] = Field(
        None, description="ControlNet conditioning image(s), base64 or data: URLs: one per ControlNet of the engine "
                          "(exported with --controlnet); such requests run alone, never merged into a batch")
    controlnet_conditioning_scale: Optional[Union[float, list[float]]] = None
    control_guidance_start: Optional[Union[float, list[float]]] = None
    control_guidance_end: Optional[Union[float, list[float]]] = None
    guess_mode: Optional[bool] = None


class EditForm(FormBody):
    """``client.images.edit(...)``'s form: the image as ``image`` (or ``image[]``), an optional ``mask``."""

    image: list[UploadFile] = Field([], description="the image to edit (PNG, JPEG, WebP): exactly one")
    image_list: list[UploadFile] = Field([], alias="image[]", description="the image, as the client's list form")
    mask: Optional[UploadFile] = Field(None, description="where to edit: transparent pixels of an RGBA mask "
                                                         "(OpenAI's rule), else white pixels (diffusers' rule)")
    prompt: str = Field(min_length=1)
    model: Optional[str] = None
    n: Optional[int] = None
    size: Optional[str] = None
    quality: Optional[Quality] = None
    response_format: Optional[ResponseFormat] = None
    output_format: Optional[OutputFormat] = None
    output_compression: Optional[int] = None
    background: Optional[Literal["auto", "opaque"]] = None
    input_fidelity: Optional[Literal["low", "high"]] = Field(None, description="refused: give 'strength' instead")
    partial_images: Optional[int] = None
    stream: Optional[bool] = None
    user: Optional[str] = None
    safety_identifier: Optional[str] = None
    strength: Optional[float] = Field(None, description="how much to change the image (0, 1]")
    negative_prompt: Optional[str] = None
    steps: Optional[int] = None
    guidance: Optional[float] = None
    seed: Optional[int] = None
    scheduler: Optional[str] = None


class VariationForm(FormBody):
    """``client.images.create_variation(...)``'s form fields: an img2img pass at ``strength`` with an
    optional prompt (default empty)."""

    image: list[UploadFile] = Field([], description="the image (PNG, JPEG, WebP): exactly one")
    model: Optional[str] = None
    n: Optional[int] = None
    size: Optional[str] = None
    response_format: Optional[ResponseFormat] = None
    user: Optional[str] = None
    prompt: str = Field("", description="optional text to steer the variation")
    strength: Optional[float] = Field(None, description="how far from the image (0, 1]; default --variation-strength")
    negative_prompt: Optional[str] = None
    steps: Optional[int] = None
    guidance: Optional[float] = None
    seed: Optional[int] = None
    scheduler: Optional[str] = None


# ------------------------------------------------------------------------------------------ response models

class ImageData(Body):
    b64_json: Optional[str] = None
    url: Optional[str] = None
    revised_prompt: Optional[str] = None
    seed: int


class ImagesResponse(Body):
    created: int
    model: str
    seed: int
    data: list[ImageData]
    output_format: OutputFormat
    size: str
    background: Literal["opaque"] = "opaque"
    quality: Optional[str] = None


class GenerateResponse(ImagesResponse):
    batch: int = Field(description="requests merged into the network call that made these images")
    timings: dict[str, float] = Field(description="seconds per stage of that call")


# ------------------------------------------------------------------------------------------ execution

@dataclass(frozen=True)
class Output:
    response_format: str = "b64_json"
    fmt: str = "png"
    compression: Optional[int] = None
    quality: Optional[str] = None


def _refuse(cond, message: str, param: str) -> None:
    if cond:
        raise bad(message, param=param, code="unsupported_parameter")


def _output(b) -> Output:
    compression = getattr(b, "output_compression", None)
    fmt = getattr(b, "output_format", None) or "png"
    if compression is not None and (fmt == "png" or not 0 <= compression <= 100):
        raise bad("'output_compression' applies to jpeg / webp output and must be in [0, 100]",
                  param="output_compression")
    _refuse(getattr(b, "stream", None) and not isinstance(b, GenerateRequest),
            "'stream' is not supported on the OpenAI images routes: use POST /v1/generate with \"stream\": true",
            "stream")
    _refuse(getattr(b, "partial_images", None), "'partial_images' needs streaming: use POST /v1/generate", "partial_images")
    return Output(b.response_format or "b64_json", fmt, compression, getattr(b, "quality", None))


def _steps(service: Service, pipe, steps: Optional[int], quality: Optional[str]) -> Optional[int]:
    if steps is not None and QUALITY_STEPS.get(quality, 1.0) != 1.0:
        raise bad(f"give 'quality' {quality!r} or 'steps', not both", param="quality")
    if steps is None and quality is not None:
        steps = min(service.max_steps, max(1, round(pipe.default_steps * QUALITY_STEPS[quality])))
    return service.check_cap("steps", steps, service.max_steps)


def _control(b: "GenerateRequest") -> dict:
    """The ControlNet keywords a body gives (its control images decoded), for the pipeline's validate."""
    out = {k: getattr(b, k) for k in ("controlnet_conditioning_scale", "control_guidance_start",
                                      "control_guidance_end", "guess_mode") if getattr(b, k) is not None}
    ci = b.control_image
    if ci is not None:
        out["control_image"] = ([decode_image(f"control_image[{i}]", x) for i, x in enumerate(ci)]
                                if isinstance(ci, list) else decode_image("control_image", ci))
    return out


def image_work(service: Service, b, *, output: Output, image=None, mask=None, prompt: Optional[str] = None,
               strength: Optional[float] = None, height=None, width=None, preview: bool = False) -> Work:
    """A request body -> its Work (raises ApiError 4xx). ``b`` carries the shared fields."""
    eng = service.engine(b.model, "image")
    pipe = eng.pipe
    size = parse_size(b.size)
    if size is not None:
        if height is not None or width is not None:
            raise bad("give either 'size' or 'height'/'width'", param="size")
        width, height = size
    n = service.check_cap("n", b.n, service.max_images) or 1
    steps = _steps(service, pipe, b.steps, getattr(b, "quality", None))
    extra = {}
    if isinstance(b, GenerateRequest):
        extra = {"guidance_rescale": b.guidance_rescale or 0.0, "eta": b.eta or 0.0, "cache": b.cache}
        loras = service.resolve_loras(b.loras)
        if loras:
            extra["loras"] = loras
        extra.update(_control(b))
    req = validated(pipe.validate, b.prompt if prompt is None else prompt, negative_prompt=b.negative_prompt,
                    num_images_per_prompt=n, height=height, width=width, num_inference_steps=steps,
                    guidance_scale=b.guidance, seed=b.seed, scheduler=b.scheduler, image=image, mask_image=mask,
                    strength=strength, output_type="np", **extra)
    service.check_size(req.width, req.height)
    # the step count reported in progress events; stochastic samplers are never merged (per-row noise)
    total = validated(pipe.denoising_steps, req)
    stochastic = validated(pipe.make_scheduler, req.scheduler).is_stochastic(req.eta)
    key = None
    # First-Block Cache decides from the whole batch's residual: such requests are never merged
    fbc = req.cache is not None and req.cache.kind == "first_block"
    # a ControlNet request runs alone; requests with different LoRA sets are grouped into separate batches
    if req.mode != "inpaint" and not stochastic and service.batching and not fbc \
            and getattr(req, "control", None) is None:
        # one network call per batch: every setting that is not per-row must be equal (img2img: the
        # strength too; inpainting is never merged: given latents take another path than a seed there;
        # the step-cache setting too)
        cfg = pipe.uses_cfg(req.guidance_scale)
        key = (req.mode, req.height, req.width, req.num_inference_steps, str(req.scheduler), cfg,
               req.guidance_scale if cfg else None, req.guidance_rescale, req.eta, req.negative_prompts is None,
               req.strength if req.mode == "img2img" else None, req.cache,
               tuple((lf.sha256, s) for lf, s in getattr(req, "loras", ())))
    params = {"request": req, "preview": preview, "total_steps": total, "n": n, "seed": req.seed, "mode": req.mode,
              "output": output, "info": imgproc.generation_info(pipe, req, req.seed)}
    return Work(engine=eng.name, key=key, params=params, size=n)


def _merged(pipe, works: list[Work], cb):
    """One request for a batch: per-request rows, each request's noise from its own seed (as alone);
    the works share every setting in their batch key, so the merged request stays valid."""
    reqs = [w.params["request"] for w in works]
    req = reqs[0]
    lh, lw = req.height // pipe.vae_scale_factor, req.width // pipe.vae_scale_factor
    latents = np.concatenate([randn((r.batch, pipe.latent_channels, lh, lw), r.seed) for r in reqs])
    negs = None if req.negative_prompts is None else tuple(
        ng for r in reqs for ng in r.negative_prompts for _ in range(r.num_images_per_prompt))
    return replace(req, prompts=tuple(pr for r in reqs for pr in r.prompts for _ in range(r.num_images_per_prompt)),
                   negative_prompts=negs, num_images_per_prompt=1, latents=latents, callback=cb,
                   images=None if req.mode != "img2img" else tuple(
                       r.images[k % len(r.images)] for r in reqs for k in range(r.batch)))


def execute(service: Service, eng, works: list[Work]) -> list:
    """Run one batch (worker thread) -> per request {"images": [file bytes], "seed", "batch", "timings"}."""
    pipe = eng.pipe
    rows, r0 = [], 0
    for w in works:
        rows.append((r0, w.params["n"]))
        r0 += w.params["n"]
    cb = service.progress_callback(works, works[0].params["total_steps"], rows)
    req = replace(works[0].params["request"], callback=cb) if len(works) == 1 else _merged(pipe, works, cb)
    out = pipe.run(req)
    timings = dict(out.timings)
    service.observe_stages(eng.name, timings, ("text_encode", "denoise", "vae_decode"))
    t0 = time.perf_counter()
    pils = imgproc.to_pil(np.asarray(out.images))
    results = []
    for w, (row, n) in zip(works, rows):
        o = w.params["output"]
        files = [encode_image(im, o.fmt, w.params["info"], o.compression) for im in pils[row:row + n]]
        results.append({"images": files, "seed": w.params["seed"], "batch": len(works), "timings": timings,
                        "size": f"{pils[row].width}x{pils[row].height}"})
    service.metrics.stage.labels(engine=eng.name, stage="encode").observe(time.perf_counter() - t0)
    return results


# ------------------------------------------------------------------------------------------ responses

def shaper(service: Service, request: Request, work: Work, *, full: bool = False):
    """result -> the response body (b64_json inline, or url: each file kept in the file store)."""
    o: Output = work.params["output"]
    base = str(request.base_url)

    def shape(r: dict) -> dict:
        if o.response_format == "url":
            data = [{"url": service.file_url(base, f, IMAGE_FORMATS[o.fmt], "." + o.fmt), "seed": r["seed"]}
                    for f in r["images"]]
        else:
            data = [{"b64_json": b64(f), "seed": r["seed"]} for f in r["images"]]
        body = {"created": int(time.time()), "model": work.engine, "seed": r["seed"], "data": data,
                "output_format": o.fmt, "size": r["size"], "background": "opaque", "quality": o.quality}
        if full:
            body["batch"], body["timings"] = r["batch"], r["timings"]
        return body
    return shape


# ------------------------------------------------------------------------------------------ routes

def _upload(name: str, files: list[UploadFile]):
    if len(files) != 1:
        raise bad(f"give exactly one '{name}' file, got {len(files)}", param=name)
    return decode_image_bytes(name, files[0].file.read()).convert("RGB")


def _openai_mask(upload: UploadFile):
    """An OpenAI edit mask -> fastgen's (white: repaint). With an alpha channel, transparent pixels are
    the ones to edit (OpenAI's rule); without one, white pixels are (diffusers' rule)."""
    from PIL import Image

    m = decode_image_bytes("mask", upload.file.read())
    if "A" in m.getbands():
        a = np.asarray(m.getchannel("A"))
        return Image.fromarray(np.where(a < 128, 255, 0).astype(np.uint8), "L")
    return m.convert("L")


def router(service: Service) -> APIRouter:
    r = APIRouter(tags=["images"])

    @r.post("/v1/images/generations", name="images", response_model=ImagesResponse, responses=ERRORS,
            summary="Create images from a prompt (OpenAI images.generate)")
    async def images_generations(body: ImagesGenerateRequest, request: Request):
        _refuse(body.style, "'style' is not supported: diffusion engines here have no style control "
                            "(use negative_prompt or guidance)", "style")
        _refuse(body.svg is not None or body.complexity is not None, "SVG output is not made by this server", "svg")
        _refuse(body.frame_count is not None or body.frame_duration_ms is not None,
                "animated images are not made here: use POST /v1/videos", "frame_count")
        work = await asyncio.to_thread(image_work, service, body, output=_output(body))
        return await answer(service, request, work, shaper(service, request, work), "images")

    @r.post("/v1/images/edits", name="images_edits", response_model=ImagesResponse, responses=ERRORS,
            summary="Edit an image (OpenAI images.edit): img2img, or inpainting with a mask",
            openapi_extra={"description": "multipart/form-data. Without a mask: img2img at 'strength'. With a "
                           "mask: inpainting; an RGBA mask's transparent pixels are repainted (OpenAI's rule), "
                           "an opaque mask's white pixels are (diffusers' rule)."})
    async def images_edits(request: Request, form: Annotated[EditForm, Form(media_type="multipart/form-data")]):
        _refuse(form.input_fidelity is not None, "'input_fidelity' is not supported: give 'strength' in (0, 1]",
                "input_fidelity")
        def build() -> Work:  # decoding and validation off the event loop
            img = _upload("image", form.image + form.image_list)
            m = None if form.mask is None else _openai_mask(form.mask)
            return image_work(service, form, output=_output(form), image=img, mask=m, strength=form.strength)

        work = await asyncio.to_thread(build)
        return await answer(service, request, work, shaper(service, request, work), "images_edits")

    @r.post("/v1/images/variations", name="images_variations", response_model=ImagesResponse, responses=ERRORS,
            summary="Variations of an image (OpenAI images.create_variation): img2img at --variation-strength")
    async def images_variations(request: Request, form: Annotated[VariationForm, Form(media_type="multipart/form-data")]):
        def build() -> Work:
            strength = service.variation_strength if form.strength is None else form.strength
            return image_work(service, form, output=_output(form), image=_upload("image", form.image),
                              strength=strength)

        work = await asyncio.to_thread(build)
        return await answer(service, request, work, shaper(service, request, work), "images_variations")

    @r.post("/v1/generate", name="generate", response_model=GenerateResponse,
            responses=WITH_JOB,
            summary="Generate with every pipeline argument (text2img, img2img, inpaint); SSE or async job")
    async def generate(body: GenerateRequest, request: Request):
        if body.preview and not body.stream:
            raise bad("'preview' needs 'stream': true (previews come with the progress events)", param="preview")
        if body.stream and body.async_:
            raise bad("give only one of 'stream' and 'async'", param="stream")
        if body.mask is not None and body.image is None:
            raise bad("'mask' needs 'image' (inpainting)", param="mask")
        def build() -> Work:
            img = None if body.image is None else decode_image("image", body.image)
            m = None if body.mask is None else decode_image("mask", body.mask)
            return image_work(service, body, output=_output(body), image=img, mask=m, strength=body.strength,
                              height=body.height, width=body.width, preview=body.preview)

        work = await asyncio.to_thread(build)
        return await answer(service, request, work, shaper(service, request, work, full=True), "generate",
                            stream=body.stream, async_=body.async_)

    return r
