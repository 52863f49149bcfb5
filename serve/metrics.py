"""Prometheus metrics of one app instance (its own registry, so tests can build many apps).

The hot path records into plain Python counters (`bisect` into bucket counts, a dict of
request counts) and `/metrics` turns them into Prometheus families at scrape time. The
prometheus_client Histogram does the same work under a lock with a linear bucket search:
four observations per request cost more than running a Fashion-MNIST MLP.
"""
from __future__ import annotations

import asyncio
import bisect
import collections
import os
import secrets
from pathlib import Path

import orjson

from prometheus_client import CollectorRegistry
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from serve.connection import CLOSED, open_connections

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MODEL_STATES = ("loading", "ready", "failed", "unloaded")


# Histogram attributes of ServerMetrics -> (metric name, help, label names, bucket bounds)
HISTOGRAMS = {
    "latency": ("tinyship_request_duration_seconds",
                "Time from request start to the last response byte", ["model", "route"],
                LATENCY_BUCKETS),
    "queue_time": ("tinyship_queue_duration_seconds",
                   "Time a request waited in its model's batch queue", ["model"],
                   LATENCY_BUCKETS),
    "inference": ("tinyship_inference_duration_seconds", "Runtime time per batch", ["model"],
                  LATENCY_BUCKETS),
    "batch_size": ("tinyship_batch_size", "Rows per inference batch", ["model"], BATCH_BUCKETS),
}


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


class _LabelledHistograms(dict):
    def __init__(self, bounds):
        super().__init__()
        self.bounds = bounds

    def __missing__(self, key) -> Histogram:
        h = self[key] = Histogram(self.bounds)
        return h


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, shared: "SharedMetrics | None" = None):
        self.shared = shared  # set under --workers N: scrapes merge every worker's numbers
        self.requests: collections.Counter = collections.Counter()  # (model, route, status)
        # (model, version, variant): inferences each version served, which makes an A/B split
        # and a rollout visible. The versions in service count on their own (an attribute
        # increment per request, cheaper than this Counter) and report through
        # version_requests_source; the counts of retired versions are added here.
        self.version_requests: collections.Counter = collections.Counter()
        self.version_requests_source = None  # callable -> {(model, version, variant): n}
        # latency (model, route); queue_time, inference, batch_size (model,)
        self.latency = self.queue_time = self.inference = self.batch_size = None
        for attr, (*_, bounds) in HISTOGRAMS.items():
            setattr(self, attr, _LabelledHistograms(bounds))
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

    # -- rendering: one snapshot (this process) or the merge of every worker's ---------------
    def snapshot(self) -> dict:
        """This process's numbers, JSON-able: what /metrics renders, and what a worker shares
        with the others under --workers N (`SharedMetrics`)."""
        versions = collections.Counter(self.version_requests)
        versions.update(self.version_requests_source() if self.version_requests_source else {})
        return {"pid": os.getpid(),
                "requests": [[*key, n] for key, n in self.requests.items()],
                "version_requests": [[*key, n] for key, n in versions.items()],
                "histograms": {name: [[list(key), h.counts, h.total]
                                      for key, h in getattr(self, name).items()]
                               for name in HISTOGRAMS},
                "queue_depth": self.queue_depth_source() if self.queue_depth_source else {},
                "in_flight": self.in_flight,
                "connections_open": open_connections(),
                "connections_closed": dict(CLOSED),
                "model_states": dict(self.model_states), "model_info": dict(self.model_info)}

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # prometheus_client collector protocol
    def collect(self):
        snap = self.snapshot()
        yield from _families(self.shared.merged(snap) if self.shared else snap)


def _families(snap: dict):
    requests = CounterMetricFamily("tinyship_requests", "Requests by model, route and status "
                                   "(gRPC: route grpc:<RPC>, status the gRPC code's name)",
                                   labels=["model", "route", "status"])
    for model, route, status, n in sorted(snap["requests"], key=lambda r: r[:3]):
        requests.add_metric([model, route, str(status)], n)
    yield requests
    served = CounterMetricFamily("tinyship_version_requests", "Inference requests served "
                                 "by each model version (variant: what it ran)",
                                 labels=["model", "version", "variant"])
    for *key, n in sorted(snap["version_requests"]):
        served.add_metric(list(key), n)
    yield served
    for attr, (name, documentation, labels, bounds) in HISTOGRAMS.items():
        family = HistogramMetricFamily(name, documentation, labels=labels)
        for key, counts, total in sorted(snap["histograms"][attr]):
            running, buckets = 0, []
            for bound, n in zip((*map(str, bounds), "+Inf"), counts):
                running += n
                buckets.append((bound, running))
            family.add_metric(list(key), buckets, sum_value=total)
        yield family
    depth = GaugeMetricFamily("tinyship_queue_depth", "Requests waiting per model",
                              labels=["model"])
    for model, n in sorted(snap["queue_depth"].items()):
        depth.add_metric([model], n)
    yield depth
    in_flight = GaugeMetricFamily("tinyship_requests_in_flight",
                                  "HTTP requests being handled (this scrape included)")
    in_flight.add_metric([], snap["in_flight"])
    yield in_flight
    current = GaugeMetricFamily("tinyship_connections_open", "Open HTTP connections")
    current.add_metric([], snap["connections_open"])
    yield current
    closed = CounterMetricFamily("tinyship_connections_closed", "HTTP connections the server "
                                 "closed, by reason (header_timeout, body_timeout, "
                                 "evicted_idle, refused)", labels=["reason"])
    for reason, n in sorted(snap["connections_closed"].items()):
        closed.add_metric([reason], n)
    yield closed
    states = GaugeMetricFamily("tinyship_model_state", "1 for the state each model is in "
                               "(loading, ready, failed, unloaded)", labels=["model", "state"])
    for model, current_state in sorted(snap["model_states"].items()):
        for state in MODEL_STATES:
            states.add_metric([model, state], 1 if state == current_state else 0)
    yield states
    info = GaugeMetricFamily("tinyship_model_info", "1 per loaded model, labelled with the "
                             "variant, runtime, provider and placement it runs on",
                             labels=["model", "variant", "runtime", "provider", "placement"])
    for model, labels in sorted(snap["model_info"].items()):
        info.add_metric([model, labels.get("variant", ""), labels.get("runtime", ""),
                         labels.get("provider", ""), labels.get("placement", "")], 1)
    yield info


class SharedMetrics:
    """Metrics of several worker processes (`--workers N`), merged at scrape time.

    Each worker writes its snapshot to `<directory>/<pid>-<token>.json` every `interval_s`
    and when scraped; a scrape renders the sum of every worker's latest snapshot, its own
    fresh. Counters and histograms of workers that are gone still count (their requests
    happened); gauges (in flight, queue depth, open connections) count live workers only;
    model state and info are the answering worker's. A scrape thus sees the same totals
    whichever worker answers, at most `interval_s` behind for the others.
    """

    def __init__(self, directory: str | Path, interval_s: float = 1.0):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.interval_s = interval_s
        self.path = self.directory / f"{os.getpid()}-{secrets.token_hex(4)}.json"

    def write(self, snap: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(snap))
        os.replace(tmp, self.path)

    def merged(self, own: dict) -> dict:
        self.write(own)
        out = {**own, "requests": collections.Counter(), "version_requests": collections.Counter(),
               "histograms": {name: {} for name in HISTOGRAMS}, "queue_depth": collections.Counter(),
               "in_flight": 0, "connections_open": 0, "connections_closed": collections.Counter()}
        for path in self.directory.glob("*.json"):
            try:
                snap = own if path == self.path else orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue  # a worker replacing its file right now, or one that never wrote
            for *key, n in snap["requests"]:
                out["requests"][tuple(key)] += n
            for *key, n in snap["version_requests"]:
                out["version_requests"][tuple(key)] += n
            for name, series in snap["histograms"].items():
                merged = out["histograms"][name]
                for key, counts, total in series:
                    old = merged.get(tuple(key))
                    merged[tuple(key)] = ((counts, total) if old is None else
                                          ([a + b for a, b in zip(old[0], counts)], old[1] + total))
            out["connections_closed"].update(snap["connections_closed"])
            if snap is own or _alive(snap["pid"]):
                out["queue_depth"].update(snap["queue_depth"])
                out["in_flight"] += snap["in_flight"]
                out["connections_open"] += snap["connections_open"]
        out["requests"] = [[*k, n] for k, n in out["requests"].items()]
        out["version_requests"] = [[*k, n] for k, n in out["version_requests"].items()]
        out["histograms"] = {name: [[list(k), c, t] for k, (c, t) in series.items()]
                             for name, series in out["histograms"].items()}
        return out

    async def keep_writing(self, metrics: "ServerMetrics") -> None:
        while True:
            self.write(metrics.snapshot())
            await asyncio.sleep(self.interval_s)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
