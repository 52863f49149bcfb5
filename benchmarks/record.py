"""`python -m benchmarks record`: the compact summary of a `make all` run, meant to be committed.

    python -m benchmarks record --bench reports/bench.json --artifacts artifacts --out reports
    DATA_DIR=../shared/data make all      # full data: writes benchmarks/results/full-data.*

One row per task x variant: how it was made (technique, parent, teacher), its accuracy on the
run's test split, what it costs (MACs, parameters, gzip size of each runtime's file), batch-1
latency (p50, one thread) and batch-32 throughput on every runtime measured, training time
for trained models, and which variant serve runs. bench.json holds everything else (spreads,
percentiles, curves); this file is what READMEs quote full-data numbers from. A second table
lists every trained model of the run, benchmarked or not (the lecture tasks XOR and MNIST are
trained but not served), with its test accuracy, epochs and training time.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path

from core.artifacts import ArtifactError, find_variant, list_variants, selection_record

RECORD_SCHEMA = "tinyship.record/1"
RECORD_JSON, RECORD_MD = "record.json", "record.md"


def build_record(bench: dict, artifacts: str | Path, command: str) -> dict:
    rows: dict[tuple[str, str], dict] = {}
    for r in bench["results"]:
        if r.get("error"):
            continue
        row = rows.setdefault((r["task"], r["variant"]), {
            "task": r["task"], "variant": r["variant"], "model": r["model"],
            "technique": r["technique"], "parent": r["parent"], "accuracy": r["accuracy"],
            "macs": (r.get("model_stats") or {}).get("macs"),
            "params": (r.get("model_stats") or {}).get("params"),
            "p50_us": {}, "items_per_s_32": {}, "gzip_kb": {}})
        if r["runtime"] == "onnx":  # the reference runtime's accuracy where there is one
            row["accuracy"] = r["accuracy"]
        row["p50_us"][r["runtime"]] = round(r["latency"]["p50_ms"] * 1e3, 1)
        if "32" in (r.get("throughput") or {}):
            row["items_per_s_32"][r["runtime"]] = round(r["throughput"]["32"]["items_per_s"])
        row["gzip_kb"][r["runtime"]] = round(r["size"]["gzip_bytes"] / 1024, 1)
    served = {}
    for task in sorted({t for t, _ in rows}):
        try:
            served[task] = selection_record(artifacts, task)
        except ArtifactError:
            served[task] = None
    for (task, name), row in rows.items():
        try:
            variant = find_variant(artifacts, task, name, verify=False)
        except ArtifactError:
            variant = None
        if variant is not None:
            row["teacher"] = variant.lineage.teacher
            if variant.lineage.parent is None:
                row["train_seconds"] = variant.metrics.get("train_seconds")
        choice = served[task] or {}
        # Selections written before the runtime was recorded ran ONNX Runtime.
        row["served"] = choice.get("runtime", "onnx") if choice.get("variant") == name else None
    return {"schema": RECORD_SCHEMA,
            "selection": {task: _selection_summary(choice) for task, choice in served.items()
                          if choice},
            "trained": trained_rows(artifacts),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command, "bench_created": bench["created"],
            "data": {task: {**info, "data_source": _relative_paths(info.get("data_source", ""))}
                     for task, info in bench["tasks"].items()},
            "threads": bench["settings"]["threads"],
            "machine": {k: bench["environment"].get(k) for k in ("cpu", "cpus_usable")},
            "rows": sorted(rows.values(), key=lambda r: (r["task"], r["parent"] is not None,
                                                         r["variant"]))}


def _relative_paths(text: str) -> str:
    """Absolute paths in `text` made relative to the working directory (`make`'s: the
    repository), so that the committed record names ../shared/data, not one machine's folders."""
    return re.sub(r"/[^\s\[\]]+", lambda m: os.path.relpath(m.group(0)), text)


def _selection_summary(choice: dict) -> dict:
    """What serve runs for a task and the rule that chose it (selected.json's reason)."""
    reason = choice.get("reason") or {}
    objective = reason.get("objective") or {}
    return {"variant": choice.get("variant"), "runtime": choice.get("runtime", "onnx"),
            "rule": reason.get("rule"), "budget_points": reason.get("budget_points"),
            "min_accuracy": objective.get("min_accuracy"),
            "max_latency_ms": objective.get("max_latency_ms"),
            "baseline": reason.get("baseline"), "baseline_accuracy": reason.get("baseline_accuracy"),
            "accuracy": reason.get("accuracy"), "latency_p50_ms": reason.get("latency_p50_ms")}


# Recipe keys a trained-models row repeats (the rest is in each variant's lineage), each
# shown only when set away from its neutral value.
TRAINED_RECIPE_KEYS = {"epochs": None, "resolution": 0, "width": 1.0, "augment": False,
                       "pretrained": ""}


def trained_rows(artifacts: str | Path) -> list[dict]:
    """Every trained variant under `artifacts` (a variant without a parent), in task order."""
    rows = []
    for v in list_variants(artifacts):
        if v.lineage.parent is not None:
            continue
        m, params = v.metrics, v.lineage.params
        rows.append({"task": v.task, "variant": v.name, "model": v.model,
                     "test_accuracy": m.get("test_accuracy"), "n_test": m.get("n_test"),
                     "n_train": m.get("n_train"), "epochs_run": m.get("epochs_run"),
                     "train_seconds": m.get("train_seconds"), "macs": m.get("macs"),
                     "recipe": {k: params[k] for k, neutral in TRAINED_RECIPE_KEYS.items()
                                if params.get(k, neutral) != neutral}})
    return rows


def render_record_markdown(record: dict) -> str:
    lines = [f"# Summary of `{record['command']}`", "",
             f"{record['created']} · {record['machine']['cpu']}, "
             f"{record['machine']['cpus_usable']} usable CPUs · latency p50 at batch 1 on "
             f"{record['threads']} thread(s), throughput at batch 32 · bench of "
             f"{record['bench_created']}", ""]
    for task in sorted({r["task"] for r in record["rows"]}):
        data = record["data"][task]
        lines += [f"## {task}", "", f"Test split: {data['n_test']:,} examples from "
                  f"{data['data_source']}.", "",
                  "| variant | made by | accuracy | MACs | params | p50 us (onnx / litert / keras) "
                  "| items/s @32 (onnx) | gzip KB (onnx) | train s | served |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in record["rows"] if r["task"] == task):
            made = r["technique"] if r["parent"] is None else f"{r['technique']} of {r['parent']}"
            if r.get("teacher"):
                made += f" (teacher {r['teacher']})"
            p50 = " / ".join(f"{r['p50_us'][k]:g}" if k in r["p50_us"] else "-"
                             for k in ("onnx", "litert", "keras"))
            lines.append(
                f"| {r['variant']} | {made} | {100 * r['accuracy']:.2f}% | "
                f"{_num(r['macs'])} | {_num(r['params'])} | {p50} | "
                f"{_num(r['items_per_s_32'].get('onnx'))} | {r['gzip_kb'].get('onnx', '-')} | "
                f"{r.get('train_seconds') or '-'} | {r['served'] or ''} |")
        lines.append("")
        chosen = record.get("selection", {}).get(task)
        if chosen:
            lines += [_selection_line(chosen), ""]
    lines += ["## Trained models", "",
              "| task | variant | test accuracy | test examples | train examples | epochs run "
              "| train s | MACs | recipe |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in record.get("trained", ()):
        recipe = ", ".join(f"{k} {v}" for k, v in r["recipe"].items())
        acc = "-" if r["test_accuracy"] is None else f"{100 * r['test_accuracy']:.2f}%"
        lines.append(f"| {r['task']} | {r['variant']} | {acc} | {_num(r['n_test'])} | "
                     f"{_num(r['n_train'])} | {r['epochs_run'] or '-'} | "
                     f"{r['train_seconds'] or '-'} | {_num(r['macs'])} | {recipe} |")
    lines.append("")
    return "\n".join(lines)


def _selection_line(c: dict) -> str:
    if c.get("budget_points") is None:
        return f"Served: `{c['variant']}` on {c['runtime']} (pinned by hand)."
    limits = [f"at most {c['budget_points']:g} point(s) below the best trained model "
              f"`{c['baseline']}` ({100 * c['baseline_accuracy']:.2f}%)"]
    if c.get("min_accuracy") is not None:
        limits.append(f"at least {100 * c['min_accuracy']:g}%")
    if c.get("max_latency_ms") is not None:
        limits.append(f"batch-1 p50 at most {1000 * c['max_latency_ms']:g} us")
    return (f"Served: `{c['variant']}` on {c['runtime']}, {100 * c['accuracy']:.2f}%: the fastest "
            f"variant {' and '.join(limits)} (`compress select`).")


def _num(x) -> str:
    return "-" if x is None else f"{x:,}"


def write_summary(record: dict, out: str | Path, stem: str) -> Path:
    from benchmarks.report import write_record

    return write_record(record, out, f"{stem}.json", f"{stem}.md", render_record_markdown(record))
