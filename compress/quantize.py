"""Quantization: quantization-aware training (TFMOT), post-training TFLite conversion, and
post-training ONNX Runtime quantization.

- QAT: `quantize_apply` on a clone whose supported layers are annotated; exported to an
  int8 TFLite model and, through tf2onnx, to a QDQ ONNX graph. A layer with weights that
  TFMOT's default 8-bit scheme cannot quantize (e.g. Embedding) is an error naming it,
  unless it is in skip_layers (then it stays float).
- TFLite post-training: "dynamic" (int8 weights, float activations), "int8" (full integer,
  activation ranges from a representative set of training inputs), "float16" (weights).
- ONNX post-training on the parent's float model.onnx: dynamic int8, static QDQ int8 with a
  calibration method (MinMax, Entropy, Percentile) and optional per-channel weights, and
  float16 (onnxconverter-common, keep_io_types so callers still send float32).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from compress import graph
from compress.errors import UnsupportedLayerError

TFLITE_MODES = ("dynamic", "int8", "float16")
# Layers the 8-bit registry does not list but quantize_apply's layout transforms handle:
# SeparableConv2D is split into depthwise + pointwise convs, and a BatchNormalization right
# after one of these layers is folded into it. Value: required producer classes (None: any).
HANDLED_BY_TRANSFORMS = {
    "SeparableConv2D": None,
    "BatchNormalization": ("Conv2D", "DepthwiseConv2D", "Dense"),
}
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


# ------------------------------------------------------------------ QAT (TFMOT)

def quantization_plan(model, skip_layers=()) -> dict[str, str]:
    """{layer: "int8" | "float (...)"}; raises for a layer with weights TFMOT cannot quantize."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as registry_module)

    registry = registry_module.Default8BitQuantizeRegistry()
    graph.check_selectors(model, skip_layers, "skip_layers")
    plan = {}
    for layer in model.layers:
        cls = type(layer).__name__
        if cls == "InputLayer":
            continue
        if graph.matches(layer, skip_layers):
            plan[layer.name] = "float (in skip_layers)"
        elif registry.supports(layer) or _handled_by_transforms(layer):
            plan[layer.name] = "int8"
        elif layer.weights:
            raise UnsupportedLayerError(
                f"Layer {layer.name!r} ({cls}) cannot be wrapped by TFMOT quantize_model (no "
                f"default 8-bit QuantizeConfig for {cls}); add {layer.name!r} (or {cls!r}) to "
                f"skip_layers to keep it float, or annotate it with a custom QuantizeConfig")
        else:
            plan[layer.name] = f"float ({cls} has no TFMOT quantize config; no weights)"
    return plan


def _handled_by_transforms(layer) -> bool:
    cls = type(layer).__name__
    if cls not in HANDLED_BY_TRANSFORMS:
        return False
    producers = HANDLED_BY_TRANSFORMS[cls]
    if producers is None:
        return True
    inbound = layer.inbound_nodes[0].inbound_layers if layer.inbound_nodes else []
    inbound = inbound if isinstance(inbound, list) else [inbound]
    return len(inbound) == 1 and type(inbound[0]).__name__ in producers


def qat_model(model, skip_layers=()):
    """A quantization-aware clone of `model` and its per-layer plan."""
    import tensorflow_model_optimization as tfmot

    from core.tf_setup import keras

    plan = quantization_plan(model, skip_layers)
    annotate = tfmot.quantization.keras.quantize_annotate_layer
    private_copy = keras.models.clone_model(model)
    private_copy.set_weights(model.get_weights())
    annotated = keras.models.clone_model(
        private_copy, clone_function=lambda layer: annotate(layer) if plan.get(layer.name) == "int8" else layer)
    with tfmot.quantization.keras.quantize_scope():
        return tfmot.quantization.keras.quantize_apply(annotated), plan


def qat_tflite(qat) -> bytes:
    from core.export import tflite_bytes
    from core.tf_setup import tf

    return tflite_bytes(qat, optimizations=[tf.lite.Optimize.DEFAULT])


# ------------------------------------------------------------------ TFLite post-training

def tflite_post_training(model, mode: str, calibration_x: np.ndarray) -> bytes:
    from core.export import tflite_bytes
    from core.tf_setup import tf

    if mode == "float16":
        return tflite_bytes(model, optimizations=[tf.lite.Optimize.DEFAULT],
                            supported_types=[tf.float16])
    if mode == "dynamic":
        return tflite_bytes(model, optimizations=[tf.lite.Optimize.DEFAULT])

    def representative():
        for row in calibration_x:
            yield [row[None]]

    # Integer inputs (token ids) stay int32; float inputs become int8 too (full integer).
    float_input = np.issubdtype(calibration_x.dtype, np.floating)
    return tflite_bytes(model, optimizations=[tf.lite.Optimize.DEFAULT],
                        representative_data=representative, int8_io=float_input)


# ------------------------------------------------------------------ ONNX Runtime post-training

def _calibration_reader(input_name: str, x: np.ndarray, batch: int = 16):
    """An onnxruntime CalibrationDataReader over a numpy array, `batch` rows at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    class ArrayReader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([{input_name: x[i:i + batch]} for i in range(0, len(x), batch)])

        def get_next(self):
            return next(self._batches, None)

    return ArrayReader()


def _preprocessed(src: Path, workdir: str) -> str:
    """ORT's recommended step before quantizing: shape inference and graph optimization
    (folds e.g. BatchNormalization into the convolution, so it is quantized with it)."""
    from onnxruntime.quantization import quant_pre_process

    out = str(Path(workdir) / "preprocessed.onnx")
    # Symbolic shape inference needs sympy (not a dependency); ONNX shape inference is
    # enough for these fixed-rank classifier graphs.
    quant_pre_process(str(src), out, skip_symbolic_shape=True)
    return out


def onnx_dynamic_int8(src: Path, dst: Path, per_channel: bool = False) -> None:
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as work:
        quantize_dynamic(_preprocessed(src, work), str(dst), per_channel=per_channel,
                         weight_type=QuantType.QInt8)


WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def first_layer_nodes(graph) -> list[str]:
    """Names of the nodes from the first convolution up to (not including) the next weighted
    node: the input stage `float_first_layer` keeps in float. ONNX graphs list nodes in
    topological order. NotApplicableError when the first weighted node is not a Conv: int8
    MatMuls (MLPs, text models) are fast in ONNX Runtime, so keeping one in float only costs."""
    from compress.errors import NotApplicableError

    nodes = list(graph.node)
    weighted = [i for i, n in enumerate(nodes) if n.op_type in WEIGHTED_OPS]
    if not weighted or nodes[weighted[0]].op_type != "Conv":
        first = nodes[weighted[0]].op_type if weighted else "none"
        raise NotApplicableError(
            f"float_first_layer keeps a first convolution in float; this graph's first "
            f"weighted node is {first}, whose int8 kernel is already fast")
    end = weighted[1] if len(weighted) > 1 else len(nodes)
    return [n.name for n in nodes[weighted[0]:end]]


def onnx_static_int8(src: Path, dst: Path, calibration_x: np.ndarray, method: str,
                     per_channel: bool, input_name: str,
                     float_first_layer: bool = False) -> list[str]:
    """Static QDQ int8; returns the names of the nodes kept in float (float_first_layer)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory() as work:
        prepared = _preprocessed(src, work)
        kept_float = first_layer_nodes(onnx.load(prepared).graph) if float_first_layer else []
        # uint8 activations with int8 weights (U8S8) is ORT's fast path on x86 CPUs.
        quantize_static(prepared, str(dst), _calibration_reader(input_name, calibration_x),
                        quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method], nodes_to_exclude=kept_float)
    return kept_float


def onnx_float16(src: Path, dst: Path) -> None:
    import onnx
    from onnxconverter_common import float16

    converted = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(converted, str(dst))
