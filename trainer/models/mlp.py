"""Fully connected models: the lecture MLPs on XOR, Fashion-MNIST, MNIST and Sign-Language.

Input: float32 (N, 28, 28, 1) from ImagePreprocessor (XOR: (N, 2)); output: probabilities.
"""
from __future__ import annotations

from trainer.models.blocks import activate, classifier_head, dense, scaled
from trainer.models.registry import ModelInputs, ModelOptions, register_model


def _mlp(inputs: ModelInputs, options: ModelOptions, hidden: tuple[int, ...], name: str):
    from core.tf_setup import keras

    x_in = keras.Input(inputs.input_shape, name="input")
    x = keras.layers.Flatten()(x_in) if len(inputs.input_shape) > 1 else x_in
    for units in hidden:
        x = dense(x, units, options)
    return keras.Model(x_in, classifier_head(x, inputs.num_classes, options), name=name)


@register_model(kind="vector", task="xor",
                description="(N,2) -> Dense8 tanh -> Dense1 sigmoid; the lecture XOR network",
                optimizer="adam", learning_rate=0.05, epochs=300, batch_size=4,
                validation_split=0.0, early_stopping_patience=0)
def xor_mlp(inputs: ModelInputs, options: ModelOptions):
    from core.tf_setup import keras

    x_in = keras.Input(inputs.input_shape, name="input")
    # tanh rather than ReLU: with 8 units a ReLU net can start with dead units and stall at
    # 3/4; tanh solves XOR from every seed we tried.
    x = keras.layers.Dense(scaled(8, options), kernel_initializer=options.initializer)(x_in)
    x = activate(x, options, default="tanh")
    return keras.Model(x_in, classifier_head(x, inputs.num_classes, options), name="xor_mlp")


@register_model(kind="image", task="fashion_mnist",
                description="28x28x1 -> Flatten -> Dense128 ReLU -> Dense10 softmax (lecture model)",
                optimizer="adam", learning_rate=1e-3, epochs=20, batch_size=32,
                early_stopping_patience=4)
def fashion_mlp(inputs: ModelInputs, options: ModelOptions):
    return _mlp(inputs, options, (128,), "fashion_mlp")


@register_model(kind="image", task="mnist",
                description="28x28x1 -> 3 x (Dense256 BN ReLU Dropout) -> Dense10 softmax",
                optimizer="adam", learning_rate=1e-3, epochs=15, batch_size=128,
                dropout=0.2, normalization="batch", early_stopping_patience=3)
def mnist_dnn(inputs: ModelInputs, options: ModelOptions):
    return _mlp(inputs, options, (256, 256, 256), "mnist_dnn")


@register_model(kind="image", task="sign_mnist",
                description="28x28x1 -> Dense1024-512-256 ReLU -> Dense24 softmax (lecture model)",
                optimizer="adam", learning_rate=1e-3, epochs=20, batch_size=64,
                augment=True, early_stopping_patience=5)
def sign_mlp(inputs: ModelInputs, options: ModelOptions):
    # Augmentation is on by default: the test signers differ from the training signers, and a
    # plain MLP memorizes pixel positions (validation ~100%, test far lower) without it.
    return _mlp(inputs, options, (1024, 512, 256), "sign_mlp")

