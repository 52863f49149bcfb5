"""QAT's ONNX export is int8 compute (compress.quantize.qat_onnx / qat_int8_onnx).

A zoo model is made quantization-aware, fine-tuned briefly on the bundled sample, exported,
and the graph is inspected (int8 weight initializers behind DequantizeLinear, int32 Conv
biases, no float weight quantized at run time), ONNX Runtime's optimized graph is checked for
int8 kernels, and the top-1 class is compared with the QAT Keras model on the bundled test
inputs (the compress parity bar, core.export.QUANT_TOP1_AGREEMENT).
"""
from __future__ import annotations

import numpy as np
import pytest

from core import data as datasets
from core.export import QUANT_TOP1_AGREEMENT, compare, run_onnx
from core.preprocessing import ImagePreprocessor
from core.tasks import get_task


def _qat_export(model_name, task, tmp_path, resolution=None, train=512, epochs=1):
    """(QAT Keras model, path of its int8 ONNX, the rewrite's plan, test inputs)."""
    from compress import quantize
    from compress.pipeline import seed_tensorflow
    from core.tf_setup import keras
    from trainer.models.registry import ModelInputs, ModelOptions, create_model, get_model

    spec = get_task(task)
    pre = ImagePreprocessor()
    train_split = datasets.load(spec.dataset, "train")
    x_train, y_train = pre(train_split.x[:train]), train_split.y[:train]
    x_test = pre(datasets.load(spec.dataset, "test").x)
    # Deterministic as the pipeline's steps are: op determinism is process-wide once a pipeline
    # has run, so the model must not depend on test order.
    seed_tensorflow(1)
    defaults = get_model(model_name).defaults
    options = ModelOptions(width=defaults.get("width", 1.0),
                           normalization=defaults.get("normalization", "none"),
                           resolution=resolution)
    model = create_model(model_name, ModelInputs(x_train.shape[1:], len(spec.labels)), options)
    qat, _ = quantize.qat_model(model)
    qat.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    qat.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    path = tmp_path / "model.onnx"
    plan = quantize.qat_onnx(qat, path)
    return qat, path, plan, x_test


def _assert_int8_graph(path):
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    made_by = {out: n for n in graph.node for out in n.output}
    weighted = [n for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    assert weighted
    for node in weighted:
        dq = made_by.get(node.input[1])
        assert dq is not None and dq.op_type == "DequantizeLinear", node.name
        assert inits[dq.input[0]].data_type == onnx.TensorProto.INT8, node.name
        if node.op_type == "Conv" and len(node.input) > 2 and node.input[2]:
            bias_dq = made_by.get(node.input[2])
            if bias_dq is not None:
                assert inits[bias_dq.input[0]].data_type == onnx.TensorProto.INT32, node.name
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in inits:
            assert inits[node.input[0]].data_type != onnx.TensorProto.FLOAT, node.name
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            values = numpy_helper.to_array(inits[node.input[0]])
            assert values.dtype in (np.int8, np.uint8, np.int32), node.name


def _optimized_ops(path, tmp_path) -> list[str]:
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


def _assert_fused(plan, ops):
    """Every convolution whose input is quantized runs on an int8 kernel in ORT; only those
    the plan reports with a float input (e.g. after a Resize) stay float convolutions."""
    float_input = [k for k, v in plan["nodes"].items()
                   if v.get("op") == "Conv" and v.get("input", "").startswith("float")]
    assert sum(op in ("Conv", "FusedConv", "NchwcConv") for op in ops) == len(float_input)
    convs = sum(v.get("op") == "Conv" for v in plan["nodes"].values())
    assert ops.count("QLinearConv") == convs - len(float_input)


def _agreement(qat, path, x) -> float:
    reference = np.concatenate([qat(x[i:i + 256], training=False).numpy()
                                for i in range(0, len(x), 256)])
    return compare(reference, run_onnx(path, x), "onnxruntime", quantized=True).top1_agreement


def _save(graph, path):
    import onnx
    from onnx import helper

    # IR version 8: what tf2onnx writes at opset 17 and this onnxruntime reads.
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), path)


@pytest.mark.slow
def test_fashion_cnn_qat_onnx_is_int8_compute_with_parity(tmp_path):
    qat, path, plan, x_test = _qat_export("fashion_cnn", "fashion_mnist", tmp_path)
    _assert_int8_graph(path)
    convs = [v for v in plan["nodes"].values() if v["op"] == "Conv"]
    assert convs and all(v.get("bias") == "int32" for v in convs)
    ops = _optimized_ops(path, tmp_path)
    _assert_fused(plan, ops)
    assert "QLinearConv" in ops and set(ops) & {"QGemm", "MatMulIntegerToFloat", "QLinearMatMul"}
    assert _agreement(qat, path, x_test) >= QUANT_TOP1_AGREEMENT


@pytest.mark.slow
def test_mobilenet_v2_qat_onnx_is_int8_compute_with_parity(tmp_path):
    qat, path, plan, x_test = _qat_export("mobilenet_v2", "sign_mnist", tmp_path, resolution=32)
    _assert_int8_graph(path)
    # The BatchNormalizations tf2onnx leaves after the 1x1-spatial convolutions are folded.
    assert plan["batch_norms_folded"]
    _assert_fused(plan, _optimized_ops(path, tmp_path))
    assert _agreement(qat, path, x_test) >= QUANT_TOP1_AGREEMENT


def test_relu_before_quantize_moves_onto_the_integers_exactly(tmp_path):
    """Q(relu(y)) == clip(Q(y), zero point): the rewrite that lets Conv fuse changes nothing."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from compress import quantize

    rng = np.random.default_rng(0)
    weight = (rng.integers(-127, 128, (4, 3, 3, 3)) * 0.01).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w"),
             numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b"),
             numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
             numpy_helper.from_array(np.array(128, np.uint8), "xz"),
             numpy_helper.from_array(np.array(0.05, np.float32), "ys"),
             numpy_helper.from_array(np.array(120, np.uint8), "yz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("MaxPool", ["xd"], ["xp"], kernel_shape=[2, 2]),
             helper.make_node("Conv", ["xp", "w", "b"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("QuantizeLinear", ["r", "ys", "yz"], ["rq"], name="q"),
             helper.make_node("DequantizeLinear", ["rq", "ys", "yz"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 6, 6])], inits)
    src, dst = tmp_path / "src.onnx", tmp_path / "dst.onnx"
    _save(graph, src)
    plan = quantize.qat_int8_onnx(src, dst)
    assert plan["activations_clamped_as_integers"] == ["relu"]
    assert plan["nodes"]["conv"] == {"op": "Conv", "weight": "int8 per channel", "bias": "int32",
                                     "input": "QDQ at the upstream grid inserted"}
    x = rng.normal(scale=2.0, size=(2, 3, 9, 9)).astype(np.float32)
    level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    run = {p: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
           .run(None, {"x": x})[0] for p in (src, dst)}
    # Only the int32 bias rounding (under half a step of input scale x weight scale) may move
    # an output, by at most one output step.
    assert np.max(np.abs(run[src] - run[dst])) <= 0.05 + 1e-6
    assert np.mean(run[src] == run[dst]) > 0.95


def test_weight_on_no_int8_grid_stays_float(tmp_path):
    """A layer QAT did not quantize (skip_layers) keeps its float weight and float input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compress import quantize

    weight = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="dense")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(weight, "w")])
    src, dst = tmp_path / "src.onnx", tmp_path / "dst.onnx"
    _save(graph, src)
    plan = quantize.qat_int8_onnx(src, dst)
    assert plan["nodes"]["dense"]["weight"].startswith("float (on no int8 grid")
    out = onnx.load(str(dst)).graph
    assert [n.op_type for n in out.node] == ["MatMul"]
    np.testing.assert_array_equal(numpy_helper.to_array(out.initializer[0]), weight)
