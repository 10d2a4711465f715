"""`fastgen serve`: HTTP API, dynamic batching (bit-equal to lone requests), faults, jobs, SSE, metrics, load.

The FastAPI app in-process (httpx ASGI transport / starlette TestClient) and, where sockets matter (load,
disconnects, the CLI), a real uvicorn on 127.0.0.1 with an ephemeral port. Only loopback addresses, ever.
The openai client's calls: test_serve_openai.py; abuse and limits: test_serve_safety.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

import fastgen  # noqa: E402
from engines import tiny_engine  # noqa: E402
from servers import serving  # noqa: E402
from fastgen.serve import create_app  # noqa: E402
from fastgen.serve.batching import Batcher, QueueFullError, Work  # noqa: E402
from PIL import Image  # noqa: E402

STEPS = 3


@pytest.fixture(scope="module")
def eng():
    return tiny_engine("sd")[1]


@pytest.fixture(scope="module")
def pipe(eng):
    return fastgen.Pipeline.load(eng)


class Proxy:
    """A pipeline wrapper that can be slow or fail on a given prompt (fault injection)."""

    def __init__(self, pipe, delay=0.0, fail_on=None):
        self._pipe, self.delay, self.fail_on = pipe, delay, fail_on
        self.calls = []

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def run(self, req):
        prompts = list(req.prompts)
        self.calls.append(len(prompts))
        if self.fail_on is not None and self.fail_on in prompts:
            raise RuntimeError("injected failure")
        if self.delay:
            cb = req.callback
            end = time.monotonic() + self.delay
            while time.monotonic() < end:
                time.sleep(0.01)
                if cb is not None and cb(-1, 0.0, None) is False:
                    raise fastgen.CancelledError("cancelled")
        return self._pipe.run(req)


def png_pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def reference(pipe, prompt, seed, n=1, guidance=None, negative=None):
    out = pipe(prompt, num_inference_steps=STEPS, seed=seed, height=64, width=64, num_images_per_prompt=n,
               guidance_scale=guidance, negative_prompt=negative)
    return [np.asarray(im) for im in out.images]


async def post_all(app, bodies, path="/v1/generate", headers=None):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=60) as c:
        return await asyncio.gather(*[c.post(path, json=b, headers=headers) for b in bodies])


def run(coro):
    return asyncio.run(coro)


# ----------------------------------------------------------------------------------- basics

def test_health_ready_models_and_openai_images(eng, pipe):
    from starlette.testclient import TestClient

    app = create_app({"sd": eng})
    with TestClient(app) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        for _ in range(100):
            if c.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        assert c.get("/readyz").json()["models"] == ["sd"]
        assert c.get("/v1/models").json()["data"][0]["id"] == "sd"
        r = c.post("/v1/images/generations", json={"model": "sd", "prompt": "a red cat", "n": 2, "size": "64x64",
                                                  "response_format": "b64_json", "seed": 11, "steps": STEPS,
                                                  "quality": "standard", "user": "u1"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert isinstance(body["created"], int) and len(body["data"]) == 2
        ref = reference(pipe, "a red cat", 11, n=2)
        for d, want in zip(body["data"], ref):
            np.testing.assert_array_equal(png_pixels(d["b64_json"]), want)
    # the lifespan shutdown drained and closed the service
    assert app.state.service.closing


def test_generate_all_arguments_img2img_inpaint(eng, pipe):
    app = create_app({"sd": eng}, warmup=False)
    img = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255

    def b64(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()

    bodies = [
        {"prompt": "a dog", "negative_prompt": "blurry", "steps": STEPS, "guidance": 5.0, "seed": 5,
         "scheduler": "ddim", "height": 64, "width": 64},
        {"prompt": "a dog", "image": b64(img), "strength": 0.7, "steps": STEPS, "seed": 6},
        {"prompt": "a dog", "image": "data:image/png;base64," + b64(img), "mask": b64(mask), "steps": STEPS,
         "seed": 7},
    ]
    r0, r1, r2 = run(post_all(app, bodies))
    assert [r.status_code for r in (r0, r1, r2)] == [200, 200, 200], [r.text for r in (r0, r1, r2)]
    want = pipe("a dog", negative_prompt="blurry", num_inference_steps=STEPS, guidance_scale=5.0, seed=5,
                scheduler="ddim", height=64, width=64).images[0]
    np.testing.assert_array_equal(png_pixels(r0.json()["data"][0]["b64_json"]), np.asarray(want))
    want = pipe.img2img("a dog", image=img, strength=0.7, num_inference_steps=STEPS, seed=6, height=64,
                        width=64).images[0]
    np.testing.assert_array_equal(png_pixels(r1.json()["data"][0]["b64_json"]), np.asarray(want))
    want = pipe.inpaint("a dog", image=img, mask_image=mask, num_inference_steps=STEPS, seed=7, height=64,
                        width=64).images[0]
    np.testing.assert_array_equal(png_pixels(r2.json()["data"][0]["b64_json"]), np.asarray(want))
    app.state.service.close()


# ----------------------------------------------------------------------------------- batching

def test_dynamic_batching_reproduces_lone_requests(eng, pipe):
    """Concurrent compatible requests share one network call; each image equals the lone request's."""
    proxy = Proxy(pipe)
    app = create_app({"sd": proxy}, max_batch=4, max_wait_ms=400, warmup=False)
    bodies = [{"prompt": "a cat", "seed": 1, "steps": STEPS, "size": "64x64"},
              {"prompt": "a blue house", "seed": 2, "steps": STEPS, "size": "64x64", "n": 2},
              {"prompt": "a tree at night", "seed": 3, "steps": STEPS, "size": "64x64"}]
    rs = run(post_all(app, bodies))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
    assert [r.json()["batch"] for r in rs] == [3, 3, 3]
    assert proxy.calls == [4]  # one call, 4 rows
    for b, r in zip(bodies, rs):
        want = reference(pipe, b["prompt"], b["seed"], n=b.get("n", 1))
        got = [png_pixels(d["b64_json"]) for d in r.json()["data"]]
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    snap = app.state.service.metrics.histogram("fastgen_batch_size", engine="sd")
    assert snap["count"] == 1 and snap["sum"] == 3
    app.state.service.close()


def test_img2img_batched_reproduces_lone_requests(eng, pipe):
    proxy = Proxy(pipe)
    app = create_app({"sd": proxy}, max_batch=4, max_wait_ms=400, warmup=False)
    rng = np.random.default_rng(1)
    imgs = [(rng.random((64, 64, 3)) * 255).astype(np.uint8) for _ in range(2)]
    enc = [base64.b64encode(_png_bytes(a)).decode() for a in imgs]
    bodies = [{"prompt": "a cat", "image": enc[0], "strength": 0.6, "seed": 1, "steps": STEPS},
              {"prompt": "a dog", "image": enc[1], "strength": 0.6, "seed": 2, "steps": STEPS, "n": 2},
              {"prompt": "a dog", "image": enc[1], "strength": 0.9, "seed": 2, "steps": STEPS}]  # other strength
    rs = run(post_all(app, bodies))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
    assert [r.json()["batch"] for r in rs] == [2, 2, 1] and sorted(proxy.calls) == [1, 3]
    for b, im, r in zip(bodies, [imgs[0], imgs[1], imgs[1]], rs):
        want = pipe.img2img(b["prompt"], image=im, strength=b["strength"], num_inference_steps=STEPS, seed=b["seed"],
                            num_images_per_prompt=b.get("n", 1), height=64, width=64).images
        for d, w in zip(r.json()["data"], want):
            np.testing.assert_array_equal(png_pixels(d["b64_json"]), np.asarray(w))
    app.state.service.close()


def _png_bytes(a):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_incompatible_requests_not_merged(eng, pipe):
    proxy = Proxy(pipe)
    app = create_app({"sd": proxy}, max_batch=8, max_wait_ms=300, warmup=False)
    bodies = [{"prompt": "a cat", "seed": 1, "steps": STEPS, "guidance": 7.5},
              {"prompt": "a cat", "seed": 1, "steps": STEPS, "guidance": 3.0},  # other guidance scale
              {"prompt": "a cat", "seed": 1, "steps": STEPS + 1, "guidance": 7.5},  # other steps
              {"prompt": "a cat", "seed": 1, "steps": STEPS, "guidance": 7.5, "size": "64x32"},  # other size
              {"prompt": "a cat", "seed": 1, "steps": STEPS, "guidance": 7.5, "scheduler": "euler_a"}]  # stochastic
    rs = run(post_all(app, bodies))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
    assert [r.json()["batch"] for r in rs] == [1] * 5
    want = reference(pipe, "a cat", 1, guidance=3.0)[0]
    np.testing.assert_array_equal(png_pixels(rs[1].json()["data"][0]["b64_json"]), want)
    app.state.service.close()


def test_batching_off_and_max_batch_respected(eng, pipe):
    proxy = Proxy(pipe)
    app = create_app({"sd": proxy}, max_batch=2, max_wait_ms=300, warmup=False)
    rs = run(post_all(app, [{"prompt": "a cat", "seed": i, "steps": STEPS} for i in range(5)]))
    assert all(r.status_code == 200 for r in rs)
    assert max(proxy.calls) <= 2 and sum(proxy.calls) == 5
    app.state.service.close()
    proxy = Proxy(pipe)
    app = create_app({"sd": proxy}, batching=False, warmup=False)
    rs = run(post_all(app, [{"prompt": "a cat", "seed": i, "steps": STEPS} for i in range(3)]))
    assert all(r.status_code == 200 and r.json()["batch"] == 1 for r in rs)
    assert proxy.calls == [1, 1, 1]
    app.state.service.close()


# ----------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("body,status,needle", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    ({"prompt": 3}, 400, "'prompt': Input should be a valid string"),
    ({"prompt": ""}, 400, "'prompt': String should have at least 1 character"),
    ({}, 400, "'prompt' is required"),
    ({"prompt": "x", "n": "2"}, 400, "'n': Input should be a valid integer"),
    ({"prompt": "x", "n": 99}, 400, "'n' must be in [1, 8] on this server"),
    ({"prompt": "x", "steps": True}, 400, "'steps': Input should be a valid integer"),
    ({"prompt": "x", "guidance": "high"}, 400, "'guidance': Input should be a valid number"),
    (b'{"prompt": "x", "guidance": 1e400}', 400, "guidance_scale must be a finite number"),
    ({"prompt": "x", "seed": 10 ** 40}, 400, "seed must be None or an int in [0, 2**63)"),
    ({"prompt": "x", "n": 10 ** 40}, 400, "'n' must be in [1, 8]"),
    (b'{"prompt": "x", "seed": NaN}', 400, "NaN is not a JSON number"),
    (b'{"prompt": "x", "seed": 1' + b"0" * 5000 + b"}", 400, "not valid JSON"),
    (b'{"prompt": "\\udc00 a cat"}', 400, "lone surrogate"),
    (b'{"prompt": "x", "negative_prompt": "\\ud83d"}', 400, "lone surrogate"),
    (b'{"prompt": "x", "a": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "nested too deeply"),
    (b'{"prompt": "x", "a": ' + b"[" * 40 + b"]" * 40 + b"}", 400, "nested too deeply"),
    ({"prompt": "x", "seed": -1}, 400, "seed must be None or an int in [0, 2**63)"),
    ({"prompt": "x", "size": "big"}, 400, "'size' must look like"),
    ({"prompt": "x", "size": "60x64"}, 400, "width must be a multiple of 8"),
    ({"prompt": "x", "size": "1024x1024"}, 400, "height must be in ["),
    ({"prompt": "x", "scheduler": "nope"}, 400, "unknown scheduler"),
    ({"prompt": "x", "image": "###"}, 400, "not valid base64"),
    ({"prompt": "x", "image": base64.b64encode(b"not an image").decode()}, 400, "not a readable image"),
    ({"prompt": "x", "mask": "AAAA"}, 400, "needs 'image'"),
    ({"prompt": "x", "response_format": "png"}, 400, "'response_format': Input should be 'b64_json' or 'url'"),
    ({"prompt": "x", "output_format": "gif"}, 400, "'output_format': Input should be 'png', 'jpeg' or 'webp'"),
    ({"prompt": "x", "output_format": "png", "output_compression": 50}, 400, "applies to jpeg / webp"),
    ({"prompt": "x", "colour": 1}, 400, "unknown field 'colour'"),
    ({"prompt": "x", "cache": "deepcache:interval=0"}, 400, "interval must be in [1, 1000]"),
    ({"prompt": "x", "cache": "deepcache"}, 400, "--cache deepcache"),  # engine exported without it
    ({"prompt": "x", "model": "nope"}, 404, "unknown model"),
    ({"prompt": "x", "model": 5}, 400, "'model': Input should be a valid string"),
])
def test_bad_requests_answer_4xx_json(eng, body, status, needle):
    from starlette.testclient import TestClient

    app = create_app({"sd": eng}, warmup=False)
    with TestClient(app) as c:
        if isinstance(body, bytes):
            r = c.post("/v1/generate", content=body, headers={"content-type": "application/json"})
        else:
            r = c.post("/v1/generate", json=body)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert needle in err["message"] and err["type"] and err["code"]


def test_errors_do_not_disturb_other_requests(eng, pipe):
    proxy = Proxy(pipe, fail_on="boom")
    app = create_app({"sd": proxy}, max_batch=4, max_wait_ms=300, sizes=["64x64"], warmup=False)
    bodies = [{"prompt": "a cat", "seed": 1, "steps": STEPS},
              {"prompt": "boom", "seed": 2, "steps": STEPS},  # internal failure: 500 for it only
              {"prompt": "a dog", "seed": 3, "steps": "three"},  # bad type: 400
              {"prompt": "a cow", "seed": 4, "steps": STEPS, "size": "32x32"},  # size not in --sizes
              {"prompt": "a dog", "seed": 3, "steps": STEPS}]
    rs = run(post_all(app, bodies))
    assert [r.status_code for r in rs] == [200, 500, 400, 400, 200], [r.text for r in rs]
    assert rs[1].json()["error"]["type"] == "server_error"
    assert "allowed sizes: 64x64" in rs[3].json()["error"]["message"]
    np.testing.assert_array_equal(png_pixels(rs[0].json()["data"][0]["b64_json"]), reference(pipe, "a cat", 1)[0])
    np.testing.assert_array_equal(png_pixels(rs[4].json()["data"][0]["b64_json"]), reference(pipe, "a dog", 3)[0])
    text = run(_get(app, "/metrics")).text
    assert 'fastgen_errors_total{type="server_error"} 1.0' in text
    app.state.service.close()


async def _get(app, path, headers=None):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        return await c.get(path, headers=headers)


def test_full_queue_429_and_timeout_504(eng, pipe):
    proxy = Proxy(pipe, delay=0.6)
    app = create_app({"sd": proxy}, max_batch=1, max_queue=1, workers=1, warmup=False)
    rs = run(post_all(app, [{"prompt": "a cat", "seed": i, "steps": STEPS} for i in range(4)]))
    codes = sorted(r.status_code for r in rs)
    assert codes.count(200) >= 1 and 429 in codes and set(codes) <= {200, 429}, codes
    r429 = next(r for r in rs if r.status_code == 429)
    assert r429.headers["retry-after"] and r429.json()["error"]["type"] == "rate_limit_error"
    app.state.service.close()

    proxy = Proxy(pipe, delay=2.0)
    app = create_app({"sd": proxy}, timeout_s=0.3, warmup=False)
    t0 = time.monotonic()
    (r,) = run(post_all(app, [{"prompt": "a cat", "seed": 1, "steps": STEPS}]))
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"
    assert app.state.service.close(timeout=10)  # the cancelled work stopped early
    assert time.monotonic() - t0 < 1.9
    assert app.state.service.metrics.value("fastgen_cancelled_total", engine="sd") == 1


def test_cancelled_queued_work_never_runs():
    ran = []
    gate = threading.Event()

    def runner(works):
        gate.wait(5)
        ran.extend(w.params["i"] for w in works)
        return [w.params["i"] for w in works]

    b = Batcher(runner, max_batch=1, max_wait_s=0, max_queue=2, workers=1)
    ws = [Work("e", None, {"i": i}) for i in range(3)]
    b.submit(ws[0])
    time.sleep(0.1)  # ws[0] is running (blocked on the gate)
    b.submit(ws[1])
    b.submit(ws[2])
    with pytest.raises(QueueFullError):
        b.submit(Work("e", None, {"i": 9}))
    b.cancel(ws[1])
    gate.set()
    assert ws[0].future.result(5) == 0 and ws[2].future.result(5) == 2
    with pytest.raises(fastgen.CancelledError):
        ws[1].future.result(5)
    assert ran == [0, 2]
    assert b.close(drain=True, timeout=5)


def test_graceful_shutdown_drains(eng, pipe):
    proxy = Proxy(pipe, delay=0.2)
    app = create_app({"sd": proxy}, max_batch=1, workers=1, warmup=False)
    svc = app.state.service
    from fastgen.serve.errors import ApiError
    from fastgen.serve.images import GenerateRequest, Output, image_work

    def work(**body):
        return image_work(svc, GenerateRequest.model_validate(body), output=Output())

    works = []
    for i in range(3):
        w = work(prompt="a cat", seed=i, steps=STEPS)
        svc.submit(w)
        works.append(w)
    assert svc.close(drain=True, timeout=30)
    assert all(w.future.done() and w.future.exception() is None for w in works)

    w = work(prompt="late", steps=STEPS)
    with pytest.raises(ApiError) as ei:
        svc.submit(w)
    assert ei.value.status == 503


# ----------------------------------------------------------------------------------- streaming, jobs, auth

def test_stream_progress_sse(eng):
    from starlette.testclient import TestClient

    app = create_app({"sd": eng}, warmup=False)
    with TestClient(app) as c:
        with c.stream("POST", "/v1/generate", json={"prompt": "a cat", "steps": STEPS, "seed": 1,
                                                    "stream": True}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            text = "".join(r.iter_text())
    events = [blk for blk in text.split("\n\n") if blk.strip()]
    prog = [e for e in events if e.startswith("event: progress")]
    import json

    steps = [json.loads(e.split("data: ", 1)[1]) for e in prog]
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1)) and steps[-1]["step"] == steps[-1]["total"]
    res = next(e for e in events if e.startswith("event: result"))
    assert json.loads(res.split("data: ", 1)[1])["data"][0]["b64_json"]
    assert events[-1] == "data: [DONE]"
    assert all("preview" not in s for s in steps)


def test_stream_previews(eng):
    import json

    from starlette.testclient import TestClient

    app = create_app({"sd": eng}, warmup=False)
    with TestClient(app) as c:
        r = c.post("/v1/generate", json={"prompt": "a cat", "steps": STEPS, "preview": True})
        assert r.status_code == 400 and "needs 'stream'" in r.json()["error"]["message"]
        with c.stream("POST", "/v1/generate", json={"prompt": "a cat", "steps": STEPS, "seed": 1, "n": 2,
                                                    "stream": True, "preview": True}) as r:
            text = "".join(r.iter_text())
    prog = [json.loads(e.split("data: ", 1)[1]) for e in text.split("\n\n") if e.startswith("event: progress")]
    with_preview = [p for p in prog if "preview" in p]
    assert with_preview and with_preview[-1]["step"] == with_preview[-1]["total"]
    assert all(len(p["preview"]) == 2 for p in with_preview)
    assert png_pixels(with_preview[-1]["preview"][1]).shape == (16, 16, 3)  # latent resolution, no VAE


def test_async_jobs_and_cancel(eng, pipe):
    from starlette.testclient import TestClient

    proxy = Proxy(pipe, delay=0.0)
    app = create_app({"sd": proxy}, max_batch=1, warmup=False)
    with TestClient(app) as c:
        r = c.post("/v1/generate", json={"prompt": "a cat", "steps": STEPS, "seed": 4, "async": True})
        assert r.status_code == 202
        jid = r.json()["id"]
        for _ in range(200):
            job = c.get(f"/v1/jobs/{jid}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.05)
        assert job["status"] == "succeeded", job
        np.testing.assert_array_equal(png_pixels(job["result"]["data"][0]["b64_json"]), reference(pipe, "a cat", 4)[0])
        proxy.delay = 5.0
        jid = c.post("/v1/generate", json={"prompt": "slow", "steps": STEPS, "async": True}).json()["id"]
        time.sleep(0.2)
        t0 = time.monotonic()
        job = c.delete(f"/v1/jobs/{jid}").json()
        assert job["status"] == "cancelled" and time.monotonic() - t0 < 3
        assert c.get("/v1/jobs/job_nope").status_code == 404
        r = c.post("/v1/videos", json={"prompt": "a cat"})
        assert r.status_code == 404 and "no video engine" in r.json()["error"]["message"]
        r = c.post("/v1/captions", json={"images": ["AAAA"]})
        assert r.status_code == 404 and "no caption engine" in r.json()["error"]["message"]


def test_api_key(eng):
    from starlette.testclient import TestClient

    app = create_app({"sd": eng}, api_key="s3cret", warmup=False)
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        r = c.post("/v1/generate", json={"prompt": "a cat", "steps": STEPS})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200


def test_cli_refuses_public_bind_without_key(eng, capsys, monkeypatch):
    from fastgen.cli import main
    from fastgen.commands.serve import check_bind, is_loopback

    monkeypatch.delenv("FASTGEN_API_KEY", raising=False)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    assert main(["serve", eng, "--host", "0.0.0.0"]) == 2
    assert "without an API key" in capsys.readouterr().err
    check_bind("0.0.0.0", "key")  # allowed with a key (not started here)


def test_cli_engine_names_mix_plain_and_named():
    from fastgen.commands.serve import parse_engines

    assert parse_engines(["demo", "/m/sd15/", "xl=/m/sdxl", "/n/sd15"]) == {
        "xl": "/m/sdxl", "demo": "demo", "sd15": "/m/sd15/", "sd15-2": "/n/sd15"}
    with pytest.raises(fastgen.InvalidArgumentError, match="two engines are named 'a'"):
        parse_engines(["a=/x", "a=/y"])


def test_metrics_exposition(eng):
    app = create_app({"sd": eng}, warmup=False)
    run(post_all(app, [{"prompt": "a cat", "steps": STEPS}]))
    text = run(_get(app, "/metrics")).text
    for needle in ("# TYPE fastgen_queue_depth gauge", 'fastgen_queue_depth{engine="sd"} 0.0',
                   "# TYPE fastgen_batch_size histogram", 'fastgen_batch_size_bucket{engine="sd",le="+Inf"} 1.0',
                   "# TYPE fastgen_requests_total counter",
                   'fastgen_stage_seconds_count{engine="sd",stage="denoise"} 1.0',
                   'fastgen_stage_seconds_count{engine="sd",stage="text_encode"} 1.0',
                   'fastgen_stage_seconds_count{engine="sd",stage="vae_decode"} 1.0',
                   'fastgen_stage_seconds_count{engine="sd",stage="queue"} 1.0',
                   'fastgen_requests_total{code="200",endpoint="generate"} 1.0'):
        assert needle in text, needle
    assert "_created" not in text
    app.state.service.close()


def test_import_fastgen_does_not_import_web_stack():
    code = ("import sys, fastgen; import fastgen.serve; "
            "bad = [m for m in ('starlette', 'uvicorn', 'fastapi', 'torch', 'ray') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_runtime_and_cli_without_the_serve_extra():
    """Without FastAPI / pydantic / uvicorn / prometheus-client installed (hidden here), fastgen imports and
    `fastgen serve` says which extra to install."""
    code = ("import sys\n"
            "for m in ('fastapi', 'pydantic', 'prometheus_client', 'starlette', 'uvicorn', 'python_multipart'):\n"
            "    sys.modules[m] = None\n"
            "import fastgen, fastgen.serve\n"
            "from fastgen.cli import main\n"
            "assert main(['serve', 'demo', '--port', '8123']) == 2\n"
            "try:\n"
            "    fastgen.serve.create_app({'x': 'demo'})\n"
            "except fastgen.UnsupportedError as e:\n"
            "    assert 'fastgen[serve]' in str(e)\n"
            "else:\n"
            "    raise AssertionError('no UnsupportedError')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert 'serving needs the "serve" extra' in r.stderr


# ----------------------------------------------------------------------------------- a real server

def test_uvicorn_load_all_answered_and_batched(eng):
    app = create_app({"sd": eng}, max_batch=4, max_wait_ms=20, max_queue=64)
    with serving(app) as base:
        async def load():
            sem = asyncio.Semaphore(16)
            async with httpx.AsyncClient(base_url=base, timeout=120) as c:
                async def one(i):
                    async with sem:
                        return await c.post("/v1/images/generations",
                                            json={"prompt": f"a cat {i % 5}", "seed": i, "steps": 2,
                                                  "size": "64x64"})
                rs = await asyncio.gather(*[one(i) for i in range(48)])
                return rs, (await c.get("/metrics")).text

        t0 = time.monotonic()
        rs, metrics = asyncio.run(load())
        assert time.monotonic() - t0 < 90
        assert [r.status_code for r in rs] == [200] * 48
        assert len({r.json()["data"][0]["b64_json"] for r in rs}) == 48
        snap = app.state.service.metrics.histogram("fastgen_batch_size", engine="sd")
        assert snap["sum"] == 48 and snap["count"] < 48, snap  # batching observed
        assert 'fastgen_batch_size_count{engine="sd"}' in metrics


class FakeVideo:
    """A stand-in video pipeline (the real ones are checked in test_video.py): frames from the seed. It
    keeps the pipeline protocol: validate() -> the real request type, run(request)."""

    kind = "text2video"
    engine_dir = "fake-video"
    default_steps = 2

    def validate(self, first=None, *, seed=None, output_type="np", callback=None, num_frames=4,
                 num_inference_steps=2, height=16, width=24, **kw):
        if kw:
            raise fastgen.InvalidArgumentError(f"unexpected {sorted(kw)}")
        from fastgen._args import check_int, check_seed

        num_frames = check_int("num_frames", num_frames, 1, 64)
        common = dict(num_frames=num_frames, num_inference_steps=num_inference_steps, height=height, width=width,
                      seed=check_seed("seed", seed), latents=None, output_type=output_type, callback=callback)
        if self.kind == "img2video":
            return fastgen.ImageToVideoRequest(images=(first,), min_guidance_scale=1.0, max_guidance_scale=3.0,
                                               fps=7.0, motion_bucket_id=127.0, noise_aug_strength=0.02,
                                               decode_chunk_size=num_frames, image_noise=None, **common)
        return fastgen.VideoRequest(prompts=(first,), negative_prompts=None, guidance_scale=7.5,
                                    num_videos_per_prompt=1, scheduler=None, guidance_rescale=0.0, eta=0.0,
                                    window_callback=None, context_length=num_frames, context_stride=4,
                                    context_weighting="pyramid", decode_chunk_size=8, long_video="context", **common)

    def run(self, req):
        for i in range(req.num_inference_steps):
            if req.callback is not None and req.callback(i, 0.0, None) is False:
                raise fastgen.CancelledError("cancelled")
        frames = np.clip(fastgen.randn((1, req.num_frames, req.height, req.width, 3), req.seed) * 0.2 + 0.5, 0, 1)
        return fastgen.VideoOutput(frames=frames.astype(np.float32), seed=req.seed)

    def __call__(self, *a, **kw):
        return self.run(self.validate(*a, **kw))

    def iter_frames(self, first, **kw):
        self.iterated = getattr(self, "iterated", 0) + 1
        yield from self(first, **kw).frames[0]


def test_video_jobs(tmp_path):
    """POST /v1/videos: an async job whose file holds the video pipeline's frames (GIF: byte-equal to
    fastgen.export_video of them; MP4: decodable, every frame); bad arguments are refused before a job."""
    from starlette.testclient import TestClient

    def wait(c, jid):
        for _ in range(300):
            job = c.get(f"/v1/jobs/{jid}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.02)
        raise AssertionError(job)

    app = create_app({"vid": FakeVideo()}, warmup=False)
    with TestClient(app) as c:
        r = c.post("/v1/videos", json={"prompt": "a cat", "num_frames": 3, "steps": 2, "seed": 3, "format": "gif"})
        assert r.status_code == 202, r.text
        job = wait(c, r.json()["id"])
        assert job["status"] == "succeeded", job
        # the GIF itself, streamed as the worker writes it (frames from iter_frames)
        with c.stream("POST", "/v1/videos", json={"prompt": "a cat", "num_frames": 3, "steps": 2, "seed": 3,
                                                  "format": "gif", "async": False, "stream": True}) as r:
            assert r.status_code == 200 and r.headers["content-type"] == "image/gif" and r.headers["x-seed"] == "3"
            streamed = b"".join(r.iter_bytes())
        assert app.state.service.engines["vid"].pipe.iterated == 1
        for bad_body in ({"prompt": "a cat", "stream": True, "async": False},  # mp4: its index comes last
                         {"prompt": "a cat", "stream": True, "format": "gif"}):  # async (the default)
            assert c.post("/v1/videos", json=bad_body).status_code == 400
        # a synchronous MP4, as a link to the file store
        r = c.post("/v1/videos", json={"prompt": "a cat", "num_frames": 5, "seed": 3, "async": False,
                                       "response_format": "url"})
        assert r.status_code == 200, r.text
        item = r.json()["data"][0]
        assert item["content_type"] == "video/mp4" and item["url"].startswith("http://testserver/v1/files/file-")
        mp4 = c.get(item["url"])
        assert mp4.status_code == 200 and mp4.headers["content-type"] == "video/mp4"
        av = pytest.importorskip("av")
        with av.open(io.BytesIO(mp4.content)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == 5 and frames[0].shape == (16, 24, 3)
        assert c.post("/v1/videos", json={"prompt": "x", "fps": 3}).status_code == 400
        assert c.post("/v1/videos", json={"prompt": "x", "num_frames": "many"}).status_code == 400
        assert c.post("/v1/generate", json={"prompt": "x", "model": "vid"}).status_code == 400
        # arguments the pipeline refuses are refused before a job is made
        r = c.post("/v1/videos", json={"prompt": "x", "eta": 0.5})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        # image-to-video engines take an image and no prompt
        FakeVideo.kind = "img2video"
        try:
            assert c.post("/v1/videos", json={"prompt": "x"}).status_code == 400
            assert "'image' is required" in c.post("/v1/videos", json={"num_frames": 2}).json()["error"]["message"]
            r = c.post("/v1/videos", json={"image": b64png(24, 16), "num_frames": 2, "seed": 1})
            assert r.status_code == 202 and wait(c, r.json()["id"])["status"] == "succeeded"
        finally:
            FakeVideo.kind = "text2video"
    want = FakeVideo()("a cat", seed=3, num_frames=3).frames[0]
    res = job["result"]
    assert res["num_frames"] == 3 and res["seed"] == 3 and res["format"] == "gif"
    assert res["data"][0]["content_type"] == "image/gif"
    ref = fastgen.export_video(want, tmp_path / "ref.gif", fps=8)
    with open(ref, "rb") as f:
        want_gif = f.read()
    assert base64.b64decode(res["data"][0]["b64_json"]) == want_gif and streamed == want_gif


class FakeCaptioner:
    """A stand-in captioning pipeline (the real one is checked in test_caption.py): the caption is the size.
    It keeps the pipeline protocol: validate() -> a real CaptionRequest, run(request)."""

    kind = "captioning"
    engine_dir = "fake-captioner"

    def __init__(self):
        self.calls = []

    def validate(self, images, prompt=None, *, max_new_tokens=20, num_beams=1, num_return_sequences=1,
                 length_penalty=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0):
        from fastgen._args import check_int

        return fastgen.CaptionRequest(
            images=tuple(images), prompts=None if prompt is None else (prompt,) * len(images),
            max_new_tokens=max_new_tokens, num_beams=check_int("num_beams", num_beams, 1, 64),
            length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram_size, early_stopping=False,
            num_return_sequences=num_return_sequences, repetition_penalty=repetition_penalty)

    def run(self, req):
        self.calls.append(len(req.images))
        texts = [f"{req.prompts[i] if req.prompts else ''}{im.size[0]}x{im.size[1]}#{k}"
                 for i, im in enumerate(req.images) for k in range(req.num_return_sequences)]
        return fastgen.CaptionOutput(texts=texts, token_ids=[[] for _ in texts])


def b64png(w, h):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_captions_batched_and_split():
    cap = FakeCaptioner()
    app = create_app({"cap": cap}, max_batch=8, max_wait_ms=300, warmup=False)
    bodies = [{"images": [b64png(8, 8), b64png(9, 9)], "num_beams": 2, "num_return_sequences": 2},
              {"image": b64png(10, 10), "num_beams": 2, "num_return_sequences": 2},
              {"images": [b64png(11, 11)], "num_beams": 2, "num_return_sequences": 2, "prompt": "p:"}]
    rs = run(post_all(app, bodies, path="/v1/captions"))
    assert [r.status_code for r in rs] == [200] * 3, [r.text for r in rs]
    assert rs[0].json()["captions"] == ["8x8#0", "8x8#1", "9x9#0", "9x9#1"]
    assert rs[1].json()["captions"] == ["10x10#0", "10x10#1"]
    assert rs[2].json()["captions"] == ["p:11x11#0", "p:11x11#1"]
    assert sorted(cap.calls) == [1, 3]  # the two prompt-less requests shared one call
    bad_rs = run(post_all(app, [{"images": []}, {"images": ["@@"]}, {"images": [b64png(4, 4)], "num_beams": 0},
                                {"images": [b64png(4, 4)], "model": "nope"}], path="/v1/captions"))
    assert [r.status_code for r in bad_rs] == [400, 400, 400, 404]
    app.state.service.close()


def test_client_disconnect_cancels_work(eng, pipe):
    """A client that goes away (real server, real socket) has its work stopped and counted as cancelled."""
    proxy = Proxy(pipe, delay=20.0)
    app = create_app({"sd": proxy}, warmup=False)
    with serving(app) as base:
        t0 = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/v1/generate", json={"prompt": "slow", "steps": STEPS}, timeout=0.5)
        svc = app.state.service
        for _ in range(100):
            if svc.metrics.value("fastgen_cancelled_total", engine="sd") == 1 and svc.batcher.busy == 0:
                break
            time.sleep(0.05)
        assert svc.metrics.value("fastgen_cancelled_total", engine="sd") == 1 and svc.batcher.busy == 0
        assert time.monotonic() - t0 < 10  # stopped long before the 20 s of work


@pytest.mark.slow
def test_ray_serve_two_replicas(eng, pipe):
    """Ray Serve on a local instance (loopback only, CPU): 2 replicas, the same API, @serve.batch batching."""
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    import socket

    from fastgen.serve.ray import build_app

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"sd": eng}, replicas=2, max_batch=4, max_wait_ms=50,
                            app_opts={"cors_origins": ["http://app.example"]}), name="fastgen", route_prefix="/")

        async def go():
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
                for _ in range(300):
                    r = await c.get("/readyz")
                    if r.status_code == 200:
                        break
                    await asyncio.sleep(0.1)
                rs = await asyncio.gather(*[c.post("/v1/generate", json={"prompt": "a cat", "seed": i,
                                                                         "steps": STEPS}) for i in range(12)])
                bad_r = await c.post("/v1/generate", json={"prompt": 5})
                plain = await c.post("/v1/generate", content=b'{"prompt": "a"}', headers={"content-type": "text/plain"})
                pre = await c.options("/v1/generate", headers={"Origin": "http://app.example",
                                                               "Access-Control-Request-Method": "POST"})
                return r, rs, bad_r, plain, pre

        ready, rs, bad_r, plain, pre = asyncio.run(go())
        assert plain.status_code == 415 and pre.headers["access-control-allow-origin"] == "http://app.example"
        assert ready.status_code == 200
        assert [r.status_code for r in rs] == [200] * 12
        assert max(r.json()["batch"] for r in rs) > 1  # @serve.batch merged requests
        for i in (0, 7):
            np.testing.assert_array_equal(png_pixels(rs[i].json()["data"][0]["b64_json"]),
                                          reference(pipe, "a cat", i)[0])
        assert bad_r.status_code == 400 and bad_r.json()["error"]["type"] == "invalid_request_error"
        st = serve.status().applications["fastgen"].deployments["FastgenDeployment"]
        assert st.replica_states.get("RUNNING") == 2
    finally:
        serve.shutdown()
        ray.shutdown()


def test_cli_serve_sigterm_drains(eng, tmp_path):
    """`fastgen serve` on 127.0.0.1: requests in flight when SIGTERM arrives are still answered."""
    import signal
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen([sys.executable, "-m", "fastgen.cli", "serve", f"sd={eng}", "--host", "127.0.0.1",
                             "--port", str(port), "--max-batch", "2", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read().decode()

        async def go():
            async with httpx.AsyncClient(base_url=base, timeout=60) as c:
                tasks = [asyncio.ensure_future(c.post("/v1/generate", json={"prompt": "a cat", "seed": i,
                                                                            "steps": 8})) for i in range(4)]
                await asyncio.sleep(0.3)
                proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*tasks)

        rs = asyncio.run(go())
        assert [r.status_code for r in rs] == [200] * 4
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after draining
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_process_may_exit_while_the_warmup_runs():
    # the warm-up thread opens ONNX Runtime sessions; torn down at exit mid-way, the process used to abort
    # in C++ (exit 139). At exit it now stops after the component it is opening.
    code = ("from fastgen.serve import create_app\n"
            "app = create_app({'demo': 'demo'})\n"
            "print(len(app.openapi()['paths']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
