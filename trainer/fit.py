"""Training's building blocks: a task's data prepared for a model, a model built from the zoo,
one training phase with a recipe's optimizer, schedule and callbacks, and test metrics.

    data = prepare_data("fashion_mnist", recipe)
    model = build_model("fashion_cnn", data, recipe)
    history = fit(model, data, recipe)
    metrics, preds = evaluate(model, data.x_test, data.y_test)

`trainer.train` (scratch training and the variant writer) and `trainer.transfer` (pretraining
and fine-tuning) both build on these.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from core import data as datasets
from core.evaluate import top1_accuracy
from core.manifest import probabilities
from core.preprocessing import ImagePreprocessor, LazyInputs, TextTokenizer, VectorPreprocessor
from core.tasks import TaskSpec, get_task
from core.tf_setup import keras, require_tf_keras_model, tf
from trainer.errors import TrainerInputError
from trainer.models import ModelInputs, ModelOptions, get_model, list_models
from trainer.recipe import Recipe


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


def progress_verbosity() -> int:
    """Keras progress bars on a terminal; one compact line per epoch in CI logs."""
    return 1 if sys.stdout.isatty() else 2


def seed_everything(recipe: Recipe) -> None:
    keras.utils.set_random_seed(recipe.seed)
    if recipe.deterministic:
        tf.config.experimental.enable_op_determinism()


# ---------------------------------------------------------------- data

# How the preprocessing of each input kind is fitted on the training split (rows `rows` of the
# raw examples `x`), from the recipe.
FIT_PREPROCESSING = {
    "image": lambda x, rows, recipe: ImagePreprocessor.fit(x, recipe.scaling, rows),
    "text": lambda x, rows, recipe: TextTokenizer.fit(x[rows], recipe.vocab_size,
                                                      recipe.max_length, recipe.ngrams),
    "vector": lambda x, rows, recipe: VectorPreprocessor(),
}


def prepare_data(task_name: str, recipe: Recipe, data_dir=None) -> PreparedData:
    """Load train/test, hold out a seeded validation split, fit preprocessing on the rest. A
    memory-mapped split (a user's image folder) stays on disk: its inputs are LazyInputs."""
    task = get_task(task_name)
    train = datasets.load(task.dataset, "train", data_dir=data_dir)
    test = datasets.load(task.dataset, "test", data_dir=data_dir)
    if recipe.max_train_examples and recipe.max_train_examples < len(train):
        train = train.subset(recipe.max_train_examples, seed=recipe.seed)
    order = np.random.default_rng(recipe.seed).permutation(len(train))
    n_val = int(round(len(train) * recipe.validation_split))
    val_idx, train_idx = order[:n_val], order[n_val:]
    prep = FIT_PREPROCESSING[task.kind](train.x, train_idx, recipe)
    if isinstance(train.x, np.memmap):
        return PreparedData(task, prep, LazyInputs(train.x, prep, train_idx), train.y[train_idx],
                            LazyInputs(train.x, prep, val_idx), train.y[val_idx],
                            LazyInputs(test.x, prep), test.y, train.source, test.source)
    x_all = prep(train.x)
    return PreparedData(task, prep, x_all[train_idx], train.y[train_idx], x_all[val_idx],
                        train.y[val_idx], prep(test.x), test.y, train.source, test.source)


def _lazy_dataset(x: LazyInputs, y: np.ndarray, batch_size: int, shuffle_seed: int | None,
                  repeat: bool = False):
    """Batches of a LazyInputs split, preprocessed as they are read (shuffled anew each epoch
    when `shuffle_seed` is given)."""
    rng = np.random.default_rng(shuffle_seed)

    def batches():
        while True:
            order = rng.permutation(len(x)) if shuffle_seed is not None else np.arange(len(x))
            for i in range(0, len(x), batch_size):
                rows = np.sort(order[i:i + batch_size])  # memory-mapped reads in file order
                yield x[rows], y[rows]
            if not repeat:
                return

    spec = (tf.TensorSpec((None, *x.shape[1:]), x.dtype), tf.TensorSpec((None,), y.dtype))
    return tf.data.Dataset.from_generator(batches, output_signature=spec)


def _batches(x, y, recipe: Recipe, augmenter=None, repeat=False):
    if isinstance(x, LazyInputs):
        ds = _lazy_dataset(x, y, recipe.batch_size, recipe.seed, repeat)
    else:
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
    return ModelOptions(width=recipe.width, dropout=recipe.dropout,
                        normalization=recipe.normalization, norm_groups=recipe.norm_groups,
                        activation=None if recipe.activation == "default" else recipe.activation,
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

        augmenter = image_augmenter(data.task.name, data.preprocessor, recipe.seed,
                                    recipe.augmentation)
    y_train = data.y_train.astype("float32") if is_binary(model) else data.y_train
    y_val = data.y_val.astype("float32") if is_binary(model) else data.y_val
    train_ds = _batches(data.x_train, y_train, recipe, augmenter, repeat=bool(recipe.steps_per_epoch))
    lr_log = LearningRateLogger(current_learning_rate)
    history = model.fit(
        train_ds, epochs=epochs, steps_per_epoch=recipe.steps_per_epoch or None,
        validation_data=_validation(data.x_val, y_val, recipe),
        callbacks=[lr_log, *training_callbacks(recipe), *extra_callbacks],
        verbose=progress_verbosity() if verbose is None else verbose)
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def _validation(x, y, recipe: Recipe):
    if not len(x):
        return None
    if isinstance(x, LazyInputs):
        return _lazy_dataset(x, y, recipe.batch_size, None).prefetch(tf.data.AUTOTUNE)
    return x, y


def evaluate(model, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> tuple[dict, np.ndarray]:
    """Test accuracy and cross-entropy from the model's probabilities; returns (metrics, preds)."""
    if isinstance(x, LazyInputs):
        raw = np.concatenate([model.predict(b, batch_size=batch_size, verbose=0)
                              for b in x.batches(8 * batch_size)])
    else:
        raw = model.predict(x, batch_size=batch_size, verbose=0)
    probs = probabilities(raw.astype(np.float64))
    picked = np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)
    return {"test_accuracy": top1_accuracy(probs, y), "test_loss": float(-np.log(picked).mean()),
            "n_test": int(len(y))}, probs.argmax(axis=1)
