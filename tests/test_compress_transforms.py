"""compress: layer transforms, parity, validation and selection on tiny in-memory models
(no fine-tuning, a few seconds)."""
from __future__ import annotations

import numpy as np
import pytest

from compress import factorize, structured
from core import modelstats
from compress.errors import (InvalidParameterError, NotApplicableError, UnknownTechniqueError,
                             UnsupportedLayerError)
from core.export import ExportParityError, check_parity, export_float, run_onnx
from compress.errors import CompressError
from compress.pipeline import select
from compress.recipe import parse_recipe
from compress.techniques import TECHNIQUES, get_technique

tfs = pytest.importorskip("core.tf_setup")
keras = tfs.keras
L = keras.layers


def small_cnn(seed: int = 0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        L.Input((28, 28, 1)), L.Conv2D(8, 3, activation="relu", name="conv_a"),
        L.BatchNormalization(name="bn_a"), L.MaxPooling2D(),
        L.Conv2D(16, 3, activation="relu", name="conv_b"), L.MaxPooling2D(), L.Flatten(),
        L.Dropout(0.1), L.Dense(32, activation="relu", name="hidden"),
        L.Dense(10, activation="softmax", name="head")], name="small_cnn")


def images(n: int = 16, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 28, 28, 1), dtype=np.float32)


def test_full_rank_svd_of_dense_reproduces_outputs():
    model, x = small_cnn(), images()
    plan = factorize.plan_low_rank(model, rank_ratio=1.0, skip_layers=["head"], require_saving=False)
    assert plan["layers"]["hidden"]["rank"] == 32
    factored = factorize.apply_low_rank(model, plan)
    assert {"hidden_lowrank_u", "hidden_lowrank_v"} <= {layer.name for layer in factored.layers}
    np.testing.assert_allclose(factored(x).numpy(), model(x).numpy(), atol=1e-5)
    assert "hidden" in [layer.name for layer in model.layers], "the source model must not change"


def test_full_rank_svd_of_embedding_reproduces_outputs():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([L.Input((12,), dtype="int32"), L.Embedding(50, 8, name="emb"),
                              L.GlobalAveragePooling1D(), L.Dense(1, activation="sigmoid")])
    ids = np.random.default_rng(0).integers(0, 50, (6, 12)).astype(np.int32)
    factored = factorize.apply_low_rank(
        model, factorize.plan_low_rank(model, rank=8, skip_layers=["Dense"], require_saving=False))
    np.testing.assert_allclose(factored(ids).numpy(), model(ids).numpy(), atol=1e-6)


def test_low_rank_skips_layers_that_would_not_shrink():
    plan = factorize.plan_low_rank(small_cnn(), rank=8)  # 8 * (32 + 10) >= 32 * 10
    assert "hidden" in plan["layers"] and "head" in plan["kept"]


def test_separable_replacement_cuts_macs_and_keeps_shapes():
    model, x = small_cnn(), images()
    plan = factorize.plan_separable(model)
    assert list(plan["layers"]) == ["conv_b"]                # 1-channel input conv kept
    assert "input channel" in plan["kept"]["conv_a"]
    sep = factorize.apply_separable(model, plan)
    assert sep(x).shape == model(x).shape
    assert modelstats.count_macs(sep)["macs"] < modelstats.count_macs(model)["macs"]


def test_separable_init_is_exact_for_rank_one_kernels():
    rng = np.random.default_rng(0)
    spatial, mixing = rng.normal(size=(3, 3, 4)), rng.normal(size=(4, 6))
    kernel = np.einsum("hwc,co->hwco", spatial, mixing).astype(np.float32)
    depthwise, pointwise = factorize.separable_init(kernel)
    rebuilt = np.einsum("hwc,co->hwco", depthwise[..., 0], pointwise[0, 0])
    np.testing.assert_allclose(rebuilt, kernel, atol=1e-5)


def test_channel_pruning_removing_dead_filters_keeps_outputs():
    model, x = small_cnn(), images()
    # Make half of conv_b's filters and half of hidden's units dead: removing exactly those
    # must not change the outputs (checks the slicing through BN, Flatten and Dense).
    layer = model.get_layer("conv_b")
    kernel, bias = layer.get_weights()
    kernel[..., ::2], bias[::2] = 0, 0
    layer.set_weights([kernel, bias])
    plan = structured.plan_channel_pruning(model, 0.5, round_to=1, skip_layers=["conv_a", "hidden"])
    assert plan["layers"]["conv_b"]["keep"] == list(range(1, 16, 2))
    pruned = structured.apply_channel_pruning(model, plan)
    assert pruned.get_layer("conv_b").filters == 8
    np.testing.assert_allclose(pruned(x).numpy(), model(x).numpy(), atol=1e-5)
    assert pruned.count_params() < model.count_params()


def test_channel_pruning_keeps_residual_producers_whole():
    inputs = keras.Input((8, 8, 4))
    a = L.Conv2D(4, 1, name="a")(inputs)
    b = L.Conv2D(4, 1, name="b")(a)
    out = L.Dense(2, activation="softmax", name="head")(L.Flatten()(L.Add()([a, b])))
    model = keras.Model(inputs, out)
    with pytest.raises(NotApplicableError, match="Add"):
        structured.plan_channel_pruning(model, 0.5, round_to=1)


def test_parity_check_catches_a_corrupted_export(tmp_path):
    import onnx
    from onnx import numpy_helper

    model, x = small_cnn(), images(32)
    export_float(model, tmp_path, x, tflite=False)
    proto = onnx.load(str(tmp_path / "model.onnx"))
    biggest = max(proto.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    corrupted = numpy_helper.to_array(biggest) * -3.0
    biggest.CopyFrom(numpy_helper.from_array(corrupted.astype(np.float32), biggest.name))
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    reference = model(x, training=False).numpy()
    check_parity(reference, run_onnx(tmp_path / "model.onnx", x), "onnxruntime")
    with pytest.raises(ExportParityError, match=r"max \|diff\|"):
        check_parity(reference, run_onnx(tmp_path / "bad.onnx", x), "onnxruntime")


def test_unknown_technique_is_rejected_with_the_valid_ones():
    with pytest.raises(UnknownTechniqueError, match="did you mean 'prune'.*valid: .*qat"):
        get_technique("prun")
    with pytest.raises(UnknownTechniqueError):
        parse_recipe({"steps": [{"technique": "distill-everything"}]})


@pytest.mark.parametrize("technique,params,message", [
    ("prune", {"sparsity": 1.5}, r"sparsity=1.5 is invalid; expected a fraction in \(0, 1\)"),
    ("lowrank", {"rank": 0}, "rank=0 is invalid; expected null or an integer >= 1"),
    ("channels", {"ratio": 0}, "ratio=0 is invalid"),
    ("onnx_static", {"calibration": "mse"}, "'minmax', 'entropy' or 'percentile'"),
    ("prune", {"sparsty": 0.5}, r"unknown parameter\(s\) \['sparsty'\]"),
])
def test_impossible_parameters_are_rejected(technique, params, message):
    with pytest.raises(InvalidParameterError, match=message):
        parse_recipe({"steps": [{"technique": technique, "params": params}]})


def test_recipe_from_must_name_an_earlier_step():
    with pytest.raises(InvalidParameterError, match="not the id of an earlier step"):
        parse_recipe({"steps": [{"technique": "onnx_fp16", "from": "pruned"}]})


def test_layer_tfmot_cannot_quantize_is_named_with_the_fix():
    from compress import quantize

    model = keras.Sequential([L.Input((12,), dtype="int32"), L.Embedding(50, 8, name="words"),
                              L.GlobalAveragePooling1D(), L.Dense(1, activation="sigmoid")])
    with pytest.raises(UnsupportedLayerError, match=r"'words' \(Embedding\).*skip_layers"):
        quantize.quantization_plan(model)
    plan = quantize.quantization_plan(model, ["words"])
    assert plan["words"].startswith("float") and "int8" in plan.values()


def test_layer_tfmot_cannot_prune_is_named_with_the_fix():
    from compress import magnitude

    class Scale(L.Layer):
        def build(self, shape):
            self.scale = self.add_weight(name="scale", shape=(shape[-1],))

        def call(self, x):
            return x * self.scale

    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(2)(Scale(name="odd_scale")(inputs)))
    with pytest.raises(UnsupportedLayerError, match=r"'odd_scale' \(Scale\).*skip_layers"):
        magnitude.prunable_layers(model, magnitude.PruneSettings())


def _row(name, technique, acc, **p50):
    """A report row measured on the runtimes given (runtime=p50 ms)."""
    fastest = min(p50, key=p50.get)
    return {"variant": name, "technique": technique, "test_accuracy": acc,
            "latency_p50_ms": p50[fastest], "latency_runtime": fastest,
            "latency_p50_ms_by_runtime": p50, "status": "ok"}


def test_selection_picks_variant_and_runtime_under_the_accuracy_budget():
    rows = [_row("base", "train", 0.900, onnx=0.080, litert=0.060),
            _row("int8", "onnx_static", 0.895, onnx=0.040),
            _row("tiny", "channels", 0.880, onnx=0.010, litert=0.008),
            _row("tfl", "tflite", 0.889, litert=0.030),
            # a row from before every runtime was measured: its one runtime counts
            {"variant": "old", "technique": "prune", "test_accuracy": 0.85, "status": "ok",
             "latency_p50_ms": 0.001, "latency_runtime": "onnx"},
            {"variant": "broken", "technique": "qat", "status": "failed: parity"}]
    chosen = select(rows, budget_points=1.0)
    assert (chosen["variant"], chosen["runtime"]) == ("int8", "onnx")
    assert chosen["speedup"] == pytest.approx(0.060 / 0.040)  # vs the base's fastest runtime
    cpu = chosen["placements"]["cpu"]
    assert (cpu["variant"], cpu["runtime"], cpu["p50_ms"], cpu["measured"]) == \
        ("int8", "onnx", 0.040, True)
    assert chosen["placements"]["gpu"]["measured"] is False
    assert "not measured" in chosen["placements"]["gpu"]["why"]
    assert (select(rows, 1.2)["variant"], select(rows, 1.2)["runtime"]) == ("tfl", "litert")
    assert (select(rows, 2.5)["variant"], select(rows, 2.5)["runtime"]) == ("tiny", "litert")
    assert (select(rows, 0.0)["variant"], select(rows, 0.0)["runtime"]) == ("base", "litert")
    assert select(rows, 5.0)["variant"] == "old"


def test_batch_norm_after_a_conv_is_quantized_by_folding():
    from compress import quantize

    plan = quantize.quantization_plan(small_cnn())
    assert plan["bn_a"] == "int8" and plan["conv_a"] == "int8"
    inputs = keras.Input((4,))
    lone_bn = keras.Model(inputs, L.Dense(2)(L.BatchNormalization(name="lone")(inputs)))
    with pytest.raises(UnsupportedLayerError, match="'lone'"):
        quantize.quantization_plan(lone_bn)


def test_select_variant_pins_a_variant_for_serve(tmp_path, capsys):
    from compress.cli import main
    from serve.fixtures import write_fixture_artifacts, write_image_variant
    from core.artifacts import selected_variant

    write_image_variant(tmp_path, "sign_mnist", "cnn", seed=2)
    write_fixture_artifacts(tmp_path)  # selects its MLP fixtures
    assert selected_variant(tmp_path, "sign_mnist").name == "fixture_mlp"
    assert main(["select", "--task", "sign_mnist", "--artifacts", str(tmp_path),
                 "--variant", "fixture_cnn"]) == 0
    assert selected_variant(tmp_path, "sign_mnist").name == "fixture_cnn"
    assert main(["select", "--task", "sign_mnist", "--artifacts", str(tmp_path),
                 "--variant", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["select", "--task", "sign_mnist", "--artifacts", str(tmp_path),
                 "--variant", "fixture_cnn", "--runtime", "litert"]) == 2
    assert "cannot be served on 'litert': it has no model.tflite" in capsys.readouterr().err


def test_report_rows_of_a_rerun_replace_the_earlier_outcome_of_the_same_step(tmp_path):
    from compress import pipeline

    ok = {"variant": "m-int8", "technique": "onnx_static", "status": "ok", "test_accuracy": 0.9}
    failed = {"variant": "int8", "technique": "onnx_static", "would_be": "m-int8",
              "status": "failed: parity"}
    base = {"variant": "m", "technique": "train", "status": "ok", "test_accuracy": 0.9}
    first = pipeline.update_report(tmp_path, "t", "m", [base, failed], "d")
    pipeline.save_report(tmp_path, "t", first)
    report = pipeline.update_report(tmp_path, "t", "m", [base, ok], "d")
    assert [r["status"] for r in report["models"]["m"]] == ["ok", "ok"]  # the failure is gone
    pipeline.save_report(tmp_path, "t", report)
    report = pipeline.update_report(tmp_path, "t", "m", [base, failed], "d")
    assert [r["status"] for r in report["models"]["m"]] == ["ok", "failed: parity"]


def _graph(*ops):
    """A chain of ONNX nodes named after their ops (only order and op types matter here)."""
    import onnx.helper as oh

    nodes = [oh.make_node(op, [f"t{i}"], [f"t{i + 1}"], name=f"{op}_{i}") for i, op in enumerate(ops)]
    return oh.make_graph(nodes, "g", [], [])


def test_float_first_layer_keeps_the_input_stage_up_to_the_next_weighted_node():
    from compress.quantize import first_layer_nodes

    graph = _graph("Transpose", "Conv", "Relu", "MaxPool", "Conv", "Relu", "MatMul")
    assert first_layer_nodes(graph) == ["Conv_1", "Relu_2", "MaxPool_3"]
    # int8 MatMuls are fast in ONNX Runtime: keeping an MLP's first layer float only costs.
    with pytest.raises(NotApplicableError, match="first weighted node is MatMul"):
        first_layer_nodes(_graph("Reshape", "MatMul", "Relu", "MatMul"))


@pytest.mark.parametrize("name", sorted(TECHNIQUES))
def test_every_technique_resolves_its_defaults_to_a_valid_variant_name(name):
    from core.artifacts import variant_dir

    technique = TECHNIQUES[name]
    assert technique.name == name and technique.description
    params = technique.resolve({})
    variant_dir("/tmp", "fashion_mnist", f"fashion_cnn-{technique.suffix(params)}")  # no error
    with pytest.raises(Exception, match="unknown parameter"):
        technique.resolve({"no_such_parameter": 1})


def _bench_row(variant, runtime, acc, p50, ips32, gzip_kb):
    return {"task": "t", "variant": variant, "runtime": runtime, "provider": "cpu",
            "error": None, "accuracy": acc, "latency": {"p50_ms": p50},
            "throughput": {"32": {"items_per_s": ips32}, "1024": {"items_per_s": ips32 * 1.1}},
            "size": {"gzip_bytes": gzip_kb * 1024}}


def _gpu_row(variant, provider, acc, p50, ips1024):
    return {"task": "t", "variant": variant, "provider": provider, "error": None,
            "accuracy": acc, "measurements": [
                {"mode": "numpy", "batch_size": 1, "p50_ms": p50, "items_per_s": 1000 / p50},
                {"mode": "bound", "batch_size": 1, "p50_ms": p50 / 2, "items_per_s": 2000 / p50},
                {"mode": "numpy", "batch_size": 1024, "p50_ms": 1.0, "items_per_s": ips1024}]}


def test_selection_per_placement_with_objectives_and_budgets():
    from compress.placement import Objective

    rows = [_row("base", "train", 0.900, onnx=0.080, litert=0.060),
            _row("int8", "onnx_static", 0.895, onnx=0.040),
            _row("small", "channels", 0.896, onnx=0.050, litert=0.045)]
    bench = {"results": [_bench_row("base", "onnx", 0.900, 0.080, 9_000, 400),
                         _bench_row("base", "keras", 0.900, 0.500, 90_000, 900),  # not served
                         _bench_row("int8", "onnx", 0.895, 0.040, 20_000, 120),
                         _bench_row("small", "litert", 0.896, 0.045, 30_000, 200)]}
    # Throughput at batch 32 from the benchmark record: the LiteRT row of "small".
    sel = select(rows, 1.0, Objective(1.0, "throughput", 32), cpu_bench=bench, task="t")
    assert (sel["variant"], sel["runtime"]) == ("small", "litert")
    # A size budget rules it out; a latency budget that nothing meets is an error.
    sel = select(rows, 1.0, Objective(1.0, "throughput", 32, max_size_kb=150), cpu_bench=bench,
                 task="t")
    assert sel["variant"] == "int8"
    with pytest.raises(CompressError, match="none within the latency/size budgets"):
        select(rows, 1.0, Objective(1.0, max_latency_ms=0.001))
    # The GPU placement from a GPU record: lowest batch-1 p50 of its best mode, accuracy
    # budget applied to the GPU's own accuracy; the CPU choice stays the top-level one.
    gpu = {"results": [_gpu_row("base", "CUDAExecutionProvider", 0.900, 0.30, 2e6),
                       _gpu_row("int8", "TensorrtExecutionProvider", 0.88, 0.10, 3e6),
                       _gpu_row("small", "TensorrtExecutionProvider", 0.896, 0.20, 1e6)]}
    sel = select(rows, 1.0, gpu_record=gpu, task="t")
    assert (sel["variant"], sel["runtime"]) == ("int8", "onnx")
    g = sel["placements"]["gpu"]
    assert (g["variant"], g["provider"], g["p50_ms"]) == ("small", "TensorrtExecutionProvider",
                                                          0.10)
    sel = select(rows, 1.0, Objective(1.0, "throughput", 1024), cpu_bench=bench,
                 gpu_record=gpu, task="t")
    assert sel["placements"]["gpu"]["variant"] == "base"  # 2e6 items/s at 1024, within budget
    with pytest.raises(CompressError, match="not measured for the objective"):
        select(rows, 1.0, Objective(1.0, "throughput", 64), cpu_bench=bench, task="t")
    sel = select(rows, 1.0, gpu_record={"results": []}, task="t")
    assert sel["placements"]["gpu"] == {"measured": False, "why": "not measured"}
    with pytest.raises(ValueError, match="objective 'speed'"):
        Objective(metric="speed")
    # An accuracy target of its own: 0.8955 rules out int8 (0.895), not small (0.896).
    sel = select(rows, 1.0, Objective(1.0, min_accuracy=0.8955))
    assert sel["variant"] == "small" and sel["objective"]["min_accuracy"] == 0.8955
    with pytest.raises(ValueError, match="fraction 0..1"):
        Objective(min_accuracy=93.0)
