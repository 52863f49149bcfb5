"""Prometheus metrics of one app instance (its own registry, so tests can build many apps).

The hot path records into plain Python counters (`bisect` into bucket counts, a dict of
request counts) and `/metrics` turns them into Prometheus families at scrape time. The
prometheus_client Histogram does the same work under a lock with a linear bucket search:
four observations per request cost more than running a Fashion-MNIST MLP.
"""
from __future__ import annotations

import bisect
import collections

from prometheus_client import CollectorRegistry
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from serve.connection import CLOSED, open_connections

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MODEL_STATES = ("loading", "ready", "failed", "unloaded")


class Histogram:
    """Bucket counts and sum for one label set; `observe` is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last slot: above the largest bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts):
            running += n
            out.append((bound, running))
        return out


class _LabelledHistograms(dict):
    def __init__(self, bounds):
        super().__init__()
        self.bounds = bounds

    def __missing__(self, key) -> Histogram:
        h = self[key] = Histogram(self.bounds)
        return h


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.requests: collections.Counter = collections.Counter()  # (model, route, status)
        # (model, version, variant): inferences each version served, which makes an A/B split
        # and a rollout visible. The versions in service count on their own (an attribute
        # increment per request, cheaper than this Counter) and report through
        # version_requests_source; the counts of retired versions are added here.
        self.version_requests: collections.Counter = collections.Counter()
        self.version_requests_source = None  # callable -> {(model, version, variant): n}
        self.latency = _LabelledHistograms(LATENCY_BUCKETS)        # (model, route)
        self.queue_time = _LabelledHistograms(LATENCY_BUCKETS)     # (model,)
        self.inference = _LabelledHistograms(LATENCY_BUCKETS)      # (model,)
        self.batch_size = _LabelledHistograms(BATCH_BUCKETS)       # (model,)
        self.model_states: dict[str, str] = {}
        self.model_info: dict[str, dict[str, str]] = {}  # model -> variant, runtime, ...
        self.queue_depth_source = None  # callable -> {model: depth}, set by the app
        self.in_flight = 0  # HTTP requests between the request middleware's entry and exit
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def observe_request(self, model: str, route: str, status: int, seconds: float) -> None:
        self.requests[model, route, status] += 1
        self.latency[model, route].observe(seconds)

    def batch_observer(self, model: str):
        size, infer = self.batch_size[(model,)], self.inference[(model,)]

        def observe(rows: int, seconds: float) -> None:
            size.observe(rows)
            infer.observe(seconds)
        return observe

    def queue_time_observer(self, model: str):
        return self.queue_time[(model,)].observe

    def set_model_state(self, model: str, state: str) -> None:
        self.model_states[model] = state

    def set_model_info(self, model: str, **labels: str) -> None:
        """What a loaded model runs: variant, runtime, provider, placement."""
        self.model_info[model] = {k: str(v) for k, v in labels.items()}

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # prometheus_client collector protocol
    def collect(self):
        requests = CounterMetricFamily("tinyship_requests", "HTTP requests by model, route "
                                       "and status", labels=["model", "route", "status"])
        for (model, route, status), n in sorted(self.requests.items()):
            requests.add_metric([model, route, str(status)], n)
        yield requests
        served = CounterMetricFamily("tinyship_version_requests", "Inference requests served "
                                     "by each model version (variant: what it ran)",
                                     labels=["model", "version", "variant"])
        counts = collections.Counter(self.version_requests)
        counts.update(self.version_requests_source() if self.version_requests_source else {})
        for key, n in sorted(counts.items()):
            served.add_metric(list(key), n)
        yield served
        yield _histogram("tinyship_request_duration_seconds",
                         "Time from request start to the last response byte",
                         ["model", "route"], self.latency)
        yield _histogram("tinyship_queue_duration_seconds",
                         "Time a request waited in its model's batch queue", ["model"],
                         self.queue_time)
        yield _histogram("tinyship_inference_duration_seconds", "Runtime time per batch",
                         ["model"], self.inference)
        yield _histogram("tinyship_batch_size", "Rows per inference batch", ["model"],
                         self.batch_size)
        depth = GaugeMetricFamily("tinyship_queue_depth", "Requests waiting per model",
                                  labels=["model"])
        for model, n in (self.queue_depth_source() if self.queue_depth_source else {}).items():
            depth.add_metric([model], n)
        yield depth
        in_flight = GaugeMetricFamily("tinyship_requests_in_flight",
                                      "HTTP requests being handled (this scrape included)")
        in_flight.add_metric([], self.in_flight)
        yield in_flight
        yield from _connection_families()
        states = GaugeMetricFamily("tinyship_model_state", "1 for the state each model is in "
                                   "(loading, ready, failed, unloaded)", labels=["model", "state"])
        for model, current in sorted(self.model_states.items()):
            for state in MODEL_STATES:
                states.add_metric([model, state], 1 if state == current else 0)
        yield states
        info = GaugeMetricFamily("tinyship_model_info", "1 per loaded model, labelled with the "
                                 "variant, runtime, provider and placement it runs on",
                                 labels=["model", "variant", "runtime", "provider", "placement"])
        for model, labels in sorted(self.model_info.items()):
            info.add_metric([model, labels.get("variant", ""), labels.get("runtime", ""),
                             labels.get("provider", ""), labels.get("placement", "")], 1)
        yield info


def _connection_families():
    """The HTTP connection layer's own counts (serve.connection, per process)."""
    current = GaugeMetricFamily("tinyship_connections_open", "Open HTTP connections")
    current.add_metric([], open_connections())
    yield current
    closed = CounterMetricFamily("tinyship_connections_closed", "HTTP connections the server "
                                 "closed, by reason (header_timeout, body_timeout, "
                                 "evicted_idle, refused)", labels=["reason"])
    for reason, n in sorted(CLOSED.items()):
        closed.add_metric([reason], n)
    yield closed


def _histogram(name: str, documentation: str, labels: list[str], series: dict):
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for key, h in sorted(series.items()):
        family.add_metric(list(key), h.cumulative(), sum_value=h.total)
    return family
