"""The HTTP front door (a pure ASGI middleware), before any route runs:

- the API key (every route but the open ones), checked before a body is read;
- the content type: ``application/json``, or ``multipart/form-data`` where a route takes files (415);
- the body: one request's cap (413), a cap on all bodies buffered at once (503 + Retry-After), a time
  limit to receive it (408); chunks are joined once, never concatenated over and over;
- JSON bodies: syntax, nesting depth, NaN / Infinity and lone surrogates are answered with 400 before
  any handler sees them;
- a client that disconnects while uploading is counted (499), never answered with a 500;
- every answer is counted in ``fastgen_requests_total`` and timed in ``fastgen_stage_seconds``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

from .errors import ApiError, ClientGone, bad

_SURROGATE = re.compile("[\ud800-\udfff]")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def check_json(raw: bytes, max_depth: int) -> None:
    """Raise ApiError (400) unless ``raw`` is a JSON object nested at most ``max_depth`` deep whose
    strings are valid Unicode (a lone surrogate cannot be encoded, so no handler may ever see one)."""
    try:
        obj = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise bad(f"the JSON body is nested too deeply (the limit is {max_depth})", code="json_too_deep") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise bad("the request body must be a JSON object", code="invalid_json")
    stack = [(obj, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > max_depth:
            raise bad(f"the JSON body is nested too deeply (the limit is {max_depth})", code="json_too_deep")
        items = v.items() if isinstance(v, dict) else enumerate(v)
        for k, x in items:
            for s in (k, x):
                if isinstance(s, str) and _SURROGATE.search(s):
                    raise bad("the JSON body holds a lone surrogate (\\ud800-\\udfff): not valid Unicode text",
                              code="invalid_unicode")
            if isinstance(x, (dict, list)):
                stack.append((x, depth + 1))


class Guard:
    def __init__(self, app, *, service, routes: list, post_types: dict, open_paths: tuple, max_body_bytes: int,
                 max_buffered_bytes: int, body_timeout_s: float, max_json_depth: int = 32):
        self.app, self.service, self.routes = app, service, routes
        self.post_types, self.open_paths = post_types, open_paths
        self.max_body, self.max_buffered = int(max_body_bytes), int(max_buffered_bytes)
        self.body_timeout_s, self.max_json_depth = float(body_timeout_s), int(max_json_depth)
        self.buffered = 0  # bytes of request bodies held right now, all requests together

    def _is_open(self, path: str) -> bool:
        return any(path == p or (p.endswith("/") and path.startswith(p)) for p in self.open_paths)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [0]
        held = [0]

        async def send_counted(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            path = scope["path"]
            if not self._is_open(path) and not self.service.authorized(headers):
                raise ApiError(401, "authentication_error", "missing or wrong API key (Authorization: Bearer KEY)",
                               {"WWW-Authenticate": "Bearer"}, code="invalid_api_key")
            want = self.post_types.get(path) if scope["method"] == "POST" else None
            if want is not None:
                ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
                if ctype != want:
                    raise ApiError(415, "invalid_request_error", f"POST {path} takes {want}, got "
                                   f"{ctype or 'no content type'}", code="unsupported_media_type")
                body = await self._read(receive, headers, held)
                if want == "application/json":
                    check_json(body, self.max_json_depth)
                receive = _replay(body, receive)
            await self.app(scope, receive, send_counted)
        except ClientGone:
            status[0] = status[0] or 499
            self.service.metrics.errors.labels(type="client_disconnected").inc()
        except ApiError as e:
            status[0] = e.status
            self.service.metrics.errors.labels(type=e.type).inc()
            await _send_error(send, e)
        finally:
            self.buffered -= held[0]
            self.service.metrics.buffered.dec(held[0])
            name = _endpoint(scope, self.routes)
            self.service.metrics.requests.labels(endpoint=name, code=str(status[0] or 500)).inc()
            self.service.metrics.stage.labels(engine="all", stage=f"request:{name}").observe(time.perf_counter() - t0)

    async def _read(self, receive, headers: dict, held: list) -> bytes:
        cl = headers.get("content-length")
        if cl is not None and cl.strip().isdigit() and int(cl) > self.max_body:
            raise ApiError(413, "invalid_request_error", f"request body larger than {self.max_body} bytes",
                           code="body_too_large")
        chunks, size = [], 0
        deadline = time.monotonic() + self.body_timeout_s
        while True:
            try:
                msg = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise ApiError(408, "invalid_request_error", f"the request body did not arrive within "
                               f"{self.body_timeout_s:g} s", code="body_timeout") from None
            if msg["type"] == "http.disconnect":
                raise ClientGone()
            chunk = msg.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self.max_body:
                    raise ApiError(413, "invalid_request_error", f"request body larger than {self.max_body} bytes",
                                   code="body_too_large")
                if self.buffered + len(chunk) > self.max_buffered:
                    raise ApiError(503, "unavailable_error", "too many request bodies are being received at once; "
                                   "retry later", {"Retry-After": "2"}, code="server_busy")
                self.buffered += len(chunk)
                self.service.metrics.buffered.inc(len(chunk))
                held[0] += len(chunk)
                chunks.append(chunk)
            if not msg.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = [False]

    async def replay():
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the server's own messages (http.disconnect)
    return replay


async def _send_error(send, e: ApiError) -> None:
    """The error as JSON; the connection is closed (a half-read body must not be taken as the next request)."""
    data = json.dumps(e.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
               (b"connection", b"close")] + [(k.lower().encode(), str(v).encode()) for k, v in e.headers.items()]
    try:
        await send({"type": "http.response.start", "status": e.status, "headers": headers})
        await send({"type": "http.response.body", "body": data})
    except Exception:  # noqa: BLE001 - the client is gone: nothing to answer
        pass


def _endpoint(scope, routes) -> str:
    """The route's name for the metrics label (a fixed set: unknown paths are 'unknown')."""
    name = getattr(scope.get("route"), "name", None)
    if name:
        return name
    for r in routes:
        match, _ = r.matches(scope)
        if match.name != "NONE":
            return r.name
    return "unknown"
