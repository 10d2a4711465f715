"""Load test of `fastgen serve`: 1, 4, 16, 64 concurrent clients, dynamic batching on (with and without waiting)
vs off, and batching on again with a slow-client attack running alongside.

A real uvicorn server on 127.0.0.1 (ephemeral port, in this process; the CLI's server, with its header and
body time limits) and an httpx/asyncio load generator (closed loop: each client sends its next request when
the previous one is answered). Reports throughput (images/s), p50/p95/p99 latency, the batch-size histogram
(from the server's metrics) and that every request was answered. Bounded: --requests per level and
--time-limit per level.

The attack (--attackers, default 32 connections): half send request headers a byte at a time, half send
headers and the start of an 8 MiB body and then trickle; each reconnects when the server cuts it off. The
good clients' p95 with the attack is compared with the same level without it (target: within 1.5x).

    python benchmarks/serve_load.py [ENGINE_DIR] --out bench_out [--quick]

Without ENGINE_DIR: the demo engine if this installation has one, else a tiny random SD engine
(built with the exporter, needs the export extra).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_json  # noqa: E402


def default_engine() -> tuple[str, str]:
    from fastgen.pipelines.base import _demo_dir

    if os.path.isdir(_demo_dir()):
        return "demo", "demo"
    from fastgen_export.api import export
    from fastgen_export.testing import build_tiny_pipeline

    root = tempfile.mkdtemp(prefix="fastgen-serve-bench-")
    build_tiny_pipeline("sd", os.path.join(root, "src"))
    export(os.path.join(root, "src"), os.path.join(root, "engine"), log=None)
    return os.path.join(root, "engine"), "tiny random SD (tests' tiny_engine('sd'))"


WARMUP = 3


class Server:
    def __init__(self, app, header_timeout_s: float = 10.0):
        from fastgen.serve.server import make_server

        self.server = make_server(app, "127.0.0.1", 0, header_timeout_s=header_timeout_s)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        for _ in range(400):
            if self.server.started:
                break
            time.sleep(0.025)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.port = port
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(60)


async def slow_clients(port: int, n: int, stop: asyncio.Event, stats: dict) -> None:
    """``n`` slow connections until ``stop``: half trickle their headers, half their body (see the docstring)."""
    async def one(k: int):
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            stats["connections"] += 1
            try:
                if k % 2:
                    writer.write(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 8388608\r\n\r\n" + b" " * 65536)
                else:
                    writer.write(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\n")
                while not stop.is_set() and not reader.at_eof():
                    writer.write(b" " if k % 2 else b"X")
                    await writer.drain()
                    try:
                        if await asyncio.wait_for(reader.read(4096), 0.5):
                            stats["answered"] += 1
                            break
                    except asyncio.TimeoutError:
                        pass
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

    stats.setdefault("connections", 0)
    stats.setdefault("answered", 0)
    await asyncio.gather(*[one(k) for k in range(n)])


async def load(base: str, clients: int, requests: int, body: dict, time_limit: float, attack: tuple | None = None
               ) -> dict:
    """``attack``: (port, connections): slow clients run from the warm-up to the end of the level."""
    import httpx

    stop, stats = asyncio.Event(), {}
    attackers = None
    if attack is not None:
        attackers = asyncio.ensure_future(slow_clients(attack[0], attack[1], stop, stats))

    lat: list[float] = []
    codes: dict[int, int] = {}
    sent = 0
    deadline = time.monotonic() + time_limit

    async with httpx.AsyncClient(base_url=base, timeout=300,
                                 limits=httpx.Limits(max_connections=clients + 4)) as c:
        for _ in range(WARMUP):
            await c.post("/v1/images/generations", json=dict(body, seed=0))

        async def client(k: int):
            nonlocal sent
            while sent < requests and time.monotonic() < deadline:
                i = sent
                sent += 1
                t0 = time.perf_counter()
                req = dict(body, seed=1000 + i, prompt=f"{body['prompt']} {i}")
                r = await c.post("/v1/images/generations", json=req)
                lat.append(time.perf_counter() - t0)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*[client(k) for k in range(clients)])
        wall = time.perf_counter() - t0
    if attackers is not None:
        stop.set()
        await attackers
    a = np.asarray(lat)
    n_ok = codes.get(200, 0)
    return {"clients": clients, "requests": sent, "answered": len(lat), "codes": {str(k): v for k, v in codes.items()},
            "wall_s": wall, "images_per_s": n_ok * body.get("n", 1) / wall,
            "latency_s": {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
                          "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99)),
                          "max": float(a.max())},
            "attack": None if attack is None else {"slow_connections": attack[1], **stats}}


def batch_histogram(service, engine: str) -> dict[str, int]:
    buckets = [(float(smp.labels["le"]), smp.value) for metric in service.metrics.batch_size.collect()
               for smp in metric.samples if smp.name.endswith("_bucket") and smp.labels.get("engine") == engine]
    out, prev = {}, 0
    for le, cum in sorted(buckets):
        if cum - prev and le != float("inf"):
            out[str(int(le))] = int(cum - prev)
        prev = cum
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine", nargs="?", default=None)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--attackers", type=int, default=32, help="slow connections in the attack runs (0: none)")
    ap.add_argument("--requests", type=int, default=128, help="requests per (clients, batching) level")
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per level at most")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", default=None, help="WxH (default: the engine's)")
    ap.add_argument("--max-batch", type=int, default=4)
    ap.add_argument("--max-wait-ms", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="16 requests per level")
    args = ap.parse_args(argv)
    if args.quick:
        args.requests = min(args.requests, 16)

    import fastgen
    from fastgen.serve import create_app

    from common import environment

    engine, label = (args.engine, args.engine) if args.engine else default_engine()
    pipe = fastgen.Pipeline.load(engine)
    size = args.size or f"{pipe.geometry.default_width}x{pipe.geometry.default_height}"
    body = {"model": "m", "prompt": "a photo of a cat", "size": size, "steps": args.steps, "n": 1}
    clients = [int(c) for c in args.clients.split(",")]
    runs = []
    # batching on (waiting up to --max-wait-ms for batch mates), on without waiting (a batch is whatever
    # queued while the worker was busy), and off; interleaved per level so drifting machine load hits all alike
    modes = [("on", True, args.max_wait_ms), ("on, no wait", True, 0.0), ("off", False, 0.0)]
    if args.attackers:
        modes.append(("on, slow-client attack", True, args.max_wait_ms))
    for c in clients:
        for mode, batching, wait_ms in modes:
            app = create_app({"m": engine}, max_batch=args.max_batch, max_wait_ms=wait_ms,
                             max_queue=max(64, 2 * c), batching=batching, warmup=False, body_timeout_s=2.0)
            svc = app.state.service
            with Server(app, header_timeout_s=2.0) as srv:
                attack = (srv.port, args.attackers) if "attack" in mode else None
                r = asyncio.run(load(srv.base, c, args.requests, body, args.time_limit, attack))
            hist = batch_histogram(svc, "m")
            hist["1"] = hist.get("1", 0) - WARMUP  # the warm-up requests
            r.update(mode=mode, batching=batching, max_wait_ms=wait_ms,
                     batch_size_histogram={k: v for k, v in hist.items() if v})
            if attack is not None:
                calm = next(x for x in runs if x["mode"] == "on" and x["clients"] == c)
                r["attack"]["p95_ratio"] = r["latency_s"]["p95"] / calm["latency_s"]["p95"]
            runs.append(r)
            print(f"batching {mode:11s} clients={c:2d}: {r['images_per_s']:.2f} img/s  "
                  f"p50 {r['latency_s']['p50'] * 1e3:.0f} ms  p95 {r['latency_s']['p95'] * 1e3:.0f} ms  "
                  f"p99 {r['latency_s']['p99'] * 1e3:.0f} ms  answered {r['answered']}/{r['requests']} "
                  f"codes {r['codes']}  batches {r['batch_size_histogram']}"
                  + (f"  attack {r['attack']}" if r["attack"] else ""), flush=True)
    payload = {"benchmark": "serve_load", "engine": label, "size": size, "steps": args.steps,
               "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "requests_per_level": args.requests,
               "environment": environment(), "runs": runs}
    path = write_json(args.out, "serve_load", payload)
    print("wrote", path)
    try:
        plot(runs, clients, os.path.join(args.out, "serve_load.png"), label)
    except ImportError as e:  # pragma: no cover
        print("no plot:", e)
    return 0


def plot(runs, clients, path, label):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    for mode, style, color in (("on", "o-", "C0"), ("on, no wait", "^-.", "C1"), ("off", "s--", "C2"),
                               ("on, slow-client attack", "x:", "C3")):
        rs = [r for r in runs if r["mode"] == mode]
        if not rs:
            continue
        name = f"batching {mode}"
        ax[0].plot([r["clients"] for r in rs], [r["images_per_s"] for r in rs], style, color=color, label=name)
        for q, alpha in (("p50", 1.0), ("p95", 0.5)):
            ax[1].plot([r["clients"] for r in rs], [r["latency_s"][q] * 1e3 for r in rs], style, color=color,
                       alpha=alpha, label=f"{name} {q}")
    ax[0].set(xlabel="concurrent clients", ylabel="images / s", title="throughput", xscale="log")
    ax[1].set(xlabel="concurrent clients", ylabel="latency (ms)", title="latency", xscale="log")
    for a in ax[:2]:
        a.set_xticks(clients)
        a.set_xticklabels([str(c) for c in clients])
        a.legend(fontsize=7)
        a.grid(alpha=0.3)
    width = 0.8 / len(clients)
    for i, c in enumerate(clients):
        r = next(r for r in runs if r["mode"] == "on" and r["clients"] == c)
        h = r["batch_size_histogram"]
        xs = sorted(int(k) for k in h)
        ax[2].bar([x + (i - len(clients) / 2 + 0.5) * width for x in xs], [h[str(x)] for x in xs], width,
                  label=f"{c} clients")
    ax[2].set(xlabel="requests per network call", ylabel="batches", title="batch sizes (batching on)")
    ax[2].legend(fontsize=7)
    fig.suptitle(f"fastgen serve load test: {label}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print("wrote", path)


if __name__ == "__main__":
    sys.exit(main())
