"""Optimizers and learning-rate schedules from a Recipe.

Every schedule is a function of the optimizer step, so `optimizer.learning_rate` always shows
the value in force (tests check the values over steps). "plateau" is the exception: it reacts
to validation metrics, so it is a constant rate lowered by the ReduceLROnPlateau callback.
"""
from __future__ import annotations

from trainer.recipe import Recipe
from core.tf_setup import keras, tf


@keras.utils.register_keras_serializable(package="tinyship")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Rise linearly from 0 to the wrapped schedule's value over `warmup_steps`, then follow
    the wrapped schedule shifted by the warm-up (so decay starts after warm-up)."""

    def __init__(self, after, warmup_steps: int):
        super().__init__()
        self.after = after
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = tf.cast(self.warmup_steps, tf.float32)
        after = self.after(tf.maximum(step - warm, 0.0)) if callable(self.after) else \
            tf.constant(self.after, tf.float32)
        return tf.where(step < warm, after * (step + 1.0) / warm, after)

    def get_config(self):
        after = (keras.optimizers.schedules.serialize(self.after)
                 if isinstance(self.after, keras.optimizers.schedules.LearningRateSchedule)
                 else self.after)
        return {"after": after, "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config):
        after = config["after"]
        if isinstance(after, dict):
            after = keras.optimizers.schedules.deserialize(after)
        return cls(after, config["warmup_steps"])


_S = keras.optimizers.schedules
# recipe.schedule -> the schedule over optimizer steps, from (recipe, learning rate, decay period
# in steps, total decay steps). Recipe.SCHEDULES names the same rows (a test checks both agree).
SCHEDULES = {
    "constant": lambda r, lr, period, total: lr,
    # A constant rate that the ReduceLROnPlateau callback lowers.
    "plateau": lambda r, lr, period, total: lr,
    # lr * decay_rate ** floor(step / period): a staircase drop every decay_epochs.
    "step": lambda r, lr, period, total: _S.ExponentialDecay(lr, period, r.decay_rate,
                                                             staircase=True),
    "exponential": lambda r, lr, period, total: _S.ExponentialDecay(
        lr, period, r.decay_rate, staircase=r.staircase),
    # lr / (1 + decay_rate * step / period): the 1/t decay.
    "inverse_time": lambda r, lr, period, total: _S.InverseTimeDecay(lr, period, r.decay_rate,
                                                                     staircase=False),
    "cosine": lambda r, lr, period, total: _S.CosineDecay(
        lr, total, alpha=min(1.0, r.min_learning_rate / lr)),
}


def learning_rate_schedule(recipe: Recipe, steps_per_epoch: int, epochs: int | None = None):
    """The recipe's schedule over optimizer steps (a float for constant/plateau)."""
    period = max(1, int(round(recipe.decay_epochs * steps_per_epoch)))
    warmup = int(round(recipe.warmup_epochs * steps_per_epoch))
    total = max(1, (epochs or recipe.epochs) * steps_per_epoch - warmup)
    schedule = SCHEDULES[recipe.schedule](recipe, recipe.learning_rate, period, total)
    return LinearWarmup(schedule, warmup) if warmup > 0 else schedule


def make_optimizer(recipe: Recipe, steps_per_epoch: int, learning_rate=None,
                   epochs: int | None = None):
    """The recipe's optimizer; `learning_rate` (a float or schedule) replaces the recipe's."""
    lr = learning_rate if learning_rate is not None else \
        learning_rate_schedule(recipe, steps_per_epoch, epochs)
    return OPTIMIZERS[recipe.optimizer](recipe, lr)


_O = keras.optimizers
# recipe.optimizer -> the optimizer, from (recipe, learning rate or schedule). Recipe.OPTIMIZERS
# names the same rows (a test checks both agree).
OPTIMIZERS = {
    "sgd": lambda r, lr: _O.SGD(lr),
    "momentum": lambda r, lr: _O.SGD(lr, momentum=r.momentum),
    "nesterov": lambda r, lr: _O.SGD(lr, momentum=r.momentum, nesterov=True),
    "adam": lambda r, lr: _O.Adam(lr),
    "rmsprop": lambda r, lr: _O.RMSprop(lr, momentum=r.momentum),
    "adagrad": lambda r, lr: _O.Adagrad(lr),
}


def current_learning_rate(optimizer) -> float:
    """The rate the optimizer's next update uses (its schedule at `optimizer.iterations`).

    `optimizer.learning_rate` of a scheduled tf_keras optimizer is a variable refreshed during
    each update, i.e. it shows the previous step's rate; the schedule itself is `_learning_rate`.
    """
    schedule = getattr(optimizer, "_learning_rate", None)
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return float(schedule(optimizer.iterations))
    lr = optimizer.learning_rate
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


def plateau_callback(recipe: Recipe):
    mode = "max" if recipe.monitor == "val_accuracy" else "min"
    return keras.callbacks.ReduceLROnPlateau(monitor=recipe.monitor, mode=mode,
                                             factor=recipe.decay_rate,
                                             patience=recipe.plateau_patience,
                                             min_lr=recipe.min_learning_rate, verbose=1)

