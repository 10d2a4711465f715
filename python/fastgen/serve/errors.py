"""Error answers: every failure of a request becomes one JSON body ``{"error": {message, type, code}}``."""

from __future__ import annotations

from ..errors import CancelledError, ConfigError, FastgenError, InvalidArgumentError, UnsupportedError
from .batching import QueueFullError, ShuttingDownError


class ApiError(Exception):
    """An error answer: HTTP status, OpenAI-style error type, message, extra headers; ``code`` names the case."""

    def __init__(self, status: int, type_: str, message: str, headers: dict | None = None, code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.type, self.message, self.headers = status, type_, message, headers or {}
        self.code, self.param = code or type_, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


class ClientGone(Exception):
    """The client closed the connection: nobody to answer (counted, never a 500)."""


def bad(message: str, status: int = 400, type_: str = "invalid_request_error", code: str | None = None,
        param: str | None = None) -> ApiError:
    return ApiError(status, type_, message, code=code, param=param)


def error_for(exc: BaseException) -> ApiError:
    """The answer for an exception raised while serving a request."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, QueueFullError):
        return ApiError(429, "rate_limit_error", str(exc), {"Retry-After": "1"}, code="queue_full")
    if isinstance(exc, ShuttingDownError):
        return ApiError(503, "unavailable_error", str(exc), {"Retry-After": "5"}, code="shutting_down")
    if isinstance(exc, InvalidArgumentError):
        return ApiError(400, "invalid_request_error", str(exc), code="invalid_argument")
    if isinstance(exc, CancelledError):
        return ApiError(499, "cancelled_error", str(exc) or "request cancelled", code="cancelled")
    if isinstance(exc, FastgenError):
        return ApiError(500, "server_error", f"{type(exc).__name__}: {exc}", code="server_error")
    return ApiError(500, "server_error", f"internal error ({type(exc).__name__}): {exc}", code="server_error")


def validated(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` (a pipeline's own ``validate``): its argument errors are the client's (400)."""
    try:
        return fn(*args, **kwargs)
    except (InvalidArgumentError, ConfigError, UnsupportedError) as e:
        raise ApiError(400, "invalid_request_error", str(e), code="invalid_argument") from None
