"""Transfer learning: the intended layers freeze and unfreeze, backbone weights come from a
project checkpoint or from Keras' ImageNet cache file, and both phases run end to end."""
import numpy as np
import pytest

from trainer.models import ModelInputs, ModelOptions, create_model
from trainer.models.applications import backbone_layers, cached_imagenet_weights, FAMILIES
from core.tf_setup import keras
from trainer.transfer import TransferError, copy_backbone_weights, freeze_backbone, unfreeze_top

INPUTS = ModelInputs((28, 28, 1), 24)
OPTIONS = ModelOptions(width=0.35, resolution=32)


@pytest.fixture(scope="module")
def model():
    return create_model("mobilenet_v2", INPUTS, OPTIONS)


def _trainable_names(model):
    return {layer.name for layer in model.layers if layer.trainable and layer.weights}


def test_feature_extraction_trains_only_the_head(model):
    freeze_backbone(model)
    assert _trainable_names(model) == {"head_output"}
    assert not any(layer.trainable for layer in backbone_layers(model))


def test_fine_tuning_opens_the_top_layers_but_keeps_batch_norm_frozen(model):
    opened = unfreeze_top(model, 20)
    top = backbone_layers(model)[-20:]
    expected = {layer.name for layer in top
                if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)}
    assert set(opened) == expected and expected
    assert _trainable_names(model) == expected | {"head_output"}
    assert all(not layer.trainable for layer in backbone_layers(model)
               if isinstance(layer, keras.layers.BatchNormalization))
    lower = backbone_layers(model)[:-20]
    assert not any(layer.trainable for layer in lower)


def test_asking_for_more_layers_than_the_backbone_has_opens_all_of_them(model):
    opened = unfreeze_top(model, 10_000)
    expected = {layer.name for layer in backbone_layers(model)
                if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)}
    assert set(opened) == expected and len(expected) > 50


def test_adapter_is_frozen_and_maps_pixels_to_the_backbone_range(model):
    adapter = model.get_layer("adapter_rgb")
    assert not adapter.trainable
    probe = keras.Model(model.input, adapter.output)
    out = probe(np.ones((1, 28, 28, 1), np.float32)).numpy()
    np.testing.assert_allclose(out, 1.0, atol=1e-6)           # 1 * 2 - 1 for MobileNets
    out = probe(np.zeros((1, 28, 28, 1), np.float32)).numpy()
    np.testing.assert_allclose(out, -1.0, atol=1e-6)


def test_backbone_weights_copy_from_a_project_checkpoint(model):
    target = create_model("mobilenet_v2", ModelInputs((28, 28, 1), 10), OPTIONS)
    assert copy_backbone_weights(model, target) > 50
    for a, b in zip(backbone_layers(model), backbone_layers(target)):
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(wa, wb)
    wider = create_model("mobilenet_v2", INPUTS, ModelOptions(width=0.5, resolution=32))
    with pytest.raises(TransferError, match="same model, width and resolution"):
        copy_backbone_weights(model, wider)


def test_imagenet_weights_are_loaded_from_the_keras_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert cached_imagenet_weights("mobilenet_v2", 0.35, 32) is None
    # A stand-in for Keras' downloaded file: a plain backbone's weights saved under the same name.
    reference = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35,
                                               include_top=False, weights=None)
    path = tmp_path / "models" / FAMILIES["mobilenet_v2"].weights_file(0.35, 32)
    path.parent.mkdir(parents=True)
    reference.save_weights(str(path))
    found = cached_imagenet_weights("mobilenet_v2", 0.35, 32)
    assert found == path
    built = create_model("mobilenet_v2", INPUTS, ModelOptions(width=0.35, resolution=32,
                                                              weights=str(found)))
    for name in ("Conv1", "block_16_project", "Conv_1_bn"):
        for wa, wb in zip(reference.get_layer(name).get_weights(),
                          built.get_layer(name).get_weights()):
            np.testing.assert_array_equal(wa, wb)


def test_missing_imagenet_weights_say_which_file_and_the_alternative(tmp_path, monkeypatch):
    from trainer.train import train_variant

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(TransferError, match="not in the Keras cache.*--pretrained <task>/<variant>"):
        train_variant("sign_mnist", "mobilenet_v2", artifacts=tmp_path,
                      overrides={"pretrained": "imagenet", "max_train_examples": 48, "epochs": 1})


def test_two_phase_transfer_reports_both_phases(tmp_path, monkeypatch):
    from trainer.fit import prepare_data
    from trainer.train import resolved_recipe, train_model

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    path = tmp_path / "models" / FAMILIES["mobilenet_v2"].weights_file(0.35, 32)
    path.parent.mkdir(parents=True)
    keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False,
                                   weights=None).save_weights(str(path))
    recipe = resolved_recipe("mobilenet_v2", overrides={
        "pretrained": "imagenet", "max_train_examples": 64, "batch_size": 32, "epochs": 1,
        "head_epochs": 1, "steps_per_epoch": 1, "fine_tune_layers": 10, "augment": False,
        "early_stopping_patience": 0})
    data = prepare_data("sign_mnist", recipe)
    data.x_test, data.y_test = data.x_test[:64], data.y_test[:64]
    result = train_model("mobilenet_v2", data, recipe)
    info = result.extra["transfer"]
    assert info["weights_file"] == str(path)
    assert info["fine_tuning"]["learning_rate"] == pytest.approx(recipe.learning_rate * 0.1)
    assert set(info) >= {"feature_extraction", "fine_tuning"}
    assert 0 <= info["feature_extraction"]["test_accuracy"] <= 1
    assert result.history["phase"] == ["feature_extraction", "fine_tuning"]
    assert result.metrics["epochs_run"] == 2
