"""Quantization: quantization-aware training (TFMOT), post-training TFLite conversion, and
post-training ONNX Runtime quantization.

- QAT: `quantize_apply` on a clone whose supported layers are annotated; exported to an
  int8 TFLite model and, through tf2onnx plus `qat_int8_onnx`, to a QDQ ONNX graph with int8
  weights that ONNX Runtime runs on int8 kernels. A layer with weights that
  TFMOT's default 8-bit scheme cannot quantize (e.g. Embedding) is an error naming it,
  unless it is in skip_layers (then it stays float).
- TFLite post-training: "dynamic" (int8 weights, float activations), "int8" (full integer,
  activation ranges from a representative set of training inputs), "float16" (weights).
- ONNX post-training on the parent's float model.onnx: dynamic int8, static QDQ int8 with a
  calibration method (MinMax, Entropy, Percentile) and optional per-channel weights, and
  float16 (onnxconverter-common, keep_io_types so callers still send float32).
"""
from __future__ import annotations

import collections
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


def qat_onnx(qat, dst: Path) -> dict:
    """The QAT model as an int8-compute ONNX file (tf2onnx, then `qat_int8_onnx`); returns
    the rewrite's per-node plan."""
    import tempfile

    from core.export import export_onnx

    with tempfile.TemporaryDirectory() as work:
        exported = Path(work) / "tf2onnx.onnx"
        export_onnx(qat, exported)
        return qat_int8_onnx(exported, Path(dst))


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


# ------------------------------------------------------------------ QAT ONNX as int8 compute

# Ops whose output is an exact rearrangement or selection of their input's values: a tensor
# that left a DequantizeLinear is still on that DequantizeLinear's grid after them, so a
# QuantizeLinear/DequantizeLinear pair with the same scale and zero point is lossless there.
GRID_PRESERVING_OPS = ("MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze",
                       "Identity")
# Weight input -> axis of the weight's scales (None: per tensor). TFMOT's default 8-bit scheme
# quantizes Conv2D kernels per output channel and Dense kernels per tensor (DepthwiseConv2D in
# effect too); after tf2onnx every convolution is an ONNX Conv (OIHW), whose folded
# BatchNormalization scales each output channel, so Convs get per-output-channel scales.
QAT_WEIGHT_AXIS = {"Conv": 0, "MatMul": None, "Gemm": None}
# How far a float weight may sit from its int8 grid point, in grid steps. The weights tf2onnx
# folds from TFMOT's fake quantization (times a folded BatchNormalization's per-channel factor)
# are on the grid up to float32 rounding; a weight that is not was not quantized by QAT.
ON_GRID_TOLERANCE = 1e-2
INT8_MAX = 127


def _int8_grid(weight: np.ndarray, axis: int | None):
    """(int8 values, float32 scales) with weight == values * scales (broadcast on `axis`), or
    None when some channel is on no int8 grid (a layer QAT left float: skip_layers).

    TFMOT's weight quantizers are symmetric and narrow-range (-127..127, zero point 0) with
    range max|w| (LastValueQuantizer): per output channel for Conv2D kernels, per tensor for
    Dense and, in effect, for DepthwiseConv2D kernels (its per-axis quantizer's axis is the
    size-1 depth multiplier). tf2onnx then multiplies a folded BatchNormalization's factor into
    each output channel. So each channel (or the tensor) of the exported weight is
    `scale * k` with integers |k| <= n for some n <= 127 (n = 127 for the channel holding the
    quantizer's max): the grid is found by trying n = 127, 126, ... per channel, and the
    weights are represented exactly, so the int8 graph computes what the QAT model does."""
    w = weight.astype(np.float64)
    moved = np.moveaxis(w, axis, 0) if axis is not None else w[None]
    rows = moved.reshape(len(moved), -1)
    peak = np.max(np.abs(rows), axis=1)
    levels = np.zeros(len(rows))
    levels[peak == 0] = 1.0
    for n in range(INT8_MAX, 0, -1):
        todo = np.flatnonzero(levels == 0)
        if not len(todo):
            break
        steps = rows[todo] * (n / peak[todo])[:, None]
        fits = np.max(np.abs(steps - np.round(steps)), axis=1) <= ON_GRID_TOLERANCE
        levels[todo[fits]] = n
    if np.any(levels == 0):
        return None
    scale = np.where(peak > 0, peak / levels, 1.0)
    values = np.round(rows / scale[:, None]).reshape(moved.shape)
    values = np.moveaxis(values, 0, axis) if axis is not None else values[0]
    return values.astype(np.int8), scale.astype(np.float32)


def _pads_zeros(node, inits) -> bool:
    """A constant-mode Pad with 0: 0 is on every activation grid (the zero point is an
    integer), so the padded tensor stays on its input's grid."""
    from onnx import numpy_helper

    if node.op_type != "Pad":
        return False
    mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
    if mode != b"constant":
        return False
    value = node.input[2] if len(node.input) > 2 else ""
    return not value or (value in inits and float(numpy_helper.to_array(inits[value])) == 0.0)


def _keeps_channels_1x1(reshape, inits) -> bool:
    """A Reshape to (N, C, 1, 1) of a (N, C, 1, 1) Conv output: channel i stays channel i."""
    from onnx import numpy_helper

    if len(reshape.input) < 2 or reshape.input[1] not in inits:
        return False
    shape = numpy_helper.to_array(inits[reshape.input[1]])
    return shape.ndim == 1 and len(shape) == 4 and shape[1] > 0 and tuple(shape[2:]) == (1, 1)


def _graph_index(g):
    """(initializers by name, producing node by output name, consumer count by value name,
    graph output names) of an ONNX graph as it is now."""
    inits = {i.name: i for i in g.initializer}
    producer = {out: n for n in g.node for out in n.output}
    uses = collections.Counter(name for n in g.node for name in n.input)
    graph_outputs = {o.name for o in g.output}
    return inits, producer, uses, graph_outputs


def _fold_batch_norm(g) -> list[str]:
    """Fold a BatchNormalization that is a Conv's only consumer into the Conv's weight and bias.

    tf2onnx folds most of them itself, but leaves those after 1x1-spatial convolutions (it
    writes their NHWC<->NCHW transposes as Reshapes, one of which sits between Conv and
    BatchNormalization and is kept), and a BatchNormalization between a Conv
    and its QuantizeLinear keeps ORT from fusing the Conv into an int8 kernel. The factor is
    per output channel, so the weight stays on a per-channel int8 grid. Returns the names of
    the folded nodes."""
    from onnx import numpy_helper

    inits, producer, uses, graph_outputs = _graph_index(g)
    folded, drop = [], set()
    for bn in g.node:
        if bn.op_type != "BatchNormalization":
            continue
        conv, last = producer.get(bn.input[0]), None
        if conv is not None and conv.op_type == "Reshape" and _keeps_channels_1x1(conv, inits):
            if uses.get(conv.output[0]) != 1:
                continue
            conv, last = producer.get(conv.input[0]), conv
        if (conv is None or conv.op_type != "Conv"
                or uses.get(conv.output[0]) != 1 or conv.output[0] in graph_outputs
                or not all(name in inits for name in bn.input[1:5])
                or conv.input[1] not in inits or uses.get(conv.input[1]) != 1
                or (len(conv.input) > 2 and conv.input[2]
                    and (conv.input[2] not in inits or uses.get(conv.input[2]) != 1))):
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64)
                                  for n in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        factor = gamma / np.sqrt(var + eps)
        weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        if len(factor) != weight.shape[0]:
            continue
        bias = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
                if len(conv.input) > 2 and conv.input[2] else np.zeros(len(factor)))
        weight *= factor.reshape(-1, *([1] * (weight.ndim - 1)))
        bias = (bias - mean) * factor + beta
        w_name, b_name = f"{conv.name}_weight_bn_folded", f"{conv.name}_bias_bn_folded"
        g.initializer.extend([numpy_helper.from_array(weight.astype(np.float32), w_name),
                              numpy_helper.from_array(bias.astype(np.float32), b_name)])
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
        (last or conv).output[0] = bn.output[0]
        drop.add(bn.name)
        folded.append(bn.name)
    nodes = [n for n in g.node if n.name not in drop]
    del g.node[:]
    g.node.extend(nodes)
    return folded


def _clamp_after_quantize(g) -> list[str]:
    """Relu/Clip -> QuantizeLinear becomes QuantizeLinear -> Clip on the integers.

    TFMOT's activation ranges after a ReLU start at [-6, 6] and only drift toward 0, so their
    zero point is not the integer minimum and ORT cannot drop the Relu: it sits between the
    Conv and its QuantizeLinear, and the Conv is not fused into an int8 kernel. Quantization is
    monotone, so Q(clip(y, a, b)) == clip(Q(y), Q(a), Q(b)) exactly: the rewrite changes no
    output. Returns the names of the rewritten activation nodes."""
    from onnx import helper, numpy_helper

    inits, producer, uses, graph_outputs = _graph_index(g)
    replace, drop, rewritten = {}, set(), []
    for q in g.node:
        act = producer.get(q.input[0])
        if (q.op_type != "QuantizeLinear" or act is None or act.op_type not in ("Relu", "Clip")
                or uses.get(act.output[0]) != 1 or act.output[0] in graph_outputs
                or len(q.input) < 3 or q.input[1] not in inits or q.input[2] not in inits):
            continue
        if act.op_type == "Relu":
            bounds = [0.0, None]
        else:
            # Bounds computed at run time cannot be moved onto the integers; opset < 11
            # Clips carry theirs as attributes.
            limits = list(act.input[1:3]) + [""] * (3 - len(act.input))
            if any(name and name not in inits for name in limits):
                continue
            bounds = [float(numpy_helper.to_array(inits[name])) if name else None
                      for name in limits]
            attrs = {a.name: a.f for a in act.attribute}
            bounds = [attrs.get("min", bounds[0]), attrs.get("max", bounds[1])]
        scale = float(numpy_helper.to_array(inits[q.input[1]]))
        zero = numpy_helper.to_array(inits[q.input[2]])
        info = np.iinfo(zero.dtype)

        def quantized(v, default):
            if v is None:
                return np.array(default, zero.dtype)
            step = np.round(v / scale) + int(zero)
            return np.array(np.clip(step, info.min, info.max), zero.dtype)

        lo, hi = f"{act.name}_q_min", f"{act.name}_q_max"
        g.initializer.extend([numpy_helper.from_array(quantized(bounds[0], info.min), lo),
                              numpy_helper.from_array(quantized(bounds[1], info.max), hi)])
        pre = f"{q.output[0]}_before_clamp"
        replace[q.name] = [
            helper.make_node("QuantizeLinear", [act.input[0], q.input[1], q.input[2]], [pre],
                             name=q.name),
            helper.make_node("Clip", [pre, lo, hi], [q.output[0]], name=f"{act.name}_on_integers")]
        drop.add(act.name)
        rewritten.append(act.name)
    nodes = []
    for n in g.node:
        if n.name in drop:
            continue
        nodes.extend(replace.get(n.name, [n]))
    del g.node[:]
    g.node.extend(nodes)
    return rewritten


def qat_int8_onnx(src: Path, dst: Path) -> dict:
    """Rewrite tf2onnx's export of a TFMOT QAT model into int8 compute that ONNX Runtime fuses.

    tf2onnx turns the activations' FakeQuant ops into QuantizeLinear/DequantizeLinear pairs at
    the QAT ranges but folds the weights' fake quantization into float constants. Here
    BatchNormalizations left after a Conv are folded into it, Relu/Clip -> QuantizeLinear
    becomes QuantizeLinear -> Clip on the integers, every Conv/MatMul/Gemm float weight becomes
    an int8 initializer behind a DequantizeLinear (its QAT grid, checked), a Conv bias becomes
    int32 at input scale x weight scale, and a weighted node fed from a DequantizeLinear
    through MaxPool/Reshape/Transpose/zero Pad gets that grid's QuantizeLinear/DequantizeLinear
    pair right before it (lossless). ORT's QDQ fusion then picks int8 kernels (QLinearConv,
    QGemm, MatMulIntegerToFloat). Returns what was done, per node."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    folded = _fold_batch_norm(g)
    clamped = _clamp_after_quantize(g)
    inits, producer, _, _ = _graph_index(g)
    new_nodes, new_inits, plan = [], [], {}

    def input_grid(name: str):
        """(scale, zero point) initializer names of the DequantizeLinear `name` comes from."""
        node = producer.get(name)
        while node is not None and (node.op_type in GRID_PRESERVING_OPS
                                    or _pads_zeros(node, inits)):
            node = producer.get(node.input[0])
        if node is None or node.op_type != "DequantizeLinear":
            return None
        scale = inits.get(node.input[1])
        if scale is None or numpy_helper.to_array(scale).size != 1 or len(node.input) < 3:
            return None
        return node.input[1], node.input[2], node is producer.get(name)

    def dequantized(name: str, values: np.ndarray, scale: np.ndarray, axis, node_name: str):
        q, s, z = f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"
        zero = np.zeros(scale.shape, values.dtype)
        if axis is None:
            scale, zero = scale.reshape(()), zero.reshape(())
        new_inits.extend([numpy_helper.from_array(values, q), numpy_helper.from_array(scale, s),
                          numpy_helper.from_array(zero, z)])
        attrs = {"axis": axis} if axis is not None else {}
        out = f"{name}_dequantized"
        new_nodes.append((node_name, helper.make_node("DequantizeLinear", [q, s, z], [out],
                                                      name=f"{name}_DequantizeLinear", **attrs)))
        return out

    for node in g.node:
        if node.op_type not in QAT_WEIGHT_AXIS or len(node.input) < 2:
            continue
        weight_name = node.input[1]
        init = inits.get(weight_name)
        if init is None or init.data_type != onnx.TensorProto.FLOAT:
            plan[node.name] = "float (weight is not a float initializer)"
            continue
        axis = QAT_WEIGHT_AXIS[node.op_type]
        grid = _int8_grid(numpy_helper.to_array(init), axis)
        if grid is None:
            plan[node.name] = {"op": node.op_type,
                               "weight": "float (on no int8 grid: not quantized by QAT)"}
            continue
        values, scale = grid
        node.input[1] = dequantized(f"{node.name}_weight", values, scale, axis, node.name)
        grid = input_grid(node.input[0])
        entry = {"op": node.op_type,
                 "weight": f"int8 {'per channel' if axis is not None else 'per tensor'}"}
        if grid is not None:
            x_scale, x_zero, direct = grid
            if not direct:
                # Same scale and zero point as the upstream DequantizeLinear: exact.
                q_out, dq_out = f"{node.name}_input_q", f"{node.name}_input_dq"
                new_nodes.append((node.name, helper.make_node(
                    "QuantizeLinear", [node.input[0], x_scale, x_zero], [q_out],
                    name=f"{node.name}_input_QuantizeLinear")))
                new_nodes.append((node.name, helper.make_node(
                    "DequantizeLinear", [q_out, x_scale, x_zero], [dq_out],
                    name=f"{node.name}_input_DequantizeLinear")))
                node.input[0] = dq_out
                entry["input"] = "QDQ at the upstream grid inserted"
            has_bias = node.op_type == "Conv" and len(node.input) > 2
            bias = inits.get(node.input[2]) if has_bias else None
            if bias is not None and bias.data_type == onnx.TensorProto.FLOAT:
                s_x = float(numpy_helper.to_array(inits[x_scale]))
                b_scale = (s_x * scale).astype(np.float32)
                b = numpy_helper.to_array(bias).astype(np.float64) / b_scale
                node.input[2] = dequantized(f"{node.name}_bias", np.round(b).astype(np.int32),
                                            b_scale, 0, node.name)
                entry["bias"] = "int32"
        else:
            entry["input"] = "float (not on a quantization grid)"
        plan[node.name] = entry

    # Insert each new node right before the node it feeds: the graph stays topologically sorted.
    before: dict[str, list] = {}
    for target, n in new_nodes:
        before.setdefault(target, []).append(n)
    ordered = []
    for n in g.node:
        ordered.extend(before.get(n.name, []))
        ordered.append(n)
    del g.node[:]
    g.node.extend(ordered)
    # The float weights, biases and folded BatchNormalization parameters are no longer read.
    used = {name for n in g.node for name in n.input} | {o.name for o in g.output}
    kept = [i for i in list(g.initializer) + new_inits if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return {"nodes": plan, "batch_norms_folded": folded,
            "activations_clamped_as_integers": clamped}
