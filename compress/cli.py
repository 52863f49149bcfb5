"""Command line of `compress`.

    python -m compress run --task fashion_mnist --model fashion_cnn [--recipe FILE]
    python -m compress run-all                      # what `make compress` runs
    python -m compress select --task fashion_mnist  # re-select from the saved report
    python -m compress techniques                   # techniques and their parameters
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from compress.errors import CompressError
from core.artifacts import ArtifactError, default_root
from core.data import resolve_data_dir


def _recipe(args, variant=None):
    """--recipe, else the default recipe for `variant` (compress.recipe.default_recipe_for)."""
    from compress.recipe import DEFAULT_RECIPE, default_recipe_for, load_recipe

    full_data = resolve_data_dir(getattr(args, "data_dir", None)) is not None
    path = args.recipe or (default_recipe_for(variant.model, variant.has_file("model.keras"),
                                              full_data) if variant else DEFAULT_RECIPE)
    recipe = load_recipe(path)
    if args.epochs is not None:
        recipe = dataclasses.replace(recipe, epochs=args.epochs)
    return recipe


def _compress(root, task, models, args, start_from=None, measure=True) -> dict:
    """Compress the trained variants `models` of `task`; returns the task's report."""
    from compress import pipeline
    from core.artifacts import find_variant
    from core.userdata import register_tasks

    register_tasks(root)  # again: run-all's worker processes start without the user's tasks
    report = None
    for model in models:
        recipe = _recipe(args, find_variant(root, task, model, verify=False))
        rows = pipeline.run_model(root, task, model, recipe, args.data_dir,
                                  start_from=start_from, measure=measure)
        source = rows[0]["data_source"]
        report = pipeline.update_report(root, task, model, rows, source) if report is None else \
            {**report, "models": {**report["models"], model: rows}}
    return report


def _select(root, task, report, args) -> dict:
    from compress import pipeline

    return pipeline.finish_task(root, task, report, _recipe(args).accuracy_budget_points,
                                data_dir=args.data_dir)


def _cmd_run(args) -> int:
    report = _compress(args.artifacts, args.task, [args.model], args, args.start_from)
    _select(args.artifacts, args.task, report, args)
    return 0


def _cmd_run_all(args) -> int:
    from core import artifacts
    from core.userdata import served_tasks

    work = {}
    for task in served_tasks(args.artifacts):
        trained = [v.name for v in artifacts.list_variants(args.artifacts, task)
                   if v.lineage.is_root]
        if not trained:
            print(f"[{task}] no trained model under {args.artifacts}; skipped (run `make train`)")
            continue
        work[task] = trained
    if args.jobs <= 1:
        for task, trained in work.items():
            _select(args.artifacts, task, _compress(args.artifacts, task, trained, args), args)
    else:
        # Tasks in parallel processes (every step seeds itself, so the variants are those of
        # a one-at-a-time run), then every latency measured here, one at a time, on a machine
        # no longer busy with them, then selection.
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from compress import pipeline

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = {task: pool.submit(_compress, args.artifacts, task, trained, args,
                                         measure=False) for task, trained in work.items()}
            reports = {task: f.result() for task, f in futures.items()}
        for task, report in reports.items():
            print(f"[{task}] batch-1 latency of every variant")
            pipeline.remeasure_latency(args.artifacts, task, report, args.data_dir)
            _select(args.artifacts, task, report, args)
    if not work:
        print(f"no trained models under {args.artifacts}: run `make train` first", file=sys.stderr)
        return 1
    return 0


def _cmd_select(args) -> int:
    import json

    from compress import pipeline

    if args.variant:
        # Pinned by hand (an A/B test, a model with an ONNX file the budget would not pick).
        from core.artifacts import find_variant, select_variant

        from core.artifacts import ArtifactError

        variant = find_variant(args.artifacts, args.task, args.variant)
        runtime = args.runtime or ("onnx" if variant.has_file("model.onnx") else "litert")
        try:
            path = select_variant(args.artifacts, args.task, args.variant,
                                  {"rule": "pinned with `compress select --variant`"}, runtime)
        except ArtifactError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{args.task}: serving {args.variant} on {runtime} (pinned) -> {path}")
        return 0
    json_path, _ = pipeline.report_paths(args.artifacts, args.task)
    saved = json.loads(json_path.read_text()) if json_path.is_file() else None
    report = pipeline.rows_from_manifests(args.artifacts, args.task, saved)
    if args.remeasure:
        pipeline.remeasure_latency(args.artifacts, args.task, report, args.data_dir)
    from compress.placement import Objective

    try:
        objective = Objective(args.budget, args.objective, args.batch,
                              None if args.max_latency_us is None else args.max_latency_us / 1000,
                              args.max_size_kb, args.min_accuracy)
    except ValueError as e:
        raise CompressError(str(e)) from None
    if args.objective == "throughput" and not args.bench and not args.gpu_record:
        raise CompressError("--objective throughput needs measurements at that batch size: "
                            "--bench reports/bench.json (CPU) and/or --gpu-record (GPU)")
    pipeline.finish_task(args.artifacts, args.task, report, args.budget, objective=objective,
                         cpu_bench=_read_record(args.bench), gpu_record=_read_record(args.gpu_record),
                         data_dir=args.data_dir)
    return 0


def _read_record(path):
    import json
    from pathlib import Path

    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CompressError(f"{path}: unreadable measurement record ({e})") from None


def _cmd_techniques(args) -> int:
    from compress.techniques import TECHNIQUES

    for t in TECHNIQUES.values():
        print(f"{t.name:13s} {t.description}")
        for key, spec in t.params.items():
            print(f"{'':15s}{key} = {spec.default!r}  ({spec.expected})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compress", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(s):
        s.add_argument("--artifacts", default=str(default_root()),
                       help="artifact root (default: $ARTIFACTS_DIR, else artifacts)")
        s.add_argument("--recipe", help="recipe JSON (default: compress/recipes/default.json; "
                                        "posttraining.json for pretrained-backbone models)")
        s.add_argument("--data-dir", help="full datasets folder (default: $DATA_DIR, else bundled samples)")
        s.add_argument("--epochs", type=int, help="fine-tuning epochs for steps that set none")

    s = sub.add_parser("run", help="compress one trained model and select the variant to serve")
    s.add_argument("--task", required=True)
    s.add_argument("--model", required=True, help="the trained variant (named after the model)")
    s.add_argument("--start-from", help="an existing variant of the model that steps without "
                                        "'from' start from (default: the trained model)")
    common(s)
    s.set_defaults(func=_cmd_run)

    s = sub.add_parser("run-all", help="compress every trained model of the served tasks")
    s.add_argument("--jobs", type=int, default=1,
                   help="tasks compressed at once, each in its own process (default 1)")
    common(s)
    s.set_defaults(func=_cmd_run_all)

    s = sub.add_parser("select", help="select again from the task's variants (report rebuilt "
                                      "from their manifests)")
    s.add_argument("--task", required=True)
    s.add_argument("--artifacts", default=str(default_root()))
    s.add_argument("--budget", type=float, default=1.0, help="accuracy budget in points (default 1.0)")
    s.add_argument("--variant", help="pin this variant instead of selecting by the budget")
    s.add_argument("--runtime", choices=["onnx", "litert"],
                   help="with --variant: the runtime serve runs it on (default: onnx when the "
                        "variant has model.onnx, else litert)")
    s.add_argument("--remeasure", action="store_true",
                   help="measure every variant's latency again first (when the machine is quiet)")
    s.add_argument("--objective", choices=["latency", "throughput"], default="latency",
                   help="lowest batch-1 p50 (default), or most items/s at --batch")
    s.add_argument("--batch", type=int, default=1, help="batch size of --objective throughput")
    s.add_argument("--max-latency-us", type=float, help="latency budget: batch-1 p50 at most")
    s.add_argument("--max-size-kb", type=float, help="size budget: gzip size at most (KiB)")
    s.add_argument("--min-accuracy", type=float,
                   help="accuracy target (0..1): candidates need at least this as well as the "
                        "budget below the best trained model")
    s.add_argument("--bench", help="CPU measurements from a benchmark record (reports/bench.json)"
                   " instead of compress's own: batch-1 latency and throughput per runtime")
    s.add_argument("--gpu-record", help="GPU measurements (python -m benchmarks gpu: "
                   "reports/latency.json or benchmarks/results/gpu-*.json): the gpu placement")
    s.add_argument("--data-dir", help="dataset folder the latency examples come from")
    s.set_defaults(func=_cmd_select)

    s = sub.add_parser("techniques", help="list techniques and their parameters")
    s.set_defaults(func=_cmd_techniques)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "artifacts", None):
        from core.userdata import register_tasks

        register_tasks(args.artifacts)  # the user's own tasks, beside the built-in ones
    try:
        return args.func(args)
    except (CompressError, ArtifactError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
