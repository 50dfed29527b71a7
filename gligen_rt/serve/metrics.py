"""Prometheus metrics of one server (prometheus_client, one registry per app so tests stay apart).

gligen_requests_total{endpoint, code}        answered requests
gligen_request_seconds{endpoint}             wall time of answered generate requests (histogram)
gligen_stage_seconds{stage}                  queue wait and each pipeline stage (histogram)
gligen_errors_total{kind}                    refusals and failures by kind
gligen_queue_depth / gligen_running          jobs waiting / running now
gligen_images_total                          images returned
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Generation takes from tens of milliseconds (tiny models) to minutes (SD-1.4 on a CPU).
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
STAGES = ("text_encoder", "image_encoder", "grounding", "vae_encoder", "denoise", "vae_decoder", "total")
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The server's counters; `waiting` / `running` are read when /metrics is scraped."""

    def __init__(self, waiting: Callable[[], float], running: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("gligen_requests", "Answered HTTP requests", ["endpoint", "code"], registry=r)
        self.latency = Histogram(
            "gligen_request_seconds",
            "Wall time of generate requests",
            ["endpoint"],
            buckets=BUCKETS,
            registry=r,
        )
        self.stages = Histogram(
            "gligen_stage_seconds", "Queue wait and pipeline stages", ["stage"], buckets=BUCKETS, registry=r
        )
        self.errors = Counter("gligen_errors", "Refused or failed requests by kind", ["kind"], registry=r)
        self.images = Counter("gligen_images", "Images returned", registry=r)
        Gauge("gligen_queue_depth", "Jobs waiting for a worker", registry=r).set_function(waiting)
        Gauge("gligen_running", "Jobs running", registry=r).set_function(running)

    def observe_result(self, queue_seconds: float, timings: Mapping[str, float], images: int) -> None:
        self.stages.labels("queue").observe(queue_seconds)
        for stage in STAGES:
            if stage in timings:
                self.stages.labels(stage).observe(timings[stage])
        self.images.inc(images)

    def render(self) -> bytes:
        return generate_latest(self.registry)
