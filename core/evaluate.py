"""The one evaluation path: a variant's inputs, a model's probabilities, top-1 accuracy.

    ev = split_inputs(variant, "test", data_dir)          # raw data -> the variant's inputs
    with open_runner(variant, "onnx") as runner:
        acc = accuracy(runner, ev.x, ev.y)

trainer (test metrics of a trained model), compress (accuracy of every derived variant) and
benchmarks (accuracy on every runtime) all call these, so "accuracy" means the same everywhere.
`load_keras` is the one way a variant's Keras model is loaded. TensorFlow-free at import.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from core import data as datasets
from core.artifacts import ArtifactError, Variant
from core.manifest import probabilities
from core.preprocessing import LazyInputs
from core.tasks import get_task


@dataclass(frozen=True)
class EvalSet:
    """A split's model inputs (already preprocessed for one variant) and integer labels."""

    x: np.ndarray
    y: np.ndarray
    source: str


def split_inputs(variant: Variant, split: str = "test", data_dir=None,
                 limit: int | None = None, dataset: datasets.Dataset | None = None) -> EvalSet:
    """The variant's task dataset split, preprocessed as the variant's manifest says;
    `limit`: a stratified subset of that many examples; `dataset`: the split already loaded
    (callers that evaluate many variants of one task load it once)."""
    ds = dataset if dataset is not None else \
        datasets.load(get_task(variant.task).dataset, split, data_dir=data_dir)
    if limit:
        ds = ds.subset(limit)
    # The preprocessor serve runs on a request, applied to the whole split; to a memory-mapped
    # one (a user's image folder) a batch at a time, when the rows are read.
    if isinstance(ds.x, np.memmap):
        return EvalSet(LazyInputs(ds.x, variant.preprocessor()), ds.y, ds.source)
    return EvalSet(variant.preprocessor()(ds.x), ds.y, ds.source)


def predict_probabilities(predict: Callable[[np.ndarray], np.ndarray] | object, x: np.ndarray,
                          batch: int = 512) -> np.ndarray:
    """(N, classes) probabilities from a runner (anything with `.predict`) or a function of a
    batch, run `batch` rows at a time."""
    fn = predict.predict if hasattr(predict, "predict") else predict
    if len(x) == 0:
        return np.zeros((0, 0))
    return np.concatenate([probabilities(fn(x[i:i + batch])) for i in range(0, len(x), batch)])


def top1_accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows whose highest-probability class is the label."""
    y = np.asarray(y)
    if len(y) == 0:
        raise ValueError("no examples: cannot compute accuracy on an empty split")
    return float(np.mean(np.asarray(probs).argmax(axis=1) == y))


def accuracy(runner, x: np.ndarray, y: np.ndarray, batch: int = 512) -> float:
    """Top-1 accuracy of a runner (or a function of a batch) on inputs `x` with labels `y`."""
    return top1_accuracy(predict_probabilities(runner, x, batch), y)


def load_keras(source: Variant | str | Path):
    """The tf_keras model of a variant (or a .keras file), compile=False: for inference, weight
    copies and transforms. TFMOT's custom objects are in scope when TFMOT is installed, since
    quantization-aware and pruning-wrapped models cannot be deserialized without them."""
    if isinstance(source, Variant):
        if not source.has_file("model.keras"):
            raise ArtifactError(f"{source.task}/{source.name} has no model.keras, so it cannot be "
                                f"loaded in Keras (files: {', '.join(source.files)})")
        source = source.file("model.keras")
    from core.tf_setup import keras

    try:
        import tensorflow_model_optimization as tfmot
    except ImportError:
        return keras.models.load_model(source, compile=False)
    with tfmot.quantization.keras.quantize_scope():
        return keras.models.load_model(source, compile=False)
