"""compress end to end on the bundled Fashion-MNIST sample: every technique makes a loadable
variant with its lineage, pruning reaches the asked sparsity, a failed step leaves nothing
behind, and the selection is recorded for `serve`. One tiny CNN, short fine-tunes (~60 s)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from compress import pipeline
from compress.recipe import parse_recipe
from core import artifacts, data
from core.preprocessing import ImagePreprocessor
from core.tasks import get_task

tfs = pytest.importorskip("core.tf_setup")
keras = tfs.keras
L = keras.layers

TASK, MODEL = "fashion_mnist", "tiny_cnn"
SEED = 1
RECIPE = {
    "epochs": 1, "train_limit": 1000, "test_limit": 300, "parity_size": 300,
    "calibration_size": 64, "export_saved_model": True,
    "steps": [
        {"id": "pruned", "technique": "prune", "params": {"sparsity": 0.6, "schedule": "constant",
                                                            "min_layer_weights": 0}},
        {"technique": "prune", "params": {"m_by_n": [2, 4]}},
        {"id": "narrow", "technique": "channels", "params": {"ratio": 0.5, "round_to": 1}},
        {"technique": "separable", "params": {"skip_layers": ["conv_a"]}},
        {"technique": "lowrank", "params": {"rank": 4, "skip_layers": ["head"]}},
        {"technique": "qat"},
        {"technique": "tflite", "params": {"mode": "dynamic"}},
        {"technique": "onnx_static", "params": {"calibration": "percentile"}},
        {"technique": "onnx_static", "params": {"float_first_layer": True}},
        {"technique": "onnx_dynamic"},
        {"technique": "onnx_fp16", "from": "narrow"},
        # Impossible on purpose: every layer skipped, so TFMOT has nothing it may prune.
        {"id": "nothing", "technique": "prune", "params": {"skip_layers": ["Conv2D", "Dense"]}},
    ],
}


def write_tiny_cnn(root, *, seed, train_size: int, epochs: int, parity_size: int) -> None:
    """The tiny trained CNN both compress pipeline test files start from, written as variant
    MODEL of TASK under `root` the way `trainer` writes one. `seed()` seeds TensorFlow right
    before the weights are drawn; each file keeps its own seeding, data and epochs, so that
    its model (and the parity margins its tests rely on) stays what it was."""
    from core.export import export_float

    pre = ImagePreprocessor()
    train = data.load(TASK, "train").subset(train_size)
    seed()
    model = keras.Sequential([
        L.Input((28, 28, 1)), L.Conv2D(8, 3, activation="relu", name="conv_a"), L.MaxPooling2D(),
        L.Conv2D(16, 3, activation="relu", name="conv_b"), L.MaxPooling2D(), L.Flatten(),
        L.Dense(32, activation="relu", name="hidden"), L.Dense(10, activation="softmax", name="head"),
    ], name=MODEL)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(pre(train.x), train.y, epochs=epochs, batch_size=32, verbose=0)
    test = pre(data.load(TASK, "test").x[:parity_size])
    with artifacts.create_variant(
            root, task=TASK, model=MODEL, variant=MODEL,
            lineage={"parent": None, "technique": "train", "params": {}},
            input={"name": "input", "shape": [None, 28, 28, 1], "dtype": "float32"},
            output={"name": "output", "activation": "softmax"}, preprocessing=pre.to_config(),
            labels=list(get_task(TASK).labels), metrics={"test_accuracy": 0.0}) as v:
        model.save(v.path("model.keras"))
        export_float(model, v.dir, test, tflite=False)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A trained base variant written the way `trainer` writes one."""
    root = tmp_path_factory.mktemp("artifacts")
    # Trained deterministically, as the pipeline's own steps are (seed_tensorflow): TensorFlow's
    # op determinism is process-wide once on, so the model must not depend on whether a
    # pipeline ran earlier in this test session. Trained enough to be confident (8 epochs on
    # 1,000 images): int8 parity (top-1 agreement) is checked on its outputs.
    write_tiny_cnn(root, seed=lambda: pipeline.seed_tensorflow(SEED), train_size=1000, epochs=8,
                   parity_size=200)
    return root


@pytest.fixture(scope="module")
def rows(root):
    recipe = parse_recipe(RECIPE, "test recipe")
    rows = pipeline.run_model(root, TASK, MODEL, recipe)
    report = pipeline.update_report(root, TASK, MODEL, rows, rows[0]["data_source"])
    pipeline.finish_task(root, TASK, report, recipe.accuracy_budget_points, log=lambda *a: None)
    return {r["variant"]: r for r in rows}


EXPECTED = {  # variant -> (parent, technique, files it must carry)
    "tiny_cnn-prune-s0.6-const": ("tiny_cnn", "prune", {"model.keras", "model.onnx", "model.tflite"}),
    "tiny_cnn-prune-2of4": ("tiny_cnn", "prune", {"model.keras", "model.onnx"}),
    "tiny_cnn-channels-0.5": ("tiny_cnn", "channels", {"model.keras", "model.onnx",
                                                       "saved_model/saved_model.pb"}),
    "tiny_cnn-separable": ("tiny_cnn", "separable", {"model.keras", "model.onnx"}),
    "tiny_cnn-lowrank-k4": ("tiny_cnn", "lowrank", {"model.keras", "model.onnx"}),
    "tiny_cnn-qat-int8": ("tiny_cnn", "qat", {"model.onnx", "model.tflite"}),
    "tiny_cnn-tflite-dynamic": ("tiny_cnn", "tflite", {"model.tflite"}),
    "tiny_cnn-onnx-qdq-int8-percentile-pc": ("tiny_cnn", "onnx_static", {"model.onnx"}),
    "tiny_cnn-onnx-dyn-int8-pc": ("tiny_cnn", "onnx_dynamic", {"model.onnx"}),
    "tiny_cnn-onnx-qdq-int8-minmax-pc-float-first": ("tiny_cnn", "onnx_static", {"model.onnx"}),
    "tiny_cnn-channels-0.5-onnx-fp16": ("tiny_cnn-channels-0.5", "onnx_fp16", {"model.onnx"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_technique_makes_a_loadable_variant_with_lineage(root, rows, name):
    parent, technique, files = EXPECTED[name]
    variant = artifacts.find_variant(root, TASK, name)  # verifies every checksum
    assert variant.lineage.parent == parent and variant.lineage.technique == technique
    assert "plan" in variant.lineage.params
    assert files <= set(variant.files)
    m = variant.metrics
    assert 0.0 <= m["test_accuracy"] <= 1.0 and m["latency_p50_ms"] > 0
    assert all(report["ok"] for report in variant.extra["parity"])
    assert rows[name]["status"] == "ok"


@pytest.mark.slow
def test_magnitude_pruning_reaches_the_asked_sparsity(root, rows):
    pruned = artifacts.find_variant(root, TASK, "tiny_cnn-prune-s0.6-const")
    per_layer = pruned.extra["profile"]["sparsity_per_layer"]
    for layer in ("conv_a", "conv_b", "hidden", "head"):
        assert per_layer[layer] == pytest.approx(0.6, abs=0.02), layer
    two_of_four = artifacts.find_variant(root, TASK, "tiny_cnn-prune-2of4")
    dense = keras.models.load_model(two_of_four.file("model.keras")).get_layer("hidden")
    # The 2:4 pattern: of every 4 consecutive input weights of a unit, at most 2 are nonzero.
    groups = dense.get_weights()[0].T.reshape(32, -1, 4)
    assert ((groups != 0).sum(axis=-1) <= 2).all()


@pytest.mark.slow
def test_structural_variants_are_smaller(rows):
    base = rows["tiny_cnn"]
    assert rows["tiny_cnn-channels-0.5"]["params"] < base["params"]
    assert rows["tiny_cnn-channels-0.5"]["macs"] < base["macs"]
    assert rows["tiny_cnn-separable"]["macs"] < base["macs"]
    assert rows["tiny_cnn-lowrank-k4"]["params"] < base["params"]
    assert rows["tiny_cnn-onnx-dyn-int8-pc"]["onnx_bytes"] < base["onnx_bytes"] / 2


@pytest.mark.slow
def test_int8_with_a_float_first_layer_records_the_settings_it_runs_with(root, rows):
    import onnx

    from core.runtime import variant_session

    variant = artifacts.find_variant(root, TASK, "tiny_cnn-onnx-qdq-int8-minmax-pc-float-first")
    assert variant.onnxruntime_options == {"disabled_optimizers": ["QDQPropagationTransformer"]}
    kept = variant.lineage.params["plan"]["float_nodes"]
    assert "conv_a" in kept[0] and any("MaxPool" in name for name in kept)
    graph = onnx.load(variant.file("model.onnx")).graph
    weights = {i.name for i in graph.initializer}
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    first, second = [n for n in graph.node if n.op_type == "Conv"]
    assert first.input[1] in weights                           # float weights
    assert made_by[second.input[1]] == "DequantizeLinear"      # int8 weights
    # The session every consumer opens gives the accuracy compress measured.
    test = data.load(TASK, "test").subset(RECIPE["test_limit"])  # what compress measured on
    session = variant_session(variant, providers=("cpu",))
    predicted = session.run(None, {"input": ImagePreprocessor()(test.x)})[0].argmax(axis=1)
    assert np.mean(predicted == test.y) == pytest.approx(variant.metrics["test_accuracy"])


@pytest.mark.slow
def test_qat_onnx_has_int8_weights_and_keeps_its_accuracy(root, rows):
    import onnx

    from core.runtime import variant_session

    variant = artifacts.find_variant(root, TASK, "tiny_cnn-qat-int8")
    # Layers QAT left float must stay float in ORT.
    assert variant.onnxruntime_options == {"disabled_optimizers": ["WeightBiasQuantization"]}
    graph = onnx.load(variant.file("model.onnx")).graph
    made_by = {out: n.op_type for n in graph.node for out in n.output}
    assert all(made_by.get(n.input[1]) == "DequantizeLinear"
               for n in graph.node if n.op_type == "Conv")
    test = data.load(TASK, "test").subset(RECIPE["test_limit"])
    session = variant_session(variant, providers=("cpu",))
    predicted = session.run(None, {"input": ImagePreprocessor()(test.x)})[0].argmax(axis=1)
    assert np.mean(predicted == test.y) == pytest.approx(variant.metrics["test_accuracy"])


@pytest.mark.slow
def test_failed_step_leaves_no_partial_artifact(root, rows):
    assert rows["nothing"]["status"].startswith("not applicable")
    task_dir = root / TASK
    assert not [p for p in task_dir.iterdir() if p.name.startswith(".")]
    assert not (task_dir / "tiny_cnn-prune-s0.8").exists()


@pytest.mark.slow
def test_selection_is_recorded_for_serve(root, rows):
    chosen = artifacts.selected_variant(root, TASK)
    runtime = artifacts.selected_runtime(root, TASK)
    record = json.loads((root / TASK / "selected.json").read_text())["reason"]
    assert chosen.has_file({"onnx": "model.onnx", "litert": "model.tflite"}[runtime])
    assert rows[chosen.name]["test_accuracy"] >= record["baseline_accuracy"] - 0.01 - 1e-12
    ok = [r for r in rows.values() if r.get("status") == "ok"
          and r["test_accuracy"] >= record["baseline_accuracy"] - 0.01 - 1e-12]
    # Every serving runtime of every variant was measured; the fastest pair is served.
    assert all(set(r["latency_p50_ms_by_runtime"]) == {rt for rt, f in (("onnx", "model.onnx"),
               ("litert", "model.tflite")) if artifacts.find_variant(root, TASK, r["variant"])
               .has_file(f)} for r in ok)
    assert record["latency_p50_ms"] == min(min(r["latency_p50_ms_by_runtime"].values())
                                           for r in ok)
    assert record["placements"]["cpu"]["runtime"] == runtime == record["runtime"]
    assert (root / TASK / "compress_report.md").read_text().count("| tiny_cnn") >= 8


@pytest.mark.slow
def test_parity_failure_after_files_were_written_leaves_nothing(root, rows, monkeypatch):
    from core.export import ExportParityError

    def failing_parity(*args, **kwargs):
        raise ExportParityError("forced for the test")

    monkeypatch.setattr(pipeline, "check_parity", failing_parity)
    recipe = parse_recipe({"test_limit": 50, "train_limit": 50, "parity_size": 50,
                           "steps": [{"technique": "onnx_fp16", "id": "fp16-again"}]})
    # What an earlier run (of an earlier tiny_cnn) left under the name this step would write.
    base = artifacts.find_variant(root, TASK, MODEL)
    with artifacts.create_variant(
            root, task=TASK, model=MODEL, variant="tiny_cnn-onnx-fp16",
            lineage={"parent": MODEL, "technique": "onnx_fp16"}, input=base.input,
            output=base.output, preprocessing=dict(base.manifest.preprocessing),
            labels=base.labels) as stale:
        (stale.dir / "model.onnx").write_bytes(base.file("model.onnx").read_bytes())
    lines = []
    again = pipeline.run_model(root, TASK, MODEL, recipe, log=lines.append)
    assert not (root / TASK / "tiny_cnn-onnx-fp16").exists()
    assert "removed tiny_cnn-onnx-fp16 from an earlier run" in "\n".join(lines)
    assert again[-1]["status"] == "failed: forced for the test"
    assert again[-1]["would_be"] == "tiny_cnn-onnx-fp16"  # what CI's gate looks up
    leftovers = [p.name for p in (root / TASK).iterdir() if p.name.startswith(".tmp")]
    assert leftovers == []


@pytest.mark.slow
def test_every_variant_names_exactly_the_tensors_its_onnx_model_has(root, rows):
    import onnx

    checked = 0
    for variant in artifacts.list_variants(root, TASK):
        if not variant.has_file("model.onnx"):
            continue
        graph = onnx.load(variant.file("model.onnx"), load_external_data=False).graph
        weights = {t.name for t in graph.initializer}
        assert variant.input.name == [i.name for i in graph.input if i.name not in weights][0]
        assert variant.output.name == graph.output[0].name, variant.name
        checked += 1
    assert checked >= len(EXPECTED) // 2


@pytest.mark.slow
def test_latencies_left_for_later_are_measured_before_selection(root, rows, tmp_path):
    """What `run-all --jobs N` does per task: compress without measuring, then measure every
    variant one at a time, then select."""
    import shutil

    copy = tmp_path / "artifacts"
    shutil.copytree(root, copy)
    recipe = parse_recipe({"test_limit": 100, "train_limit": 100, "parity_size": 100,
                           "steps": [{"technique": "onnx_fp16"}]})
    later = pipeline.run_model(copy, TASK, MODEL, recipe, measure=False, log=lambda *a: None)
    fp16 = next(r for r in later if r["variant"] == "tiny_cnn-onnx-fp16")
    assert fp16["latency_p50_ms"] is None
    assert "latency_p50_ms" not in artifacts.find_variant(copy, TASK, fp16["variant"]).metrics
    report = pipeline.update_report(copy, TASK, MODEL, later, later[0]["data_source"])
    pipeline.remeasure_latency(copy, TASK, report, log=lambda *a: None)
    measured = {r["variant"]: r for rows_ in report["models"].values() for r in rows_}
    assert measured["tiny_cnn-onnx-fp16"]["latency_p50_ms"] > 0
    assert artifacts.find_variant(copy, TASK, "tiny_cnn-onnx-fp16").metrics["latency_p50_ms"] > 0
    chosen = pipeline.finish_task(copy, TASK, report, 100.0, log=lambda *a: None)
    assert chosen["selection"]["variant"] in measured


@pytest.mark.slow
def test_close_contenders_are_measured_again_before_selection(root, rows):
    import copy

    again = copy.deepcopy(list(rows.values()))
    said = []
    pairs = pipeline.confirm_fastest(root, TASK, again, budget_points=100.0, log=said.append)
    by_name = {r["variant"]: r for r in again}
    assert len(pairs) >= 2 and "alternating rounds" in said[0]
    best = min(min(r["latency_p50_ms_by_runtime"].values()) for r in again
               if r.get("status") == "ok" and r.get("latency_p50_ms_by_runtime"))
    for name, runtime in pairs:
        row = by_name[name]
        assert row["latency_p50_ms"] == min(row["latency_p50_ms_by_runtime"].values())
        assert row["latency_p50_ms_by_runtime"][runtime] > 0
    assert best > 0
