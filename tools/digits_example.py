"""Write the README's "Your own model" example: a folder of real images and a Keras model.

    python tools/digits_example.py example/

writes example/digits/<0..9>/*.png (scikit-learn's 1,797 handwritten digits, upscaled to 32x32
and coloured, like photos a user would have) and example/digits.keras, a small CNN that takes
16x16 grayscale input (the import converts every image to that), trained on the 80% of the
images that `trainer import` will not test on. Needs scikit-learn (the dev extra).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import user_datasets  # noqa: E402


def main(out: str) -> int:
    from core.tf_setup import keras, tf

    out = Path(out)
    x, y = user_datasets.digits()
    folder = user_datasets.write_digit_folder(out / "digits", x, y)
    # Trained on the import's train split only (the same seeded split `trainer import` makes),
    # so the accuracy the import measures is on images the model has not seen.
    from core.userdata import DataSource, read_split

    pixels, labels, _ = read_split(DataSource.detect(folder, image=(16, 16, 1)), "train")
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()  # the same model on every run
    model = keras.Sequential([keras.Input((16, 16, 1)),
                              keras.layers.Conv2D(16, 3, activation="relu"),
                              keras.layers.MaxPool2D(), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(pixels[..., None] / 255.0, labels, epochs=10, batch_size=32, verbose=0)
    model.save(out / "digits.keras")
    print(f"wrote {folder}/ ({len(y)} PNG files in 10 class folders) and {out / 'digits.keras'}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
