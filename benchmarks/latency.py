"""`python -m benchmarks latency`: ONNX Runtime only, every provider asked for x batch sizes.

This is the path for a GPU host that has numpy and onnxruntime-gpu but no TensorFlow:

    python -m benchmarks latency --artifacts artifacts --providers cuda,cpu --data fashion_mnist.npz

Every provider must really be usable: one that is not is an error listing the usable ones,
before anything is measured (never a CUDA row that silently ran on the CPU; each session's
providers are checked again by core.runtime.make_session(strict=True) and recorded).

Modes measured per provider and batch size:
  - "numpy":  `session.run` with numpy input and output: what a caller sees, host<->device
              copies included on a GPU;
  - "bound":  IO binding: the input is copied to the provider's device once, the output buffer
              lives there too, and only the run is timed (no copies). On the CPU provider this
              only removes the output allocation;
  - "cuda-graph" (--cuda-graph, CUDA provider): bound buffers plus CUDA-graph capture/replay,
              which removes per-kernel launch overhead.
Batch 1 is timed query by query (SingleStream); larger batches back to back (Offline).
The record says per model which provider, mode and batch size is fastest: at batch 1 on small
models the CPU often beats the GPU (launch and copy overhead dominate a few microseconds of math).
"""
from __future__ import annotations

import datetime as _dt
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.environment import environment
from core.measure import summarize_offline, summarize_single_stream, time_calls
from core.runners import OnnxRunner, RunnerError
from benchmarks.suite import BenchmarkError, TaskTestData
from core.evaluate import accuracy
from core import data as datasets
from core.artifacts import list_variants
from core.runtime import GPU_PROVIDERS, ProviderUnavailableError, provider_name, usable_providers
from core.tasks import get_task
from core.userdata import served_tasks

LATENCY_SCHEMA = "tinyship.latency/1"
LATENCY_JSON, LATENCY_MD = "latency.json", "latency.md"


@dataclass(frozen=True)
class LatencySettings:
    providers: tuple[str, ...] = ("cpu",)
    batch_sizes: tuple[int, ...] = (1, 32, 256)
    threads: int = 1            # CPU provider intra-op threads
    budget_s: float = 0.3
    rounds: int = 3
    cuda_graph: bool = False
    tasks: tuple[str, ...] | None = None
    # "all" variants with model.onnx, or "float-and-selected": each task's roots (trained or
    # imported, float) and the variant compress selected.
    variants: str = "all"
    # TensorRT execution provider: fp16 kernels, and engines cached on disk so that a second
    # run does not rebuild them (minutes for a MobileNet).
    trt_fp16: bool = True
    trt_cache: str | None = None

    def provider_options(self) -> dict:
        """ONNX Runtime provider options of these settings, recorded with every row."""
        trt = {"trt_fp16_enable": "1" if self.trt_fp16 else "0"}
        if self.trt_cache:
            trt.update({"trt_engine_cache_enable": "1", "trt_engine_cache_path": self.trt_cache,
                        "trt_timing_cache_enable": "1", "trt_timing_cache_path": self.trt_cache})
        return {"TensorrtExecutionProvider": trt}


VARIANT_SETS = ("all", "float-and-selected")
# Batch sizes of `python -m benchmarks gpu`: batch 1 to 1024.
GPU_BATCH_SIZES = (1, 8, 64, 256, 1024)
# An accuracy on a GPU provider this many points away from the CPU's is flagged (fp16 TensorRT
# may move a few borderline examples; more means a broken conversion).
GPU_ACCURACY_TOLERANCE_PTS = 0.5


def check_providers(providers) -> list[str]:
    """Full provider names; ProviderUnavailableError listing the usable ones for any that
    cannot run here."""
    names = [provider_name(p) for p in providers]
    usable = usable_providers()
    missing = [n for n in names if n not in usable]
    if missing:
        raise ProviderUnavailableError(
            f"provider(s) {', '.join(missing)} not usable on this machine; usable: "
            f"{', '.join(usable)} (for CUDA: onnxruntime-gpu plus the CUDA 13 and cuDNN 9 "
            "libraries on LD_LIBRARY_PATH, see ../shared/gpu/README.md)")
    return names


def _resolve_data(data: str | None, tasks: list[str]) -> tuple[str | None, list[str]]:
    """--data may be one <dataset>.npz (then only the tasks on that dataset run) or a folder."""
    if data is None:
        return None, tasks
    path = Path(data)
    if path.is_file():
        kept = [t for t in tasks if get_task(t).dataset == path.stem]
        if not kept:
            raise BenchmarkError(f"--data {path}: file name must be <dataset>.npz for one of "
                                 f"the tasks {', '.join(tasks)}; got {path.name!r}")
        return str(path.parent), kept
    if path.is_dir():
        return str(path), tasks
    raise BenchmarkError(f"--data {path} does not exist (a <dataset>.npz file or a folder of them)")


def _measure(call, batch_size: int, settings: LatencySettings, mode: str) -> dict:
    warmup, min_repeats = (20, 50) if batch_size == 1 else (3, 5)
    per_round = time_calls(call, warmup=warmup, min_repeats=min_repeats,
                           rounds=settings.rounds, budget_s=settings.budget_s)
    lat = summarize_single_stream(per_round)
    thr = summarize_offline(per_round, batch_size)
    return {"mode": mode, "batch_size": batch_size, "p50_ms": lat["p50_ms"],
            "p90_ms": lat["p90_ms"], "p99_ms": lat["p99_ms"], "mean_ms": lat["mean_ms"],
            "items_per_s": thr["items_per_s"], "spread_pct": lat["spread_pct"] if batch_size == 1
            else thr["spread_pct"], "n": lat["n"]}


def _batch(x: np.ndarray, size: int) -> np.ndarray:
    idx = np.arange(size) % len(x)
    return np.ascontiguousarray(x[idx])


def measure_provider(variant, provider: str, x: np.ndarray, y: np.ndarray,
                     settings: LatencySettings) -> dict:
    row = {"task": variant.task, "variant": variant.name, "provider": provider,
           "error": None, "measurements": []}
    # TensorRT takes the subgraphs it supports; the rest should run on CUDA, not on the CPU.
    chain = ((provider, "CUDAExecutionProvider") if provider == "TensorrtExecutionProvider"
             else (provider,))
    options = {p: o for p, o in settings.provider_options().items() if p in chain}
    with OnnxRunner(variant, providers=chain, threads=settings.threads,
                    provider_options=options) as runner:
        row.update({"session_providers": runner.session.get_providers(),
                    "provider_options": runner.provider_options,
                    "runner": runner.describe(), "accuracy": accuracy(runner, x, y, 256)})
        for b in settings.batch_sizes:
            xb = _batch(x, b)
            if b == 1:
                queries = [np.ascontiguousarray(x[i:i + 1]) for i in range(min(64, len(x)))]
                row["measurements"].append(_measure(
                    lambda i: runner.predict(queries[i % len(queries)]), b, settings, "numpy"))
            else:
                row["measurements"].append(_measure(lambda i: runner.predict(xb), b, settings,
                                                    "numpy"))
            runner.bind(xb)
            row["measurements"].append(_measure(lambda i: runner.run_bound(), b, settings, "bound"))
    if settings.cuda_graph and provider == "CUDAExecutionProvider":
        try:
            for b in settings.batch_sizes:
                # One session per batch size: a captured graph is tied to its buffers' shapes.
                with OnnxRunner(variant, providers=(provider,), threads=settings.threads,
                                cuda_graph=True) as graph_runner:
                    graph_runner.bind(_batch(x, b))
                    graph_runner.run_bound()  # the first bound run captures the graph
                    row["measurements"].append(_measure(lambda i: graph_runner.run_bound(), b,
                                                        settings, "cuda-graph"))
        except RuntimeError as e:
            # ORT refuses CUDA graphs when some node would run on the CPU provider; the other
            # modes' numbers stand, and the reason is recorded.
            row["cuda_graph_error"] = f"{type(e).__name__}: {e}"
    return row


def fastest(results: list[dict]) -> dict:
    """Per task/variant: the fastest (provider, mode) at batch 1 and the highest-throughput
    (provider, mode, batch)."""
    out = {}
    for key in sorted({(r["task"], r["variant"]) for r in results}):
        ms = [(r["provider"], m) for r in results if (r["task"], r["variant"]) == key
              and not r["error"] for m in r["measurements"]]
        if not ms:
            continue
        b1 = [(p, m) for p, m in ms if m["batch_size"] == 1]
        entry = {}
        if b1:
            p, m = min(b1, key=lambda pm: pm[1]["p50_ms"])
            entry["batch1"] = {"provider": p, "mode": m["mode"], "p50_ms": m["p50_ms"]}
        p, m = max(ms, key=lambda pm: pm[1]["items_per_s"])
        entry["throughput"] = {"provider": p, "mode": m["mode"], "batch_size": m["batch_size"],
                               "items_per_s": m["items_per_s"]}
        out[f"{key[0]}/{key[1]}"] = entry
    return out


def run_latency(artifacts: str, data: str | None, settings: LatencySettings,
                progress=lambda msg: print(msg, file=sys.stderr, flush=True)) -> dict:
    providers = check_providers(settings.providers)
    if settings.variants not in VARIANT_SETS:
        raise BenchmarkError(f"variants={settings.variants!r}; valid: {', '.join(VARIANT_SETS)}")
    tasks = list(settings.tasks or served_tasks(artifacts))
    data_dir, tasks = _resolve_data(data, tasks)
    variants = [v for v in list_variants(artifacts) if v.task in tasks and v.has_file("model.onnx")]
    if settings.variants == "float-and-selected":
        variants = [v for v in variants if v.lineage.is_root
                    or v.name == _selected_name(artifacts, v.task)]
    if not variants:
        raise BenchmarkError(f"no variants with model.onnx for tasks {', '.join(tasks)} under "
                             f"{artifacts}; create them first: make train compress")
    task_data, tasks_info = {}, {}
    for task in sorted({v.task for v in variants}):
        ds = datasets.load(get_task(task).dataset, "test", data_dir=data_dir)
        task_data[task] = TaskTestData(ds)
        tasks_info[task] = {"data_source": ds.source, "n_test": len(ds)}
    results = []
    plan = [(v, p) for v in variants for p in providers]
    for step, (variant, provider) in enumerate(plan, 1):
        d = task_data[variant.task]
        try:
            row = measure_provider(variant, provider, d.inputs_for(variant), d.y, settings)
        except (RunnerError, ProviderUnavailableError) as e:
            row = {"task": variant.task, "variant": variant.name, "provider": provider,
                   "error": f"{type(e).__name__}: {e}", "measurements": []}
        results.append(row)
        progress(f"[{step}/{len(plan)}] {variant.task}/{variant.name} {provider}: "
                 + (row["error"] or ", ".join(f"{m['mode']}@{m['batch_size']} "
                                              f"p50 {m['p50_ms']:.4f} ms"
                                              for m in row["measurements"])))
    compare_with_cpu(results)
    return {"schema": LATENCY_SCHEMA,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "artifacts": str(artifacts), "settings": asdict(settings),
            "environment": environment(), "tasks": tasks_info, "results": results,
            "fastest": fastest(results)}


def _selected_name(artifacts, task: str) -> str | None:
    from core.artifacts import ArtifactError, selected_variant

    try:
        return selected_variant(artifacts, task, verify=False).name
    except ArtifactError:
        return None


def compare_with_cpu(results: list[dict]) -> None:
    """Give every non-CPU row `accuracy_vs_cpu_pts` (its accuracy minus the same variant's on
    the CPU provider) and `accuracy_ok` (within GPU_ACCURACY_TOLERANCE_PTS)."""
    cpu = {(r["task"], r["variant"]): r.get("accuracy") for r in results
           if r["provider"] == "CPUExecutionProvider" and not r["error"]}
    for r in results:
        base = cpu.get((r["task"], r["variant"]))
        if r["provider"] == "CPUExecutionProvider" or r["error"] or base is None:
            continue
        delta = 100 * (r["accuracy"] - base)
        r["accuracy_vs_cpu_pts"] = round(delta, 3)
        r["accuracy_ok"] = abs(delta) <= GPU_ACCURACY_TOLERANCE_PTS


def gpu_settings(usable: tuple[str, ...], **overrides) -> LatencySettings:
    """What `python -m benchmarks gpu` measures: every usable GPU provider (TensorRT fp16 with
    an engine cache, CUDA with CUDA graphs) and the CPU, batch 1 to 1024, on each task's float
    and selected variants. No usable GPU provider is an error naming what is usable."""
    gpus = [p for p in GPU_PROVIDERS if p in usable]
    if not gpus:
        raise ProviderUnavailableError(
            f"no GPU provider is usable on this machine (usable: {', '.join(usable)}); "
            "`benchmarks gpu` runs on a GPU host with onnxruntime-gpu and the CUDA 13 / cuDNN 9 "
            "(and TensorRT 10 for its provider) libraries: see ../shared/gpu/README.md")
    values = {"providers": (*gpus, "CPUExecutionProvider"), "batch_sizes": GPU_BATCH_SIZES,
              "cuda_graph": "CUDAExecutionProvider" in gpus, "variants": "float-and-selected",
              "trt_fp16": True, "trt_cache": "trt-cache", **overrides}
    return LatencySettings(**values)


def render_latency_markdown(record: dict) -> str:
    from benchmarks.report import latency_table, markdown_table

    head, rows = latency_table(record)
    env = record["environment"]
    lines = ["# ONNX Runtime latency by provider", "",
             f"{record['created']} · {env['cpu']} · GPUs: "
             f"{', '.join(g['name'] + ' (driver ' + g['driver'] + ')' for g in env['gpus']) or 'none'}"
             f" · onnxruntime {env['libraries'].get('onnxruntime-gpu') or env['libraries'].get('onnxruntime')}"
             f" · CPU provider threads: {record['settings']['threads']}", "",
             "numpy: session.run with numpy in/out (copies included); bound: IO binding, "
             "input/output on the provider's device, copies excluded; cuda-graph: bound + "
             "CUDA-graph replay. items/s = batch / time per call.", ""]
    lines += markdown_table(head, rows)
    lines += ["", "Fastest per model:"]
    for key, f in record["fastest"].items():
        b1 = f.get("batch1")
        lines.append(f"- {key}: batch 1 → {b1['provider']} ({b1['mode']}, {b1['p50_ms']:.4f} ms)"
                     if b1 else f"- {key}:")
        t = f["throughput"]
        lines[-1] += (f"; throughput → {t['provider']} ({t['mode']}) at batch {t['batch_size']}, "
                      f"{t['items_per_s']:,.0f} items/s")
    return "\n".join(lines) + "\n"


def write_latency(record: dict, reports: str | Path) -> Path:
    from benchmarks.report import write_record

    return write_record(record, reports, LATENCY_JSON, LATENCY_MD, render_latency_markdown(record))
