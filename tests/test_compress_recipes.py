"""Every shipped compress recipe validates, and `default_recipe_for` picks the documented one."""
from __future__ import annotations

import pytest

from compress.recipe import (DEFAULT_RECIPE, FULL_DATA_RECIPES, ONNX_RECIPE, POSTTRAINING_RECIPE,
                             RECIPES_DIR, default_recipe_for, load_recipe)


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_every_shipped_recipe_loads(path):
    recipe = load_recipe(path)  # validates techniques, params and `from` references
    assert recipe.steps


def test_default_recipe_by_model_and_data():
    assert default_recipe_for("fashion_cnn") == DEFAULT_RECIPE
    assert default_recipe_for("fashion_cnn", full_data=True) == FULL_DATA_RECIPES["fashion_cnn"]
    assert default_recipe_for("fashion_mlp", full_data=True) == DEFAULT_RECIPE
    assert default_recipe_for("mobilenet_v2") == POSTTRAINING_RECIPE
    assert default_recipe_for("fashion_cnn", has_keras=False, full_data=True) == ONNX_RECIPE
    # The full-data fashion_cnn recipe has every default step and the course's techniques.
    full = {s.technique for s in load_recipe(FULL_DATA_RECIPES["fashion_cnn"]).steps}
    assert {s.technique for s in load_recipe(DEFAULT_RECIPE).steps} <= full
    assert {"fc_to_conv1x1", "bottleneck", "lowrank", "distill"} <= full
