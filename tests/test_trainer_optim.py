"""Optimizers and learning-rate schedules produce the expected rates over steps; early
stopping restores the best epoch; reduce-on-plateau lowers the rate."""
import math

import numpy as np
import pytest

from trainer.recipe import OPTIMIZERS, Recipe
from core.tf_setup import keras, tf
from trainer.optim import current_learning_rate, learning_rate_schedule, make_optimizer, \
    plateau_callback
from trainer.fit import training_callbacks

STEPS_PER_EPOCH = 10
LR = 0.1


def expected_rate(recipe: Recipe, step: int) -> float:
    """The course's formulas, written out independently of Keras."""
    warmup = int(recipe.warmup_epochs * STEPS_PER_EPOCH)
    if step < warmup:
        return expected_rate(recipe.replace(warmup_epochs=0.0), 0) * (step + 1) / warmup
    t = step - warmup
    period = recipe.decay_epochs * STEPS_PER_EPOCH
    if recipe.schedule in ("constant", "plateau"):
        return LR
    if recipe.schedule == "step":
        return LR * recipe.decay_rate ** (t // period)
    if recipe.schedule == "exponential":
        exponent = t // period if recipe.staircase else t / period
        return LR * recipe.decay_rate ** exponent
    if recipe.schedule == "inverse_time":
        return LR / (1 + recipe.decay_rate * t / period)
    total = recipe.epochs * STEPS_PER_EPOCH - warmup
    alpha = recipe.min_learning_rate / LR
    return LR * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * min(t, total) / total)) + alpha)


SCHEDULE_CASES = {
    "constant": {},
    "step": {"decay_rate": 0.5, "decay_epochs": 1.0},
    "exponential-staircase": {"schedule": "exponential", "staircase": True, "decay_rate": 0.1},
    "exponential-smooth": {"schedule": "exponential", "staircase": False, "decay_rate": 0.1},
    "inverse_time": {"decay_rate": 1.0, "decay_epochs": 1.0},
    "cosine": {"min_learning_rate": 1e-3},
    "plateau": {},
    "cosine-warmup": {"schedule": "cosine", "warmup_epochs": 1.0, "min_learning_rate": 1e-3},
    "constant-warmup": {"schedule": "constant", "warmup_epochs": 0.5},
}


@pytest.mark.parametrize("case", SCHEDULE_CASES)
def test_schedule_values_over_steps(case):
    values = {"schedule": case, **SCHEDULE_CASES[case]}
    recipe = Recipe(learning_rate=LR, epochs=3, **values)
    lr = learning_rate_schedule(recipe, STEPS_PER_EPOCH)
    for step in (0, 1, 4, 5, 9, 10, 15, 20, 29, 35):
        got = float(lr(step)) if callable(lr) else float(lr)
        assert got == pytest.approx(expected_rate(recipe, step), rel=1e-4, abs=1e-7), step


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_follows_its_schedule_while_stepping(name):
    recipe = Recipe(optimizer=name, learning_rate=LR, schedule="step", decay_rate=0.5,
                    decay_epochs=0.5, momentum=0.8)
    optimizer = make_optimizer(recipe, STEPS_PER_EPOCH)
    expected_class = {"sgd": "SGD", "momentum": "SGD", "nesterov": "SGD", "adam": "Adam",
                      "rmsprop": "RMSprop", "adagrad": "Adagrad"}[name]
    assert type(optimizer).__name__ == expected_class
    if name in ("momentum", "nesterov"):
        assert optimizer.momentum == pytest.approx(0.8)
        assert optimizer.nesterov == (name == "nesterov")
    var = tf.Variable([1.0, -1.0])
    for step in range(12):
        assert current_learning_rate(optimizer) == pytest.approx(expected_rate(recipe, step))
        optimizer.apply_gradients([(tf.constant([0.5, 0.5]), var)])
    assert not np.allclose(var.numpy(), [1.0, -1.0])  # the optimizer did move the weights


def _drive_callbacks(callbacks, model, val_accuracies):
    """Run callbacks over fake epochs: epoch e sets every weight to e, then reports its score."""
    for cb in callbacks:
        cb.set_model(model)
        cb.on_train_begin()
    for epoch, acc in enumerate(val_accuracies):
        model.set_weights([np.full(w.shape, float(epoch)) for w in model.get_weights()])
        for cb in callbacks:
            cb.on_epoch_end(epoch, {"val_accuracy": acc, "val_loss": 1 - acc})
        if model.stop_training:
            break
    for cb in callbacks:
        cb.on_train_end()
    return epoch


def _tiny_model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    return model


def test_early_stopping_stops_and_restores_the_best_epoch():
    model = _tiny_model()
    recipe = Recipe(early_stopping_patience=2, monitor="val_accuracy")
    last = _drive_callbacks(training_callbacks(recipe), model, [0.5, 0.7, 0.9, 0.8, 0.85, 0.6, 0.95])
    assert last == 4                                   # 2 epochs without improvement after 0.9
    assert np.all(model.get_weights()[0] == 2.0)       # weights of epoch 2, the best


def test_reduce_on_plateau_lowers_the_rate():
    model = _tiny_model()
    recipe = Recipe(schedule="plateau", learning_rate=0.1, plateau_patience=1, decay_rate=0.5)
    callback = plateau_callback(recipe)
    callback.set_model(model)
    callback.on_train_begin()
    for epoch, acc in enumerate([0.5, 0.6, 0.6, 0.6]):
        callback.on_epoch_end(epoch, {"val_accuracy": acc})
    assert current_learning_rate(model.optimizer) == pytest.approx(0.025)


def test_the_recipe_names_exactly_the_implemented_optimizers_schedules_and_strategies():
    from trainer import distribute, optim, recipe

    assert set(recipe.OPTIMIZERS) == set(optim.OPTIMIZERS)
    assert set(recipe.SCHEDULES) == set(optim.SCHEDULES)
    assert set(recipe.STRATEGIES) == set(distribute.STRATEGIES)
