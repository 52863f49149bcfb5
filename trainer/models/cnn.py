"""Convolutional models for 28x28 grayscale images (Fashion-MNIST, MNIST, Sign-Language).

Input: float32 (N, 28, 28, 1) from ImagePreprocessor; output: softmax probabilities.
"""
from __future__ import annotations

from trainer.models.blocks import classifier_head, conv, dense
from trainer.models.registry import ModelInputs, ModelOptions, register_model


def _conv_pool_net(inputs: ModelInputs, options: ModelOptions, stages: tuple[tuple[int, ...], ...],
                   dense_units: int, conv_dropout: float, name: str):
    """stages: filters of the convs in each stage; every stage ends in a 2x2 max-pool."""
    from core.tf_setup import keras

    L = keras.layers
    x_in = keras.Input(inputs.input_shape, name="input")
    x = x_in
    for filters in stages:
        for f in filters:
            x = conv(x, f, options)
        x = L.MaxPooling2D(2)(x)
        if conv_dropout:
            x = L.Dropout(conv_dropout)(x)
    x = L.Flatten()(x)
    x = dense(x, dense_units, options)
    return keras.Model(x_in, classifier_head(x, inputs.num_classes, options), name=name)


@register_model(kind="image", task="fashion_mnist",
                description="28x28x1 -> [Conv32 BN]-Pool -> [Conv64 BN]-Pool -> Dense128 Dropout "
                            "-> Dense10 softmax",
                optimizer="adam", learning_rate=1e-3, epochs=15, batch_size=64, dropout=0.4,
                normalization="batch", schedule="cosine", early_stopping_patience=4)
def fashion_cnn(inputs: ModelInputs, options: ModelOptions):
    return _conv_pool_net(inputs, options, ((32,), (64,)), 128, 0.25, "fashion_cnn")


@register_model(kind="image", task="mnist",
                description="28x28x1 -> Conv32-Pool -> Conv64-Pool -> Dense128 Dropout "
                            "-> Dense10 softmax (2 conv + 2x2 max-pool, 2 dense)",
                optimizer="adam", learning_rate=1e-3, epochs=8, batch_size=64, dropout=0.5,
                early_stopping_patience=3)
def mnist_cnn(inputs: ModelInputs, options: ModelOptions):
    return _conv_pool_net(inputs, options, ((32,), (64,)), 128, 0.0, "mnist_cnn")


@register_model(kind="image", task="sign_mnist",
                description="28x28x1 -> [Conv32 BN]x2-Pool -> [Conv64 BN]-Pool -> Dense128 "
                            "Dropout -> Dense24 softmax; trained with augmentation",
                optimizer="adam", learning_rate=1e-3, epochs=12, batch_size=64, dropout=0.4,
                normalization="batch", augment=True, schedule="cosine", early_stopping_patience=4)
def sign_cnn(inputs: ModelInputs, options: ModelOptions):
    return _conv_pool_net(inputs, options, ((32, 32), (64,)), 128, 0.2, "sign_cnn")


@register_model(kind="image", task="fashion_mnist",
                description="28x28x1 -> [Conv32 BN]-Pool -> [Conv64 BN]-Pool -> [Conv128 BN]-Pool "
                            "-> Dense128 Dropout -> Dense10 softmax (fashion_cnn + a third stage)",
                optimizer="adam", learning_rate=1e-3, epochs=20, batch_size=64, dropout=0.4,
                normalization="batch", schedule="cosine", early_stopping_patience=6)
def fashion_cnn3(inputs: ModelInputs, options: ModelOptions):
    return _conv_pool_net(inputs, options, ((32,), (64,), (128,)), 128, 0.1, "fashion_cnn3")
