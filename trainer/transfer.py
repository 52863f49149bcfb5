"""Transfer learning for the keras.applications models, the two phases of the EfficientNet
fine-tuning recipe:

  1. feature extraction: backbone frozen, the new head trains for `head_epochs`;
  2. fine-tuning: the top `fine_tune_layers` backbone layers are unfrozen and everything trains
     for `epochs` more at `learning_rate * fine_tune_lr_factor`. BatchNormalization layers stay
     frozen, which in tf_keras also runs them in inference mode: their moving statistics from
     pretraining are kept instead of being overwritten by small fine-tuning batches.

Where the backbone comes from (`recipe.pretrained`):
  "imagenet"         Keras' cached ImageNet weights file (no download; an error says which file
                     is missing and that a project checkpoint works instead);
  "<task>/<variant>" the backbone of a variant this project trained, e.g. "fashion_mnist/
                     mobilenet_v2": pretrain on Fashion-MNIST, transfer to Sign-Language.
"""
from __future__ import annotations

from core.artifacts import find_variant
from trainer.errors import TrainerInputError
from trainer.models.applications import FAMILIES, backbone_layers, cached_imagenet_weights, \
    keras_models_cache
from trainer.recipe import Recipe
from core.tf_setup import keras


class TransferError(TrainerInputError):
    """A transfer request that cannot be honoured; the message names the fix."""


def freeze_backbone(model) -> None:
    """Phase 1: every backbone layer frozen; adapter stays frozen, head trainable."""
    for layer in backbone_layers(model):
        layer.trainable = False


def unfreeze_top(model, n_layers: int) -> list[str]:
    """Phase 2: the top `n_layers` backbone layers become trainable, except BatchNormalization
    (kept frozen = inference mode). Returns the names of the layers that now train."""
    layers = backbone_layers(model)
    freeze_backbone(model)
    opened = []
    for layer in layers[max(0, len(layers) - n_layers):] if n_layers > 0 else []:
        if not isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = True
            if layer.weights:
                opened.append(layer.name)
    return opened


def copy_backbone_weights(source, target) -> int:
    """Copy backbone weights layer by layer (same names and shapes); returns layers copied."""
    by_name = {layer.name: layer for layer in source.layers}
    copied, mismatched = 0, []
    for layer in backbone_layers(target):
        src = by_name.get(layer.name)
        if src is None or not layer.weights:
            continue
        if [w.shape for w in src.get_weights()] != [w.shape for w in layer.get_weights()]:
            mismatched.append(layer.name)
            continue
        layer.set_weights(src.get_weights())
        copied += 1
    if mismatched or not copied:
        raise TransferError(
            f"source model {source.name!r} does not match the target backbone "
            f"({copied} layers copied, {len(mismatched)} with other shapes, e.g. "
            f"{mismatched[:3]}); pretrain with the same model, width and resolution")
    return copied


def _check_transferable(model_name: str) -> None:
    if model_name not in FAMILIES:
        raise TransferError(f"pretrained backbones apply to {', '.join(FAMILIES)}; "
                            f"{model_name!r} trains from scratch (leave --pretrained empty)")


def _imagenet_weights(model_name: str, recipe: Recipe, resolution: int) -> str:
    path = cached_imagenet_weights(model_name, recipe.width, resolution)
    if path is None:
        expected = keras_models_cache() / FAMILIES[model_name].weights_file(recipe.width, resolution)
        raise TransferError(
            f"ImageNet weights for {model_name} (width {recipe.width}) are not in the Keras "
            f"cache: expected {expected}. Put the file there, or pretrain a backbone here and "
            f"pass --pretrained <task>/<variant> (e.g. fashion_mnist/{model_name})")
    return str(path)


def train_transfer(model_name: str, data, recipe: Recipe, artifacts, strategy):
    """Both phases; returns (model, [(phase, history), ...], info for the manifest)."""
    from core.evaluate import load_keras
    from trainer.fit import build_model, evaluate, fit

    _check_transferable(model_name)
    resolution = recipe.resolution or 32
    weights = _imagenet_weights(model_name, recipe, resolution) if recipe.pretrained == "imagenet" \
        else None
    info = {"source": recipe.pretrained}
    with strategy.scope():
        model = build_model(model_name, data, recipe, weights=weights)
        if weights is None:
            task, _, variant = recipe.pretrained.partition("/")
            if not variant:
                raise TransferError(f"pretrained must be 'imagenet' or '<task>/<variant>', got "
                                    f"{recipe.pretrained!r}")
            source = find_variant(artifacts, task, variant, verify=True)
            info["copied_layers"] = copy_backbone_weights(load_keras(source), model)
            info["source_test_accuracy"] = source.metrics.get("test_accuracy")
        else:
            info["weights_file"] = weights

    freeze_backbone(model)
    head_history = fit(model, data, recipe, epochs=recipe.head_epochs, strategy=strategy)
    info["feature_extraction"] = {"epochs": recipe.head_epochs,
                                  "test_accuracy": evaluate(model, data.x_test, data.y_test)[0]
                                  ["test_accuracy"]}

    opened = unfreeze_top(model, recipe.fine_tune_layers)
    fine_recipe = recipe.replace(learning_rate=recipe.learning_rate * recipe.fine_tune_lr_factor,
                                 warmup_epochs=0.0)
    fine_history = fit(model, data, fine_recipe, epochs=recipe.epochs, strategy=strategy)
    info["fine_tuning"] = {"epochs": recipe.epochs, "layers_unfrozen": recipe.fine_tune_layers,
                           "trainable_layers_with_weights": len(opened),
                           "learning_rate": fine_recipe.learning_rate,
                           "test_accuracy": evaluate(model, data.x_test, data.y_test)[0]
                           ["test_accuracy"]}
    # Leave the saved model fully trainable, as a model trained from scratch would be.
    for layer in backbone_layers(model):
        layer.trainable = True
    return model, [("feature_extraction", head_history), ("fine_tuning", fine_history)], info


def scratch_baseline(model_name: str, data, recipe: Recipe, strategy, transfer_accuracy: float) -> dict:
    """The same model and epoch budget trained from random weights: the gain transfer brings."""
    from trainer.fit import build_model, evaluate, fit, seed_everything

    seed_everything(recipe)
    epochs = recipe.head_epochs + recipe.epochs
    with strategy.scope():
        model = build_model(model_name, data, recipe)
    fit(model, data, recipe, epochs=epochs, strategy=strategy)
    accuracy = evaluate(model, data.x_test, data.y_test)[0]["test_accuracy"]
    return {"scratch_epochs": epochs, "scratch_test_accuracy": accuracy,
            "gain_over_scratch": transfer_accuracy - accuracy}
