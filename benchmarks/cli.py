"""`python -m benchmarks <command>`: run, report, latency, load, check.

    run       every variant x runtime on the CPU -> reports/bench.{json,md}, plots, index.html
    report    re-render bench.md / plots / index.html from a saved reports/bench.json
    latency   ONNX Runtime only (no TensorFlow needed): providers x batch sizes, GPU-host path
    load      HTTP load test of a running server at several concurrency levels
    abuse     good clients' latency with and without abusive clients (hostile load)
    record    the compact summary of a run, per task and variant (committed for full data)
    check     CI gate: compare reports/bench.json with benchmarks/baseline.json

Heavy imports happen inside each command, so `latency`, `load` and `check` never import
TensorFlow (the Keras runner imports it only when `run` opens a Keras model, or when `check`
re-measures a failed speed ratio against a Keras baseline).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path


def _csv(kind):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        try:
            return tuple(kind(t) for t in items)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, "
                                             f"got {text!r}") from None
    return parse


def cmd_run(args) -> int:
    from benchmarks.report import write_reports
    from benchmarks.suite import Settings, quick_settings, run_suite

    chosen = {"threads": args.threads, "data_dir": args.data_dir}
    for key in ("budget_s", "rounds", "batch_sizes", "runtimes", "tasks"):
        value = getattr(args, key)
        if value is not None:
            chosen[key] = value
    settings = quick_settings(**chosen) if args.quick else Settings(**chosen)
    bench = run_suite(args.artifacts, settings)
    paths = write_reports(bench, args.reports)
    print(paths["markdown"].read_text())
    print(f"report: {paths['html'].resolve()}  (data: {paths['json']}, "
          f"{len(paths['plots'])} plots; took {bench['duration_s']} s)")
    return 0


def cmd_report(args) -> int:
    from benchmarks.report import BENCH_JSON, render_all

    reports = Path(args.reports)
    path = reports / BENCH_JSON
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist; run `python -m benchmarks run` first")
    paths = render_all(json.loads(path.read_text()), reports)
    print(paths["markdown"].read_text())
    print(f"report: {paths['html'].resolve()}")
    return 0


def cmd_latency(args) -> int:
    from benchmarks.latency import LatencySettings, render_latency_markdown, run_latency, write_latency

    settings = LatencySettings(providers=args.providers, batch_sizes=args.batch_sizes,
                               threads=args.threads, budget_s=args.budget_s, rounds=args.rounds,
                               cuda_graph=args.cuda_graph, tasks=args.tasks,
                               variants=args.variants, trt_fp16=args.trt_fp16,
                               trt_cache=args.trt_cache)
    record = run_latency(args.artifacts, args.data, settings)
    path = write_latency(record, args.reports)
    print(render_latency_markdown(record))
    print(f"record: {path}")
    return 0


def cmd_gpu(args) -> int:
    """`make bench-gpu`: the GPU record (see benchmarks.latency.gpu_settings), written to the
    reports and, with --record-dir, as a dated JSON to commit (benchmarks/results/)."""
    import datetime as _dt
    import json

    from benchmarks.latency import gpu_settings, render_latency_markdown, run_latency, write_latency
    from core.runtime import usable_providers

    settings = gpu_settings(usable_providers(), tasks=args.tasks, threads=args.threads,
                            trt_cache=args.trt_cache)
    record = run_latency(args.artifacts, args.data, settings)
    path = write_latency(record, args.reports)
    print(render_latency_markdown(record))
    print(f"record: {path}")
    if args.record_dir:
        gpu = (record["environment"].get("gpus") or [{"name": "gpu"}])[0]["name"]
        name = (f"gpu-{_dt.date.today().isoformat()}-"
                f"{''.join(c if c.isalnum() else '-' for c in gpu.lower()).strip('-')}.json")
        out = Path(args.record_dir) / name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"committable record: {out}")
    bad = [f"{r['task']}/{r['variant']} on {r['provider']}: {r['accuracy_vs_cpu_pts']:+.2f} pts"
           for r in record["results"] if r.get("accuracy_ok") is False]
    if bad:
        print("accuracy on the GPU differs from the CPU's by more than the tolerance: "
              + "; ".join(bad), file=sys.stderr)
        return 1
    return 0


def cmd_abuse(args) -> int:
    from benchmarks.abuse import AbuseSettings, render_abuse_markdown, run_abuse, write_abuse
    from benchmarks.load import LoadSettings

    load = LoadSettings(url=args.url, task=args.task, concurrency=(args.concurrency,),
                        duration_s=args.duration, protocol="v1", data_dir=args.data_dir,
                        artifacts=args.artifacts, timeout_s=args.timeout,
                        warmup_s=args.warmup)
    settings = AbuseSettings(load=load, rounds=args.rounds,
                             idle_connections=args.idle_connections, abusers=args.abusers,
                             text_task=args.text_task, image_task=args.image_task)
    record = run_abuse(settings)
    path = write_abuse(record, args.reports)
    print(render_abuse_markdown(record))
    print(f"record: {path}")
    return 0 if record["verdict"]["passed"] else 1


def cmd_record(args) -> int:
    from benchmarks.record import build_record, render_record_markdown, write_summary
    from benchmarks.check import load_bench

    bench = load_bench(args.bench)
    data_dir = bench["settings"].get("data_dir") or os.environ.get("DATA_DIR")
    command = args.command or (f"DATA_DIR={data_dir} make all" if data_dir else "make all")
    record = build_record(bench, args.artifacts, command)
    path = write_summary(record, args.out, args.stem)
    print(render_record_markdown(record))
    print(f"record: {path}")
    return 0


def cmd_load(args) -> int:
    from benchmarks.load import LoadSettings, render_load_markdown, run_load, write_load

    settings = LoadSettings(url=args.url, task=args.task, concurrency=args.concurrency,
                            duration_s=args.duration, protocol=args.protocol,
                            data_dir=args.data_dir, artifacts=args.artifacts,
                            timeout_s=args.timeout)
    record = run_load(settings)
    path = write_load(record, args.reports)
    print(render_load_markdown(record))
    print(f"record: {path}")
    # Against the dataset's labels, wrong answers include the model's honest mistakes; against
    # the selected variant run locally, any difference is a serving bug.
    gate_wrong = record["reference"]["kind"] == "model"
    failed = any(lvl["errors"] or (gate_wrong and lvl["wrong_answers"]) for lvl in record["levels"])
    return 1 if failed else 0


def cmd_check(args) -> int:
    from benchmarks.check import load_bench

    bench = load_bench(args.bench)
    artifacts = Path(args.artifacts or bench.get("artifacts") or "artifacts")
    with contextlib.ExitStack() as open_models:
        remeasure = rejected = None
        if artifacts.is_dir():
            from benchmarks.check import rejected_by_compress

            rejected = rejected_by_compress(artifacts)
            if not args.no_remeasure:
                from benchmarks.suite import SpeedupRemeasurer

                remeasure = open_models.enter_context(
                    SpeedupRemeasurer(bench, progress=lambda message: None))
        return _check_or_update(args, bench, remeasure, rejected)


def _check_or_update(args, bench, remeasure, rejected) -> int:
    from benchmarks.check import REMEASURES, check, update_baseline

    if args.update:
        path = update_baseline(bench, args.baseline, accuracy_budget_pts=args.accuracy_budget,
                               remeasure=remeasure,
                               progress=lambda message: print(message, file=sys.stderr))
        print(f"baseline written: {path} ({args.bench} -> {args.baseline}"
              + (f", each speed ratio the lowest of the run's and {REMEASURES} re-measurements"
                 if remeasure
                 else "") + "); commit it")
        return 0
    result = check(bench, args.baseline, remeasure=remeasure, rejected=rejected)
    print(result.render())
    return 0 if result.ok else 1


def build_parser() -> argparse.ArgumentParser:
    from core.artifacts import default_root

    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="measure every variant on keras/litert/onnx (CPU)")
    run.add_argument("--artifacts", default=str(default_root()),
                     help="artifact root (default: $ARTIFACTS_DIR, else artifacts)")
    run.add_argument("--reports", default="reports")
    run.add_argument("--data-dir", default=None,
                     help="full datasets (default: DATA_DIR, else the bundled samples)")
    run.add_argument("--threads", type=int, default=1, help="intra-op threads per runtime (1)")
    run.add_argument("--budget-s", dest="budget_s", type=float, default=None,
                     help="seconds per measurement round (default 0.15; --quick 0.08)")
    run.add_argument("--rounds", type=int, default=None, help="rounds per measurement (3)")
    run.add_argument("--batch-sizes", dest="batch_sizes", type=_csv(int), default=None,
                     help="Offline batch sizes (32,256)")
    run.add_argument("--runtimes", type=_csv(str), default=None, help="keras,litert,onnx")
    run.add_argument("--tasks", type=_csv(str), default=None,
                     help="tasks (default: the served ones)")
    run.add_argument("--quick", action="store_true", help="short rounds (CI)")
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="re-render reports from reports/bench.json")
    rep.add_argument("--reports", default="reports")
    rep.set_defaults(func=cmd_report)

    lat = sub.add_parser("latency", help="ONNX Runtime providers x batch sizes (GPU hosts; "
                                         "numpy + onnxruntime only)")
    lat.add_argument("--artifacts", default=str(default_root()),
                     help="artifact root (default: $ARTIFACTS_DIR, else artifacts)")
    lat.add_argument("--reports", default="reports")
    lat.add_argument("--providers", type=_csv(str), default=("cpu",),
                     help="comma-separated: cuda,tensorrt,cpu (each measured separately)")
    lat.add_argument("--data", default=None,
                     help="a <task>.npz file or a folder of them (default: DATA_DIR, else the "
                          "bundled samples)")
    lat.add_argument("--batch-sizes", dest="batch_sizes", type=_csv(int), default=(1, 32, 256))
    lat.add_argument("--threads", type=int, default=1, help="CPU provider intra-op threads")
    lat.add_argument("--budget-s", dest="budget_s", type=float, default=0.3)
    lat.add_argument("--rounds", type=int, default=3)
    lat.add_argument("--cuda-graph", action="store_true",
                     help="also time CUDA-graph replay (cuda provider, bound buffers)")
    lat.add_argument("--tasks", type=_csv(str), default=None)
    lat.add_argument("--variants", choices=["all", "float-and-selected"], default="all",
                     help="every variant with model.onnx, or each task's float and selected ones")
    lat.add_argument("--trt-fp16", dest="trt_fp16", action=argparse.BooleanOptionalAction,
                     default=True, help="TensorRT provider: fp16 kernels (default on)")
    lat.add_argument("--trt-cache", dest="trt_cache", default=None,
                     help="TensorRT provider: engine and timing cache folder (default: none)")
    lat.set_defaults(func=cmd_latency)

    gpu = sub.add_parser("gpu", help="the GPU record (make bench-gpu): TensorRT fp16, CUDA "
                                     "(+ CUDA graphs) and CPU, batch 1-1024, float and selected "
                                     "variants, accuracy on the GPU checked against the CPU")
    gpu.add_argument("--artifacts", default=str(default_root()),
                     help="artifact root (default: $ARTIFACTS_DIR, else artifacts)")
    gpu.add_argument("--reports", default="reports")
    gpu.add_argument("--data", default=None, help="like `latency --data`")
    gpu.add_argument("--tasks", type=_csv(str), default=None)
    gpu.add_argument("--threads", type=int, default=1, help="CPU provider intra-op threads")
    gpu.add_argument("--trt-cache", dest="trt_cache", default="trt-cache",
                     help="TensorRT engine cache folder (default: trt-cache)")
    gpu.add_argument("--record-dir", dest="record_dir", default=None,
                     help="also write the record as a dated JSON here (benchmarks/results)")
    gpu.set_defaults(func=cmd_gpu)

    load = sub.add_parser("load", help="HTTP load test of a running server")
    load.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8000")
    load.add_argument("--task", required=True)
    load.add_argument("--concurrency", type=_csv(int), default=(1, 8, 32, 64))
    load.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    load.add_argument("--protocol", choices=("auto", "v1", "v2"), default="auto",
                      help="v1: /v1/classify/{task}; v2: KServe /v2/models/{task}/infer")
    load.add_argument("--data-dir", default=None)
    load.add_argument("--artifacts", default=None,
                      help="check answers against the task's selected variant run locally "
                           "(default: against the dataset's labels)")
    load.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    load.add_argument("--reports", default="reports")
    load.set_defaults(func=cmd_load)

    abuse = sub.add_parser("abuse", help="good clients' latency with and without abusive "
                           "clients, side by side (serve under hostile load)")
    abuse.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8000")
    abuse.add_argument("--task", required=True, help="the good clients' task")
    abuse.add_argument("--concurrency", type=int, default=64, help="good clients")
    abuse.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    abuse.add_argument("--rounds", type=int, default=2, help="clean/abused phase pairs")
    abuse.add_argument("--warmup", type=float, default=2.0,
                       help="seconds before each phase is measured (the abusers connect)")
    abuse.add_argument("--idle-connections", dest="idle_connections", type=int, default=5000)
    abuse.add_argument("--abusers", type=_csv(str), default=(),
                       help="some of huge_texts,huge_image,slow_bodies,idle_connections "
                            "(default: all)")
    abuse.add_argument("--text-task", dest="text_task", default="imdb",
                       help="task the huge texts batch and slow bodies go to")
    abuse.add_argument("--image-task", dest="image_task", default="fashion_mnist",
                       help="task the huge image goes to")
    abuse.add_argument("--data-dir", default=None)
    abuse.add_argument("--artifacts", default=None,
                       help="check good answers against the selected variant run locally")
    abuse.add_argument("--timeout", type=float, default=10.0, help="seconds per good request")
    abuse.add_argument("--reports", default="reports")
    abuse.set_defaults(func=cmd_abuse)

    rec = sub.add_parser("record", help="the compact, committable summary of a run (per task "
                         "and variant: accuracy, MACs, size, latency, throughput, training time, "
                         "served)")
    rec.add_argument("--bench", default="reports/bench.json")
    rec.add_argument("--artifacts", default=str(default_root()),
                     help="artifact root (default: $ARTIFACTS_DIR, else artifacts)")
    rec.add_argument("--out", default="reports", help="folder for <stem>.json and <stem>.md")
    rec.add_argument("--stem", default="record")
    rec.add_argument("--command", default=None,
                     help="the command the run came from (default: make all, with DATA_DIR "
                          "when the bench used one)")
    rec.set_defaults(func=cmd_record)

    chk = sub.add_parser("check", help="fail when accuracy or speed ratios regress vs a baseline")
    chk.add_argument("--baseline", default="benchmarks/baseline.json")
    chk.add_argument("--bench", default="reports/bench.json")
    chk.add_argument("--update", action="store_true",
                     help="write the baseline from --bench instead of checking")
    chk.add_argument("--artifacts", default=None,
                     help="the variants the bench measured (default: the bench record's), to "
                          "re-measure rows whose speed fails and to read compress's rejections")
    chk.add_argument("--no-remeasure", action="store_true",
                     help="judge speed on the bench record alone (no second measurement)")
    chk.add_argument("--accuracy-budget", type=float, default=5.0,
                     help="with --update: allowed accuracy drop per row, in points (5.0)")
    chk.set_defaults(func=cmd_check)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "artifacts", None):
        from core.userdata import register_tasks

        register_tasks(args.artifacts)  # the user's own tasks, beside the built-in ones
    from benchmarks.check import BaselineError
    from benchmarks.load import LoadError
    from core.measure import MeasureError
    from core.runners import RunnerError
    from benchmarks.suite import BenchmarkError
    from core.artifacts import ArtifactError
    from core.data import DatasetNotFoundError
    from core.runtime import ProviderUnavailableError

    try:
        return args.func(args)
    except (BenchmarkError, RunnerError, ProviderUnavailableError, ArtifactError, LoadError,
            BaselineError, MeasureError, DatasetNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
