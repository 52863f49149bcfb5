"""`keras.applications` backbones (MobileNetV2, MobileNetV3-Small, EfficientNet-B0) for the
28x28 grayscale tasks, all built by one builder: input adapter -> backbone -> new head.

Input: float32 (N, 28, 28, 1) from ImagePreprocessor (min-max scaled to [0, 1]);
output: softmax probabilities. Inside the model:

  adapter_resize  Resizing to `resolution` x `resolution` (bilinear)
  adapter_rgb     a frozen 1x1 Conv2D that copies gray to 3 channels and rescales [0, 1] to the
                  range the backbone was trained on ([-1, 1] for MobileNets, [0, 255] for
                  EfficientNet, which normalizes itself). A Conv2D rather than a Lambda or
                  Rescaling layer so that TFMOT quantization and tf2onnx handle it like any conv.
  <backbone>      the keras.applications layers, built flat on the adapter's output
                  (`input_tensor=`), so `quantize_model` sees no nested model
  head_pool, head_dropout, head_output   the new classifier

ImageNet weights: used when `options.weights` names a weights file; `cached_imagenet_weights`
finds Keras' own cache file when one is there (nothing is downloaded) and refuses a width that
Keras publishes no weights for. Without them the backbone starts from random weights or from a
checkpoint the project trained (trainer.transfer).

Recipe options: `l1`/`l2` regularize the head's and every backbone kernel (conv, depthwise and
dense kernels), `initializer` initializes the head (the backbone keeps its own initialization,
which its weights replace anyway), `dropout` is the head's dropout. The backbones are built
with batch normalization and their own activations (ReLU6, hard-swish, swish), so any other
`normalization` and any `activation` but "default" are refused by name (ModelOptionsError).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from trainer.models.blocks import BN_MOMENTUM, regularizer
from trainer.models.registry import ModelInputs, ModelOptions, ModelOptionsError, register_model

ADAPTER_PREFIX = "adapter_"
HEAD_PREFIX = "head_"


@dataclass(frozen=True)
class BackboneFamily:
    name: str
    build: Callable            # (input_tensor, width) -> keras Model (include_top=False)
    input_scale: float         # [0, 1] pixels -> backbone range: x * scale + offset
    input_offset: float
    weights_file: Callable     # (width, resolution) -> file name in Keras' models/ cache
    imagenet_widths: tuple[float, ...]  # the widths Keras publishes ImageNet weights for


def _mobilenet_v2(x, width):
    from core.tf_setup import keras

    return keras.applications.MobileNetV2(input_tensor=x, alpha=width, include_top=False,
                                          weights=None)


def _mobilenet_v3_small(x, width):
    from core.tf_setup import keras

    return keras.applications.MobileNetV3Small(input_tensor=x, alpha=width, include_top=False,
                                               weights=None, include_preprocessing=False)


def _efficientnet_b0(x, width):
    # keras.applications.EfficientNetB0 fixes width at 1.0; the family constructor it wraps
    # takes the width coefficient (B0: depth 1.0, default size 224).
    from tf_keras.src.applications.efficientnet import EfficientNet

    return EfficientNet(width_coefficient=width, depth_coefficient=1.0, default_size=224,
                        model_name="efficientnetb0", include_top=False, weights=None,
                        input_tensor=x)


def _mobilenet_v2_file(width, resolution):
    # Keras ships 96..224 px weights and falls back to the 224 px file for other sizes.
    rows = resolution if resolution in (96, 128, 160, 192, 224) else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(width)}_{rows}_no_top.h5"


FAMILIES = {
    f.name: f for f in (
        BackboneFamily("mobilenet_v2", _mobilenet_v2, 2.0, -1.0, _mobilenet_v2_file,
                       (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)),
        BackboneFamily("mobilenet_v3_small", _mobilenet_v3_small, 2.0, -1.0,
                       lambda w, r: f"weights_mobilenet_v3_small_224_{w}_float_no_top_v2.h5",
                       (0.75, 1.0)),
        # One file, for EfficientNet-B0's own width 1.0.
        BackboneFamily("efficientnet_b0", _efficientnet_b0, 255.0, 0.0,
                       lambda w, r: "efficientnetb0_notop.h5", (1.0,)),
    )
}


def keras_models_cache() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def imagenet_weights_path(family: str, width: float, resolution: int) -> Path:
    """Where Keras caches this backbone's ImageNet weights; an error for a width that has none
    (loading another width's file by name would leave every mismatched layer random)."""
    widths = FAMILIES[family].imagenet_widths
    if float(width) not in widths:
        raise ModelOptionsError(
            f"{family}: Keras publishes ImageNet weights only for width "
            f"{', '.join(f'{w:g}' for w in widths)}, not width {width:g}; pass --width "
            f"{min(widths, key=lambda w: abs(w - width)):g} for ImageNet weights, or pretrain "
            f"this width here and pass --pretrained <task>/<variant>")
    return keras_models_cache() / FAMILIES[family].weights_file(float(width), resolution)


def cached_imagenet_weights(family: str, width: float, resolution: int) -> Path | None:
    """Keras' cached ImageNet weights file for this backbone, or None when it is not cached."""
    path = imagenet_weights_path(family, width, resolution)
    return path if path.is_file() else None


def backbone_layers(model) -> list:
    """The backbone's layers of a model built here, in graph order (adapter and head excluded)."""
    from core.tf_setup import keras

    return [layer for layer in model.layers
            if not isinstance(layer, keras.layers.InputLayer)
            and not layer.name.startswith((ADAPTER_PREFIX, HEAD_PREFIX))]


# ModelOptions field -> (the values a backbone is built with, why no other value can apply);
# None is "the model's own".
FIXED_OPTIONS = {
    "normalization": ((None, "batch"), "the backbone is built with batch normalization"),
    "activation": ((None,), "the backbone has its own activations (ReLU6, hard-swish or "
                            "swish); leave --activation at 'default'"),
}

# Attributes of backbone layers that hold kernels (Conv2D/Dense: kernel; DepthwiseConv2D:
# depthwise) -> the matching regularizer argument.
KERNEL_REGULARIZERS = {"kernel": "kernel_regularizer", "depthwise_kernel": "depthwise_regularizer"}


def check_options(family_name: str, options: ModelOptions) -> None:
    for name, (values, why) in FIXED_OPTIONS.items():
        given = getattr(options, name)
        if given not in values:
            flag = "--" + name.replace("_", "-")
            raise ModelOptionsError(f"{family_name}: {flag} {given} cannot apply: {why}")


def _regularize_backbone(model, options: ModelOptions):
    """The same model with the options' L1/L2 penalty on every backbone kernel. keras.applications
    builds its layers without regularizers; set on built layers they would add no loss, so the
    model is rebuilt from its config (which then also carries them through clones and saves)."""
    from core.tf_setup import keras

    reg = regularizer(options)
    for layer in backbone_layers(model):
        for weight, argument in KERNEL_REGULARIZERS.items():
            if hasattr(layer, weight) and hasattr(layer, argument):
                setattr(layer, argument, reg)
    rebuilt = keras.Model.from_config(model.get_config())
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _build(family_name: str, inputs: ModelInputs, options: ModelOptions):
    from core.tf_setup import keras

    L = keras.layers
    family = FAMILIES[family_name]
    check_options(family_name, options)
    if len(inputs.input_shape) != 3:
        raise ValueError(f"{family_name} takes images (H, W, C), got input shape {inputs.input_shape}")
    resolution = int(options.resolution or 32)
    if resolution < 32:
        raise ValueError(f"{family_name}: resolution must be >= 32 (five stride-2 stages), "
                         f"got {resolution}")
    channels = inputs.input_shape[-1]
    x_in = keras.Input(inputs.input_shape, name="input")
    x = L.Resizing(resolution, resolution, name=ADAPTER_PREFIX + "resize")(x_in)
    x = L.Conv2D(3, 1, name=ADAPTER_PREFIX + "rgb", trainable=False,
                 kernel_initializer=keras.initializers.Constant(family.input_scale / channels),
                 bias_initializer=keras.initializers.Constant(family.input_offset))(x)
    backbone = family.build(x, options.width)
    for layer in backbone.layers:
        if isinstance(layer, L.BatchNormalization):
            # keras.applications uses 0.99-0.999: too slow for short runs (see BN_MOMENTUM).
            layer.momentum = BN_MOMENTUM
    if options.weights:
        # by_name: the adapter's layers are part of this graph but not of the weights file.
        backbone.load_weights(os.fspath(options.weights), by_name=True)
    x = L.GlobalAveragePooling2D(name=HEAD_PREFIX + "pool")(backbone.output)
    x = L.Dropout(options.dropout, name=HEAD_PREFIX + "dropout")(x)
    out = L.Dense(inputs.num_classes, activation="softmax", name=HEAD_PREFIX + "output",
                  kernel_initializer=options.initializer,
                  kernel_regularizer=regularizer(options))(x)
    model = keras.Model(x_in, out, name=family_name)
    return _regularize_backbone(model, options) if options.l1 or options.l2 else model


_DEFAULTS = dict(optimizer="adam", learning_rate=1e-3, epochs=12, batch_size=64, dropout=0.2,
                 resolution=32, augment=True, schedule="cosine", early_stopping_patience=4,
                 normalization="batch")


def _register_family(name: str, width: float, network: str) -> None:
    def builder(inputs: ModelInputs, options: ModelOptions):
        return _build(name, inputs, options)

    builder.__name__ = name
    register_model(kind="image", task="sign_mnist",
                   description=f"28x28x1 -> resize+RGB adapter -> {network} (width {width:g}) "
                               "-> GAP -> Dropout -> Dense softmax",
                   width=width, **_DEFAULTS)(builder)


# (model name, default width, network): one row per keras.applications family in FAMILIES.
for _row in (("mobilenet_v2", 0.35, "MobileNetV2"),
             ("mobilenet_v3_small", 0.75, "MobileNetV3-Small"),
             ("efficientnet_b0", 0.5, "EfficientNet-B0")):
    _register_family(*_row)
