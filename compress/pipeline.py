"""The compression pipeline: apply a recipe to a trained variant, measure every variant,
select the one to serve.

For every step: the technique writes its model files into a staging variant (trainer's
`create_variant`, so a failed step leaves nothing behind); float Keras results are exported
to ONNX + TFLite and parity-checked (core.export); quantized files are parity-checked
against the model they were converted from; accuracy is measured on the test split of the
data in use with the file the variant is served from (ONNX, else TFLite); size, params,
MACs and sparsity are profiled; batch-1 CPU latency (1 thread) is measured with the
benchmarks package. The table of all variants goes to artifacts/<task>/compress_report.{json,md}
and the fastest ONNX variant within the accuracy budget is recorded with `select_variant`.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compress.errors import CompressError, NotApplicableError
from core.evaluate import load_keras, split_inputs, top1_accuracy
from core.manifest import ROOT_TECHNIQUES, probabilities
from core.modelstats import keras_profile, model_file_sizes
from core.export import ExportParityError, check_parity, run_onnx, run_tflite
from compress.recipe import Recipe
from compress.techniques import Inputs, get_technique
from core import artifacts, data
from core.artifacts import ArtifactError, Variant
from core.tasks import get_task

REPORT_NAME = "compress_report"
LATENCY_EXAMPLES = 32
# Seconds per latency round (3 rounds): hundreds to thousands of batch-1 calls for the models
# compress makes, enough for a median that moves less than the machine does between minutes;
# `benchmarks run` measures every runtime in depth.
LATENCY_ROUND_S = 0.1
# Selection measures again the contenders within this factor of the fastest, this many
# alternating rounds each (confirm_fastest).
CONFIRM_WITHIN = 1.5
CONFIRM_ROUNDS = 5


@dataclass
class TaskData:
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str


def load_task_data(base: Variant, recipe: Recipe, data_dir=None) -> TaskData:
    train = split_inputs(base, "train", data_dir, recipe.train_limit)
    test = split_inputs(base, "test", data_dir, recipe.test_limit)
    return TaskData(train.x, train.y, test.x, test.y, test.source)


def served_file(directory: Path) -> str | None:
    for name in ("model.onnx", "model.tflite"):
        if (Path(directory) / name).is_file():
            return name
    return None


def predict_file(path: Path, x: np.ndarray, onnxruntime_options: dict | None = None) -> np.ndarray:
    if path.suffix == ".onnx":
        return run_onnx(path, x, onnxruntime_options=onnxruntime_options)
    return run_tflite(path, x)


def measure_latency(variant: Variant, example: np.ndarray) -> dict:
    """Batch-1, 1-thread CPU latency on every serving runtime the variant has a file for
    (ONNX Runtime, LiteRT): `latency_p50_ms_by_runtime`, and the fastest one's numbers as
    `latency_p50_ms` / `latency_runtime`."""
    from core.measure import single_stream
    from core.artifacts import SERVING_RUNTIMES
    from core.runners import open_runner, runtimes_for

    measured = {}
    for runtime in [rt for rt in runtimes_for(variant) if rt in SERVING_RUNTIMES]:
        with open_runner(variant, runtime, providers=("cpu",), threads=1) as runner:
            measured[runtime] = single_stream(runner, example, budget_s=LATENCY_ROUND_S)
    if not measured:
        raise CompressError(f"{variant.task}/{variant.name} has no model.onnx or model.tflite "
                            f"to measure")
    runtime = min(measured, key=lambda rt: measured[rt]["p50_ms"])
    stats = measured[runtime]
    return {"latency_p50_ms": round(stats["p50_ms"], 5), "latency_p90_ms": round(stats["p90_ms"], 5),
            "latency_spread_pct": round(stats["spread_pct"], 2), "latency_runtime": runtime,
            "latency_p50_ms_by_runtime": {rt: round(s["p50_ms"], 5) for rt, s in measured.items()},
            "latency_conditions": "CPU, batch 1, 1 thread"}


@dataclass
class Run:
    """State of one `run` over one trained model."""

    root: Path
    base: Variant
    recipe: Recipe
    data: TaskData
    rows: list[dict] = field(default_factory=list)
    _models: dict = field(default_factory=dict)
    # False: leave batch-1 latencies to `remeasure_latency` (run-all --jobs measures them once
    # the parallel work is over, so that no latency is taken while another process computes).
    measure: bool = True

    def latency(self, variant: Variant) -> dict:
        return measure_latency(variant, self.data.test_x[:LATENCY_EXAMPLES]) if self.measure else {}

    @property
    def parity_x(self) -> np.ndarray:
        return self.data.test_x[: self.recipe.parity_size]

    def keras_model(self, variant: Variant):
        if variant.name not in self._models:
            self._models[variant.name] = load_keras(variant)
        return self._models[variant.name]


def _row(variant: Variant, status: str = "ok") -> dict:
    m = variant.metrics
    keys = ("test_accuracy", "params", "macs", "sparsity", "onnx_bytes", "onnx_gzip_bytes",
            "tflite_bytes", "tflite_gzip_bytes", "latency_p50_ms", "latency_spread_pct",
            "latency_runtime", "latency_p50_ms_by_runtime")
    row = {"variant": variant.name, "model": variant.model,
           "technique": variant.lineage.technique, "parent": variant.lineage.parent,
           "status": status, "has_onnx": variant.has_file("model.onnx")}
    row.update({k: m.get(k) for k in keys})
    return row


def measure_base(run: Run) -> dict:
    """Accuracy, profile and latency of the trained model, on the same footing as its variants.

    The trainer's test_accuracy is left as written; the row carries this run's measurement."""
    base = run.base
    name = served_file(base.path)
    if name is None:
        raise ArtifactError(f"{base.path}: the trained variant has neither model.onnx nor model.tflite")
    acc = top1_accuracy(probabilities(predict_file(base.path / name, run.data.test_x,
                                                   base.onnxruntime_options)), run.data.test_y)
    prof = keras_profile(run.keras_model(base)) if base.has_file("model.keras") else \
        {"metrics": {}, "details": {}}
    metrics = {**prof["metrics"], **model_file_sizes(base.path),
               **run.latency(base)}
    base = artifacts.update_manifest(base, metrics=metrics, extra={"compress_profile": prof["details"]})
    run.base = base
    row = _row(base)
    row["test_accuracy"] = acc
    row["data_source"] = run.data.source
    return row


# Every step starts from the same seed with deterministic TF ops, so the same recipe on the same
# data gives the same variant (new layers' initial weights, fine-tune shuffling). Without it two
# runs on the bundled data differed by up to 3 accuracy points, too much for CI's baseline check.
STEP_SEED = 0


def seed_tensorflow(seed: int) -> None:
    from core.tf_setup import keras, tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _step_variant_name(step, parent: Variant) -> str:
    return f"{parent.name}-{get_technique(step.technique).suffix(step.params)}"


def run_step(run: Run, step, parent: Variant, parent_row: dict) -> Variant:
    """Apply one recipe step to `parent`; returns the new, measured variant."""
    technique = get_technique(step.technique)
    name = _step_variant_name(step, parent)
    inputs = Inputs(parent, lambda: run.keras_model(parent), run.data.train_x, run.data.train_y,
                    run.data.train_x[: run.recipe.calibration_size],
                    parent.output.activation,
                    len(parent.labels), run.recipe.epochs,
                    lambda other: run.keras_model(artifacts.find_variant(run.root, parent.task, other)))
    started = time.perf_counter()
    lineage = {"parent": parent.name, "technique": technique.name, "params": dict(step.params),
               "teacher": technique.teacher(step.params, parent.name)}
    with artifacts.create_variant(
            run.root, task=parent.task, model=parent.model, variant=name, lineage=lineage,
            input=parent.input, output=parent.output,
            preprocessing=dict(parent.manifest.preprocessing), labels=parent.labels) as v:
        out_dir = Path(v.dir)
        vocab = parent.manifest.preprocessing.get("vocab_file")
        if vocab:
            shutil.copy2(parent.file(vocab), out_dir / vocab)
        seed_tensorflow(STEP_SEED)
        outcome = technique.apply(inputs, step.params, out_dir)
        v.params["plan"] = outcome.plan
        if outcome.onnxruntime_options:
            v.runtime["onnxruntime"] = outcome.onnxruntime_options
        parity = []
        if outcome.keras_model is not None and not outcome.quantized_files:
            from core.export import export_float

            info = export_float(outcome.keras_model, out_dir, run.parity_x)
            parity, v.extra["onnx"] = info["parity"], info["onnx"]
            if run.recipe.export_saved_model:
                from core.export import export_saved_model

                saved = export_saved_model(outcome.keras_model, out_dir, run.parity_x)
                parity.append(saved.pop("parity"))
                v.extra["saved_model"] = saved
        if outcome.quantized_files:
            parity = _check_quantized(run, outcome, out_dir, parent)
        if outcome.keras_model is not None and outcome.save_keras:
            outcome.keras_model.save(out_dir / "model.keras")
        served = served_file(out_dir)
        acc = top1_accuracy(probabilities(predict_file(out_dir / served, run.data.test_x,
                                                       outcome.onnxruntime_options)),
                            run.data.test_y)
        if outcome.keras_model is not None and outcome.save_keras:
            prof = keras_profile(outcome.keras_model)
        else:
            # Quantization changes neither the parameter count nor the MACs nor which
            # weights are zero: those are the parent's.
            prof = {"metrics": {k: parent_row.get(k) for k in ("params", "macs", "sparsity")},
                    "details": {"profile_from": parent.name}}
        v.metrics.update({"test_accuracy": acc, "data_source": run.data.source,
                                      "accuracy_from": served, **prof["metrics"],
                                      **model_file_sizes(out_dir)})
        v.extra.update({"parity": parity, "profile": prof["details"],
                                    "fine_tune_history": outcome.history,
                                    "compress_seconds": round(time.perf_counter() - started, 1)})
    variant = artifacts.find_variant(run.root, parent.task, name)
    return artifacts.update_manifest(variant, metrics=run.latency(variant))


def _check_quantized(run: Run, outcome, out_dir: Path, parent: Variant) -> list[dict]:
    if outcome.reference_model is not None:
        reference = outcome.reference_model.predict(run.parity_x, batch_size=512, verbose=0)
    else:
        # reference_onnx is the parent's model.onnx: run it with the parent's settings.
        reference = run_onnx(outcome.reference_onnx, run.parity_x,
                             onnxruntime_options=parent.onnxruntime_options)
    reports = []
    for name in outcome.quantized_files:
        runtime = "onnxruntime" if name.endswith(".onnx") else "litert"
        candidate = predict_file(out_dir / name, run.parity_x, outcome.onnxruntime_options)
        reports.append(check_parity(reference, candidate, f"{runtime} ({name})",
                                    quantized=True).as_dict())
    return reports


def run_model(root, task: str, model: str, recipe: Recipe, data_dir=None, log=print,
              start_from: str | None = None, measure: bool = True) -> list[dict]:
    """Apply `recipe` to the trained variant `<task>/<model>` (or, for the steps without
    `from`, to the existing variant `start_from` of that model); returns the report rows.
    measure=False leaves the latencies to `remeasure_latency`."""
    base = artifacts.find_variant(root, task, model)
    run = Run(Path(root), base, recipe, load_task_data(base, recipe, data_dir), measure=measure)
    log(f"[{task}/{model}] data: {run.data.source} ({len(run.data.train_y)} train, "
        f"{len(run.data.test_y)} test); {len(recipe.steps)} step(s)")
    base_row = measure_base(run)
    rows, produced = [base_row], {None: (run.base, base_row)}
    if start_from is not None:
        start = artifacts.find_variant(root, task, start_from)
        if start.model != model or start.metrics.get("data_source") != run.data.source:
            raise CompressError(
                f"--start-from {start_from!r} must be a variant of {model!r} measured on "
                f"{run.data.source} (it is a variant of {start.model!r} measured on "
                f"{start.metrics.get('data_source')})")
        produced[None] = (start, {**_row(start), "data_source": run.data.source})
    for step in recipe.steps:
        if step.source not in produced:
            rows.append({"variant": step.id, "model": model, "technique": step.technique,
                         "status": f"skipped: step {step.source!r} produced no variant"})
            continue
        parent, parent_row = produced[step.source]
        started = time.perf_counter()
        try:
            variant = run_step(run, step, parent, parent_row)
        except (NotApplicableError, CompressError, ExportParityError, ArtifactError,
                ValueError) as e:
            # `would_be` names the variant this step would have written, so that the CI gate
            # can tell "compress rejected it in this run" from "it went missing".
            would_be = _step_variant_name(step, parent)
            applicable = not isinstance(e, NotApplicableError)
            rows.append({"variant": step.id, "model": model, "technique": step.technique,
                         "parent": parent.name, "would_be": would_be,
                         "status": f"failed: {e}" if applicable else f"not applicable: {e}"})
            log(f"  ! {step.id}: FAILED: {e}" if applicable else
                f"  - {step.id}: not applicable ({e})")
            # A variant of that name from an earlier run derives from an earlier parent (the
            # model was retrained, the recipe changed): left there, benchmarks would measure
            # it and serve could select it as if this run had made it.
            if artifacts.remove_variant(run.root, parent.task, would_be):
                log(f"    removed {would_be} from an earlier run")
            continue
        row = _row(variant)
        row["data_source"] = run.data.source
        rows.append(row)
        produced[step.id] = (variant, row)
        latency = (f"{row['latency_p50_ms'] * 1000:.0f} us ({row['latency_runtime']})"
                   if row.get("latency_p50_ms") is not None else "latency measured later")
        log(f"  + {variant.name}: acc {row['test_accuracy']:.4f}, {latency}, "
            f"{time.perf_counter() - started:.0f} s")
    return rows


# ------------------------------------------------------------------ selection and report

def _measured_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok" and r.get("test_accuracy") is not None]


def _accuracy_floor(measured: list[dict], budget_points: float) -> tuple[dict | None, float]:
    """(the most accurate root row, the accuracy a candidate needs), or (None, nan)."""
    roots = [r for r in measured if r["technique"] in ROOT_TECHNIQUES]
    if not roots:
        return None, float("nan")
    baseline = max(roots, key=lambda r: r["test_accuracy"])
    return baseline, baseline["test_accuracy"] - budget_points / 100.0


GPU_NOT_MEASURED = ("not measured: compress measures batch-1 latency on the CPU; give a GPU "
                    "record (python -m benchmarks gpu) to `compress select --gpu-record`")


def select(rows: list[dict], budget_points: float, objective=None, cpu_bench: dict | None = None,
           gpu_record: dict | None = None, task: str | None = None) -> dict:
    """What to serve, per placement (compress.placement): on the CPU, of every measured
    (variant, serving runtime) pair, the best for the objective (default: lowest batch-1 p50)
    whose variant's accuracy is at most `budget_points` below the best trained or imported
    model, within the objective's latency and size budgets; ties go to the smaller gzip size.
    CPU measurements are compress's own, or a benchmark record's (`cpu_bench`, which also has
    throughput); the GPU placement comes from a GPU record, else it says it was not measured.
    Returns the reason record; its top-level variant and runtime are the CPU choice."""
    from compress import placement

    objective = objective or placement.Objective(budget_points=budget_points)
    measured = _measured_rows(rows)
    baseline, floor = _accuracy_floor(measured, objective.budget_points)
    if objective.min_accuracy is not None:
        floor = max(floor, objective.min_accuracy)
    if baseline is None:
        raise CompressError("no trained baseline in the report: nothing to select against")
    known = {r["variant"] for r in measured}
    cpu_candidates = ([c for c in placement.from_bench(cpu_bench, task) if c.variant in known]
                      if cpu_bench else placement.from_report_rows(measured))
    cpu, why = placement.choose(cpu_candidates, objective, floor)
    if cpu is None:
        raise CompressError(f"no CPU candidate for {objective.describe()} (best root "
                            f"{baseline['variant']} at {baseline['test_accuracy']:.4f}): {why}")
    placements = {"cpu": {**cpu.as_dict(), "measured": True}}
    # For consumers that run ONNX only (Triton, KServe's ONNX runtime): the best ONNX candidate.
    onnx_only, _ = placement.choose([c for c in cpu_candidates if c.runtime == "onnx"],
                                    objective, floor)
    if onnx_only is not None:
        placements["cpu-onnx"] = {**onnx_only.as_dict(), "measured": True}
    if gpu_record is not None:
        sizes = {r["variant"]: r.get("onnx_gzip_bytes") for r in measured}
        gpu, why = placement.choose(
            [c for c in placement.from_gpu_record(gpu_record, task, sizes) if c.variant in known],
            objective, floor)
        placements["gpu"] = ({**gpu.as_dict(), "measured": True} if gpu is not None
                             else {"measured": why != "not measured", "why": why})
    else:
        placements["gpu"] = {"measured": False, "why": GPU_NOT_MEASURED}
    # The baseline's batch-1 p50 from the same measurements as the choice's.
    base_p50 = min((c.p50_ms for c in cpu_candidates
                    if c.variant == baseline["variant"] and c.p50_ms), default=None)
    chosen = next(r for r in measured if r["variant"] == cpu.variant)
    return {"variant": cpu.variant, "runtime": cpu.runtime, "baseline": baseline["variant"],
            "baseline_accuracy": baseline["test_accuracy"],
            "accuracy": chosen["test_accuracy"], "budget_points": objective.budget_points,
            "latency_p50_ms": cpu.p50_ms, "baseline_latency_p50_ms": base_p50,
            "speedup": base_p50 / cpu.p50_ms if base_p50 and cpu.p50_ms else None,
            "objective": {"metric": objective.metric, "batch": objective.batch,
                          "max_latency_ms": objective.max_latency_ms,
                          "max_size_kb": objective.max_size_kb,
                          "min_accuracy": objective.min_accuracy},
            "placements": placements,
            "rule": f"per placement, of the serving runtimes measured: {objective.describe()}"}


def report_paths(root, task: str) -> tuple[Path, Path]:
    base = Path(root) / task / REPORT_NAME
    return base.with_suffix(".json"), base.with_suffix(".md")


def update_report(root, task: str, model: str, rows: list[dict], data_source: str) -> dict:
    """Merge this model's rows into the task's report (rows of other models and earlier rows
    measured on the same data are kept, so selection compares every compressed variant)."""
    json_path, _ = report_paths(root, task)
    report = {"task": task, "data_source": data_source, "models": {}}
    if json_path.is_file():
        previous = json.loads(json_path.read_text())
        if previous.get("data_source") == data_source:
            report["models"] = previous.get("models", {})
    # Rows of an earlier run of this model stay unless this run measured the same variant
    # again (so a recipe with one extra step adds a row instead of dropping the others).
    # A failed step is keyed by the variant it would have written, so that a later success
    # replaces the failure and a later failure replaces the earlier success's row.
    def key(row):
        return row.get("would_be") or row["variant"]

    merged = {key(r): r for r in report["models"].get(model, [])}
    merged.update({key(r): r for r in rows})
    report["models"][model] = list(merged.values())
    return report


def save_report(root, task: str, report: dict) -> tuple[Path, Path]:
    json_path, md_path = report_paths(root, task)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    md_path.write_text(render_markdown(report) + "\n")
    return json_path, md_path


def _kb(v) -> str:
    return f"{v / 1024:.1f}" if v else ""


def render_markdown(report: dict) -> str:
    sel = report.get("selection") or {}
    lines = [f"# compress report: {report['task']}", "",
             f"Data: {report['data_source']}. Latency: p50 of `core.measure.single_stream`, "
             "CPU, batch 1, 1 thread, on the fastest of ONNX Runtime and LiteRT the variant "
             "has a file for. "
             "Sizes in KiB; gzip -9. MACs per example.", ""]
    if sel:
        lines += [f"**Selected: `{sel['variant']}`** (accuracy {sel['accuracy']:.2%}, baseline "
                  f"`{sel['baseline']}` {sel['baseline_accuracy']:.2%}, budget "
                  f"{sel['budget_points']} pt; "
                  + (f"p50 {sel['latency_p50_ms'] * 1000:.1f} us " if sel.get('latency_p50_ms')
                     else "")
                  + f"on {sel.get('runtime', 'onnx')}"
                  + (f", {sel['speedup']:.2f}x faster than the baseline" if sel.get("speedup") else "")
                  + ")", ""]
    header = ("| variant | technique | accuracy | Δ pts | ONNX KiB | ONNX gzip | TFLite KiB | "
              "TFLite gzip | params | MACs | sparsity | p50 µs | runtime |")
    for model, rows in report["models"].items():
        base_acc = next((r["test_accuracy"] for r in rows
                         if r.get("technique") in ROOT_TECHNIQUES), None)
        lines += [f"## {model}", "", header, "|" + "---|" * 13]
        notes = []
        for r in rows:
            if r.get("status") != "ok":
                notes.append(f"- `{r['variant']}` ({r['technique']}): {r['status']}")
                continue
            acc = r["test_accuracy"]
            delta = f"{(acc - base_acc) * 100:+.2f}" if base_acc is not None else ""
            lat = f"{r['latency_p50_ms'] * 1000:.1f}" if r.get("latency_p50_ms") else ""
            lines.append(
                f"| {r['variant']} | {r['technique']} | {acc:.2%} | {delta} | {_kb(r.get('onnx_bytes'))} "
                f"| {_kb(r.get('onnx_gzip_bytes'))} | {_kb(r.get('tflite_bytes'))} "
                f"| {_kb(r.get('tflite_gzip_bytes'))} | {r.get('params') or ''} | {r.get('macs') or ''} "
                f"| {r['sparsity'] if r.get('sparsity') is not None else ''} | {lat} "
                f"| {r.get('latency_runtime') or ''} |")
        lines += [""] + notes + ([""] if notes else [])
    return "\n".join(lines)


def rows_from_manifests(root, task: str, report: dict | None = None) -> dict:
    """The report rebuilt from the variants' manifests (the source of truth), e.g. after an
    interrupted run: every variant of the task measured by compress on the report's data
    (or, without a report, on the data of the first trained model found) becomes a row;
    failed and skipped rows of `report` are kept."""
    variants = [v for v in artifacts.list_variants(root, task) if "latency_p50_ms" in v.metrics]
    if report is None:
        trained = [v for v in variants if v.lineage.is_root]
        if not trained:
            raise CompressError(f"no measured trained variant of {task!r} under {root}: "
                                "run `python -m compress run` first")
        report = {"task": task, "data_source": trained[0].metrics.get("data_source"), "models": {}}
    for variant in variants:
        if variant.metrics.get("data_source") != report["data_source"]:
            continue
        rows = {r["variant"]: r for r in report["models"].get(variant.model, [])}
        rows[variant.name] = {**_row(variant), "data_source": report["data_source"]}
        report["models"][variant.model] = list(rows.values())
    return report


def _latency_examples(root, task: str, data_dir=None):
    """variant -> the first LATENCY_EXAMPLES test inputs as its model's variants take them
    (they share the model's preprocessing); the test split is read once, when first needed."""
    cache: dict[str, np.ndarray] = {}
    split = []

    def examples(variant: Variant) -> np.ndarray:
        if variant.model not in cache:
            if not split:
                split.append(data.load(get_task(task).dataset, "test", data_dir=data_dir))
            base = artifacts.find_variant(root, task, variant.model)
            cache[variant.model] = base.preprocessor()(split[0].x[:LATENCY_EXAMPLES])
        return cache[variant.model]
    return examples


def remeasure_latency(root, task: str, report: dict, data_dir=None, log=print) -> dict:
    """Measure the latency of every variant in the report again (e.g. once the machine is
    quiet: a report built while other jobs ran has noisy latencies) and update the rows
    and the manifests."""
    examples = _latency_examples(root, task, data_dir)
    for rows in report["models"].values():
        for row in rows:
            if row.get("status") != "ok":
                continue
            variant = artifacts.find_variant(root, task, row["variant"])
            latency = measure_latency(variant, examples(variant))
            artifacts.update_manifest(variant, metrics=latency)
            before = row.get("latency_p50_ms")
            log(f"  {row['variant']}: " + (f"{before * 1000:.1f} -> " if before else "")
                + f"{latency['latency_p50_ms'] * 1000:.1f} us")
            row.update({k: latency[k] for k in ("latency_p50_ms", "latency_spread_pct",
                                                "latency_runtime", "latency_p50_ms_by_runtime")})
    return report


def confirm_fastest(root, task: str, rows: list[dict], budget_points: float, data_dir=None,
                    log=print) -> list[tuple[str, str]]:
    """Measure again the (variant, runtime) pairs whose batch-1 p50 is within CONFIRM_WITHIN
    of the fastest pair under the accuracy budget: CONFIRM_ROUNDS rounds each, alternating
    between them so that a busy moment slows all of them, and keep each pair's median round.
    At a few microseconds per call one 0.1 s measurement per pair picks by noise (seen: a
    pair measured at 5.4 us that the benchmark put at 9.9 us, next to one at 6.4 us).
    Updates the rows' latencies in place; returns the pairs measured again."""
    from compress import placement
    from core.measure import single_stream
    from core.runners import open_runner

    ok = _measured_rows(rows)
    baseline, floor = _accuracy_floor(ok, budget_points)
    if baseline is None:
        return []
    cands = [c for c in placement.from_report_rows(ok)
             if c.accuracy >= floor - 1e-12 and c.p50_ms]
    if len(cands) < 2:
        return []
    best = min(c.p50_ms for c in cands)
    close = [c for c in cands if c.p50_ms <= CONFIRM_WITHIN * best]
    if len(close) < 2:
        return []
    examples = _latency_examples(root, task, data_dir)
    rounds: dict[tuple[str, str], list[float]] = {(c.variant, c.runtime): [] for c in close}
    with contextlib.ExitStack() as stack:
        opened = []
        for c in close:
            variant = artifacts.find_variant(root, task, c.variant)
            runner = stack.enter_context(open_runner(variant, c.runtime, providers=("cpu",),
                                                     threads=1))
            opened.append(((c.variant, c.runtime), runner, examples(variant)))
        for _ in range(CONFIRM_ROUNDS):
            for key, runner, example in opened:
                stats = single_stream(runner, example, rounds=1, budget_s=LATENCY_ROUND_S)
                rounds[key].append(stats["p50_ms"])
    by_variant = {r["variant"]: r for r in ok}
    for (name, runtime), p50s in rounds.items():
        row = by_variant[name]
        latencies = placement.row_latencies(row)
        latencies[runtime] = round(float(np.median(p50s)), 5)
        fastest = min(latencies, key=latencies.get)
        row.update(latency_p50_ms_by_runtime=latencies, latency_runtime=fastest,
                   latency_p50_ms=latencies[fastest])
    log(f"[{task}] measured again ({CONFIRM_ROUNDS} alternating rounds): " + ", ".join(
        f"{n} on {rt} {1000 * by_variant[n]['latency_p50_ms_by_runtime'][rt]:.1f} us"
        for n, rt in rounds))
    return list(rounds)


def finish_task(root, task: str, report: dict, budget_points: float, log=print,
                objective=None, cpu_bench: dict | None = None,
                gpu_record: dict | None = None, data_dir=None) -> dict:
    """Select, record the selection for `serve`, save and print the report. On compress's own
    latencies, the close contenders are measured again first (`confirm_fastest`)."""
    rows = [r for model_rows in report["models"].values() for r in model_rows]
    if cpu_bench is None and (objective is None or objective.metric == "latency"):
        confirm_fastest(root, task, rows, objective.budget_points if objective else budget_points,
                        data_dir, log)
    report["selection"] = select(rows, budget_points, objective, cpu_bench, gpu_record, task)
    artifacts.select_variant(root, task, report["selection"]["variant"], reason=report["selection"],
                             runtime=report["selection"]["runtime"])
    json_path, md_path = save_report(root, task, report)
    log(render_markdown(report))
    log(f"report: {md_path} and {json_path}")
    return report
