"""Choosing what to serve per placement: of every measured (variant, runtime, provider), the
best one for an objective under budgets.

    objective = Objective(budget_points=1.0, metric="throughput", batch=32, max_size_kb=500)
    choice = choose(candidates, objective, floor=0.905)

Measurements come from three sources, each a function returning `Candidate`s:
  - compress's own report rows: batch-1 latency on the CPU, per serving runtime;
  - a benchmark record (`python -m benchmarks run`, reports/bench.json): batch-1 latency and
    throughput at its batch sizes on the CPU, per runtime;
  - a GPU record (`python -m benchmarks gpu|latency`, reports/latency.json or
    benchmarks/results/gpu-*.json): per provider (CUDA, TensorRT), batch sizes 1 to 1024.
A placement with no measurement says so ("not measured") instead of guessing.
TensorFlow-free.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from core.artifacts import SERVING_RUNTIMES
from core.runtime import GPU_PROVIDERS

METRICS = ("latency", "throughput")


@dataclass(frozen=True)
class Objective:
    """What "best" means: lowest batch-1 p50 ("latency") or most items/s at `batch`
    ("throughput"), among candidates at most `budget_points` below the best root model, and
    within the optional latency (batch-1 p50, ms) and size (gzip, KiB) budgets."""

    budget_points: float = 1.0
    metric: str = "latency"
    batch: int = 1
    max_latency_ms: float | None = None
    max_size_kb: float | None = None
    # An accuracy target of its own (0..1): candidates need at least this too, whatever the
    # best root reaches ("serve the fastest variant that keeps 93%").
    min_accuracy: float | None = None

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"objective {self.metric!r}; valid: {', '.join(METRICS)}")
        if self.min_accuracy is not None and not 0 <= self.min_accuracy <= 1:
            raise ValueError(f"the accuracy target is a fraction 0..1, got {self.min_accuracy}")
        if self.batch < 1 or self.budget_points < 0:
            raise ValueError(f"batch must be >= 1 and the accuracy budget >= 0, got batch "
                             f"{self.batch}, budget {self.budget_points}")

    def describe(self) -> str:
        what = ("lowest batch-1 p50" if self.metric == "latency"
                else f"most items/s at batch {self.batch}")
        limits = [f"accuracy >= best root - {self.budget_points:g} pt"]
        if self.min_accuracy is not None:
            limits.append(f"accuracy >= {100 * self.min_accuracy:g}%")
        if self.max_latency_ms is not None:
            limits.append(f"batch-1 p50 <= {self.max_latency_ms:g} ms")
        if self.max_size_kb is not None:
            limits.append(f"gzip size <= {self.max_size_kb:g} KiB")
        return f"{what}, with " + ", ".join(limits)


@dataclass
class Candidate:
    variant: str
    runtime: str
    provider: str
    placement: str
    accuracy: float
    p50_ms: float | None = None                       # batch 1
    items_per_s: dict[int, float] = field(default_factory=dict)
    gzip_bytes: int | None = None
    source: str = ""

    def value(self, objective: Objective) -> float | None:
        """Lower is better; None when this candidate was not measured for the objective."""
        if objective.metric == "latency":
            return self.p50_ms
        ips = self.items_per_s.get(objective.batch)
        return None if ips is None else -ips

    def as_dict(self) -> dict:
        d = asdict(self)
        d["items_per_s"] = {str(k): v for k, v in self.items_per_s.items()}
        return d


_GZIP_KEY = {"onnx": "onnx_gzip_bytes", "litert": "tflite_gzip_bytes"}


def row_latencies(row: dict) -> dict[str, float]:
    """runtime -> batch-1 p50 ms of a compress report row (older rows: their one runtime)."""
    if row.get("latency_p50_ms_by_runtime"):
        return dict(row["latency_p50_ms_by_runtime"])
    if row.get("latency_runtime") and row.get("latency_p50_ms") is not None:
        return {row["latency_runtime"]: row["latency_p50_ms"]}
    return {}


def from_report_rows(rows: list[dict]) -> list[Candidate]:
    """compress's rows: batch-1 CPU latency per serving runtime (older rows: their one)."""
    out = []
    for r in rows:
        if r.get("status") != "ok" or r.get("test_accuracy") is None:
            continue
        for runtime, p50 in row_latencies(r).items():
            out.append(Candidate(r["variant"], runtime, "CPUExecutionProvider"
                                 if runtime == "onnx" else "LiteRT CPU", "cpu",
                                 r["test_accuracy"], p50, {1: 1000.0 / p50} if p50 else {},
                                 r.get(_GZIP_KEY[runtime]), "compress report"))
    return out


def from_bench(bench: dict, task: str) -> list[Candidate]:
    """A benchmark record's CPU rows of `task` on the serving runtimes."""
    out = []
    for r in bench.get("results", []):
        if r["task"] != task or r.get("error") or r["runtime"] not in SERVING_RUNTIMES:
            continue
        lat = r.get("latency") or {}
        ips = {int(b): t["items_per_s"] for b, t in (r.get("throughput") or {}).items()}
        if lat.get("p50_ms"):
            ips.setdefault(1, 1000.0 / lat["p50_ms"])
        out.append(Candidate(r["variant"], r["runtime"], r.get("provider") or "cpu", "cpu",
                             r["accuracy"], lat.get("p50_ms"), ips,
                             (r.get("size") or {}).get("gzip_bytes"), "benchmark record"))
    return out


def from_gpu_record(record: dict, task: str, sizes: dict[str, int] | None = None) -> list[Candidate]:
    """A GPU record's rows of `task` on GPU providers: the best mode per batch size. `sizes`:
    variant -> gzip bytes of its model.onnx (the record has none)."""
    out = []
    for r in record.get("results", []):
        if r["task"] != task or r.get("error") or r["provider"] not in GPU_PROVIDERS:
            continue
        p50 = min((m["p50_ms"] for m in r["measurements"] if m["batch_size"] == 1), default=None)
        ips: dict[int, float] = {}
        for m in r["measurements"]:
            ips[m["batch_size"]] = max(ips.get(m["batch_size"], 0.0), m["items_per_s"])
        out.append(Candidate(r["variant"], "onnx", r["provider"], "gpu", r["accuracy"], p50, ips,
                             (sizes or {}).get(r["variant"]), "GPU record"))
    return out


def choose(candidates: list[Candidate], objective: Objective,
           floor: float) -> tuple[Candidate | None, str]:
    """(the best candidate, "") or (None, why none qualifies)."""
    if not candidates:
        return None, "not measured"
    ok = [c for c in candidates if c.accuracy >= floor - 1e-12]
    if not ok:
        return None, f"no candidate has accuracy >= {floor:.4f}"
    if objective.max_latency_ms is not None:
        ok = [c for c in ok if c.p50_ms is not None and c.p50_ms <= objective.max_latency_ms]
    if objective.max_size_kb is not None:
        ok = [c for c in ok if c.gzip_bytes is not None
              and c.gzip_bytes <= objective.max_size_kb * 1024]
    if not ok:
        return None, "none within the latency/size budgets"
    measured = [c for c in ok if c.value(objective) is not None]
    if not measured:
        return None, f"not measured for the objective ({objective.describe()})"
    best = min(measured, key=lambda c: (c.value(objective), c.gzip_bytes or 0))
    return best, ""
