"""Pydantic pieces every endpoint shares: the request base (unknown fields refused, JSON types strict)
and the error, job and model-list bodies. Ranges are not repeated here: pipeline arguments are checked
by the pipeline's own ``validate`` (``fastgen.requests``), one set of rules for the API and the CLI."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


class Body(BaseModel):
    """A JSON request body: unknown fields are refused, types are strict (``"2"`` is not an int)."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class FormBody(BaseModel):
    """A multipart form's fields (all strings on the wire, converted to the declared types)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, rate_limit_error, ...")
    code: Optional[str] = Field(None, description="the case, e.g. invalid_argument, unsupported_media_type")
    param: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Progress(BaseModel):
    step: int
    total: int


class Job(BaseModel):
    id: str
    object: Literal["job"] = "job"
    endpoint: str
    model: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    created: int
    finished: Optional[int] = None
    progress: Optional[Progress] = None
    result: Optional[dict[str, Any]] = Field(None, description="the body the request would have answered")
    error: Optional[ErrorDetail] = None


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    kind: Literal["image", "caption", "video"]
    owned_by: str = "fastgen"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


ERRORS = {c: {"model": ErrorResponse} for c in (400, 401, 404, 408, 413, 415, 429, 500, 503, 504)}
WITH_JOB = {202: {"model": Job, "description": "async: the job (GET /v1/jobs/{id})"}, **ERRORS}
