"""The zoo's normalization and activation registries: every row builds, trains and exports;
the recipe, CLI and search space name the same rows; keras.applications models honour or refuse
each option by name; RMSprop gets the recipe's momentum."""
import json

import numpy as np
import optuna
import pytest

from core.tf_setup import keras, tf
from trainer import recipe as recipe_module
from trainer.models import ModelInputs, ModelOptions, get_model
from trainer.models.applications import (FAMILIES, FIXED_OPTIONS, KERNEL_REGULARIZERS,
                                         backbone_layers, cached_imagenet_weights, check_options)
from trainer.models.blocks import ACTIVATIONS, DEFAULT_ACTIVATION, NORMALIZATIONS
from trainer.models.registry import ModelOptionsError
from trainer.recipe import Recipe, RecipeError, recipe_from_dict

# The classes of the layers that hold each row's learned scale and shift ("group" on feature
# maps: a 1x1 DepthwiseConv2D after a weightless LayerNormalization, see blocks._group_norm).
NORM_CLASSES = {"none": set(), "batch": {"BatchNormalization"},
                "group": {"GroupNormalization", "DepthwiseConv2D"},
                "layer": {"LayerNormalization"}}
ALL_NORM_CLASSES = set().union(*NORM_CLASSES.values())
ACT_LAYER = {"relu": ("Activation", "relu"), "leaky_relu": ("LeakyReLU", None),
             "elu": ("ELU", None), "tanh": ("Activation", "tanh")}
# Tiny versions of the two hand-written families: 8x8 input, width 0.25 (8/16 filters, 32 units).
TINY = {"cnn": ("fashion_cnn", (8, 8, 1)), "mlp": ("mnist_dnn", (8, 8, 1))}


def _tiny(family: str, normalization: str, activation: str, **options):
    name, shape = TINY[family]
    return get_model(name).build(ModelInputs(shape, 10), ModelOptions(
        width=0.25, normalization=normalization, activation=activation, **options))


def _x(shape, n=4, seed=0):
    return np.random.default_rng(seed).random((n, *shape)).astype("float32")


def test_the_recipe_names_exactly_the_registered_normalizations_and_activations():
    assert set(recipe_module.NORMALIZATIONS) == set(NORMALIZATIONS) == set(NORM_CLASSES)
    assert set(recipe_module.ACTIVATIONS) == set(ACTIVATIONS) | {"default"}
    assert set(ACT_LAYER) == set(ACTIVATIONS) and DEFAULT_ACTIVATION in ACTIVATIONS


@pytest.mark.parametrize("family", TINY)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_each_normalization_and_activation_builds_and_trains(family, normalization, activation):
    model = _tiny(family, normalization, activation)
    hidden = [layer for layer in model.layers if type(layer).__name__ in ("Conv2D", "Dense")][:-1]
    norms = [layer for layer in model.layers
             if type(layer).__name__ in ALL_NORM_CLASSES and layer.trainable_weights]
    assert {type(layer).__name__ for layer in norms} <= NORM_CLASSES[normalization]
    assert len(norms) == (len(hidden) if normalization != "none" else 0)
    # A learned normalization shift makes the bias of the layer before it redundant.
    assert all(layer.use_bias == (normalization == "none") for layer in hidden)
    cls, fn = ACT_LAYER[activation]
    acts = [layer for layer in model.layers if type(layer).__name__ == cls
            and (fn is None or layer.get_config()["activation"] == fn)]
    assert len(acts) == len(hidden)

    x = _x(model.input_shape[1:])
    model.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
    before = [w.numpy().copy() for layer in norms for w in layer.trainable_weights]
    assert np.isfinite(model.train_on_batch(x, np.arange(4)))
    after = [w.numpy() for layer in norms for w in layer.trainable_weights]
    assert len(before) == 2 * len(norms)  # gamma and beta
    assert all(not np.allclose(b, a) for b, a in zip(before, after))
    out = model.predict(x, verbose=0)
    assert out.shape == (4, 10)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-4)


# Each normalization and each activation once, on the tiny CNN (convs and a dense block).
EXPORT_CASES = list(zip(NORMALIZATIONS, ACTIVATIONS))


@pytest.mark.parametrize("normalization,activation", EXPORT_CASES)
def test_onnx_and_tflite_exports_match_keras(tmp_path, normalization, activation):
    from core.export import check_parity, export_onnx, run_onnx, run_tflite, tflite_bytes

    model = _tiny("cnn", normalization, activation)
    x = _x(model.input_shape[1:], n=8, seed=1)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, np.arange(8), epochs=1, verbose=0)  # moving statistics away from 0/1
    reference = model.predict(x, verbose=0)
    export_onnx(model, tmp_path / "model.onnx")
    for candidate, runtime in ((run_onnx(tmp_path / "model.onnx", x), "onnxruntime"),
                               (run_tflite(tflite_bytes(model), x), "tflite")):
        report = check_parity(reference, candidate, runtime)
        assert report.ok, report.as_dict()


@pytest.mark.parametrize("groups", [1, 4, 8])
def test_group_norm_on_feature_maps_is_keras_group_normalization(groups):
    from trainer.models.blocks import _group_norm

    x_in = keras.Input((3, 5, 8))
    model = keras.Model(x_in, _group_norm(x_in, keras.layers, ModelOptions(norm_groups=groups)))
    gamma, beta = np.linspace(0.5, 2.0, 8), np.linspace(-1.0, 1.0, 8)
    affine = model.layers[-1]
    affine.set_weights([gamma.reshape(1, 1, 8, 1), beta])
    reference = keras.layers.GroupNormalization(groups=groups)
    reference.build((None, 3, 5, 8))
    reference.set_weights([gamma, beta])
    x = _x((3, 5, 8), n=3) * 4.0 - 1.0
    np.testing.assert_allclose(model(x).numpy(), reference(x).numpy(), atol=1e-5)


def test_group_count_that_does_not_divide_the_channels_is_a_clear_error():
    with pytest.raises(ModelOptionsError, match="norm_groups 3 does not divide the 8 channels"):
        _tiny("cnn", "group", "relu", norm_groups=3)


def test_unknown_rows_name_the_valid_ones():
    with pytest.raises(ModelOptionsError, match="unknown activation 'swish'; valid: relu"):
        _tiny("mlp", "none", "swish")
    with pytest.raises(RecipeError, match="unknown normalization 'instance'"):
        Recipe(normalization="instance")


def test_xor_keeps_tanh_by_default_and_takes_another_activation():
    spec = get_model("xor_mlp")
    default = spec.build(ModelInputs((2,), 2), ModelOptions())
    elu = spec.build(ModelInputs((2,), 2), ModelOptions(activation="elu"))
    assert "tanh" in [layer.get_config().get("activation") for layer in default.layers]
    assert "ELU" in [type(layer).__name__ for layer in elu.layers]


# ------------------------------------------------ the old batch_norm key and flag

@pytest.mark.parametrize("old,new", [(True, "batch"), (False, "none")])
def test_batch_norm_key_maps_to_the_normalization_registry(old, new):
    assert recipe_from_dict({"batch_norm": old}).normalization == new
    # A later source's alias overrides an earlier normalization (model default < file < flag).
    layered = recipe_from_dict({"batch_norm": old}, base={"normalization": "layer"})
    assert layered.normalization == new


def test_batch_norm_contradicting_normalization_is_an_error():
    with pytest.raises(RecipeError, match="batch_norm=True and normalization='group' contradict"):
        recipe_from_dict({"batch_norm": True, "normalization": "group"})
    assert recipe_from_dict({"batch_norm": True, "normalization": "batch"}).normalization == "batch"


def test_cli_flags_reach_the_recipe():
    from trainer.cli import _recipe_overrides, build_parser
    from trainer.recipe import resolve_recipe

    def resolved(*flags):
        args = build_parser().parse_args(["train", "--model", "fashion_cnn", *flags])
        return resolve_recipe(get_model("fashion_cnn").defaults, None, _recipe_overrides(args))

    assert resolved().normalization == "batch"          # the model's default
    assert resolved("--no-batch-norm").normalization == "none"
    assert resolved("--normalization", "group", "--norm-groups", "4").norm_groups == 4
    assert resolved("--activation", "elu").activation == "elu"


def test_a_saved_recipe_with_batch_norm_still_loads(tmp_path):
    from trainer.recipe import load_recipe_file

    saved = Recipe(normalization="batch").to_dict()
    del saved["normalization"], saved["norm_groups"], saved["activation"]
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({**saved, "batch_norm": True}))
    assert recipe_from_dict(load_recipe_file(path)) == Recipe(normalization="batch")


# ------------------------------------------------ search space

def test_search_space_samples_every_normalization_and_activation():
    from trainer.search import DEFAULT_PARAMS, SEARCH_SPACE

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {"normalization": set(), "activation": set()}
    for _ in range(60):
        trial = study.ask()
        for name in seen:
            seen[name].add(SEARCH_SPACE[name].suggest(trial, name))
        study.tell(trial, 0.0)
    assert seen["normalization"] == set(NORMALIZATIONS)
    assert seen["activation"] == set(ACTIVATIONS)
    for name, values in seen.items():
        for value in values:  # every sampled value is a valid recipe value
            assert getattr(Recipe().replace(**{name: value}), name) == value
    # Opt-in: keras.applications backbones refuse them, so a default search leaves them out.
    assert not {"normalization", "activation"} & set(DEFAULT_PARAMS)
    assert set(DEFAULT_PARAMS) < set(SEARCH_SPACE)


# ------------------------------------------------ keras.applications models

APP_INPUTS = ModelInputs((28, 28, 1), 10)


def _app_options(name, **changes):
    spec = get_model(name)
    return ModelOptions(**{"width": spec.defaults["width"], "resolution": 32,
                           "normalization": spec.defaults["normalization"], **changes})


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("option,value", [("normalization", "none"), ("normalization", "group"),
                                          ("normalization", "layer"), ("activation", "elu"),
                                          ("activation", "relu")])
def test_applications_refuse_options_they_cannot_apply(name, option, value):
    flag = "--" + option.replace("_", "-")
    with pytest.raises(ModelOptionsError, match=f"{name}: {flag} {value} cannot apply"):
        get_model(name).build(APP_INPUTS, _app_options(name, **{option: value}))


def test_applications_default_normalization_is_their_built_in_one():
    for name in FAMILIES:
        assert get_model(name).defaults["normalization"] == "batch"
        assert get_model(name).defaults["normalization"] in FIXED_OPTIONS["normalization"][0]
        check_options(name, ModelOptions())  # None: the model's own, i.e. batch


@pytest.mark.parametrize("name", FAMILIES)
def test_applications_honour_l1_l2_and_the_head_initializer(name):
    model = get_model(name).build(APP_INPUTS, _app_options(name, l1=1e-5, l2=1e-4,
                                                           initializer="he_normal"))
    kernels = [(layer, arg) for layer in backbone_layers(model)
               for weight, arg in KERNEL_REGULARIZERS.items() if hasattr(layer, weight)]
    assert kernels and all(getattr(layer, arg) is not None for layer, arg in kernels)
    head = model.get_layer("head_output")
    assert head.kernel_regularizer.get_config() == {"l1": pytest.approx(1e-5),
                                                    "l2": pytest.approx(1e-4)}
    assert type(head.kernel_initializer).__name__ == "HeNormal"
    assert len(model.losses) == len(kernels) + 1
    # The penalty is part of training: it changes with the kernels.
    before = float(sum(model.losses))
    kernel = next(w for w in model.trainable_weights if "kernel" in w.name)
    kernel.assign(kernel * 2.0)
    assert float(sum(model.losses)) > before


def test_efficientnet_refuses_imagenet_weights_for_a_width_that_has_none(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "efficientnetb0_notop.h5").write_bytes(b"")
    default_width = get_model("efficientnet_b0").defaults["width"]
    assert default_width != 1.0
    with pytest.raises(ModelOptionsError,
                       match=f"only for width 1, not width {default_width:g}; pass --width 1"):
        cached_imagenet_weights("efficientnet_b0", default_width, 32)
    assert cached_imagenet_weights("efficientnet_b0", 1.0, 32).name == "efficientnetb0_notop.h5"
    assert cached_imagenet_weights("mobilenet_v2", 0.35, 32) is None  # a width with weights
    with pytest.raises(ModelOptionsError, match="mobilenet_v3_small: .* not width 0.5"):
        cached_imagenet_weights("mobilenet_v3_small", 0.5, 32)


# ------------------------------------------------ optimizer

@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_rmsprop_takes_the_recipe_momentum(momentum):
    from trainer.optim import make_optimizer

    optimizer = make_optimizer(Recipe(optimizer="rmsprop", momentum=momentum), 10)
    assert optimizer.get_config()["momentum"] == pytest.approx(momentum)


def test_rmsprop_momentum_changes_the_updates():
    from trainer.optim import make_optimizer

    def after_two_steps(momentum):
        w = tf.Variable(1.0)
        optimizer = make_optimizer(Recipe(optimizer="rmsprop", momentum=momentum,
                                          learning_rate=0.1), 10)
        for _ in range(2):
            optimizer.apply_gradients([(tf.constant(1.0), w)])
        return float(w.numpy())

    assert after_two_steps(0.9) < after_two_steps(0.0)  # momentum carries the first step on


# ------------------------------------------------ compress rewrites of the new layers

@pytest.mark.parametrize("normalization", ["group", "layer"])
def test_channel_pruning_keeps_layers_feeding_group_or_layer_norm_whole(normalization):
    from compress.errors import NotApplicableError
    from compress.structured import plan_channel_pruning

    model = _tiny("cnn", normalization, "relu")
    with pytest.raises(NotApplicableError, match="which channel pruning does not handle"):
        plan_channel_pruning(model, 0.5, round_to=1)


@pytest.mark.parametrize("normalization", ["group", "layer"])
def test_separable_and_low_rank_rewrites_keep_the_new_normalizations(normalization):
    from compress.factorize import apply_low_rank, apply_separable, plan_low_rank, plan_separable

    model = _tiny("cnn", normalization, "leaky_relu")
    x = _x(model.input_shape[1:])
    for plan, apply in ((plan_separable(model, min_input_channels=1), apply_separable),
                        (plan_low_rank(model, rank_ratio=0.5), apply_low_rank)):
        rewritten = apply(model, plan)
        def norm_layers(m):
            return [type(layer).__name__ for layer in m.layers
                    if type(layer).__name__ in ALL_NORM_CLASSES]

        assert norm_layers(rewritten) == norm_layers(model)
        assert rewritten.predict(x, verbose=0).shape == (4, 10)


@pytest.mark.parametrize("normalization", ["group", "layer"])
def test_qat_plan_refuses_group_and_layer_normalization_by_name(normalization):
    from compress.errors import UnsupportedLayerError
    from compress.quantize import quantization_plan

    model = _tiny("cnn", normalization, "relu")
    cls = {"group": "GroupNormalization", "layer": "LayerNormalization"}[normalization]
    with pytest.raises(UnsupportedLayerError, match=f"\\({cls}\\) cannot be wrapped by TFMOT"):
        quantization_plan(model)
