"""Small building blocks shared by the hand-written families: every Dense/Conv layer gets the
recipe's initializer and L1/L2 penalty, then the recipe's normalization and activation (one
registry row each, below), and every classifier ends in `classifier_head`."""
from __future__ import annotations

from typing import Callable, Mapping

from trainer.models.registry import ModelOptions, ModelOptionsError

# Keras' default 0.99 needs ~500 steps before the moving statistics used at inference forget
# their initial values; a short run on the bundled samples (~30 steps per epoch) then predicts
# at chance level. 0.9 converges in ~50 steps and is as good on full data.
BN_MOMENTUM = 0.9


def _group_norm(x, L, options: ModelOptions):
    """GroupNormalization of x. On feature maps it is built from stock layers instead of
    keras' GroupNormalization: that layer reshapes with a run-time shape, and TF 2.21's TFLite
    converter then emits a BROADCAST_TO that fails for a dynamic batch. Here the reshapes are
    static, LayerNormalization (no scale, no shift) normalizes each group over its positions
    and channels, and a 1x1 DepthwiseConv2D is the per-channel scale and shift (same math)."""
    groups, shape = options.norm_groups, tuple(int(d) for d in x.shape[1:])
    if shape[-1] % groups:
        raise ModelOptionsError(
            f"normalization 'group': norm_groups {groups} does not divide the {shape[-1]} "
            f"channels of {x.name.split('/')[0]!r} (width {options.width:g}); pick a "
            "norm_groups that divides every hidden layer's width")
    if len(shape) != 3:  # not an (H, W, C) feature map: Keras' layer converts fine
        return L.GroupNormalization(groups=groups)(x)
    positions = 1
    for d in shape[:-1]:
        positions *= d
    x = L.Reshape((positions, groups, shape[-1] // groups))(x)
    x = L.LayerNormalization(axis=[1, 3], center=False, scale=False, epsilon=1e-3)(x)
    x = L.Reshape(shape)(x)
    return L.DepthwiseConv2D(1, depthwise_initializer="ones")(x)


# options.normalization -> applied after each hidden Dense/Conv: (x, keras.layers, options) -> y;
# None: nothing. Every one of these learns a per-channel shift, so the Dense/Conv before it
# drops its bias. "layer" normalizes each position over its channels (as in ConvNeXt);
# "group" with norm_groups=1 normalizes over the whole H x W x C instead.
# Recipe.NORMALIZATIONS names the same rows (a test checks both agree).
NORMALIZATIONS: Mapping[str, Callable | None] = {
    "none": None,
    "batch": lambda x, L, o: L.BatchNormalization(momentum=BN_MOMENTUM)(x),
    "group": _group_norm,
    "layer": lambda x, L, o: L.LayerNormalization()(x),
}
DEFAULT_NORMALIZATION = "none"

# options.activation -> the activation layer of each hidden block, from keras.layers.
# Recipe.ACTIVATIONS names the same rows plus "default" (ModelOptions.activation None), which
# is DEFAULT_ACTIVATION here. LeakyReLU keeps Keras' own slope (0.3) for negative inputs.
ACTIVATIONS: Mapping[str, Callable] = {
    "relu": lambda L: L.Activation("relu"),
    "leaky_relu": lambda L: L.LeakyReLU(),
    "elu": lambda L: L.ELU(),
    "tanh": lambda L: L.Activation("tanh"),
}
DEFAULT_ACTIVATION = "relu"


def regularizer(options: ModelOptions):
    from core.tf_setup import keras

    if options.l1 or options.l2:
        return keras.regularizers.L1L2(l1=options.l1, l2=options.l2)
    return None


def _row(table: Mapping, key: str, what: str):
    try:
        return table[key]
    except KeyError:
        raise ModelOptionsError(f"unknown {what} {key!r}; valid: {', '.join(table)}") from None


def _normalization(options: ModelOptions) -> str:
    return options.normalization or DEFAULT_NORMALIZATION


def normalize(x, options: ModelOptions):
    """x -> the options' normalization (x itself for "none")."""
    from core.tf_setup import keras

    make = _row(NORMALIZATIONS, _normalization(options), "normalization")
    return x if make is None else make(x, keras.layers, options)


def activate(x, options: ModelOptions, default: str = DEFAULT_ACTIVATION):
    """x -> the options' activation layer (`default` when options.activation is None)."""
    from core.tf_setup import keras

    return _row(ACTIVATIONS, options.activation or default, "activation")(keras.layers)(x)


def scaled(units: int, options: ModelOptions) -> int:
    """Units or filters times the width multiplier, at least 1."""
    return max(1, int(round(units * options.width)))


def dense(x, units: int, options: ModelOptions, name=None):
    """Dense -> (normalization) -> activation -> (Dropout), the lecture's DNN block."""
    from core.tf_setup import keras

    L = keras.layers
    x = L.Dense(scaled(units, options), kernel_initializer=options.initializer,
                kernel_regularizer=regularizer(options),
                use_bias=NORMALIZATIONS.get(_normalization(options)) is None, name=name)(x)
    x = activate(normalize(x, options), options)
    if options.dropout:
        x = L.Dropout(options.dropout)(x)
    return x


def conv(x, filters: int, options: ModelOptions, kernel_size=3, padding="same"):
    """Conv2D -> (normalization) -> activation."""
    from core.tf_setup import keras

    x = keras.layers.Conv2D(scaled(filters, options), kernel_size, padding=padding,
                            kernel_initializer=options.initializer,
                            kernel_regularizer=regularizer(options),
                            use_bias=NORMALIZATIONS.get(_normalization(options)) is None)(x)
    return activate(normalize(x, options), options)


def classifier_head(x, num_classes: int, options: ModelOptions, name="head_output"):
    """Two classes: Dense(1, sigmoid) = p(class 1); more: Dense(C, softmax).

    The manifest's output.activation says which (trainer.train reads the output width)."""
    from core.tf_setup import keras

    units, activation = (1, "sigmoid") if num_classes == 2 else (num_classes, "softmax")
    return keras.layers.Dense(units, activation=activation, kernel_initializer=options.initializer,
                              kernel_regularizer=regularizer(options), name=name)(x)
