"""Image files and arrays of any size and colour -> the pixels a model takes (height, width,
channels), uint8. The one conversion: dataset readers run it on every file of an image folder
and serve runs it on every uploaded image, so a model sees the same pixels in both.

Transparent pixels count as white background; an image whose aspect ratio differs from the
model's is padded with its border colour (not stretched) before resizing. TensorFlow-free.
"""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Larger images are refused from their header, before decoding (a 4000x4000 phone photo is
# 16 Mpx; a 7000x7000 RGBA PNG of 208 KB took 1.2 s to decode). Pillow's own bomb check stays
# as a second guard: it raises above twice its MAX_IMAGE_PIXELS.
MAX_PIXELS = 25_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Pillow also warns from MAX_IMAGE_PIXELS up; `decode` refuses those images itself with a
# clear error, so the warning would only repeat it in the log. (A filter, not catch_warnings:
# decode runs in worker threads, and catch_warnings swaps process-wide state.)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
_MODES = {1: "L", 3: "RGB"}


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


class ImageDecodeError(ValueError):
    """Bytes that are not an image Pillow can read (or a decompression bomb)."""


def decode(data: bytes | str | Path) -> Image.Image:
    """Image file bytes (or a path) -> a loaded, upright Pillow image."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            width, height = img.size  # from the header: nothing is decoded yet
            if width * height > MAX_PIXELS:
                raise ImageDecodeError(f"the image is {width}x{height} = {width * height:,} "
                                       f"pixels, more than {MAX_PIXELS:,}")
            img = ImageOps.exif_transpose(img)
            img.load()
            return img
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError,
            SyntaxError) as e:
        # Pillow names an in-memory file by its repr (<_io.BytesIO object at 0x...>): a server
        # answer must not carry it.
        message = _OBJECT_REPR.sub("the data", str(e))
        raise ImageDecodeError(f"{type(e).__name__}: {message}") from None


def fit_image(img: Image.Image | np.ndarray, height: int, width: int,
              channels: int) -> np.ndarray:
    """One image -> uint8 pixels (height, width) for one channel, (height, width, channels)
    otherwise. Arrays are (H, W) grayscale or (H, W, 3) RGB in 0..255."""
    if channels not in _MODES:
        raise ValueError(f"images have 1 (grayscale) or 3 (RGB) channels, not {channels}")
    if isinstance(img, np.ndarray):
        arr = np.asarray(img)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.shape[:2] == (height, width) and arr.ndim == (2 if channels == 1 else 3):
            return arr.astype(np.uint8, copy=False)
        img = Image.fromarray(arr.astype(np.uint8, copy=False))
    img = _to_mode(img, _MODES[channels])
    img = _pad_to_aspect(img, width / height)
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def read_image(data: bytes | str | Path, height: int, width: int, channels: int) -> np.ndarray:
    """Image file bytes or path -> the model's pixels (see `fit_image`)."""
    return fit_image(decode(data), height, width, channels)


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert(mode)


def _pad_to_aspect(img: Image.Image, aspect: float) -> Image.Image:
    w, h = img.size
    if abs(w / h - aspect) < 1e-6:
        return img
    new_w, new_h = (round(h * aspect), h) if w / h < aspect else (w, round(w / aspect))
    pixels = np.asarray(img)
    fill = np.median(border(pixels), axis=0).astype(int)
    canvas = Image.new(img.mode, (new_w, new_h), tuple(fill) if fill.ndim else int(fill))
    canvas.paste(img, ((new_w - w) // 2, (new_h - h) // 2))
    return canvas


def border(pixels: np.ndarray) -> np.ndarray:
    """The outermost rows and columns of an image, as one list of pixels."""
    return np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
