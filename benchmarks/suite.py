"""`python -m benchmarks run`: measure every variant of the served tasks on every runtime.

For each variant under the artifact root and each runtime it has a file for (keras, litert,
onnx on the CPU provider) this records one row:
  - accuracy on the full test split of the data in use (DATA_DIR / --data-dir, else the
    bundled sample), next to the accuracy the manifest recorded;
  - batch-1 SingleStream latency (p50/p90/p99, spread between rounds);
  - Offline throughput at each batch size (default 32 and 256);
  - size of the runtime's model file (raw and gzip), params/MACs/sparsity;
  - ratios against the float ONNX Runtime baseline of the same model family, measured in the
    same run (the root variant of the variant's lineage, run on `REFERENCE_RUNTIME`).
The result is one JSON-serializable dict (schema in benchmarks/README.md); `benchmarks.report`
renders it. Thread counts are set explicitly (default 1) and recorded per row.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from benchmarks.environment import environment
from core.measure import offline, single_stream
from core.modelstats import file_sizes, model_facts
from core.runners import MODEL_FILES, RUNTIMES, RunnerError, open_runner, runtimes_for
from core.evaluate import accuracy, split_inputs
from core import data as datasets
from core.artifacts import ArtifactError, Variant, list_variants
from core.runtime import ProviderUnavailableError
from core.tasks import get_task
from core.userdata import served_tasks

BENCH_SCHEMA = "tinyship.bench/1"
# Errors that make one runner row fail without stopping the whole run: a missing or broken
# model file, a runtime that refuses the model. They are recorded in the row and reported.
ROW_ERRORS = (RunnerError, ArtifactError, ProviderUnavailableError, OSError, ValueError,
              RuntimeError)


class BenchmarkError(RuntimeError):
    """Nothing to benchmark, or settings that cannot work; the message says what to do."""


@dataclass(frozen=True)
class Settings:
    """What `run` measures and for how long. Defaults suit `make bench` on 2 cores."""

    threads: int = 1                      # intra-op threads of every runtime (set explicitly)
    budget_s: float = 0.15                # seconds per measurement round (~160 rows: ~6 min)
    rounds: int = 3                       # rounds per measurement; spread is between rounds
    batch_sizes: tuple[int, ...] = (32, 256)   # Offline throughput batch sizes
    latency_inputs: int = 64              # distinct test inputs the batch-1 queries cycle through
    runtimes: tuple[str, ...] = tuple(RUNTIMES)
    tasks: tuple[str, ...] | None = None  # None: core.userdata.served_tasks(artifacts)
    data_dir: str | None = None           # None: DATA_DIR, else the bundled samples
    quick: bool = False                   # CI: shorter rounds (see `quick_settings`)
    accuracy_batch: int = 256             # batch size used to compute accuracy

    def __post_init__(self):
        unknown = [r for r in self.runtimes if r not in RUNTIMES]
        if unknown:
            raise BenchmarkError(f"unknown runtime(s) {unknown}; valid: {', '.join(RUNTIMES)}")
        for task in self.tasks or ():
            get_task(task)  # raises with the valid task names
        if self.threads < 1 or self.rounds < 1 or self.budget_s <= 0:
            raise BenchmarkError(f"threads and rounds must be >= 1 and budget_s > 0, got "
                                 f"threads={self.threads} rounds={self.rounds} "
                                 f"budget_s={self.budget_s}")
        if any(b < 1 for b in self.batch_sizes):
            raise BenchmarkError(f"batch sizes must be >= 1, got {list(self.batch_sizes)}")


def quick_settings(**overrides) -> Settings:
    """CI's quick run: short rounds, same shape of report."""
    return Settings(**{"budget_s": 0.08, "rounds": 3, "quick": True, **overrides})


@dataclass
class TaskTestData:
    """One task's test split, loaded once, and its preprocessed copies (also used by
    `benchmarks latency`)."""

    dataset: datasets.Dataset
    _inputs: dict = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.dataset.source

    @property
    def y(self) -> np.ndarray:
        return self.dataset.y

    def inputs_for(self, variant: Variant) -> np.ndarray:
        """The variant's preprocessed test inputs, computed once per distinct preprocessing
        (variants of one model share it; tokenizing 25k reviews takes seconds)."""
        config = dict(variant.manifest.preprocessing)
        key = json.dumps(config, sort_keys=True)
        if config.get("type") == "text":
            vocab = variant.path / config.get("vocab_file", "vocab.json")
            key += hashlib.sha256(vocab.read_bytes()).hexdigest() if vocab.is_file() else ""
        if key not in self._inputs:
            self._inputs[key] = split_inputs(variant, dataset=self.dataset).x
        return self._inputs[key]


def _served(artifacts, task: str) -> dict | None:
    """What serve runs for the task (compress's selection), or None when nothing is selected."""
    from core.artifacts import selected_runtime, selected_variant

    try:
        return {"variant": selected_variant(artifacts, task, verify=False).name,
                "runtime": selected_runtime(artifacts, task)}
    except ArtifactError:
        return None


def lineage_root(variant: Variant, by_name: dict[str, Variant]) -> Variant:
    """The first variant of the model this one descends from (parent None), following
    lineage parents within the task; stops at a parent that is not on disk."""
    seen = {variant.name}
    current = variant
    while current.lineage.parent in by_name:
        parent = by_name[current.lineage.parent]
        if parent.name in seen:  # a cycle would be a broken manifest; do not loop forever
            break
        seen.add(parent.name)
        current = parent
    return current


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_suite(artifacts: str, settings: Settings = Settings(),
              progress: Callable[[str], None] = _log) -> dict:
    """Measure everything; return the bench record (see module docstring)."""
    started = time.perf_counter()
    if settings.tasks is None:
        settings = dataclasses.replace(settings, tasks=served_tasks(artifacts))
    variants = [v for v in list_variants(artifacts) if v.task in settings.tasks]
    if not variants:
        found = sorted({v.task for v in list_variants(artifacts)})
        raise BenchmarkError(
            f"no variants of the tasks {', '.join(settings.tasks)} under {artifacts!s}"
            + (f" (it has variants of: {', '.join(found)})" if found else "")
            + "; create them first: make train compress"
        )
    plan = [(v, rt) for v in variants for rt in runtimes_for(v) if rt in settings.runtimes]
    progress(f"benchmarking {len(variants)} variants, {len(plan)} variant x runtime rows, "
             f"threads={settings.threads}, {settings.rounds} rounds x {settings.budget_s}s")

    task_data: dict[str, TaskTestData] = {}
    tasks_info = {}
    for task in sorted({v.task for v in variants}):
        ds = datasets.load(get_task(task).dataset, "test", data_dir=settings.data_dir)
        task_data[task] = TaskTestData(ds)
        tasks_info[task] = {"data_source": ds.source, "n_test": len(ds),
                            "served": _served(artifacts, task)}
        progress(f"{task}: {len(ds)} test examples from {ds.source}")

    stats_cache: dict[str, dict] = {}
    rows = []
    for step, (variant, runtime) in enumerate(plan, 1):
        data = task_data[variant.task]
        if variant.path not in stats_cache:
            stats_cache[variant.path] = model_facts(variant)
        row = _measure_row(variant, runtime, data, stats_cache[variant.path], settings)
        rows.append(row)
        progress(f"[{step}/{len(plan)}] {variant.task}/{variant.name} {runtime}: "
                 + (f"ERROR {row['error']}" if row["error"] else
                    f"acc {row['accuracy']:.4f}, p50 {row['latency']['p50_ms']:.4f} ms, "
                    + ", ".join(f"{t['items_per_s']:,.0f}/s @{b}"
                                for b, t in row["throughput"].items())))

    by_task = {t: {v.name: v for v in variants if v.task == t} for t in tasks_info}
    add_ratios(rows, {(v.task, v.name): lineage_root(v, by_task[v.task]).name for v in variants})
    return {
        "schema": BENCH_SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "artifacts": str(artifacts),
        "settings": asdict(settings),
        "environment": environment(),
        "tasks": tasks_info,
        "results": rows,
        "duration_s": round(time.perf_counter() - started, 1),
    }


def _measure_row(variant: Variant, runtime: str, data: TaskTestData, stats: dict,
                 settings: Settings) -> dict:
    manifest_acc = variant.metrics.get("test_accuracy")
    curves = "curves.png" if variant.has_file("curves.png") else None
    row = {
        "task": variant.task, "variant": variant.name, "model": variant.model,
        "parent": variant.lineage.parent, "technique": variant.lineage.technique,
        "runtime": runtime, "provider": None, "threads": settings.threads,
        "accuracy": None, "manifest_accuracy": manifest_acc,
        "manifest_data_source": variant.metrics.get("data_source"),
        "n_test": int(len(data.y)), "latency": None, "throughput": {},
        "size": {"file": MODEL_FILES[runtime], **file_sizes(variant.file(MODEL_FILES[runtime]))},
        "model_stats": stats, "variant_dir": str(variant.path), "curves": curves,
        "runner": None, "error": None,
    }
    try:
        x = data.inputs_for(variant)
        with open_runner(variant, runtime, providers=("cpu",), threads=settings.threads) as runner:
            row["runner"] = runner.describe()
            row["provider"] = runner.provider
            row["threads"] = row["runner"]["threads"]
            row["accuracy"] = accuracy(runner, x, data.y, settings.accuracy_batch)
            row["latency"] = single_stream(runner, x[:settings.latency_inputs], warmup=10,
                                           min_repeats=20, rounds=settings.rounds,
                                           budget_s=settings.budget_s)
            for batch in settings.batch_sizes:
                # Few calls minimum: a MobileNet batch of 256 takes about a second on one thread,
                # while the time budget gives fast models many calls anyway.
                row["throughput"][str(batch)] = offline(runner, x, batch, warmup=1, min_repeats=2,
                                                        rounds=settings.rounds,
                                                        budget_s=settings.budget_s)
    except ROW_ERRORS as e:
        row["error"] = f"{type(e).__name__}: {e}"
    return row


def _best_p50(latency: dict) -> float:
    return min(latency["round_p50_ms"])


def _best_items_per_s(throughput: dict) -> float:
    return max(throughput["round_items_per_s"])


# The runtime every row's ratios are taken against: the root variant (trained or imported) in
# float on ONNX Runtime. Every root has a model.onnx, and ONNX Runtime's batch-1 times vary
# far less on a busy machine than Keras' (whose per-call Python overhead moved the Keras-based
# ratios by a third between CI runs), so ratios against it make a steadier gate.
REFERENCE_RUNTIME = "onnx"


def add_ratios(rows: list[dict], roots: dict[tuple[str, str], str]) -> None:
    """Give every row `baseline` (the root variant on REFERENCE_RUNTIME) and `ratios` against it:
    speedup_p50 (baseline p50 / row p50, > 1 is faster), throughput_<batch> (row / baseline
    items/s), size (row file bytes / baseline file bytes), accuracy_delta_pts (row - baseline,
    in percentage points), speedup_best (baseline fastest query / row fastest query).
    Rows whose baseline was not measured get ratios None.

    Speed ratios compare the best round of each measurement (lowest round p50, highest round
    items/s): on a shared machine other processes only ever slow a round down, so the best round
    is the least disturbed one, and ratios of best rounds vary less between runs than ratios
    of pooled numbers. CI gates on speedup_best only (benchmarks/check.py says why)."""
    measured = {(r["task"], r["variant"], r["runtime"]): r for r in rows if not r["error"]}
    for row in rows:
        root = roots.get((row["task"], row["variant"]), row["variant"])
        base = measured.get((row["task"], root, REFERENCE_RUNTIME))
        row["baseline"] = f"{root}/{REFERENCE_RUNTIME}"
        if base is None or row["error"]:
            row["ratios"] = None
            continue
        ratios = {
            "speedup_p50": _best_p50(base["latency"]) / _best_p50(row["latency"]),
            # Fastest single query vs fastest single query: the ratio CI gates on (see check.py).
            "speedup_best": base["latency"]["min_ms"] / row["latency"]["min_ms"],
            "size": row["size"]["bytes"] / base["size"]["bytes"],
            "accuracy_delta_pts": 100.0 * (row["accuracy"] - base["accuracy"]),
        }
        for batch, t in row["throughput"].items():
            if batch in base["throughput"]:
                ratios[f"throughput_{batch}"] = (_best_items_per_s(t)
                                                 / _best_items_per_s(base["throughput"][batch]))
        row["ratios"] = ratios


@functools.lru_cache(maxsize=8)
def _latency_examples(task: str, data_dir: str | None, n: int) -> np.ndarray:
    """The first `n` raw test inputs of a task, loaded once per check (re-measuring the baseline
    visits about 130 rows; the full IMDB test split takes a second to read)."""
    return datasets.load(get_task(task).dataset, "test", data_dir=data_dir).x[:n]


class SpeedupRemeasurer:
    """`remeasurer(row, base_row)` -> the row's speedup_best measured again, for the CI gate's
    second look at a speed ratio (`benchmarks.check`). Use it as a context manager.

    The row's runtime and its baseline (the root on REFERENCE_RUNTIME) are measured in
    alternating rounds, so that a burst of load on a shared machine slows both rather than one
    of them; the fastest query of all rounds is kept for each. Each baseline stays open between
    calls instead of being loaded again for each of the ~260 re-measurements of
    `check --update` (a dozen baselines serve them all); the measuring itself
    (5 rounds x 2 x 0.2 s) is most of each call."""

    def __init__(self, bench: dict, *, rounds: int = 5, budget_s: float = 0.2,
                 progress: Callable[[str], None] = _log):
        settings = bench.get("settings") or {}
        self._threads = int(settings.get("threads") or 1)
        self._n_inputs = int(settings.get("latency_inputs") or 64)
        self._data_dir = settings.get("data_dir")
        self._rounds, self._budget_s, self._progress = rounds, budget_s, progress
        self._open = contextlib.ExitStack()
        self._baselines: dict[str, tuple] = {}  # variant_dir -> (runner, preprocessed inputs)

    def __enter__(self) -> "SpeedupRemeasurer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._open.close()
        self._baselines.clear()

    def _inputs(self, variant: Variant, task: str) -> np.ndarray:
        return variant.preprocessor()(_latency_examples(task, self._data_dir, self._n_inputs))

    def _baseline(self, base_row: dict) -> tuple:
        from core.artifacts import load_variant

        key = base_row["variant_dir"]
        if key not in self._baselines:
            base = load_variant(key)
            runner = self._open.enter_context(
                open_runner(base, base_row["runtime"], providers=("cpu",),
                            threads=self._threads))
            self._baselines[key] = (runner, self._inputs(base, base_row["task"]))
        return self._baselines[key]

    def __call__(self, row: dict, base_row: dict) -> float:
        from core.artifacts import load_variant

        variant = load_variant(row["variant_dir"])
        base_runner, base_x = self._baseline(base_row)
        self._progress(f"re-measuring {row['task']}/{row['variant']} {row['runtime']} against "
                       f"{base_row['variant']} {base_row['runtime']} ({self._rounds} alternating "
                       f"rounds)")
        best = {"row": float("inf"), "base": float("inf")}
        with open_runner(variant, row["runtime"], providers=("cpu",),
                         threads=self._threads) as runner:
            pairs = (("row", runner, self._inputs(variant, row["task"])),
                     ("base", base_runner, base_x))
            for _ in range(self._rounds):
                for which, r, x in pairs:
                    stats = single_stream(r, x, warmup=10, min_repeats=20, rounds=1,
                                          budget_s=self._budget_s)
                    best[which] = min(best[which], stats["min_ms"])
        return best["base"] / best["row"]

