"""Training: a task's dataset + a model from the zoo + a Recipe -> a trained tf_keras model,
written as an artifact variant with its curves, confusion matrix, summary and exact recipe.

    from trainer.train import train_variant
    variant = train_variant("fashion_mnist", "fashion_cnn", overrides={"epochs": 2})

Pieces usable on their own: `prepare_data` (load, split, fit preprocessing), `build_model`,
`fit` (one training phase with the recipe's optimizer, schedule and callbacks), `evaluate`,
and `save_variant` (the artifact writer that ensembles reuse).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer import data as datasets
from trainer.artifacts import DEFAULT_ROOT, Variant, create_variant, load_variant, variant_dir
from trainer.errors import TrainerInputError
from trainer.models import ModelInputs, ModelOptions, get_model, list_models
from trainer.preprocessing import ImagePreprocessor, TextTokenizer, VectorPreprocessor
from trainer.recipe import Recipe, RecipeError, resolve_recipe
from trainer.tasks import TaskSpec, get_task
from trainer.tf_setup import keras, require_tf_keras_model, tf

PARITY_EXAMPLES = 200


class TrainingSetupError(TrainerInputError):
    """A task/model/recipe combination that cannot be trained; the message says why."""


@dataclass
class PreparedData:
    task: TaskSpec
    preprocessor: object
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_source: str
    test_source: str

    @property
    def model_inputs(self) -> ModelInputs:
        vocab = getattr(self.preprocessor, "vocab_size", None)
        return ModelInputs(tuple(self.x_train.shape[1:]), self.task.num_classes, vocab)


@dataclass
class TrainResult:
    model: object
    history: dict                      # per-epoch lists; "phase" names the phase of each epoch
    metrics: dict
    extra: dict = field(default_factory=dict)


def progress_verbosity() -> int:
    """Keras progress bars on a terminal; one compact line per epoch in CI logs."""
    return 1 if sys.stdout.isatty() else 2


def seed_everything(recipe: Recipe) -> None:
    keras.utils.set_random_seed(recipe.seed)
    if recipe.deterministic:
        tf.config.experimental.enable_op_determinism()


# ---------------------------------------------------------------- data

def prepare_data(task_name: str, recipe: Recipe, data_dir=None) -> PreparedData:
    """Load train/test, hold out a seeded validation split, fit preprocessing on the rest."""
    task = get_task(task_name)
    train = datasets.load(task.dataset, "train", data_dir=data_dir)
    test = datasets.load(task.dataset, "test", data_dir=data_dir)
    if recipe.max_train_examples and recipe.max_train_examples < len(train):
        train = train.subset(recipe.max_train_examples, seed=recipe.seed)
    order = np.random.default_rng(recipe.seed).permutation(len(train))
    n_val = int(round(len(train) * recipe.validation_split))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if task.kind == "image":
        prep = ImagePreprocessor.fit(train.x[train_idx], recipe.scaling)
    elif task.kind == "text":
        prep = TextTokenizer.fit(train.x[train_idx], recipe.vocab_size, recipe.max_length,
                                 recipe.ngrams)
    else:
        prep = VectorPreprocessor()
    as_input = (lambda x: prep(list(x))) if task.kind == "text" else prep
    x_all = as_input(train.x)
    return PreparedData(task, prep, x_all[train_idx], train.y[train_idx], x_all[val_idx],
                        train.y[val_idx], as_input(test.x), test.y, train.source, test.source)


def _batches(x, y, recipe: Recipe, augmenter=None, repeat=False):
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = ds.shuffle(len(x), seed=recipe.seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(recipe.batch_size)
    if augmenter is not None:
        ds = ds.map(lambda xb, yb: (augmenter(xb, training=True), yb),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------- model

def model_options(recipe: Recipe, weights: str | None = None) -> ModelOptions:
    return ModelOptions(width=recipe.width, dropout=recipe.dropout, batch_norm=recipe.batch_norm,
                        initializer=recipe.initializer, l1=recipe.l1, l2=recipe.l2,
                        resolution=recipe.resolution or None, weights=weights)


def check_model_fits_task(model_name: str, task: TaskSpec) -> None:
    spec = get_model(model_name)
    if spec.kind != task.kind:
        fitting = ", ".join(list_models(task.kind))
        raise TrainingSetupError(
            f"model {model_name!r} takes {spec.kind} inputs but task {task.name!r} is a "
            f"{task.kind} task; models for {task.kind} tasks: {fitting}")


def build_model(model_name: str, data: PreparedData, recipe: Recipe, weights: str | None = None):
    check_model_fits_task(model_name, data.task)
    return get_model(model_name).build(data.model_inputs, model_options(recipe, weights))


def is_binary(model) -> bool:
    return model.output_shape[-1] == 1


def loss_name(model) -> str:
    return "binary_crossentropy" if is_binary(model) else "sparse_categorical_crossentropy"


def steps_per_epoch(n_train: int, recipe: Recipe) -> int:
    return recipe.steps_per_epoch or max(1, -(-n_train // recipe.batch_size))


def training_callbacks(recipe: Recipe) -> list:
    from trainer.optim import plateau_callback

    callbacks = []
    if recipe.early_stopping_patience:
        mode = "max" if recipe.monitor == "val_accuracy" else "min"
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=recipe.monitor, mode=mode, patience=recipe.early_stopping_patience,
            restore_best_weights=True, verbose=1))
    if recipe.schedule == "plateau":
        callbacks.append(plateau_callback(recipe))
    return callbacks


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the learning rate in force at each epoch's end to the logs (and so to history)."""

    def __init__(self, read_rate):
        super().__init__()
        self.read_rate = read_rate

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = self.read_rate(self.model.optimizer)


def fit(model, data: PreparedData, recipe: Recipe, *, epochs: int | None = None,
        learning_rate=None, strategy=None, extra_callbacks=(), verbose: int | None = None) -> dict:
    """One training phase: compile with the recipe's optimizer and schedule, fit, return the
    per-epoch history (with the learning rate in force at each epoch's end)."""
    from trainer.optim import current_learning_rate, make_optimizer

    require_tf_keras_model(model)
    epochs = epochs or recipe.epochs
    steps = steps_per_epoch(len(data.x_train), recipe)
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        optimizer = make_optimizer(recipe, steps, learning_rate=learning_rate, epochs=epochs)
        model.compile(optimizer=optimizer, loss=loss_name(model), metrics=["accuracy"])
    augmenter = None
    if recipe.augment and data.task.kind == "image":
        from trainer.augment import image_augmenter

        augmenter = image_augmenter(data.task.name, data.preprocessor, recipe.seed)
    y_train = data.y_train.astype("float32") if is_binary(model) else data.y_train
    y_val = data.y_val.astype("float32") if is_binary(model) else data.y_val
    train_ds = _batches(data.x_train, y_train, recipe, augmenter, repeat=bool(recipe.steps_per_epoch))
    lr_log = LearningRateLogger(current_learning_rate)
    history = model.fit(
        train_ds, epochs=epochs, steps_per_epoch=recipe.steps_per_epoch or None,
        validation_data=(data.x_val, y_val) if len(data.x_val) else None,
        callbacks=[lr_log, *training_callbacks(recipe), *extra_callbacks],
        verbose=progress_verbosity() if verbose is None else verbose)
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def evaluate(model, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> tuple[dict, np.ndarray]:
    """Test accuracy and cross-entropy from the model's probabilities; returns (metrics, preds)."""
    from compress.export import as_probabilities

    probs = as_probabilities(model.predict(x, batch_size=batch_size, verbose=0))
    preds = probs.argmax(axis=1)
    picked = np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)
    return {"test_accuracy": float(np.mean(preds == y)), "test_loss": float(-np.log(picked).mean()),
            "n_test": int(len(y))}, preds


# ---------------------------------------------------------------- artifact

def save_variant(root, *, task: TaskSpec, model_name: str, variant: str, model, preprocessor,
                 x_test: np.ndarray, y_test: np.ndarray, metrics: dict, lineage: dict,
                 history: dict | None = None, recipe: dict | None = None,
                 extra: dict | None = None) -> Variant:
    """Write a trained model as a variant: Keras + ONNX + TFLite (parity-checked), vocabulary,
    history, curves, confusion matrix, summary and recipe."""
    from compress.export import export_float
    from trainer import reports

    require_tf_keras_model(model)
    _, preds = evaluate(model, x_test, y_test)
    activation = "sigmoid" if is_binary(model) else "softmax"
    # Saved with a plain optimizer: the trainer's schedule classes are not needed to load it.
    model.compile(optimizer="adam", loss=loss_name(model), metrics=["accuracy"])
    with create_variant(
        root, task=task.name, model=model_name, variant=variant, lineage=lineage,
        input={"name": "input", "shape": [None, *x_test.shape[1:]], "dtype": str(x_test.dtype)},
        output={"name": "output", "activation": activation},
        preprocessing=preprocessor.to_config(), labels=list(task.labels), metrics=metrics,
        extra=dict(extra or {}),
    ) as v:
        model.save(v.path("model.keras"))
        export = export_float(model, v.dir, x_test[:PARITY_EXAMPLES])
        v.manifest["input"]["name"] = export["onnx"]["input"]
        v.manifest["output"]["name"] = export["onnx"]["output"]
        v.manifest["extra"]["export"] = export
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


def train_model(model_name: str, data: PreparedData, recipe: Recipe, artifacts=DEFAULT_ROOT,
                strategy=None) -> TrainResult:
    """Train (or transfer, when recipe.pretrained is set) and evaluate; nothing is written."""
    from trainer.distribute import describe_strategy, make_strategy

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


def train_variant(task_name: str, model_name: str, *, recipe_file: dict | None = None,
                  overrides: dict | None = None, data_dir=None, artifacts=DEFAULT_ROOT,
                  variant: str | None = None) -> Variant:
    """The whole `python -m trainer train` command: resolve, train, evaluate, write."""
    task = get_task(task_name)
    check_model_fits_task(model_name, task)
    recipe = resolved_recipe(model_name, recipe_file, overrides)
    if task.kind != "text" and any(k in (overrides or {})
                                   for k in ("vocab_size", "max_length", "ngrams")):
        raise RecipeError(f"vocab_size/max_length/ngrams apply to text tasks only; {task_name!r} is "
                          f"{task.kind}")
    data = prepare_data(task_name, recipe, data_dir)
    print(f"[trainer] {task_name}/{variant or model_name}: {len(data.x_train)} train, "
          f"{len(data.x_val)} val, {len(data.x_test)} test examples from {data.train_source}",
          flush=True)
    result = train_model(model_name, data, recipe, artifacts)
    v = save_variant(
        artifacts, task=data.task, model_name=model_name, variant=variant or model_name,
        model=result.model, preprocessor=data.preprocessor, x_test=data.x_test,
        y_test=data.y_test, metrics=result.metrics,
        lineage={"parent": None, "technique": "train", "params": recipe.to_dict()},
        history=result.history, recipe=recipe.to_dict(), extra=result.extra)
    print(f"[trainer] {task_name}/{v.name}: test accuracy {result.metrics['test_accuracy']:.4f} "
          f"({result.metrics['train_seconds']:.0f} s training) -> {v.path}", flush=True)
    return v


def load_keras_model(variant: Variant):
    """The tf_keras model of a variant (compile=False: inference and weight copies only)."""
    if not variant.has_file("model.keras"):
        raise TrainingSetupError(f"variant {variant.task}/{variant.name} has no model.keras "
                                 f"(files: {', '.join(variant.manifest['files'])})")
    return keras.models.load_model(Path(variant.path) / "model.keras", compile=False)
