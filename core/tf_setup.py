"""The one place TensorFlow is imported from.

TFMOT 0.8.1 and tf2onnx 1.17 only understand Keras 2 models, so every model in this
project is a `tf_keras` model. `TF_USE_LEGACY_KERAS=1` makes `tf.keras` resolve to
`tf_keras` as well, which keeps third-party code that says `tf.keras` on the same Keras.
It must be set before TensorFlow is first imported, which is why every module that needs
TensorFlow does `from core.tf_setup import tf, keras` instead of importing it itself.
"""
from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
# Keep CPU-only logs readable: TF's INFO/WARNING lines about missing CUDA drown the output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras", "require_tf_keras_model"]


class NotATfKerasModelError(TypeError):
    """A Keras 3 (or other) model was passed where a tf_keras model is required."""


def require_tf_keras_model(model, what: str = "model") -> None:
    """Raise a clear error when `model` is not a tf_keras (Keras 2) model.

    Keras 3 models look alike but TFMOT's `quantize_model`/`prune_low_magnitude` and
    tf2onnx's `from_keras` fail on them with unrelated-looking errors.
    """
    if isinstance(model, keras.Model):
        return
    module = type(model).__module__
    hint = ""
    if module.startswith("keras"):
        hint = (
            " It is a Keras 3 model (module %r). Build it with `import tf_keras as keras` "
            "(or `from core.tf_setup import keras`): TFMOT and tf2onnx support only Keras 2 "
            "(tf_keras) models." % module
        )
    raise NotATfKerasModelError(
        f"{what} must be a tf_keras.Model, got {type(model).__name__}.{hint}"
    )
