"""Decode an uploaded image (PNG, JPEG, ... any size, any colour) to 28x28 grayscale pixels.

The datasets' conventions decide the conversion: Fashion-MNIST (and MNIST) show a bright
object on a black background, so a photo with a light background is inverted; Sign-Language
MNIST images are ordinary grayscale photos and are never inverted. Non-square images are
padded to a square with their border colour (not stretched), then resized.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from serve.errors import InvalidInput

# Tasks whose training images are a bright object on a dark background.
DARK_BACKGROUND_TASKS = frozenset({"fashion_mnist", "mnist"})
# Larger images are refused as decompression bombs (a 4000x4000 phone photo is 16 Mpx).
# Pillow raises above twice its MAX_IMAGE_PIXELS (and only warns between 1x and 2x).
MAX_PIXELS = 50_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2
INVERT_CHOICES = ("auto", "true", "false")


def decode_image(data: bytes, size: int, task: str, invert: str = "auto") -> np.ndarray:
    """Image file bytes -> (size, size) uint8 grayscale in the task's convention."""
    if invert not in INVERT_CHOICES:
        raise InvalidInput(f"invert={invert!r} is not valid", expected=" | ".join(INVERT_CHOICES))
    if not data:
        raise InvalidInput("the image is empty (0 bytes)", expected="a PNG or JPEG file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
            gray = _to_grayscale(img)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
        raise InvalidInput(f"the image could not be decoded ({type(e).__name__}: {e})",
                           expected=f"a PNG, JPEG, GIF, BMP or WebP image of at most "
                           f"{MAX_PIXELS:,} pixels") from None
    pixels = np.asarray(_pad_to_square(gray).resize((size, size), Image.Resampling.LANCZOS),
                        dtype=np.uint8)
    if invert == "true" or (invert == "auto" and task in DARK_BACKGROUND_TASKS
                            and _border(pixels).mean() > 127):
        pixels = 255 - pixels
    return pixels


def _to_grayscale(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels are background: composite onto white before dropping alpha.
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("L")


def _pad_to_square(img: Image.Image) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    fill = int(np.median(_border(np.asarray(img))))
    square = Image.new("L", (side, side), fill)
    square.paste(img, ((side - w) // 2, (side - h) // 2))
    return square


def _border(pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
