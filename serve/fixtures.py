"""Small real ONNX classifiers built with `onnx.helper`, written as artifact variants.

For tests and load benchmarks of the server where no trained artifacts exist yet: the models
have random weights (their answers mean nothing) but the same inputs, outputs, manifests and
preprocessing as trained variants, and they build in milliseconds without TensorFlow.

    python -m serve.fixtures --artifacts /tmp/fixture-artifacts [--image-model cnn]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from core.artifacts import create_variant, select_variant
from core.preprocessing import ImagePreprocessor, TextTokenizer
from core.tasks import get_task

OPSET = 17
IMAGE_SHAPE = [None, 28, 28, 1]
SAMPLE_REVIEWS = (
    "A wonderful film with great acting and a moving story, I loved it.",
    "Dull, slow and far too long; the worst movie I have seen this year.",
    "The plot was predictable but the music and the cast were excellent.",
    "Terrible script, bad jokes, I want my money back.",
)


def _graph_model(nodes, inputs, outputs, initializers) -> bytes:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "fixture", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="serve.fixtures")
    model.ir_version = 8  # readable by every ONNX Runtime this toolkit supports
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _init(name: str, array: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def image_mlp_onnx(num_classes: int, hidden: int = 64, seed: int = 0,
                   shape: tuple[int, int, int] = (28, 28, 1)) -> bytes:
    """float32 (N,H,W,C) (default 28x28x1) -> Flatten -> Dense(hidden, relu) -> Dense(C, softmax)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits = [_init("w1", rng.normal(0, 0.1, (int(np.prod(shape)), hidden)).astype(np.float32)),
             _init("b1", np.zeros(hidden, np.float32)),
             _init("w2", rng.normal(0, 0.3, (hidden, num_classes)).astype(np.float32)),
             _init("b2", np.zeros(num_classes, np.float32))]
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w1", "b1"], ["h"]),
             helper.make_node("Relu", ["h"], ["hr"]),
             helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    return _graph_model(
        nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", num_classes])], inits)


def image_cnn_onnx(num_classes: int, channels: tuple[int, int] = (32, 64), seed: int = 0) -> bytes:
    """float32 (N,28,28,1) -> 2 x [Conv3x3, ReLU, MaxPool2] -> Dense(C, softmax): a CNN whose
    per-image cost (~a few MFLOPs) is big enough that batching matters."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    c1, c2 = channels
    inits = [_init("k1", rng.normal(0, 0.3, (c1, 1, 3, 3)).astype(np.float32)),
             _init("kb1", np.zeros(c1, np.float32)),
             _init("k2", rng.normal(0, 0.1, (c2, c1, 3, 3)).astype(np.float32)),
             _init("kb2", np.zeros(c2, np.float32)),
             _init("w", rng.normal(0, 0.05, (c2 * 7 * 7, num_classes)).astype(np.float32)),
             _init("b", np.zeros(num_classes, np.float32))]
    nodes = [helper.make_node("Transpose", ["input"], ["x"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["x", "k1", "kb1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "k2", "kb2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p2"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    return _graph_model(
        nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 28, 28, 1])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", num_classes])], inits)


# (output channels, stride) of each depthwise-separable block of the MobileNet-like fixture.
MOBILENET_BLOCKS = ((16, 1), (24, 2), (24, 1), (32, 2), (32, 1), (32, 1), (64, 2), (64, 1),
                    (64, 1), (96, 1), (96, 1), (128, 1))


def image_mobilenet_onnx(num_classes: int, blocks=MOBILENET_BLOCKS, seed: int = 0) -> bytes:
    """float32 (N,28,28,1) -> Conv3x3 -> 12 depthwise-separable blocks (ReLU6) -> global
    average pool -> Dense(C, softmax): MobileNet's shape, ~40 small ops whose fixed per-call
    cost dominates at batch 1, which is where batching pays."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], [helper.make_node("Transpose", ["input"], ["x0"], perm=[0, 3, 1, 2])]
    inits.append(_init("relu6_min", np.array(0.0, np.float32)))
    inits.append(_init("relu6_max", np.array(6.0, np.float32)))

    def conv(x, out, c_in, c_out, k, stride, group, name):
        inits.append(_init(f"{name}_w", rng.normal(0, (2.0 / (k * k * c_in / group)) ** 0.5,
                                                   (c_out, c_in // group, k, k)).astype(np.float32)))
        inits.append(_init(f"{name}_b", np.zeros(c_out, np.float32)))
        pad = k // 2
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_c"],
                                      pads=[pad] * 4, strides=[stride] * 2, group=group))
        nodes.append(helper.make_node("Clip", [f"{name}_c", "relu6_min", "relu6_max"], [out]))

    c = 16
    conv("x0", "s0", 1, c, 3, 1, 1, "stem")
    x = "s0"
    for i, (c_out, stride) in enumerate(blocks):
        conv(x, f"dw{i}", c, c, 3, stride, c, f"b{i}dw")
        conv(f"dw{i}", f"pw{i}", c, c_out, 1, 1, 1, f"b{i}pw")
        x, c = f"pw{i}", c_out
    inits += [_init("w", rng.normal(0, 0.1, (c, num_classes)).astype(np.float32)),
              _init("b", np.zeros(num_classes, np.float32))]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
              helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    return _graph_model(
        nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 28, 28, 1])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", num_classes])], inits)


def text_onnx(vocab_size: int, max_length: int, dim: int = 16, seed: int = 0) -> bytes:
    """int32 (N, L) token ids -> Embedding -> mean over words -> Dense(1, sigmoid)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits = [_init("embedding", rng.normal(0, 1.0, (vocab_size, dim)).astype(np.float32)),
             _init("w", rng.normal(0, 1.0, (dim, 1)).astype(np.float32)),
             _init("b", np.zeros(1, np.float32))]
    nodes = [helper.make_node("Gather", ["embedding", "input"], ["emb"], axis=0),
             helper.make_node("ReduceMean", ["emb"], ["mean"], axes=[1], keepdims=0),
             helper.make_node("Gemm", ["mean", "w", "b"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["prob"])]
    return _graph_model(
        nodes, [helper.make_tensor_value_info("input", TensorProto.INT32, ["N", max_length])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1])], inits)


IMAGE_BUILDERS = {"mlp": image_mlp_onnx, "cnn": image_cnn_onnx, "mobilenet": image_mobilenet_onnx}


def write_image_variant(root: Path, task: str, image_model: str = "mlp", seed: int = 0,
                        name: str | None = None, select: bool = True) -> str:
    """A variant `name` (default fixture_<image_model>), selected unless `select` is false (a
    second version to serve beside the selected one, or to switch the selection to)."""
    labels = list(get_task(task).labels)
    build = IMAGE_BUILDERS[image_model]
    name = name or f"fixture_{image_model}"
    with create_variant(root, task=task, model=name, variant=name,
                        lineage={"parent": None, "technique": "fixture",
                                 "params": {"builder": build.__name__, "seed": seed}},
                        input={"name": "input", "shape": IMAGE_SHAPE, "dtype": "float32"},
                        output={"name": "probs", "activation": "softmax"},
                        preprocessing=ImagePreprocessor().to_config(), labels=labels,
                        metrics={"data_source": "none (random weights)"}) as v:
        v.path("model.onnx").write_bytes(build(len(labels), seed=seed))
    if select:
        select_variant(root, task, name, reason={"why": "test fixture"})
    return name


def write_text_variant(root: Path, task: str = "imdb", max_length: int = 64, seed: int = 0) -> str:
    tokenizer = TextTokenizer.fit(SAMPLE_REVIEWS, vocab_size=100, max_length=max_length)
    name = "fixture_text"
    with create_variant(root, task=task, model=name, variant=name,
                        lineage={"parent": None, "technique": "fixture",
                                 "params": {"builder": "text_onnx", "seed": seed}},
                        input={"name": "input", "shape": [None, max_length], "dtype": "int32"},
                        output={"name": "prob", "activation": "sigmoid"},
                        preprocessing=tokenizer.to_config(), labels=list(get_task(task).labels),
                        metrics={"data_source": "none (random weights)"}) as v:
        tokenizer.save_vocabulary(v.dir)
        v.path("model.onnx").write_bytes(text_onnx(tokenizer.vocab_size, max_length, seed=seed))
    select_variant(root, task, name, reason={"why": "test fixture"})
    return name


# A user's task (as `python -m trainer import` records one): non-square colour images.
USER_TASK, USER_SHAPE, USER_LABELS = "photos", (20, 24, 3), ("cat", "dog", "bird")


def write_user_task(root: Path, seed: int = 2) -> str:
    """An imported-style task `photos` (20x24 RGB, 3 classes): its task record, a small image
    folder of real PNG files as its dataset (beside the artifact root), and a selected variant."""
    from PIL import Image

    from core.tasks import TaskSpec
    from core.userdata import DataSource, write_task

    data = root.parent / f"{root.name}-{USER_TASK}"
    rng = np.random.default_rng(seed)
    for label in USER_LABELS:
        (data / label).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                data / label / f"{i}.png")
    source = DataSource(str(data), "image_folder", image=USER_SHAPE)
    write_task(root, TaskSpec(USER_TASK, USER_TASK, "image", USER_LABELS, "serve fixture",
                              served=True, source=source.to_dict()))
    name = "fixture_photos"
    h, w, c = USER_SHAPE
    with create_variant(root, task=USER_TASK, model=name, variant=name,
                        lineage={"parent": None, "technique": "import",
                                 "params": {"builder": "image_mlp_onnx", "seed": seed}},
                        input={"name": "input", "shape": [None, *USER_SHAPE], "dtype": "float32"},
                        output={"name": "probs", "activation": "softmax"},
                        preprocessing=ImagePreprocessor("symmetric", height=h, width=w,
                                                        channels=c).to_config(),
                        labels=list(USER_LABELS),
                        metrics={"data_source": "none (random weights)"}) as v:
        v.path("model.onnx").write_bytes(image_mlp_onnx(len(USER_LABELS), seed=seed,
                                                        shape=USER_SHAPE))
    select_variant(root, USER_TASK, name, reason={"why": "test fixture"})
    return name


def write_fixture_artifacts(root: str | Path, image_model: str = "mlp",
                            sign_model: str | None = None, user_task: bool = False) -> Path:
    """Selected fixture variants for fashion_mnist, sign_mnist and imdb under `root`, and with
    `user_task` an imported-style task of colour images (`write_user_task`)."""
    root = Path(root)
    write_image_variant(root, "fashion_mnist", image_model)
    write_image_variant(root, "sign_mnist", sign_model or image_model, seed=1)
    write_text_variant(root)
    if user_task:
        write_user_task(root)
    return root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serve.fixtures", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--image-model", choices=sorted(IMAGE_BUILDERS), default="mlp")
    parser.add_argument("--sign-model", choices=sorted(IMAGE_BUILDERS), default=None,
                        help="model for sign_mnist (default: --image-model)")
    args = parser.parse_args(argv)
    print(write_fixture_artifacts(args.artifacts, args.image_model, args.sign_model))


if __name__ == "__main__":
    main()
