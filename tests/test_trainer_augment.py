"""Augmentation policies (trainer/augment.py): one registry row per `augmentation` recipe value,
label-keeping flips per task, outputs in the preprocessor's range and shape."""
from __future__ import annotations

import numpy as np
import pytest

from core.preprocessing import ImagePreprocessor
from trainer import recipe as recipe_module
from trainer.augment import AUGMENTATIONS, HFLIP_KEEPS_LABEL, image_augmenter


def test_recipe_choices_name_the_registry_rows():
    assert set(recipe_module.AUGMENTATIONS) == set(AUGMENTATIONS)


@pytest.mark.parametrize("augmentation", sorted(AUGMENTATIONS))
@pytest.mark.parametrize("task", ["fashion_mnist", "sign_mnist"])
def test_each_policy_keeps_shape_and_range_and_flips_only_where_labels_allow(task, augmentation):
    pre = ImagePreprocessor()
    images = np.random.default_rng(0).random((8, 28, 28, 1)).astype("float32")
    augmenter = image_augmenter(task, pre, seed=1, augmentation=augmentation)
    out = np.asarray(augmenter(images, training=True))
    assert out.shape == images.shape and out.min() >= 0.0 and out.max() <= 1.0 + 1e-6
    assert not np.allclose(out, images)  # it changed the batch
    flips = [layer for layer in augmenter.layers if "flip" in layer.name]
    assert bool(flips) == (task in HFLIP_KEEPS_LABEL)


def test_shift_is_a_subset_of_full():
    pre = ImagePreprocessor()
    names = {a: {type(layer).__name__ for layer in image_augmenter("sign_mnist", pre, 0, a).layers}
             for a in AUGMENTATIONS}
    assert names["shift"] == {"RandomTranslation"} and names["shift"] < names["full"]
