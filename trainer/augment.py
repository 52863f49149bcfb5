"""Image augmentation, applied to training batches in the tf.data pipeline (never inside the
model, so exported models stay plain inference graphs).

Shifts, zoom (a random crop-and-resize), small rotations, brightness and contrast for every
image task; horizontal flips only where a mirrored image keeps its label. A mirrored hand sign
is another hand's sign (and digits mirror into non-digits), so only clothing is flipped.
"""
from __future__ import annotations

from core.preprocessing import ImagePreprocessor
from core.tf_setup import keras

HFLIP_KEEPS_LABEL = frozenset({"fashion_mnist"})
SHIFT = 0.1          # fraction of height/width
ROTATION = 0.03      # fraction of a full turn: about +-11 degrees
ZOOM = 0.1
BRIGHTNESS = 0.1     # fraction of the value range
CONTRAST = 0.1


def _full(L, low, high, seed):
    return [
        L.RandomTranslation(SHIFT, SHIFT, fill_mode="nearest", seed=seed),
        L.RandomZoom(ZOOM, fill_mode="nearest", seed=seed + 1),
        L.RandomRotation(ROTATION, fill_mode="nearest", seed=seed + 2),
        L.RandomBrightness(BRIGHTNESS, value_range=(low, high), seed=seed + 3),
        L.RandomContrast(CONTRAST, seed=seed + 4),
    ]


def _shift(L, low, high, seed):
    return [L.RandomTranslation(SHIFT, SHIFT, fill_mode="nearest", seed=seed)]


# recipe.augmentation -> (keras.layers, low, high, seed) -> the random layers (flips are added
# per task below). "shift" suits a small model on centred, normalized images (Fashion-MNIST
# garments): the full set there leaves a 2-conv CNN under-fitted (train accuracy under
# validation accuracy after 30 epochs). Recipe.AUGMENTATIONS names the same rows.
AUGMENTATIONS = {"full": _full, "shift": _shift}


def image_augmenter(task: str, preprocessor: ImagePreprocessor, seed: int,
                    augmentation: str = "full"):
    """A Sequential of random layers for (N, H, W, 1) batches in the preprocessor's range."""
    L = keras.layers
    # The range pixels occupy after scaling: brightness is added in that range and clipped to it.
    low = (0.0 - preprocessor.mean) / preprocessor.std if preprocessor.scaling == "standardize" else 0.0
    high = (1.0 - preprocessor.mean) / preprocessor.std if preprocessor.scaling == "standardize" else 1.0
    layers = AUGMENTATIONS[augmentation](L, low, high, seed)
    if task in HFLIP_KEEPS_LABEL:
        layers.append(L.RandomFlip("horizontal", seed=seed + 5))
    return keras.Sequential(layers, name="augment")
