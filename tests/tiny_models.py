"""Tiny real variants for the benchmark tests (the `tiny_artifacts` fixture in conftest.py).

`build_tiny_artifacts` writes an artifact root with untrained-but-real tf_keras
models for the three served tasks, exported to ONNX and TFLite by core.export.export_float
and written through core.artifacts.create_variant, plus one derived variant (a copy of the
Fashion model with half its kernel zeroed) so lineage ratios have something to compare, and a
user's task imported the way `python -m trainer import` does it (`IMPORTED_TASK`: 300 of
scikit-learn's digits as a folder of colour PNGs, a model taking non-square 12x10 RGB input).
About 20 s on 2 cores, most of it TensorFlow's import and the converters.
"""
from __future__ import annotations

import numpy as np

from core import data as datasets
from core.artifacts import create_variant
from core.preprocessing import ImagePreprocessor, TextTokenizer
from core.tasks import get_task


def _save(root, task, name, model, parity_x, preprocessing, output, parent=None, extra_files=()):
    from core.export import export_float

    with create_variant(root, task=task, model=name.split("-")[0], variant=name,
                        lineage={"parent": parent, "technique": "prune" if parent else "train",
                                 "params": {}},
                        input={"name": "input", "shape": [None, *model.input_shape[1:]],
                               "dtype": model.inputs[0].dtype.name},
                        output={"name": "output", "activation": output},
                        preprocessing=preprocessing.to_config(),
                        labels=list(get_task(task).labels),
                        metrics={"test_accuracy": 0.5, "data_source": "tiny test model"}) as v:
        model.save(v.path("model.keras"))
        export_float(model, v.dir, parity_x)
        for rel, writer in extra_files:
            writer(v.path(rel))


IMPORTED_TASK, IMPORTED_VARIANT = "digits_rgb", "digits_rgb_tiny"


def import_tiny_digits(root) -> None:
    from pathlib import Path

    from core.tf_setup import keras
    from tests import user_datasets
    from trainer.importer import import_model

    x, y = user_datasets.digits()
    folder = user_datasets.write_digit_folder(Path(root).parent / f"{Path(root).name}-digits",
                                              x[:300], y[:300])
    model = keras.Sequential([keras.layers.Input((12, 10, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax",
                                                 bias_initializer=keras.initializers.RandomNormal(
                                                     stddev=0.1, seed=1))])
    path = Path(root).parent / f"{IMPORTED_VARIANT}.keras"
    model.save(path)
    import_model(path, folder, IMPORTED_TASK, artifacts=root, log=lambda *a: None)


def build_tiny_artifacts(root) -> None:
    from core.tf_setup import keras

    keras.utils.set_random_seed(0)
    image = ImagePreprocessor()
    for task, classes in (("fashion_mnist", 10), ("sign_mnist", 24)):
        x = image(datasets.load(get_task(task).dataset, "test").x[:16])
        # Non-zero biases: tf2onnx drops the Add of an all-zero bias, which would make the
        # parameter count in the ONNX graph differ from the Keras model's.
        bias = keras.initializers.RandomNormal(stddev=0.1)
        model = keras.Sequential([keras.layers.Input((28, 28, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(8, activation="relu", bias_initializer=bias),
                                  keras.layers.Dense(classes, activation="softmax",
                                                     bias_initializer=bias)])
        _save(root, task, f"{task}_tiny", model, x, image, "softmax")
        if task == "fashion_mnist":
            pruned = keras.models.clone_model(model)
            weights = model.get_weights()
            weights[0] = np.where(np.arange(weights[0].size).reshape(weights[0].shape) % 2, 0,
                                  weights[0])
            pruned.set_weights(weights)
            _save(root, task, f"{task}_tiny-prune-50", pruned, x, image, "softmax",
                  parent=f"{task}_tiny")
    reviews = datasets.load("imdb", "train")
    tokenizer = TextTokenizer.fit(reviews.x[:200], vocab_size=200, max_length=32)
    x = tokenizer(reviews.x[:16])
    model = keras.Sequential([keras.layers.Input((32,), dtype="int32"),
                              keras.layers.Embedding(tokenizer.vocab_size, 4),
                              keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(1, activation="sigmoid")])
    _save(root, "imdb", "imdb_tiny", model, x, tokenizer, "sigmoid",
          extra_files=[("vocab.json", lambda p: tokenizer.save_vocabulary(p.parent))])
    import_tiny_digits(root)
