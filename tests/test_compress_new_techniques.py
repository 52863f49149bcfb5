"""compress: fc_to_conv1x1, bottleneck, low rank of convolutions and distillation, on tiny
in-memory models (no training beyond a few steps; seconds)."""
from __future__ import annotations

import numpy as np
import pytest

from compress import distill, factorize, fcn
from compress.errors import InvalidParameterError, NotApplicableError
from compress.techniques import TECHNIQUES, Inputs, get_technique
from core import modelstats
from core.manifest import Lineage

tfs = pytest.importorskip("core.tf_setup")
keras = tfs.keras
L = keras.layers


def cnn(seed: int = 0, pooling: str = "flatten"):
    """Conv-BN-Pool, Conv(same)-Pool, then a Flatten or GAP head with BN and Dropout."""
    keras.utils.set_random_seed(seed)
    x_in = keras.Input((12, 12, 1), name="input")
    x = L.Conv2D(8, 3, activation="relu", name="conv_a")(x_in)
    x = L.BatchNormalization(name="bn_a")(x)
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="conv_b")(x)
    x = L.MaxPooling2D(name="pool_b")(x)
    x = (L.Flatten(name="flat") if pooling == "flatten" else L.GlobalAveragePooling2D(name="flat"))(x)
    x = L.Dense(12, use_bias=False, name="hidden")(x)
    x = L.BatchNormalization(name="bn_h")(x)
    x = L.Activation("relu")(x)
    x = L.Dropout(0.2)(x)
    model = keras.Model(x_in, L.Dense(5, activation="softmax", name="head")(x), name="tiny_cnn")
    # Non-trivial BN statistics, so that carrying them over is actually tested.
    for bn in ("bn_a", "bn_h"):
        layer = model.get_layer(bn)
        layer.set_weights([w + 0.3 * np.random.default_rng(1).random(w.shape, dtype=np.float32)
                           for w in layer.get_weights()])
    return model


def images(n: int = 8, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 12, 12, 1), dtype=np.float32)


# technique -> a rewrite that must be exact (full rank: a factorization then saves nothing, so
# its planner is called without the saving rule), and the layer class it introduces
EXACT = {
    "fc_to_conv1x1": (lambda m: fcn.apply_fc_to_conv(m, fcn.plan_fc_to_conv(m)), "Conv2D"),
    "bottleneck": (lambda m: factorize.apply_bottleneck(m, factorize.plan_bottleneck(
        m, rank_ratio=1.0, require_saving=False)), "Conv2D"),
    "lowrank": (lambda m: factorize.apply_low_rank(m, factorize.plan_low_rank(
        m, rank_ratio=1.0, layer_classes=("Conv2D",), require_saving=False)), "Conv2D"),
}


def _rewrite(name, model, params):
    technique = get_technique(name)
    p = technique.resolve(params)
    plan = type(technique).planner(model, *(p[k] for k in technique.plan_params))
    return plan, type(technique).rewriter(model, plan)


@pytest.mark.parametrize("name", sorted(EXACT))
@pytest.mark.parametrize("pooling", ["flatten", "gap"])
def test_exact_rewrites_keep_outputs_and_leave_the_source_alone(name, pooling):
    model, x = cnn(pooling=pooling), images()
    before = [w.copy() for w in model.get_weights()]
    rewrite, introduced = EXACT[name]
    rewritten = rewrite(model)
    assert len(rewritten.layers) > len(model.layers) - 1
    assert rewritten(x).shape == model(x).shape
    np.testing.assert_allclose(rewritten(x).numpy(), model(x).numpy(), atol=2e-5)
    assert introduced in {type(l).__name__ for l in rewritten.layers}
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_exact_rewrites_cover_every_new_rewrite():
    assert set(EXACT) == {n for n, t in TECHNIQUES.items() if getattr(type(t), "rewriter", None)
                          in (fcn.apply_fc_to_conv, factorize.apply_bottleneck,
                              factorize.apply_low_rank)}


def test_fc_to_conv_makes_the_head_convolutional():
    model = cnn()
    plan, rewritten = _rewrite("fc_to_conv1x1", model, {})
    assert plan["layers"]["hidden"]["kernel_size"] == [2, 2]     # 2x2x16 map before the Flatten
    assert plan["layers"]["head"]["kernel_size"] == [1, 1]
    classes = [type(l).__name__ for l in rewritten.layers]
    assert "Dense" not in classes and classes[-1] == "Flatten"
    assert modelstats.count_macs(rewritten)["macs"] == modelstats.count_macs(model)["macs"]


def test_fc_to_conv_not_applicable_without_a_head():
    keras.utils.set_random_seed(0)
    mlp = keras.Sequential([L.Input((6,)), L.Dense(4, activation="softmax")], name="mlp")
    with pytest.raises(NotApplicableError, match="no Flatten/global-pooling head"):
        fcn.plan_fc_to_conv(mlp)


def test_bottleneck_cuts_macs_by_the_planned_amount():
    model = cnn()
    plan, rewritten = _rewrite("bottleneck", model, {"rank": 4})
    assert list(plan["layers"]) == ["conv_b"]                 # conv_a has one input channel
    assert "saves no MACs" in plan["kept"]["conv_a"]
    # conv_b: 5x5x8 -> 5x5x16, 3x3 same. Before 5*5*9*8*16; after 5*5*8*4 + 5*5*9*4*16.
    before, after = 5 * 5 * 9 * 8 * 16, 5 * 5 * 8 * 4 + 5 * 5 * 9 * 4 * 16
    assert plan["layers"]["conv_b"] == {"input_channels": 8, "rank": 4, "macs_before": before,
                                        "macs_after": after}
    drop = modelstats.count_macs(model)["macs"] - modelstats.count_macs(rewritten)["macs"]
    assert drop == before - after


def test_conv_low_rank_cuts_macs_by_the_planned_amount():
    model = cnn()
    plan, rewritten = _rewrite("lowrank", model, {"rank": 4, "layer_classes": ["Conv2D"],
                                                    "skip_layers": ["conv_a"]})
    step = plan["layers"]["conv_b"]
    assert step == {"shape": [72, 16], "rank": 4, "params_before": 72 * 16,
                    "params_after": 4 * (72 + 16)}
    assert plan["kept"] == {"conv_a": "in skip_layers"}
    drop = modelstats.count_macs(model)["macs"] - modelstats.count_macs(rewritten)["macs"]
    assert drop == 5 * 5 * (step["params_before"] - step["params_after"])


def test_low_rank_default_classes_leave_convolutions_alone():
    plan = factorize.plan_low_rank(cnn(), rank=2)
    assert set(plan["layers"]) <= {"hidden", "head"}


def test_energy_picks_the_smallest_rank_keeping_that_energy():
    s = np.array([3.0, 2.0, 1.0, 0.0])                        # energies 9, 4, 1 of 14
    assert factorize.choose_rank(s, energy=9 / 14) == 1
    assert factorize.choose_rank(s, energy=0.9) == 2
    assert factorize.choose_rank(s, energy=1.0) == 3
    assert factorize.choose_rank(s, rank_ratio=0.5) == 2


def test_bottleneck_init_is_the_best_rank_r_approximation():
    kernel = np.random.default_rng(0).normal(size=(3, 3, 6, 5)).astype(np.float32)
    reduce, conv = factorize.bottleneck_init(kernel, 6)
    np.testing.assert_allclose(np.einsum("cr,hwro->hwco", reduce[0, 0], conv), kernel, atol=1e-5)
    reduce, conv = factorize.bottleneck_init(kernel, 2)
    err = np.linalg.norm(np.einsum("cr,hwro->hwco", reduce[0, 0], conv) - kernel)
    s = np.linalg.svd(factorize.bottleneck_matrix(kernel), compute_uv=False)
    assert err == pytest.approx(np.sqrt(np.sum(s[2:] ** 2)), rel=1e-4)


@pytest.mark.parametrize("name, params, message", [
    ("bottleneck", {"rank": 2, "energy": 0.9}, "exactly one of"),
    ("bottleneck", {"energy": 1.5}, "energy"),
    ("lowrank", {"layer_classes": ["Conv3D"]}, "layer_classes"),
    ("lowrank", {"rank": 0}, "rank"),
    ("distill", {"teacher": ""}, "teacher"),
    ("distill", {"student": "fashion_mlp", "temperature": 0}, "temperature"),
    ("fc_to_conv1x1", {"epochs": -1}, "epochs"),
])
def test_new_techniques_reject_bad_params(name, params, message):
    with pytest.raises(InvalidParameterError, match=message):
        get_technique(name).resolve(params)


@pytest.mark.parametrize("name, params, suffix", [
    ("bottleneck", {}, "bottleneck-r0.25"),
    ("bottleneck", {"energy": 0.9}, "bottleneck-e0.9"),
    ("lowrank", {"rank_ratio": 0.5}, "lowrank-r0.5"),
    ("lowrank", {"rank": 8, "layer_classes": ["Conv2D", "Dense"]}, "lowrank-k8-conv2d-dense"),
    ("fc_to_conv1x1", {}, "fc-to-conv"),
    ("fc_to_conv1x1", {"epochs": 2}, "fc-to-conv-ft2"),
    ("distill", {}, "distill-t4"),
    ("distill", {"student": "fashion_mlp"}, "distill-fashion_mlp-t4"),
    ("distill", {"teacher": "fashion_cnn", "temperature": 2}, "distill-from-fashion_cnn-t2"),
    ("distill", {"student": "fashion_mlp", "alpha": 1.0}, "distill-fashion_mlp-t4-a1"),
])
def test_new_techniques_name_their_variants(name, params, suffix):
    technique = TECHNIQUES[name]
    assert technique.suffix(technique.resolve(params)) == suffix


def test_distillation_loss_is_zero_when_student_equals_teacher_and_alpha_is_zero():
    tf = tfs.tf
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    y_true = np.concatenate([np.eye(3, dtype=np.float32)[[0, 2]], np.log(p)], axis=1)
    loss = distill.distillation_loss(4.0, 0.0, 3)
    assert float(tf.reduce_max(loss(y_true, tf.constant(p)))) == pytest.approx(0, abs=1e-6)
    other = np.array([[0.2, 0.7, 0.1], [0.3, 0.3, 0.4]], np.float32)
    assert float(tf.reduce_min(loss(y_true, tf.constant(other)))) > 0
    # alpha = 1: plain cross-entropy with the label
    ce = distill.distillation_loss(4.0, 1.0, 3)(y_true, tf.constant(p)).numpy()
    np.testing.assert_allclose(ce, -np.log([0.7, 0.8]), rtol=1e-5)


def test_distillation_loss_reads_a_sigmoid_output_as_two_probabilities():
    tf = tfs.tf
    p = np.array([[0.9], [0.2]], np.float32)
    two = np.concatenate([1 - p, p], axis=1)
    y_true = np.concatenate([np.eye(2, dtype=np.float32)[[1, 0]], np.log(two)], axis=1)
    loss = distill.distillation_loss(2.0, 0.0, 2)
    assert float(tf.reduce_max(loss(y_true, tf.constant(p)))) == pytest.approx(0, abs=1e-6)
    hard = distill.distillation_loss(2.0, 1.0, 2)(y_true, tf.constant(p)).numpy()
    np.testing.assert_allclose(hard, -np.log([0.9, 0.8]), rtol=1e-5)


def test_temperature_on_log_probabilities_equals_temperature_on_logits():
    z = np.random.default_rng(0).normal(size=(4, 6))
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    soft = lambda a: np.exp(a) / np.exp(a).sum(1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(soft(log_p / 3), soft(z / 3), rtol=1e-10)


def test_distill_trains_a_zoo_student_and_names_its_teacher():
    teacher = cnn(pooling="gap")
    x = images(32)
    y = np.random.default_rng(0).integers(0, 5, 32)

    class Parent:
        name = "tiny_cnn"
        input = type("Spec", (), {"shape": [None, 12, 12, 1], "kind": "image"})()

    inputs = Inputs(Parent(), lambda: teacher, x, y, x[:4], "softmax", 5, 1,
                    lambda name: pytest.fail(f"asked for {name}"))
    technique = get_technique("distill")
    p = technique.resolve({"student": "fashion_mlp", "epochs": 1, "batch_size": 16})
    outcome = technique.apply(inputs, p, None)
    assert outcome.keras_model is not teacher
    assert outcome.keras_model.output_shape == (None, 5)
    assert outcome.plan["teacher"] == "tiny_cnn" and outcome.plan["student_from_scratch"]
    assert len(outcome.history["loss"]) == 1 and np.isfinite(outcome.history["loss"][0])
    assert technique.teacher(p, "tiny_cnn") == "tiny_cnn"
    assert technique.teacher(technique.resolve({"student": "fashion_mlp", "alpha": 1}), "a") is None
    assert get_technique("separable").teacher(get_technique("separable").resolve({}), "a") == "a"
    assert get_technique("channels").teacher(get_technique("channels").resolve({}), "a") is None


def test_lineage_records_the_teacher_and_reads_manifests_without_one():
    with_teacher = Lineage.from_dict({"parent": "a", "technique": "distill", "teacher": "big"})
    assert with_teacher.teacher == "big" and with_teacher.to_dict()["teacher"] == "big"
    without = Lineage.from_dict({"parent": "a", "technique": "prune", "params": {}})
    assert without.teacher is None and "teacher" not in without.to_dict()
