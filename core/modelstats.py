"""Model facts that do not need timing: file sizes, parameters, MACs, sparsity.

`model_facts(variant)` is the one answer for a variant; `keras_profile(model)` measures a Keras
model (compress records it in the manifest when it writes a variant), `onnx_graph_stats(path)`
an ONNX file.

Keras: MACs are counted per layer from the built model for one example (batch 1) with the
table LAYER_MACS; layers absent from it do no multiply-accumulates worth counting (activations,
pooling, normalization) or are listed in `uncounted`, so a report never silently shows a
too-small number.

Sizes: the raw bytes of each model file and its gzip size (level 9). Unstructured pruning
leaves the raw size unchanged but the zeros compress, so the gzip column is where pruning shows.

Parameters, MACs and sparsity come from the manifest when `compress`/`trainer` recorded them
(keys `params`, `macs`, `sparsity` in metrics or extra), else they are computed from the ONNX
graph here (needs the `onnx` package; TensorFlow-free):
  - params: elements of every weight initializer (float or integer, biases included;
    quantization scales and zero points excluded), so an int8 model has as many parameters
    as its float parent;
  - sparsity: fraction of exact zeros among the elements of weight tensors with >= 2 dims
    (kernels, not biases), the quantity magnitude pruning drives up;
  - MACs per example (batch 1): multiply-accumulates of the compute ops in `_MAC_RULES`, from
    shapes given by ONNX shape inference with the batch dimension fixed to 1. Other ops
    (activations, pooling, adds) are counted as 0 MACs.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

# Initializers feeding these op inputs are quantization parameters, not weights.
_QUANT_PARAM_INPUTS = {
    "QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2),
    "QLinearConv": (1, 2, 4, 5, 6, 7), "QLinearMatMul": (1, 2, 4, 5, 6, 7),
    "ConvInteger": (2, 3), "MatMulInteger": (2, 3), "DynamicQuantizeLinear": (),
}


def file_sizes(path: str | Path) -> dict:
    """{"bytes": raw size, "gzip_bytes": gzip -9 size} of one file."""
    data = Path(path).read_bytes()
    return {"bytes": len(data), "gzip_bytes": len(gzip.compress(data, compresslevel=9, mtime=0))}


def _dims(shapes: dict, name: str) -> list[int] | None:
    dims = shapes.get(name)
    if dims is None or any(not isinstance(d, int) or d < 0 for d in dims):
        return None
    return dims


def _conv_macs(node, shapes) -> int | None:
    # out[N, Cout, *spatial] += x[N, Cin/g, ...] * w[Cout, Cin/g, *kernel]
    weight_index = 3 if node.op_type == "QLinearConv" else 1
    out, w = _dims(shapes, node.output[0]), _dims(shapes, node.input[weight_index])
    if out is None or w is None:
        return None
    return int(np.prod(out[1:], dtype=np.int64) * np.prod(w[1:], dtype=np.int64))


def _matmul_macs(node, shapes) -> int | None:
    # out[..., M, N] += a[..., M, K] * b[..., K, N]: one MAC per output element and K.
    a_index = 0
    out, a = _dims(shapes, node.output[0]), _dims(shapes, node.input[a_index])
    if out is None or a is None:
        return None
    return int(np.prod(out, dtype=np.int64) * a[-1])


def _gemm_macs(node, shapes) -> int | None:
    out, a = _dims(shapes, node.output[0]), _dims(shapes, node.input[0])
    if out is None or a is None:
        return None
    trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
    k = a[0] if trans_a else a[-1]
    return int(np.prod(out, dtype=np.int64) * k)


def _recurrent_macs(gates: int):
    def macs(node, shapes) -> int | None:
        # W: [dirs, gates*hidden, input], R: [dirs, gates*hidden, hidden]; X: [seq, batch, input]
        x, w, r = (_dims(shapes, node.input[i]) for i in (0, 1, 2))
        if x is None or w is None or r is None:
            return None
        dirs, gh, inp = w
        hidden = r[2]
        return int(x[0] * dirs * gh * (inp + hidden))
    return macs


# op type -> function(node, shapes) giving MACs for batch 1 (None when shapes are unknown).
_MAC_RULES = {
    "Conv": _conv_macs, "QLinearConv": _conv_macs, "ConvInteger": _conv_macs,
    "MatMul": _matmul_macs, "MatMulInteger": _matmul_macs, "QLinearMatMul": _matmul_macs,
    "Gemm": _gemm_macs,
    "LSTM": _recurrent_macs(4), "GRU": _recurrent_macs(3), "RNN": _recurrent_macs(1),
}


def onnx_graph_stats(path: str | Path) -> dict:
    """params, macs (batch 1), sparsity computed from an ONNX file (see module docstring)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(path))
    graph = model.graph
    # Fix every graph input's first (batch) dimension to 1 so shapes become concrete.
    for inp in graph.input:
        dims = inp.type.tensor_type.shape.dim
        if len(dims):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    inferred = shape_inference.infer_shapes(model)

    initializers = {init.name: init for init in graph.initializer}
    shapes: dict[str, list[int]] = {name: list(init.dims) for name, init in initializers.items()}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]

    quant_params = set()
    for node in graph.node:
        for i in _QUANT_PARAM_INPUTS.get(node.op_type, ()):
            if i < len(node.input):
                quant_params.add(node.input[i])
    # Integer tensors that feed shape ops (Reshape targets, ...) are not weights either.
    shape_inputs = {node.input[1] for node in graph.node
                    if node.op_type in ("Reshape", "Expand", "Tile", "Slice", "Pad") and len(node.input) > 1}

    params = zeros = kernel_elems = 0
    for name, init in initializers.items():
        if name in quant_params or name in shape_inputs:
            continue
        values = numpy_helper.to_array(init)
        if values.dtype.kind not in "fiu" or values.size <= 1:
            continue
        params += int(values.size)
        if values.ndim >= 2:
            kernel_elems += int(values.size)
            zeros += int(np.count_nonzero(values == 0))

    macs, unknown = 0, []
    for node in graph.node:
        rule = _MAC_RULES.get(node.op_type)
        if rule is None:
            continue
        value = rule(node, shapes)
        if value is None:
            unknown.append(node.name or node.op_type)
        else:
            macs += value
    return {"params": params, "macs": macs if not unknown else None,
            "sparsity": zeros / kernel_elems if kernel_elems else 0.0,
            "macs_unknown_nodes": unknown, "source": "onnx graph"}


def model_facts(variant) -> dict:
    """params/macs/sparsity for a variant: the manifest's values when recorded, else the ONNX
    graph's. "source" says which."""
    recorded = {}
    for section in ("metrics", "extra"):
        for key in ("params", "macs", "sparsity"):
            value = getattr(variant.manifest, section).get(key)
            if key not in recorded and isinstance(value, (int, float)):
                recorded[key] = value
    if len(recorded) == 3:
        return {**recorded, "source": "manifest"}
    if variant.has_file("model.onnx"):
        try:
            computed = onnx_graph_stats(variant.file("model.onnx"))
        except ImportError:
            computed = {"source": "unavailable: the onnx package is not installed"}
        # Manifest values win where present; the graph fills in the rest.
        merged = {**computed, **recorded}
        if recorded:
            merged["source"] = f"manifest ({', '.join(sorted(recorded))}) + onnx graph"
        return merged
    return {"params": recorded.get("params"), "macs": recorded.get("macs"),
            "sparsity": recorded.get("sparsity"),
            "source": "manifest" if recorded else "unavailable: no model.onnx and none recorded"}


# ---------------------------------------------------------------- Keras models

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


def model_file_sizes(directory: str | Path) -> dict:
    """Raw and gzip sizes of the model files present in a variant directory, as flat metrics
    ({"onnx_bytes", "onnx_gzip_bytes", "tflite_bytes", "tflite_gzip_bytes"})."""
    out = {}
    for name in ("model.onnx", "model.tflite"):
        path = Path(directory) / name
        if path.is_file():
            stem = name.split(".")[1]
            sizes = file_sizes(path)
            out[f"{stem}_bytes"], out[f"{stem}_gzip_bytes"] = sizes["bytes"], sizes["gzip_bytes"]
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
