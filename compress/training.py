"""Short fine-tuning after a transform, optionally distilled from the source model.

Distillation here is the temperature-1 form: the student learns from targets that mix the
true label with the teacher's probabilities, `alpha * label + (1 - alpha) * teacher`; at T = 1
the mixture is exactly the classic distillation loss, and it needs no custom loss. The
`distill` technique (compress/distill.py) is the general form, at any temperature (softened
log-probabilities, which equal softened logits for softmax models).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FineTune:
    epochs: int = 1
    learning_rate: float = 1e-3
    batch_size: int = 64
    distill: bool = False
    alpha: float = 0.5  # weight of the true label when distilling


def _targets(y: np.ndarray, activation: str, num_classes: int, teacher_probs=None,
             alpha: float = 1.0):
    if activation == "sigmoid":
        hard = y.astype(np.float32).reshape(-1, 1)
        if teacher_probs is None:
            return hard
        return alpha * hard + (1 - alpha) * teacher_probs.reshape(-1, 1)
    if teacher_probs is None:
        return y.astype(np.int64)
    return alpha * np.eye(num_classes, dtype=np.float32)[y] + (1 - alpha) * teacher_probs


def compile_for(model, activation: str, learning_rate: float, soft_targets: bool,
                total_steps: int | None = None) -> None:
    """Adam; with `total_steps`, the learning rate follows a cosine decay to 0 over the
    fine-tune (ending at a small learning rate recovers noticeably more accuracy than a
    constant one in the few epochs a fine-tune gets)."""
    from core.tf_setup import keras

    if total_steps:
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, total_steps)
    if activation == "sigmoid":
        loss, metric = keras.losses.BinaryCrossentropy(), "binary_accuracy"
    elif soft_targets:
        loss, metric = keras.losses.CategoricalCrossentropy(), "categorical_accuracy"
    else:
        loss, metric = keras.losses.SparseCategoricalCrossentropy(), "sparse_categorical_accuracy"
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=[metric])


def fine_tune(model, x: np.ndarray, y: np.ndarray, *, activation: str, num_classes: int,
              settings: FineTune, teacher=None, callbacks=()) -> dict:
    """Train `model` in place for `settings.epochs`; returns the Keras history."""
    # A lazily preprocessed split (core.preprocessing.LazyInputs) is computed whole here:
    # compress's recipes bound it with train_limit.
    x = np.asarray(x)
    if settings.epochs <= 0:
        return {}
    teacher_probs = None
    if settings.distill and teacher is not None:
        teacher_probs = teacher.predict(x, batch_size=512, verbose=0).astype(np.float32)
    targets = _targets(y, activation, num_classes, teacher_probs,
                       settings.alpha if teacher_probs is not None else 1.0)
    steps = settings.epochs * int(np.ceil(len(x) / settings.batch_size))
    compile_for(model, activation, settings.learning_rate, teacher_probs is not None, steps)
    history = model.fit(x, targets, epochs=settings.epochs, batch_size=settings.batch_size,
                        shuffle=True, verbose=0, callbacks=list(callbacks))
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}
