"""A small, thread-safe Prometheus registry writing the text exposition format (version 0.0.4).

No dependency: counters, gauges and histograms with labels are all the server needs.
"""

from __future__ import annotations

import math
import threading

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _esc(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple, extra: str = "") -> str:
    parts = [f'{n}="{_esc(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    if float(v).is_integer():
        return str(int(v))
    return repr(float(v))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.labelnames = name, help_, tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict) -> tuple:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: labels must be {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self._v: dict[tuple, float] = {}

    def inc(self, amount: float = 1.0, **labels) -> None:
        k = self._key(labels)
        with self._lock:
            self._v[k] = self._v.get(k, 0.0) + amount

    def value(self, **labels) -> float:
        with self._lock:
            return self._v.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._v.items())
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_num(v)}" for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels) -> None:
        k = self._key(labels)
        with self._lock:
            self._v[k] = float(value)

    def dec(self, amount: float = 1.0, **labels) -> None:
        self.inc(-amount, **labels)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name, help_, labels=(), buckets=LATENCY_BUCKETS):
        super().__init__(name, help_, labels)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self._v: dict[tuple, list] = {}  # key -> [bucket counts..., sum, count]

    def observe(self, value: float, **labels) -> None:
        k = self._key(labels)
        with self._lock:
            row = self._v.get(k)
            if row is None:
                row = self._v[k] = [0] * len(self.buckets) + [0.0, 0]
            for i, b in enumerate(self.buckets):
                if value <= b:
                    row[i] += 1
            row[-2] += float(value)
            row[-1] += 1

    def snapshot(self, **labels) -> dict:
        """{"buckets": {le: cumulative count}, "sum", "count"} for one label set (tests, benchmarks)."""
        with self._lock:
            row = list(self._v.get(self._key(labels)) or [0] * len(self.buckets) + [0.0, 0])
        return {"buckets": dict(zip(self.buckets, row[:-2])), "sum": row[-2], "count": row[-1]}

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._v.items())
        out = self.header()
        for k, row in items:
            for b, c in zip(self.buckets, row[:-2]):
                le = 'le="%s"' % _num(b)
                out.append(f"{self.name}_bucket{_labels(self.labelnames, k, le)} {c}")
            le = 'le="+Inf"'
            out.append(f"{self.name}_bucket{_labels(self.labelnames, k, le)} {row[-1]}")
            out.append(f"{self.name}_sum{_labels(self.labelnames, k)} {_num(row[-2])}")
            out.append(f"{self.name}_count{_labels(self.labelnames, k)} {row[-1]}")
        return out


class Metrics:
    """The server's metrics (one registry per app)."""

    CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self, max_batch: int = 4):
        bb = sorted(set([1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, max_batch]))
        self.requests = Counter("fastgen_requests_total", "HTTP requests answered, by endpoint and status code",
                                ("endpoint", "code"))
        self.errors = Counter("fastgen_errors_total", "Requests that failed, by error type", ("type",))
        self.rejected = Counter("fastgen_rejected_total", "Requests refused because the queue was full", ("engine",))
        self.cancelled = Counter("fastgen_cancelled_total", "Requests cancelled (client gone, timeout, DELETE)",
                                 ("engine",))
        self.queue_depth = Gauge("fastgen_queue_depth", "Requests waiting for a batch", ("engine",))
        self.inflight = Gauge("fastgen_inflight_batches", "Batches running now", ("engine",))
        self.batch_size = Histogram("fastgen_batch_size", "Requests merged into one batched network call",
                                    ("engine",), buckets=bb)
        self.batch_images = Histogram("fastgen_batch_images", "Images (rows) in one batched network call",
                                      ("engine",), buckets=bb)
        self.stage = Histogram("fastgen_stage_seconds",
                               "Latency per stage: queue, text_encode, denoise, vae_decode, encode, batch, request",
                               ("engine", "stage"))
        self._all = [self.requests, self.errors, self.rejected, self.cancelled, self.queue_depth, self.inflight,
                     self.batch_size, self.batch_images, self.stage]

    def render(self) -> str:
        lines: list[str] = []
        for m in self._all:
            lines.extend(m.render())
        return "\n".join(lines) + "\n"
