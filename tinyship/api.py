"""The functions behind `import tinyship` (see the package docstring)."""
from __future__ import annotations

import json
from pathlib import Path

from core.artifacts import Variant, default_root, list_variants, selected_variant
from core.userdata import register_tasks


def _root(artifacts) -> Path:
    root = Path(artifacts) if artifacts is not None else default_root()
    register_tasks(root)
    return root


def import_model(model: str | Path, data: str | Path, task: str, *, artifacts=None,
                 variant: str | None = None, labels: str | None = None,
                 label_column: str = "label", test_fraction: float = 0.2, seed: int = 0,
                 scaling: str = "minmax", mean=0.0, std=1.0, vocabulary: str | None = None,
                 ngrams: int = 1) -> Variant:
    """`python -m trainer import`: a Keras or ONNX classifier and its dataset become task
    `task` and its first variant, with the test accuracy measured on the dataset."""
    from trainer.importer import Preprocessing
    from trainer.importer import import_model as _import

    options = Preprocessing(scaling, mean, std, vocabulary, ngrams)
    return _import(model, data, task, preprocessing=options, labels_file=labels,
                   label_column=label_column, test_fraction=test_fraction, seed=seed,
                   variant=variant, artifacts=_root(artifacts))


def train(model: str, task: str, *, data: str | Path | None = None, artifacts=None,
          image_size: tuple[int, int, int] | None = None, labels: str | None = None,
          variant: str | None = None, **recipe) -> Variant:
    """`python -m trainer train`: a zoo model (`python -m trainer models`) trained on a task;
    with `data`, on the user's dataset, which becomes task `task`. `recipe`: recipe fields
    (epochs=3, learning_rate=1e-3, ...)."""
    from core.userdata import define_task
    from trainer.train import train_variant

    root = _root(artifacts)
    if data is not None:
        define_task(root, task, data, labels_file=labels, image=image_size)
    return train_variant(task, model, overrides=recipe, artifacts=root, variant=variant)


def compress(task: str, *, recipe: str | Path | dict | None = None, budget: float | None = None,
             artifacts=None, data_dir=None) -> dict:
    """`python -m compress run` on every first variant (trained or imported) of `task`, then
    selection: the fastest ONNX variant at most `budget` accuracy points below the best one.
    `recipe`: a bundled recipe's name ("default", "posttraining", "onnx", ...), a JSON file or
    a dict; default: the recipe `make compress` picks for each model. Returns the report."""
    import dataclasses

    from compress import pipeline
    from compress.recipe import RECIPES_DIR, default_recipe_for, load_recipe, parse_recipe

    root = _root(artifacts)
    roots = [v for v in list_variants(root, task) if v.lineage.is_root]
    if not roots:
        raise ValueError(f"task {task!r} has no trained or imported variant under {root}; "
                         f"import_model() or train() first")

    def resolve(v: Variant):
        if isinstance(recipe, dict):
            return parse_recipe(recipe, "<dict>")
        if recipe is None:
            return load_recipe(default_recipe_for(v.model, v.has_file("model.keras")))
        path = Path(recipe)
        return load_recipe(path if path.suffix == ".json" else RECIPES_DIR / f"{recipe}.json")

    report = None
    for v in roots:
        rows = pipeline.run_model(root, task, v.name, resolve(v), data_dir)
        report = pipeline.update_report(root, task, v.name, rows, rows[0]["data_source"]) \
            if report is None else {**report, "models": {**report["models"], v.name: rows}}
    chosen = resolve(roots[0])
    if budget is not None:
        chosen = dataclasses.replace(chosen, accuracy_budget_points=budget)
    pipeline.finish_task(root, task, report, chosen.accuracy_budget_points, data_dir=data_dir)
    return report


def benchmark(tasks: list[str] | None = None, *, quick: bool = True, artifacts=None,
              reports: str | Path = "reports", runtimes: list[str] | None = None,
              data_dir=None) -> dict:
    """`python -m benchmarks run`: accuracy, size and latency of every variant of `tasks`
    (default: all served ones) on every runtime; writes the report and returns bench.json."""
    from benchmarks.report import write_reports
    from benchmarks.suite import Settings, quick_settings, run_suite

    root = _root(artifacts)
    chosen = {"data_dir": data_dir}
    if tasks is not None:
        chosen["tasks"] = tuple(tasks)
    if runtimes is not None:
        chosen["runtimes"] = tuple(runtimes)
    settings = quick_settings(**chosen) if quick else Settings(**chosen)
    bench = run_suite(str(root), settings)
    write_reports(bench, reports)
    return json.loads(json.dumps(bench))


def selected(task: str, *, artifacts=None) -> Variant:
    """The variant `serve` runs for `task` (chosen by compress())."""
    return selected_variant(_root(artifacts), task)


def variants(task: str | None = None, *, artifacts=None) -> list[Variant]:
    """Every variant (of one task, or of all), with its manifest."""
    return list_variants(_root(artifacts), task)
