"""The server's Prometheus metrics (``prometheus_client``, one registry per app).

Names: fastgen_requests_total{endpoint,code}, fastgen_errors_total{type}, fastgen_rejected_total{engine},
fastgen_cancelled_total{engine}, fastgen_queue_depth{engine}, fastgen_inflight_batches{engine},
fastgen_batch_size{engine}, fastgen_batch_images{engine} and fastgen_stage_seconds{engine,stage}: the
per-stage latency (queue wait, text_encode, denoise, vae_decode, encode, batch, request:<endpoint>).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import disable_created_metrics

disable_created_metrics()  # no *_created series: the exposition the dashboards of earlier releases read

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """The metrics of one app, in their own registry (two apps in one process never mix counts)."""

    CONTENT_TYPE = CONTENT_TYPE_LATEST

    def __init__(self, max_batch: int = 4):
        r = self.registry = CollectorRegistry(auto_describe=True)
        bb = sorted(set([1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, max_batch]))
        self.requests = Counter("fastgen_requests_total", "HTTP requests answered, by endpoint and status code",
                                ("endpoint", "code"), registry=r)
        self.errors = Counter("fastgen_errors_total", "Requests that failed, by error type", ("type",), registry=r)
        self.rejected = Counter("fastgen_rejected_total", "Requests refused because the queue was full", ("engine",),
                                registry=r)
        self.cancelled = Counter("fastgen_cancelled_total", "Requests cancelled (client gone, timeout, DELETE)",
                                 ("engine",), registry=r)
        self.queue_depth = Gauge("fastgen_queue_depth", "Requests waiting for a batch", ("engine",), registry=r)
        self.buffered = Gauge("fastgen_buffered_body_bytes", "Request body bytes held right now, all requests",
                              registry=r)
        self.inflight = Gauge("fastgen_inflight_batches", "Batches running now", ("engine",), registry=r)
        self.batch_size = Histogram("fastgen_batch_size", "Requests merged into one batched network call",
                                    ("engine",), buckets=bb, registry=r)
        self.batch_images = Histogram("fastgen_batch_images", "Images (rows) in one batched network call",
                                      ("engine",), buckets=bb, registry=r)
        self.stage = Histogram("fastgen_stage_seconds",
                               "Latency per stage: queue, text_encode, denoise, vae_decode, encode, batch, request",
                               ("engine", "stage"), buckets=LATENCY_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, **labels) -> float:
        """One sample's value (0 when absent), e.g. ``value("fastgen_cancelled_total", engine="sd")``."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def histogram(self, name: str, **labels) -> dict:
        """{"sum", "count"} of one histogram's label set (tests, benchmarks)."""
        return {"sum": self.value(name + "_sum", **labels), "count": self.value(name + "_count", **labels)}
