"""Recipes and the command line: defaults, overrides, and clear errors for bad input."""
import json

import pytest

from trainer.cli import main
from trainer.recipe import OPTIMIZERS, SCHEDULES, Recipe, RecipeError, recipe_from_dict, \
    resolve_recipe


def test_resolution_order_defaults_model_file_flags():
    r = resolve_recipe({"epochs": 5, "optimizer": "sgd"}, {"epochs": 7}, {"learning_rate": 0.1})
    assert (r.epochs, r.optimizer, r.learning_rate, r.batch_size) == (7, "sgd", 0.1, 64)


@pytest.mark.parametrize("values, message", [
    ({"optimiser": "adam"}, "Did you mean optimizer"),
    ({"optimizer": "adamw"}, "valid: sgd, momentum, nesterov, adam, rmsprop, adagrad"),
    ({"schedule": "linear"}, "valid: " + ", ".join(SCHEDULES)),
    ({"epochs": "10"}, "expected int"),
    ({"augment": 1}, "expected bool"),
    ({"learning_rate": True}, "expected float"),
    ({"optimizer": 3}, "one of " + ", ".join(OPTIMIZERS)),
    ({"dropout": 1.5}, "dropout must be in"),
])
def test_bad_recipe_values_are_errors_listing_valid_choices(values, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(values)


def test_ints_are_accepted_for_floats():
    assert recipe_from_dict({"learning_rate": 1}).learning_rate == 1.0


def test_recipe_round_trips_through_json():
    r = Recipe(optimizer="nesterov", schedule="cosine", warmup_epochs=1.0)
    assert recipe_from_dict(json.loads(json.dumps(r.to_dict()))) == r


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "fashion_cn"], "unknown model 'fashion_cn'. Did you mean fashion_cnn"),
    (["train", "--model", "fashion_cnn", "--task", "cifar"], "valid tasks: fashion_mnist"),
    (["train", "--model", "fashion_cnn", "--optimizer", "adamw"], "valid: sgd, momentum"),
    (["train", "--model", "fashion_cnn", "--schedule", "poly"], "valid: constant, step"),
    (["train", "--model", "imdb_gap", "--task", "fashion_mnist"], "models for image tasks:"),
])
def test_cli_bad_input_exits_2_with_valid_choices(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_recipe_file_with_wrong_type(tmp_path, capsys):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"batch_size": 32.5}))
    assert main(["train", "--model", "fashion_mlp", "--recipe", str(path)]) == 2
    assert "batch_size=32.5 has type float; expected int" in capsys.readouterr().err


def test_cli_unknown_dataset_in_datasets_command(capsys):
    assert main(["datasets", "cifar10"]) == 0
    assert "unknown dataset 'cifar10'; valid: fashion_mnist" in capsys.readouterr().out


def test_keras3_model_gets_a_clear_error():
    keras3 = pytest.importorskip("keras")
    from core.tf_setup import NotATfKerasModelError
    from trainer.fit import fit

    if not keras3.__version__.startswith("3"):
        pytest.skip("Keras 3 is not installed")
    model = keras3.Sequential([keras3.Input((2,)), keras3.layers.Dense(1)])
    with pytest.raises(NotATfKerasModelError, match="tf_keras"):
        fit(model, data=None, recipe=Recipe())
