"""What a variant costs: parameters, multiply-accumulates, weight sparsity, file sizes.

MACs are counted per layer from the built Keras model for one example (batch 1) with the
table LAYER_MACS; layers absent from it do no multiply-accumulates worth counting
(activations, pooling, normalization) or are listed in `uncounted` so a report never
silently shows a too-small number.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np


def _spatial(shape) -> int:
    return int(np.prod([d for d in shape[1:-1]])) if len(shape) > 2 else 1


def _conv_macs(layer) -> int:
    k = int(np.prod(layer.kernel_size))
    cin = int(layer.input_shape[-1])
    return _spatial(layer.output_shape) * int(layer.output_shape[-1]) * k * cin // getattr(layer, "groups", 1)


def _depthwise_macs(layer) -> int:
    return _spatial(layer.output_shape) * int(layer.output_shape[-1]) * int(np.prod(layer.kernel_size))


def _separable_macs(layer) -> int:
    cin, cout = int(layer.input_shape[-1]), int(layer.output_shape[-1])
    mid = cin * layer.depth_multiplier
    return _spatial(layer.output_shape) * (mid * int(np.prod(layer.kernel_size)) + mid * cout)


def _dense_macs(layer) -> int:
    return _spatial(layer.input_shape) * int(layer.input_shape[-1]) * int(layer.units)


def _recurrent_macs(layer, gates: int) -> int:
    steps = int(layer.input_shape[1])
    units, features = int(layer.cell.units), int(layer.input_shape[-1])
    return steps * gates * units * (features + units)


LAYER_MACS = {
    "Conv1D": _conv_macs,
    "Conv2D": _conv_macs,
    "DepthwiseConv2D": _depthwise_macs,
    "SeparableConv2D": _separable_macs,
    "Dense": _dense_macs,
    "LSTM": lambda layer: _recurrent_macs(layer, 4),
    "GRU": lambda layer: _recurrent_macs(layer, 3),
}
NO_MACS = frozenset({
    "InputLayer", "Embedding", "Flatten", "Reshape", "Dropout", "SpatialDropout1D",
    "SpatialDropout2D", "Activation", "ReLU", "Softmax", "LeakyReLU", "BatchNormalization",
    "LayerNormalization", "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "ZeroPadding2D", "Cropping2D", "Add", "Concatenate", "Multiply",
    "Rescaling", "Resizing", "Normalization", "GaussianNoise", "TFOpLambda",
})


def count_macs(model) -> dict:
    """{"macs": total for one example, "per_layer": {...}, "uncounted": [layer names]}."""
    per_layer, uncounted = {}, []
    for layer in model.layers:
        cls = type(layer).__name__
        if cls == "Bidirectional":
            per_layer[layer.name] = 2 * LAYER_MACS[type(layer.forward_layer).__name__](layer.forward_layer) \
                if type(layer.forward_layer).__name__ in LAYER_MACS else 0
            continue
        if cls in LAYER_MACS:
            per_layer[layer.name] = int(LAYER_MACS[cls](layer))
        elif cls not in NO_MACS:
            uncounted.append(layer.name)
    return {"macs": int(sum(per_layer.values())), "per_layer": per_layer, "uncounted": uncounted}


def is_kernel(weight) -> bool:
    name = weight.name.split("/")[-1]
    return name.startswith(("kernel", "depthwise_kernel", "pointwise_kernel", "embeddings"))


def weight_sparsity(model) -> dict:
    """Fraction of exactly-zero entries of every kernel/embedding matrix, per layer and overall."""
    per_layer, zeros, total = {}, 0, 0
    for layer in model.layers:
        layer_zeros, layer_total = 0, 0
        for weight in layer.weights:
            if is_kernel(weight):
                values = weight.numpy()
                layer_zeros += int(np.count_nonzero(values == 0))
                layer_total += values.size
        if layer_total:
            per_layer[layer.name] = round(layer_zeros / layer_total, 4)
            zeros, total = zeros + layer_zeros, total + layer_total
    return {"sparsity": round(zeros / total, 4) if total else 0.0, "per_layer": per_layer}


def gzip_size(path: str | Path) -> int:
    """Bytes of the file after gzip -9 (zeros from magnitude pruning show up here)."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=9))


def file_sizes(directory: str | Path) -> dict:
    """Raw and gzip sizes of the model files present in a variant directory."""
    out = {}
    for name in ("model.onnx", "model.tflite"):
        path = Path(directory) / name
        if path.is_file():
            stem = name.split(".")[1]
            out[f"{stem}_bytes"] = path.stat().st_size
            out[f"{stem}_gzip_bytes"] = gzip_size(path)
    return out


def keras_profile(model) -> dict:
    """Params, MACs and sparsity of a Keras model, flat metrics plus per-layer details."""
    macs = count_macs(model)
    sparsity = weight_sparsity(model)
    return {
        "metrics": {"params": int(model.count_params()), "macs": macs["macs"],
                    "sparsity": sparsity["sparsity"]},
        "details": {"macs_per_layer": macs["per_layer"], "macs_uncounted": macs["uncounted"],
                    "sparsity_per_layer": sparsity["per_layer"]},
    }
