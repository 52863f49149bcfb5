"""Render reports from records only: bench.json -> bench.md, PNG plots, index.html.

Nothing here measures; every number comes from the record, so a report can be re-rendered
from a saved bench.json (`python -m benchmarks report --reports reports`). The GPU-host
`latency` command and the `load` test write their own records (latency.json, load.json) into
the same folder; index.html shows them when they are there.
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

BENCH_JSON, BENCH_MD, INDEX_HTML = "bench.json", "bench.md", "index.html"
LATENCY_JSON, LOAD_JSON = "latency.json", "load.json"


# ---------------------------------------------------------------- small formatting helpers

def _num(value, fmt: str, missing: str = "-") -> str:
    return missing if value is None else format(value, fmt)


def _ms(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if value < 0.1 else f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _count(value) -> str:
    if value is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(int(value))


def _kb(n) -> str:
    return "-" if n is None else f"{n / 1024:.1f}"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (latency, accuracy) no other point beats: none has latency <= and
    accuracy >= with at least one strictly better. Sorted by latency."""
    front = []
    for i, (lat, acc) in enumerate(points):
        dominated = any((l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc)
                        for j, (l2, a2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


# ---------------------------------------------------------------- tables

TABLE_HEADER = ("variant", "runtime", "acc %", "Δacc pts", "p50 ms", "p99 ms", "spread %",
                "× p50", "items/s @{b}", "× @{b}", "size KB", "gzip KB", "× size",
                "params", "MACs", "sparsity %")


def task_rows(bench: dict, task: str) -> list[dict]:
    return [r for r in bench["results"] if r["task"] == task]


def _table_cells(row: dict, batches: list[str]) -> list[str]:
    ratios = row.get("ratios") or {}
    stats = row.get("model_stats") or {}
    lat = row.get("latency") or {}
    cells = [row["variant"], row["runtime"] + (f" ({row['provider']})" if row.get("provider")
                                                and row["provider"] != "cpu" else "")]
    if row.get("error"):
        return cells + [f"error: {row['error']}"] + [""] * (len(_header(batches)) - 3)
    cells += [
        _num(100 * row["accuracy"], ".2f"),
        _num(ratios.get("accuracy_delta_pts"), "+.2f"),
        _ms(lat.get("p50_ms")), _ms(lat.get("p99_ms")), _num(lat.get("spread_pct"), ".0f"),
        _num(ratios.get("speedup_p50"), ".2f"),
    ]
    for b in batches:
        t = row["throughput"].get(b)
        cells += [_count(t["items_per_s"]) if t else "-",
                  _num(ratios.get(f"throughput_{b}"), ".2f")]
    cells += [_kb(row["size"]["bytes"]), _kb(row["size"]["gzip_bytes"]),
              _num(ratios.get("size"), ".2f"), _count(stats.get("params")),
              _count(stats.get("macs")),
              _num(None if stats.get("sparsity") is None else 100 * stats["sparsity"], ".1f")]
    return cells


def _header(batches: list[str]) -> list[str]:
    head = list(TABLE_HEADER[:8])
    for b in batches:
        head += [TABLE_HEADER[8].format(b=b), TABLE_HEADER[9].format(b=b)]
    return head + list(TABLE_HEADER[10:])


def _batches(bench: dict) -> list[str]:
    return [str(b) for b in bench["settings"]["batch_sizes"]]


# "Fastest" lines consider rows at most this many accuracy points below the best root (trained
# or imported) row: the budget compress selects with by default, so that a variant too
# inaccurate to ship is never named fastest.
FASTEST_BUDGET_POINTS = 1.0


def best_rows(rows: list[dict], batches: list[str],
              budget_points: float = FASTEST_BUDGET_POINTS) -> dict:
    """The fastest row at batch 1 (lowest p50) and at each Offline batch (most items/s), among
    rows within `budget_points` of the most accurate root row."""
    ok = [r for r in rows if not r.get("error") and r.get("latency")]
    roots = [r["accuracy"] for r in ok if r.get("parent") is None]
    if roots:
        floor = max(roots) - budget_points / 100.0
        ok = [r for r in ok if r["accuracy"] >= floor - 1e-12]
    if not ok:
        return {}
    best = {"batch 1 (p50)": min(ok, key=lambda r: r["latency"]["p50_ms"])}
    for b in batches:
        with_b = [r for r in ok if b in r["throughput"]]
        if with_b:
            best[f"batch {b} (items/s)"] = max(with_b, key=lambda r: r["throughput"][b]["items_per_s"])
    return best


def served_lines(served: dict | None, rows: list[dict], fastest: dict | None) -> list[str]:
    """What serve runs for the task (selected.json) and how its batch-1 p50 in this run compares
    with the fastest row within the budget."""
    if not served:
        return ["- served: nothing selected for this task (python -m compress select)"]
    row = next((r for r in rows if (r["variant"], r["runtime"]) == (served["variant"],
                                                                   served["runtime"])
                and not r.get("error") and r.get("latency")), None)
    line = f"- served (selected.json): **{served['variant']}** on {served['runtime']}"
    if row is None:
        return [line + ", not measured in this run"]
    line += f", p50 {_ms(row['latency']['p50_ms'])} ms"
    if fastest is not None:
        line += (f"; {row['latency']['p50_ms'] / fastest['latency']['p50_ms']:.2f}x the "
                 f"fastest row within the budget")
    return [line]


def manifest_mismatches(rows: list[dict], tolerance_pts: float = 0.1) -> list[str]:
    """Rows whose measured accuracy differs from the manifest's by more than the tolerance,
    when both were measured on the same data source (else the comparison means nothing)."""
    notes = []
    for r in rows:
        if r.get("error") or r.get("manifest_accuracy") is None:
            continue
        same_data = r.get("manifest_data_source") in (None, r.get("data_source"))
        delta = 100 * (r["accuracy"] - r["manifest_accuracy"])
        if abs(delta) > tolerance_pts and same_data:
            notes.append(f"{r['variant']} on {r['runtime']}: measured {100 * r['accuracy']:.2f}%, "
                         f"manifest {100 * r['manifest_accuracy']:.2f}% ({delta:+.2f} pts)")
    return notes


def render_markdown(bench: dict) -> str:
    env, settings = bench["environment"], bench["settings"]
    batches = _batches(bench)
    lines = [
        "# Benchmark report",
        "",
        f"{bench['created']} · {env['cpu']} ({env['cpus_usable']} usable CPUs, load average "
        f"{env.get('load_average')}) · GPUs: {', '.join(g['name'] for g in env['gpus']) or 'none'}"
        f" · threads per runtime: {settings['threads']} · {settings['rounds']} rounds x "
        f"{settings['budget_s']} s per measurement{' (quick)' if settings.get('quick') else ''}",
        "",
        "Latency: batch-1 queries one after another (SingleStream). Throughput: back-to-back "
        "batches (Offline). × columns are ratios against the float ONNX Runtime row of the same "
        "model measured in this run, from each measurement's best round (× p50 > 1: faster; "
        "× size < 1: smaller). Spread: "
        "(max - min) / median of the rounds' p50; a large spread means a noisy machine.",
    ]
    for task, info in bench["tasks"].items():
        rows = task_rows(bench, task)
        lines += ["", f"## {task}", "",
                  f"Accuracy on {info['n_test']} test examples from `{info['data_source']}`.", ""]
        served = info.get("served")
        lines += markdown_table(_header(batches), (
            _served_mark(_table_cells({**r, "data_source": info["data_source"]}, batches), r,
                         served) for r in rows))
        best = best_rows(rows, batches)
        if best:
            lines += ["", f"Within {FASTEST_BUDGET_POINTS:g} accuracy point of the best trained "
                      "or imported model:"] + [f"- fastest at {k}: **{r['variant']}** on "
                                               f"{r['runtime']}" for k, r in best.items()]
        lines += served_lines(info.get("served"), rows, best.get("batch 1 (p50)"))
        front = _front_rows(rows)
        if front:
            lines.append("- accuracy/latency Pareto front: "
                         + ", ".join(f"{r['variant']} ({r['runtime']})" for r in front))
        with_source = [{**r, "data_source": info["data_source"]} for r in rows]
        compared = [r for r in with_source if not r.get("error")
                    and r.get("manifest_accuracy") is not None
                    and r.get("manifest_data_source") in (None, info["data_source"])]
        mism = manifest_mismatches(with_source)
        if mism:
            lines += ["", "Accuracy differs from the manifest by more than 0.1 point:"]
            lines += [f"- {m}" for m in mism]
        elif compared:
            lines.append(f"- measured accuracy matches the manifest within 0.1 point on all "
                         f"{len(compared)} rows whose manifest was measured on the same data")
    return "\n".join(lines) + "\n"


def _front_rows(rows: list[dict]) -> list[dict]:
    ok = [r for r in rows if not r.get("error") and r.get("latency")]
    idx = pareto_front([(r["latency"]["p50_ms"], r["accuracy"]) for r in ok])
    return [ok[i] for i in idx]


# ---------------------------------------------------------------- plots

def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _served_mark(cells: list[str], row: dict, served: dict | None) -> list[str]:
    """The table row, its variant cell marked when it is what serve runs."""
    return [f"{cells[0]} (served)", *cells[1:]] if _is_served(row, served) else cells


def _is_served(row: dict, served: dict | None) -> bool:
    return bool(served) and (row["variant"], row["runtime"]) == (served["variant"],
                                                                  served["runtime"])


def _front_plot(ax, rows: list[dict], x, xlabel: str, title: str, served: dict | None) -> None:
    """Accuracy against `x(row)` (log axis), one marker per runtime, the Pareto front (less x,
    more accuracy) numbered and named in a box, and the served row starred."""
    markers = {"keras": "o", "litert": "s", "onnx": "^"}
    for runtime in sorted({r["runtime"] for r in rows}):
        sel = [r for r in rows if r["runtime"] == runtime]
        ax.scatter([x(r) for r in sel], [100 * r["accuracy"] for r in sel],
                   marker=markers.get(runtime, "x"), label=runtime, s=45)
    front = [rows[i] for i in pareto_front([(x(r), r["accuracy"]) for r in rows])]
    ax.plot([x(r) for r in front], [100 * r["accuracy"] for r in front],
            "k--", lw=1, marker="o", ms=13, mfc="none", label="Pareto front")
    # Front points often sit close together: number them and name them in a box.
    for k, r in enumerate(front, 1):
        ax.annotate(str(k), (x(r), 100 * r["accuracy"]), fontsize=8,
                    xytext=(0, 9), textcoords="offset points", ha="center")
    ax.text(0.01, 0.02, "Pareto front:\n" + "\n".join(
                f"{k}: {r['variant']} ({r['runtime']})" for k, r in enumerate(front, 1)),
            transform=ax.transAxes, fontsize=7, va="bottom",
            bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"})
    for r in rows:
        if _is_served(r, served):
            ax.scatter([x(r)], [100 * r["accuracy"]], marker="*", s=260, c="gold",
                       edgecolors="k", zorder=5, label=f"served: {r['variant']} ({r['runtime']})")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy, %")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def write_plots(bench: dict, out_dir: Path) -> list[Path]:
    """Per task: accuracy vs batch-1 p50 latency (µs) and accuracy vs gzip-compressed model
    size, each with its Pareto front and the served variant starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for task, info in bench["tasks"].items():
        rows = [r for r in task_rows(bench, task) if not r.get("error") and r.get("latency")]
        if not rows:
            continue
        served = info.get("served")
        fig, ax = plt.subplots(figsize=(8, 5))
        _front_plot(ax, rows, lambda r: 1000 * r["latency"]["p50_ms"],
                    "batch-1 p50 latency, µs (log)",
                    f"{task}: accuracy vs latency ({bench['settings']['threads']} thread(s))",
                    served)
        written.append(_save(fig, out_dir / f"{task}_accuracy_latency.png"))
        fig, ax = plt.subplots(figsize=(8, 5))
        _front_plot(ax, rows, lambda r: r["size"]["gzip_bytes"] / 1024,
                    "model file size after gzip -9, KiB (log)",
                    f"{task}: accuracy vs size (the file each runtime loads)", served)
        written.append(_save(fig, out_dir / f"{task}_accuracy_size.png"))
    return written


# ---------------------------------------------------------------- HTML

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1600px}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
td:first-child,td:nth-child(2),th{text-align:left}th{background:#f0f0f0}
img{max-width:48%;margin:4px;border:1px solid #ddd}.curves img{max-width:31%}
.note{color:#555;font-size:13px}.err{color:#b00}"""


def markdown_table(head: list[str], rows) -> list[str]:
    """The lines of a Markdown table."""
    return (["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
            + ["| " + " | ".join(str(c) for c in cells) + " |" for cells in rows])


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for cells in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return "\n".join(out) + "</table>"


def latency_table(record: dict) -> tuple[list[str], list[list[str]]]:
    """Rows of the GPU-host `latency` record (benchmarks.latency)."""
    head = ["task", "variant", "provider", "mode", "batch", "p50 ms", "p99 ms", "items/s",
            "spread %"]
    rows = []
    for r in record["results"]:
        if r.get("error"):
            rows.append([r["task"], r["variant"], r["provider"], "error", "", r["error"], "", "", ""])
            continue
        for m in r["measurements"]:
            rows.append([r["task"], r["variant"], r["provider"], m["mode"], m["batch_size"],
                         _ms(m["p50_ms"]), _ms(m["p99_ms"]), _count(m["items_per_s"]),
                         _num(m["spread_pct"], ".0f")])
    return head, rows


def load_table(record: dict) -> tuple[list[str], list[list[str]]]:
    """Rows of the `load` record (benchmarks.load)."""
    head = ["task", "endpoint", "concurrency", "requests", "req/s", "p50 ms", "p99 ms", "errors",
            "wrong answers", "client CPU us/req"]
    rows = [[record["task"], record["endpoint"], lvl["concurrency"], lvl["requests"],
             f"{lvl['requests_per_s']:,.0f}", _ms(lvl["p50_ms"]), _ms(lvl["p99_ms"]),
             lvl["errors"], lvl["wrong_answers"],
             _num(lvl.get("client_cpu_us_per_request"), ".0f")] for lvl in record["levels"]]
    return head, rows


def render_html(bench: dict, reports: Path, plots: list[Path], curves: dict[str, Path]) -> str:
    batches = _batches(bench)
    md_intro = render_markdown(bench).split("\n## ", 1)[0].splitlines()
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>tinyship benchmarks"
             f"</title><style>{_CSS}</style></head><body><h1>tinyship benchmarks</h1>"]
    parts += [f"<p class='note'>{html.escape(line)}</p>" for line in md_intro[2:] if line]
    for task, info in bench["tasks"].items():
        rows = task_rows(bench, task)
        parts.append(f"<h2>{html.escape(task)}</h2><p class='note'>Accuracy on {info['n_test']} "
                     f"test examples from {html.escape(info['data_source'])}.</p>")
        for p in plots:
            if p.name.startswith(f"{task}_"):
                parts.append(f"<img src='{html.escape(p.relative_to(reports).as_posix())}' "
                             f"alt='{html.escape(p.stem)}'>")
        best = best_rows(rows, batches)
        for line in served_lines(info.get("served"), rows, best.get("batch 1 (p50)")):
            parts.append(f"<p class='note'>{html.escape(line.lstrip('- ').replace('**', ''))}</p>")
        for k, r in best.items():
            parts.append(f"<p class='note'>fastest at {html.escape(k)} within "
                         f"{FASTEST_BUDGET_POINTS:g} accuracy point of the best trained model: "
                         f"<b>{html.escape(r['variant'])}</b> on {html.escape(r['runtime'])}</p>")
        parts.append(_html_table(_header(batches), [
            _served_mark(_table_cells(r, batches), r, info.get("served")) for r in rows]))
        task_curves = {v: p for v, p in curves.items() if v.startswith(f"{task}/")}
        if task_curves:
            parts.append("<h3>Training curves</h3><div class='curves'>")
            for name, p in sorted(task_curves.items()):
                parts.append(f"<figure style='display:inline-block;width:31%'><img style='max-width:"
                             f"100%' src='{html.escape(p.relative_to(reports).as_posix())}'>"
                             f"<figcaption>{html.escape(name)}</figcaption></figure>")
            parts.append("</div>")
    for filename, title, table in ((LATENCY_JSON, "ONNX Runtime latency by provider", latency_table),
                                   (LOAD_JSON, "Serving load test", load_table)):
        path = reports / filename
        if path.is_file():
            record = json.loads(path.read_text())
            head, rows = table(record)
            parts.append(f"<h2>{title}</h2><p class='note'>from {filename}, recorded "
                         f"{html.escape(record.get('created', '?'))}</p>" + _html_table(head, rows))
    parts.append("<h2>Environment</h2><pre>" + html.escape(json.dumps(bench["environment"],
                                                                       indent=2)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_record(record: dict, reports: str | Path, json_name: str, md_name: str,
                 markdown: str) -> Path:
    """Write a record as JSON and its markdown rendering side by side; returns the JSON path.
    (The `latency` and `load` commands' outputs; `write_reports` also renders plots and HTML.)"""
    reports = Path(reports)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / json_name).write_text(json.dumps(record, indent=2) + "\n")
    (reports / md_name).write_text(markdown)
    return reports / json_name


def write_reports(bench: dict, reports: str | Path) -> dict[str, Path]:
    """Write bench.json, bench.md, the plots and index.html into `reports`."""
    reports = Path(reports)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / BENCH_JSON).write_text(json.dumps(bench, indent=2) + "\n")
    return render_all(bench, reports)


def render_all(bench: dict, reports: Path) -> dict[str, Path]:
    """Everything but bench.json, from the record (also used to re-render a saved record)."""
    (reports / BENCH_MD).write_text(render_markdown(bench))
    plots = write_plots(bench, reports)
    curves = {}
    curves_dir = reports / "curves"
    for r in bench["results"]:
        src = Path(r["variant_dir"]) / r["curves"] if r.get("curves") else None
        key = f"{r['task']}/{r['variant']}"
        if src is not None and src.is_file() and key not in curves:
            curves_dir.mkdir(exist_ok=True)
            dst = curves_dir / f"{r['task']}__{r['variant']}.png"
            shutil.copyfile(src, dst)  # copied so the report folder stands on its own
            curves[key] = dst
    (reports / INDEX_HTML).write_text(render_html(bench, reports, plots, curves))
    return {"json": reports / BENCH_JSON, "markdown": reports / BENCH_MD,
            "html": reports / INDEX_HTML, "plots": plots}
