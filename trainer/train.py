"""Training: a task's dataset + a model from the zoo + a Recipe -> a trained tf_keras model,
written as an artifact variant with its curves, confusion matrix, summary and exact recipe.

    from trainer.train import train_variant
    variant = train_variant("fashion_mnist", "fashion_cnn", overrides={"epochs": 2})

The building blocks (`prepare_data`, `build_model`, `fit`, `evaluate`) are in `trainer.fit`;
`save_variant` here is the artifact writer that ensembles reuse.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.artifacts import (ArtifactError, Variant, create_variant, default_root, find_variant,
                            load_variant, variant_dir)
from core.preprocessing import TextTokenizer
from core.tasks import TaskSpec, get_task
from core.tf_setup import require_tf_keras_model
from trainer.fit import (PreparedData, build_model, check_model_fits_task, evaluate, fit,
                         is_binary, loss_name, prepare_data, seed_everything)
from trainer.models import get_model
from trainer.recipe import Recipe, RecipeError, resolve_recipe

PARITY_EXAMPLES = 200


@dataclass
class TrainResult:
    model: object
    history: dict                      # per-epoch lists; "phase" names the phase of each epoch
    metrics: dict
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- artifact

def save_variant(root, *, task: TaskSpec, model_name: str, variant: str, model, preprocessor,
                 x_test: np.ndarray, y_test: np.ndarray, metrics: dict, lineage: dict,
                 history: dict | None = None, recipe: dict | None = None,
                 extra: dict | None = None) -> Variant:
    """Write a trained model as a variant: Keras + ONNX + TFLite (parity-checked), vocabulary,
    history, curves, confusion matrix, summary and recipe."""
    from core.export import export_float
    from trainer import reports

    require_tf_keras_model(model)
    _, preds = evaluate(model, x_test, y_test)
    activation = "sigmoid" if is_binary(model) else "softmax"
    # Saved with a plain optimizer: the trainer's schedule classes are not needed to load it.
    model.compile(optimizer="adam", loss=loss_name(model), metrics=["accuracy"])
    with create_variant(
        root, task=task.name, model=model_name, variant=variant, lineage=lineage,
        input={"shape": [None, *x_test.shape[1:]], "dtype": str(x_test.dtype)},
        output={"activation": activation},
        preprocessing=preprocessor.to_config(), labels=list(task.labels), metrics=metrics,
        extra=dict(extra or {}),
    ) as v:
        model.save(v.path("model.keras"))
        export = export_float(model, v.dir, x_test[:PARITY_EXAMPLES])
        v.extra["export"] = export
        if isinstance(preprocessor, TextTokenizer):
            preprocessor.save_vocabulary(v.dir)
        title = f"{task.name}/{variant}"
        if history:
            reports.write_json(v.path("history.json"), history)
            reports.plot_curves(history, v.path("curves.png"), title)
        cm = reports.confusion_matrix(y_test, preds, task.num_classes)
        reports.plot_confusion(cm, list(task.labels), v.path("confusion.png"),
                               f"{title}: test accuracy {metrics['test_accuracy']:.2%}")
        summary = reports.model_summary(model)
        metric_lines = "\n".join(f"{k}: {val}" for k, val in metrics.items())
        v.path("summary.txt").write_text(f"{summary}\n{metric_lines}\n")
        if recipe is not None:
            reports.write_json(v.path("recipe.json"), recipe)
    return load_variant(variant_dir(root, task.name, variant))


def _merge_history(phases: list[tuple[str, dict]]) -> dict:
    merged: dict[str, list] = {"phase": []}
    for name, hist in phases:
        n = len(hist.get("loss", []))
        merged["phase"] += [name] * n
        for key, vals in hist.items():
            merged.setdefault(key, []).extend(vals)
    return merged


def train_model(model_name: str, data: PreparedData, recipe: Recipe, artifacts=None,
                strategy=None) -> TrainResult:
    """Train (or transfer, when recipe.pretrained is set) and evaluate; nothing is written."""
    from trainer.distribute import describe_strategy, make_strategy

    artifacts = artifacts if artifacts is not None else default_root()
    seed_everything(recipe)
    strategy = strategy or make_strategy(recipe.strategy)
    start = time.perf_counter()
    extra = {"distribute": describe_strategy(strategy)}
    if recipe.pretrained:
        from trainer.transfer import train_transfer

        model, phases, transfer_info = train_transfer(model_name, data, recipe, artifacts, strategy)
        extra["transfer"] = transfer_info
    else:
        with strategy.scope():
            model = build_model(model_name, data, recipe)
        phases = [("train", fit(model, data, recipe, strategy=strategy))]
    train_seconds = time.perf_counter() - start
    history = _merge_history(phases)
    metrics, _ = evaluate(model, data.x_test, data.y_test)
    if history.get("val_accuracy"):
        metrics["val_accuracy"] = max(history["val_accuracy"]) if recipe.early_stopping_patience \
            else history["val_accuracy"][-1]
    metrics.update({"n_train": int(len(data.x_train)), "n_val": int(len(data.x_val)),
                    "epochs_run": len(history["phase"]), "train_seconds": round(train_seconds, 1),
                    "data_source": data.test_source, "train_data_source": data.train_source})
    if recipe.pretrained and recipe.compare_scratch:
        from trainer.transfer import scratch_baseline

        extra["transfer"].update(scratch_baseline(model_name, data, recipe, strategy,
                                                  metrics["test_accuracy"]))
    return TrainResult(model, history, metrics, extra)


def resolved_recipe(model_name: str, recipe_file: dict | None = None,
                    overrides: dict | None = None) -> Recipe:
    return resolve_recipe(get_model(model_name).defaults, recipe_file, overrides)


def code_fingerprint() -> str:
    """sha256 of the sources training runs (`trainer/` and `core/`)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for path in sorted([*root.joinpath("trainer").rglob("*.py"), *root.joinpath("core").rglob("*.py")]):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def training_key(task: TaskSpec, recipe: Recipe, data_dir, artifacts) -> dict:
    """What a trained variant is a function of: the recipe, the data, the training code and,
    for a transfer, the source variant's weights. Stored in the manifest, so that `train-all`
    can keep a variant whose key has not changed instead of training it again."""
    from core import data as datasets

    key = {"recipe": recipe.to_dict(), "code": code_fingerprint(),
           "data": [datasets.load(task.dataset, split, data_dir=data_dir).source
                    for split in ("train", "test")]}
    task_name, _, source = (recipe.pretrained or "").partition("/")
    if source:
        key["pretrained"] = find_variant(artifacts, task_name, source, verify=False) \
            .manifest.files["model.keras"].sha256
    return json.loads(json.dumps(key))  # the form it has when read back from the manifest


def up_to_date_variant(task_name: str, model_name: str, *, overrides: dict | None = None,
                       data_dir=None, artifacts=None, variant: str | None = None) -> Variant | None:
    """The existing variant when training it again would repeat the same run (same
    `training_key`), else None."""
    artifacts = artifacts if artifacts is not None else default_root()
    path = variant_dir(artifacts, task_name, variant or model_name)
    if not (path / "manifest.json").is_file():
        return None
    try:
        existing = load_variant(path)
    except ArtifactError:
        return None
    recipe = resolved_recipe(model_name, None, overrides)
    try:
        key = training_key(get_task(task_name), recipe, data_dir, artifacts)
    except ArtifactError:  # the transfer source is missing: it must be trained first
        return None
    return existing if existing.extra.get("training_key") == key else None


def train_variant(task_name: str, model_name: str, *, recipe_file: dict | None = None,
                  overrides: dict | None = None, data_dir=None, artifacts=None,
                  variant: str | None = None) -> Variant | None:
    """The whole `python -m trainer train` command: resolve, train, evaluate, write. A
    multi-worker worker that is not the chief writes nothing and returns None."""
    task = get_task(task_name)
    check_model_fits_task(model_name, task)
    recipe = resolved_recipe(model_name, recipe_file, overrides)
    if task.kind != "text" and any(k in (overrides or {})
                                   for k in ("vocab_size", "max_length", "ngrams")):
        raise RecipeError(f"vocab_size/max_length/ngrams apply to text tasks only; {task_name!r} is "
                          f"{task.kind}")
    artifacts = artifacts if artifacts is not None else default_root()
    data = prepare_data(task_name, recipe, data_dir)
    print(f"[trainer] {task_name}/{variant or model_name}: {len(data.x_train)} train, "
          f"{len(data.x_val)} val, {len(data.x_test)} test examples from {data.train_source}",
          flush=True)
    result = train_model(model_name, data, recipe, artifacts)
    chief = result.extra["distribute"]["chief"]
    # A multi-worker model's save runs collective operations, so every worker saves; only the
    # chief's copy is kept, the others write into a temporary folder and remove it.
    with contextlib.nullcontext(artifacts) if chief else \
            tempfile.TemporaryDirectory(prefix="tinyship-worker-") as root:
        v = save_variant(
            root, task=data.task, model_name=model_name, variant=variant or model_name,
            model=result.model, preprocessor=data.preprocessor, x_test=data.x_test,
            y_test=data.y_test, metrics=result.metrics,
            lineage={"parent": None, "technique": "train", "params": recipe.to_dict()},
            history=result.history, recipe=recipe.to_dict(),
            extra={**result.extra, "training_key": training_key(task, recipe, data_dir, artifacts)})
    where = v.path if chief else f"not kept ({result.extra['distribute']['task']} is not the chief)"
    print(f"[trainer] {task_name}/{v.name}: test accuracy {result.metrics['test_accuracy']:.4f} "
          f"({result.metrics['train_seconds']:.0f} s training) -> {where}", flush=True)
    return v if chief else None
