"""`fastgen serve` on a shared machine: every abuse gets its 4xx (or 503), nothing leaks.

Against a real uvicorn server on 127.0.0.1 (the CLI's: h11 with the header time limit), with raw
sockets where a well-behaved client cannot do the abuse: wrong content types (415), partial headers
and partial bodies (closed / 408 after the time limits), one body too large (413), too many bodies at
once (503), lone surrogates / deep nesting / NaN on every JSON endpoint (400), a client leaving during
its upload (counted 499, never 500), the API key on every route but the open ones, /readyz without
model names, no CORS by default. Afterwards: no body bytes held, RSS flat, the same image for a seed.
"""

from __future__ import annotations

import base64
import io
import socket
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

import fastgen  # noqa: E402
from engines import tiny_engine  # noqa: E402
from fastgen.serve import create_app  # noqa: E402
from PIL import Image  # noqa: E402
from servers import serving  # noqa: E402

STEPS = 2
KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
MB = 1 << 20


@pytest.fixture(scope="module")
def pipe():
    return fastgen.Pipeline.load(tiny_engine("sd")[1])


def _open(base: str) -> socket.socket:
    host, port = base.rsplit("/", 1)[-1].split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def _read_all(s: socket.socket, limit_s: float) -> bytes:
    s.settimeout(limit_s)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return out


def _image(base, seed):
    r = httpx.post(base + "/v1/images/generations", headers=AUTH, timeout=60,
                   json={"prompt": "a cat", "seed": seed, "steps": STEPS, "size": "64x64"})
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"]))))


def _rss() -> int:
    psutil = pytest.importorskip("psutil")
    return psutil.Process().memory_info().rss


def test_content_type_auth_readyz_cors(pipe):
    app = create_app({"sd": pipe}, api_key=KEY, warmup=False)
    with serving(app) as base:
        c = httpx.Client(base_url=base, timeout=30)
        # a page's cross-origin text/plain POST (no preflight) never starts work: 415 (after the key)
        r = c.post("/v1/generate", content=b'{"prompt": "a cat"}', headers={"content-type": "text/plain", **AUTH})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
        assert c.post("/v1/images/generations", content=b"prompt=a+cat", headers={
            "content-type": "application/x-www-form-urlencoded", **AUTH}).status_code == 415
        assert c.post("/v1/images/edits", json={"prompt": "a cat"}, headers=AUTH).status_code == 415
        assert c.post("/v1/captions", content=b"{}", headers=AUTH).status_code == 415  # no content type
        # the key: every route but the open ones
        for path in ("/metrics", "/v1/models", "/v1/jobs/job_x"):
            r = c.get(path)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", path
        assert c.post("/v1/generate", json={"prompt": "a cat"}).status_code == 401
        assert c.get("/v1/models", headers=AUTH).status_code == 200
        for path in ("/healthz", "/openapi.json", "/docs"):
            assert c.get(path).status_code == 200, path
        assert c.get("/readyz").json() == {"status": "ready"}  # no model names without the key
        assert c.get("/readyz", headers=AUTH).json() == {"status": "ready", "models": ["sd"]}
        assert c.get("/v1/files/file-0123").status_code == 404
        # no CORS unless asked for
        pre = c.options("/v1/generate", headers={"Origin": "http://evil.example", "Access-Control-Request-Method":
                                                 "POST"})
        assert "access-control-allow-origin" not in pre.headers
    app = create_app({"sd": pipe}, warmup=False, cors_origins=["http://app.example"])
    with serving(app) as base:
        pre = httpx.options(base + "/v1/generate", headers={"Origin": "http://app.example",
                                                            "Access-Control-Request-Method": "POST"})
        assert pre.headers["access-control-allow-origin"] == "http://app.example"
        pre = httpx.options(base + "/v1/generate", headers={"Origin": "http://evil.example",
                                                            "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in pre.headers


BAD_JSON = [
    (b'{"prompt": "\\udc00 a cat"}', "lone surrogate"),
    (b'{"prompt": "a", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}", "nested too deeply"),
    (b'{"prompt": "a", "seed": NaN}', "not valid JSON"),
    (b'{"prompt": "a", "seed": 1' + b"0" * 5000 + b"}", "not valid JSON"),
    (b'{"prompt": "a"', "not valid JSON"),
    (b'"a cat"', "must be a JSON object"),
    (b"\xff\xfe{}", "not valid JSON"),
]


@pytest.mark.parametrize("path", ["/v1/images/generations", "/v1/generate", "/v1/captions", "/v1/videos"])
def test_bad_json_is_400_on_every_endpoint(pipe, path):
    app = create_app({"sd": pipe}, warmup=False)
    with serving(app) as base:
        for body, needle in BAD_JSON:
            r = httpx.post(base + path, content=body, headers={"content-type": "application/json"}, timeout=30)
            assert r.status_code == 400 and needle in r.json()["error"]["message"], (body[:40], r.text[:200])
        metrics = app.state.service.metrics
        name = path.split("/")[-1].replace("generations", "images")
        for _ in range(40):  # counted once the answer is sent: maybe just after the client has it
            if metrics.value("fastgen_requests_total", endpoint=name, code="400") == len(BAD_JSON):
                break
            time.sleep(0.05)
        assert metrics.value("fastgen_requests_total", endpoint=name, code="400") == len(BAD_JSON)
        assert "code=\"500\"" not in metrics.render().decode()


def test_slow_and_oversized_clients(pipe):
    app = create_app({"sd": pipe}, warmup=False, max_body_bytes=10 * MB, max_buffered_bytes=16 * MB,
                     body_timeout_s=1.5)
    m = app.state.service.metrics
    with serving(app, header_timeout_s=1.0) as base:
        before = _image(base, 5)
        rss0 = _rss()
        t0 = time.monotonic()
        # 30 connections that send part of their headers, and 5 that send nothing: closed after 1 s
        partial = [_open(base) for _ in range(35)]
        for s in partial[:30]:
            s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
        answers = [_read_all(s, 5) for s in partial]
        assert time.monotonic() - t0 < 4
        assert all(a == b"" or a.startswith(b"HTTP/1.1 408") for a in answers), answers[:3]
        # a body larger than the cap, announced or not: 413 at once
        r = httpx.post(base + "/v1/generate", content=b"{" + b" " * (11 * MB) + b"}",
                       headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        def chunks():
            for _ in range(12):
                yield b" " * MB
        r = httpx.post(base + "/v1/generate", content=chunks(), headers={"content-type": "application/json"},
                       timeout=30)
        assert r.status_code == 413
        # 10 stalled 8 MiB uploads (6 MiB sent each): bodies held at once are capped at 16 MiB (503 past
        # it), each stalled one answered 408 after the body time limit
        stalled = []
        for _ in range(10):
            s = _open(base)
            stalled.append(s)
            try:
                s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % (8 * MB) + b" " * (6 * MB))
            except (ConnectionResetError, BrokenPipeError):  # answered 503 and closed while we were sending
                pass
        time.sleep(0.3)
        peak = _rss()
        assert m.value("fastgen_buffered_body_bytes") <= 16 * MB
        codes = [_read_all(s, 6)[:12] for s in stalled]
        assert all(c in (b"HTTP/1.1 408", b"HTTP/1.1 503", b"") for c in codes), codes
        assert codes.count(b"HTTP/1.1 408") >= 2, codes
        assert m.value("fastgen_requests_total", endpoint="generate", code="503") >= 5
        assert m.value("fastgen_requests_total", endpoint="generate", code="408") >= 2
        # a client that leaves during its upload: counted as 499, not as a server error
        s = _open(base)
        s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"prompt\": ")
        time.sleep(0.2)
        s.close()
        for _ in range(50):
            if m.value("fastgen_requests_total", endpoint="generate", code="499"):
                break
            time.sleep(0.05)
        assert m.value("fastgen_requests_total", endpoint="generate", code="499") == 1
        for s in partial + stalled:
            s.close()
        # nothing leaked: no body bytes held, RSS back near where it was, the same image for the seed
        assert m.value("fastgen_buffered_body_bytes") == 0
        after = _image(base, 5)
        np.testing.assert_array_equal(before, after)
        rss1 = _rss()
        print(f"RSS: {rss0 / MB:.0f} MiB before, {peak / MB:.0f} MiB with 10 stalled uploads, {rss1 / MB:.0f} after")
        assert peak - rss0 < 64 * MB and rss1 - rss0 < 48 * MB
        assert 'code="500"' not in m.render().decode()


def test_file_store_is_bounded_and_expires():
    from fastgen.serve.files import FileStore

    st = FileStore(max_files=3, max_bytes=100, ttl_s=0.3)
    ids = [st.put(b"x" * 10, "image/png", ".png") for _ in range(5)]
    assert len(st) == 3 and st.get(ids[0]) is None and st.get(ids[4]) == ("image/png", b"x" * 10)
    assert all(i.startswith("file-") and len(i) == len("file-") + 32 + 4 for i in ids)  # 128 random bits
    big = st.put(b"y" * 90, "video/mp4")
    assert st.nbytes <= 100 and st.get(big)[1] == b"y" * 90 and st.get(ids[2]) is None
    time.sleep(0.35)
    assert st.get(big) is None and len(st) == 0 and st.nbytes == 0
