"""Prometheus metrics of one app instance (its own registry, so tests can build many apps)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MODEL_STATES = ("loading", "ready", "failed")


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("tinyship_requests", "HTTP requests by model, route and status",
                                ["model", "route", "status"], registry=r)
        self.latency = Histogram("tinyship_request_duration_seconds",
                                 "Time from request start to the last response byte",
                                 ["model", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("tinyship_queue_duration_seconds",
                                    "Time a request waited in its model's batch queue",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("tinyship_inference_duration_seconds",
                                   "ONNX Runtime time per batch", ["model"],
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("tinyship_batch_size", "Rows per inference batch", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("tinyship_queue_depth", "Requests waiting per model", ["model"],
                                 registry=r)
        self.model_state = Gauge("tinyship_model_state",
                                 "1 for the state each model is in (loading, ready, failed)",
                                 ["model", "state"], registry=r)
        self._children = {}

    def observe_request(self, model: str, route: str, status: int, seconds: float) -> None:
        key = (model, route, status)
        children = self._children.get(key)
        if children is None:  # label lookups cost more than the observation: cache them
            children = self._children[key] = (
                self.requests.labels(model, route, str(status)), self.latency.labels(model, route))
        children[0].inc()
        children[1].observe(seconds)

    def batch_observer(self, model: str):
        size, infer = self.batch_size.labels(model), self.inference.labels(model)

        def observe(rows: int, seconds: float) -> None:
            size.observe(rows)
            infer.observe(seconds)
        return observe

    def set_model_state(self, model: str, state: str) -> None:
        for s in MODEL_STATES:
            self.model_state.labels(model, s).set(1 if s == state else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
