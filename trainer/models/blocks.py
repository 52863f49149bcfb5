"""Small building blocks shared by the hand-written families: every Dense/Conv layer gets the
recipe's initializer and L1/L2 penalty, and every classifier ends in `classifier_head`."""
from __future__ import annotations

from trainer.models.registry import ModelOptions

# Keras' default 0.99 needs ~500 steps before the moving statistics used at inference forget
# their initial values; a short run on the bundled samples (~30 steps per epoch) then predicts
# at chance level. 0.9 converges in ~50 steps and is as good on full data.
BN_MOMENTUM = 0.9


def regularizer(options: ModelOptions):
    from core.tf_setup import keras

    if options.l1 or options.l2:
        return keras.regularizers.L1L2(l1=options.l1, l2=options.l2)
    return None


def scaled(units: int, options: ModelOptions) -> int:
    """Units or filters times the width multiplier, at least 1."""
    return max(1, int(round(units * options.width)))


def dense(x, units: int, options: ModelOptions, activation="relu", name=None):
    """Dense -> (BatchNorm) -> activation -> (Dropout), the lecture's DNN block."""
    from core.tf_setup import keras

    L = keras.layers
    x = L.Dense(scaled(units, options), kernel_initializer=options.initializer,
                kernel_regularizer=regularizer(options), use_bias=not options.batch_norm,
                name=name)(x)
    if options.batch_norm:
        x = L.BatchNormalization(momentum=BN_MOMENTUM)(x)
    x = L.Activation(activation)(x)
    if options.dropout:
        x = L.Dropout(options.dropout)(x)
    return x


def conv(x, filters: int, options: ModelOptions, kernel_size=3, padding="same"):
    """Conv2D -> (BatchNorm) -> ReLU."""
    from core.tf_setup import keras

    L = keras.layers
    x = L.Conv2D(scaled(filters, options), kernel_size, padding=padding,
                 kernel_initializer=options.initializer, kernel_regularizer=regularizer(options),
                 use_bias=not options.batch_norm)(x)
    if options.batch_norm:
        x = L.BatchNormalization(momentum=BN_MOMENTUM)(x)
    return L.Activation("relu")(x)


def classifier_head(x, num_classes: int, options: ModelOptions, name="head_output"):
    """Two classes: Dense(1, sigmoid) = p(class 1); more: Dense(C, softmax).

    The manifest's output.activation says which (trainer.train reads the output width)."""
    from core.tf_setup import keras

    units, activation = (1, "sigmoid") if num_classes == 2 else (num_classes, "softmax")
    return keras.layers.Dense(units, activation=activation, kernel_initializer=options.initializer,
                              kernel_regularizer=regularizer(options), name=name)(x)
