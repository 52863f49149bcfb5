"""compress end to end for fc_to_conv1x1, bottleneck, conv low rank and distill on the bundled
Fashion-MNIST sample: each makes a variant whose ONNX/TFLite exports passed the pipeline's
parity checks, with the MACs it claims, and distillation's lineage names its teacher. One tiny
CNN, one-epoch fine-tunes on 500 images."""
from __future__ import annotations

import pytest

from compress import pipeline
from compress.recipe import parse_recipe
from core import artifacts
from tests.test_compress_pipeline import MODEL, TASK, write_tiny_cnn

tfs = pytest.importorskip("core.tf_setup")
keras = tfs.keras
RECIPE = {
    "epochs": 1, "train_limit": 500, "test_limit": 200, "parity_size": 100,
    "calibration_size": 32,
    "steps": [
        {"id": "fc", "technique": "fc_to_conv1x1"},
        {"technique": "bottleneck", "params": {"rank": 4}},
        {"technique": "lowrank", "params": {"rank": 4, "layer_classes": ["Conv2D"],
                                            "skip_layers": ["conv_a"]}},
        {"technique": "distill", "params": {"student": "fashion_mlp", "batch_size": 32}},
        {"technique": "distill", "from": "fc", "params": {"teacher": MODEL, "temperature": 2}},
    ],
}
# variant -> (parent, technique, teacher recorded in the lineage)
EXPECTED = {
    "tiny_cnn-fc-to-conv": (MODEL, "fc_to_conv1x1", None),
    "tiny_cnn-bottleneck-k4": (MODEL, "bottleneck", MODEL),
    "tiny_cnn-lowrank-k4-conv2d": (MODEL, "lowrank", MODEL),
    "tiny_cnn-distill-fashion_mlp-t4": (MODEL, "distill", MODEL),
    "tiny_cnn-fc-to-conv-distill-from-tiny_cnn-t2": ("tiny_cnn-fc-to-conv", "distill", MODEL),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    write_tiny_cnn(root, seed=lambda: keras.utils.set_random_seed(0), train_size=500, epochs=3,
                   parity_size=100)
    return root


@pytest.fixture(scope="module")
def rows(root):
    rows = pipeline.run_model(root, TASK, MODEL, parse_recipe(RECIPE, "test recipe"))
    return {r["variant"]: r for r in rows}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_new_technique_makes_a_parity_checked_variant(root, rows, name):
    parent, technique, teacher = EXPECTED[name]
    assert rows[name]["status"] == "ok", rows[name]
    variant = artifacts.find_variant(root, TASK, name)
    lineage = variant.lineage
    assert (lineage.parent, lineage.technique, lineage.teacher) == (parent, technique, teacher)
    assert {"model.keras", "model.onnx", "model.tflite"} <= set(variant.files)
    parity = variant.extra["parity"]
    assert {report["runtime"] for report in parity} == {"onnxruntime", "litert"}, parity
    assert all(report["ok"] and not report["quantized"] for report in parity)
    assert variant.metrics["latency_p50_ms"] > 0


def test_fc_to_conv_is_exact_and_bottleneck_and_conv_low_rank_cut_macs(rows):
    base = rows[MODEL]
    fc = rows["tiny_cnn-fc-to-conv"]
    assert fc["macs"] == base["macs"] and fc["params"] == base["params"]
    assert fc["test_accuracy"] == pytest.approx(base["test_accuracy"], abs=1 / 200)  # no fine-tune: same model
    for name in ("tiny_cnn-bottleneck-k4", "tiny_cnn-lowrank-k4-conv2d"):
        assert rows[name]["macs"] < base["macs"], name
