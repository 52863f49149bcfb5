"""Write the README's "Your own model" example: a folder of real images and a Keras model.

    python tools/digits_example.py example/

writes example/digits/<0..9>/*.png (scikit-learn's 1,797 handwritten digits, upscaled to 32x32
and coloured, like photos a user would have) and example/digits.keras, a small CNN trained on
them that takes 16x16 grayscale input: the import converts every image to that. Needs
scikit-learn (`pip install scikit-learn`, part of the dev extra).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from tests import user_datasets  # noqa: E402


def main(out: str) -> int:
    from core.images import fit_image
    from core.tf_setup import keras, tf

    out = Path(out)
    x, y = user_datasets.digits()
    folder = user_datasets.write_digit_folder(out / "digits", x, y)
    # The user's own training code would have read its images its own way; this one converts
    # the coloured digits to 16x16 grayscale with tinyship's conversion, then trains.
    pixels = np.stack([fit_image(user_datasets.colourise(img), 16, 16, 1) for img in x])
    tf.random.set_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 1)),
                              keras.layers.Conv2D(16, 3, activation="relu"),
                              keras.layers.MaxPool2D(), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(pixels[..., None] / 255.0, y, epochs=10, batch_size=32, verbose=0,
              validation_split=0.2)
    model.save(out / "digits.keras")
    print(f"wrote {folder}/ ({len(y)} PNG files in 10 class folders) and {out / 'digits.keras'}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
