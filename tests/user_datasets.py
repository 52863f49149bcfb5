"""Users' datasets written from real data that ships with a package or with this repository:
scikit-learn's handwritten digits (1,797 8x8 images) as an image folder (PNG, upscaled to
32x32 and in colour, so that resizing and channel conversion run), as a CSV in Kaggle's
`label,pixel1..` layout and as an .npz; the bundled IMDB sample as a text folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np

DIGIT_SIDE = 32  # the PNGs' size; the models of the tests take 16x16 grayscale


def digits() -> tuple[np.ndarray, np.ndarray]:
    """(x uint8 (1797, 8, 8) in 0..255, y int64)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.rint(d.images * (255 / 16)).astype(np.uint8), d.target.astype(np.int64)


def colourise(img: np.ndarray) -> np.ndarray:
    """A grayscale digit as an RGB image whose channels differ (a real colour conversion)."""
    return np.stack([img, img // 2 + 64, 255 - img], axis=-1).astype(np.uint8)


def write_digit_folder(root: Path, x=None, y=None) -> Path:
    from PIL import Image

    if x is None:
        x, y = digits()
    for i, (img, label) in enumerate(zip(x, y)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(colourise(img)).resize((DIGIT_SIDE, DIGIT_SIDE), Image.Resampling.NEAREST) \
            .save(folder / f"{i:04d}.png")
    return root


def write_digit_csv(path: Path) -> Path:
    x, y = digits()
    header = "label," + ",".join(f"pixel{i + 1}" for i in range(64))
    rows = [f"{label}," + ",".join(map(str, img.ravel())) for img, label in zip(x, y)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def write_digit_npz(path: Path, test_fraction: float = 0.2) -> Path:
    x, y = digits()
    n_test = int(len(y) * test_fraction)
    np.savez_compressed(path, x_train=x[n_test:], y_train=y[n_test:], x_test=x[:n_test],
                        y_test=y[:n_test])
    return path


def write_imdb_folder(root: Path, n: int = 600) -> Path:
    from core import data

    for split in ("train", "test"):
        ds = data.load("imdb", split, use_keras_cache=False)
        for i, (text, label) in enumerate(zip(ds.x[:n], ds.y[:n])):
            folder = root / split / ("neg", "pos")[label]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}.txt").write_text(text, encoding="utf-8")
    return root
