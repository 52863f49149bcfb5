"""Per-model inference statistics, reported in the form of Triton's statistics extension
(`GET /v2/models[/{name}[/versions/{v}]]/stats`, and the gRPC `ModelStatistics` call).

`ModelRepository.infer`, the one place every inference passes whatever the protocol, adds to
these counters: a few float and int additions per request, no allocation, because the whole
hot path costs ~150 us. The Triton JSON is built only when someone asks for it.

Counted as Triton counts them: `inference_count` is rows, `execution_count` model runs (a
batch of merged requests is one run: each request adds its share, rows / batch rows, so the
shares of one batch add up to 1), `success` and `fail` are requests with their time in the
model's queue and run. `compute_input` and `compute_output` report the same count with 0 ns:
serve hands the decoded numpy array to the runtime and takes its output array back without a
separate copy stage, so that time is inside `compute_infer`.
"""
from __future__ import annotations

import time

NS = 1_000_000_000


class ModelStatistics:
    """The counters of one model (version); plain attributes, updated inline."""

    __slots__ = ("last_inference", "inference_count", "executions", "success_count",
                 "success_s", "fail_count", "fail_s", "queue_s", "infer_s")

    def __init__(self):
        self.last_inference = 0.0   # seconds since the epoch (Triton reports milliseconds)
        self.inference_count = 0
        self.executions = 0.0
        self.success_count = 0
        self.success_s = 0.0
        self.fail_count = 0
        self.fail_s = 0.0
        self.queue_s = 0.0
        self.infer_s = 0.0

    def success(self, rows: int, queue_s: float, infer_s: float, batch_rows: int) -> None:
        self.last_inference = time.time()
        self.inference_count += rows
        self.executions += rows / batch_rows
        self.success_count += 1
        self.success_s += queue_s + infer_s
        self.queue_s += queue_s
        self.infer_s += infer_s

    def failure(self, seconds: float) -> None:
        self.last_inference = time.time()
        self.fail_count += 1
        self.fail_s += seconds

    def triton(self, name: str, version: str) -> dict:
        """Triton's `$model_stat` object."""
        ok = self.success_count

        def duration(count: int, seconds: float) -> dict:
            return {"count": count, "ns": int(seconds * NS)}

        return {"name": name, "version": version,
                "last_inference": int(self.last_inference * 1000),
                "inference_count": self.inference_count,
                "execution_count": round(self.executions),
                "inference_stats": {"success": duration(ok, self.success_s),
                                    "fail": duration(self.fail_count, self.fail_s),
                                    "queue": duration(ok, self.queue_s),
                                    "compute_input": duration(ok, 0.0),
                                    "compute_infer": duration(ok, self.infer_s),
                                    "compute_output": duration(ok, 0.0)}}


class InferenceStatistics:
    """(model name, version) -> its statistics, created at its first inference. Keyed by
    name and version, not by the model object: a reloaded version keeps counting, and a
    retired model object is not kept alive by its counters."""

    def __init__(self):
        self._models: dict[tuple[str, str], ModelStatistics] = {}

    def of(self, model) -> ModelStatistics:
        key = (model.name, model.version)
        stats = self._models.get(key)
        if stats is None:
            stats = self._models[key] = ModelStatistics()
        return stats

    def triton(self, name: str, version: str) -> dict:
        """Triton's `$model_stat` of one model version (zeros before its first inference)."""
        stats = self._models.get((name, version)) or ModelStatistics()
        return stats.triton(name, version)
