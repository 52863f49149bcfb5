"""Decode an uploaded image (PNG, JPEG, ... any size, any colour) to the model's input pixels.

The conversion itself is `core.images.read_image`, the one that reads image-folder datasets.
Served here on top of it: the built-in datasets' conventions. Fashion-MNIST (and MNIST) show a
bright object on a black background, so a photo with a light background is inverted;
Sign-Language MNIST images and users' own image folders are ordinary photos, never inverted.
"""
from __future__ import annotations

import numpy as np

from core.images import MAX_PIXELS, ImageDecodeError, border, read_image
from serve.errors import InvalidInput

# Tasks whose training images are a bright object on a dark background.
DARK_BACKGROUND_TASKS = frozenset({"fashion_mnist", "mnist"})
INVERT_CHOICES = ("auto", "true", "false")


def decode_image(data: bytes, height: int, width: int, channels: int, task: str,
                 invert: str = "auto") -> np.ndarray:
    """Image file bytes -> uint8 pixels (height, width[, channels]) in the task's convention."""
    if invert not in INVERT_CHOICES:
        raise InvalidInput(f"invert={invert!r} is not valid", expected=" | ".join(INVERT_CHOICES))
    if not data:
        raise InvalidInput("the image is empty (0 bytes)", expected="a PNG or JPEG file")
    try:
        pixels = read_image(data, height, width, channels)
    except ImageDecodeError as e:
        raise InvalidInput(f"the image could not be decoded ({e})",
                           expected=f"a PNG, JPEG, GIF, BMP or WebP image of at most "
                           f"{MAX_PIXELS:,} pixels") from None
    if invert == "true" or (invert == "auto" and task in DARK_BACKGROUND_TASKS
                            and border(pixels).mean() > 127):
        pixels = 255 - pixels
    return pixels
