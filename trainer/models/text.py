"""Text classifiers for IMDB sentiment.

Input: int32 (N, max_length) word ids from TextTokenizer (0 = padding, 1 = unknown word);
output: (N, 1) sigmoid = p(positive).
"""
from __future__ import annotations

from trainer.models.blocks import classifier_head, dense, regularizer, scaled
from trainer.models.registry import ModelInputs, ModelOptions, register_model


def _require_vocab(inputs: ModelInputs, name: str) -> int:
    if not inputs.vocab_size:
        raise ValueError(f"model {name!r} needs ModelInputs.vocab_size (the tokenizer's id space)")
    return inputs.vocab_size


@register_model(kind="text", task="imdb",
                description="ids -> Embedding(10000,16) -> GlobalAveragePooling1D -> Dense16 ReLU "
                            "-> Dense1 sigmoid (lecture model)",
                optimizer="adam", learning_rate=1e-3, epochs=30, batch_size=512,
                vocab_size=10_000, max_length=256, early_stopping_patience=3,
                monitor="val_loss")
def imdb_gap(inputs: ModelInputs, options: ModelOptions):
    from core.tf_setup import keras

    L = keras.layers
    x_in = keras.Input(inputs.input_shape, dtype="int32", name="input")
    x = L.Embedding(_require_vocab(inputs, "imdb_gap"), scaled(16, options))(x_in)
    # Padding ids are averaged in too (no mask): tf2onnx and TFLite export masks poorly, and
    # with 256-token reviews the model learns to ignore the zero embedding.
    x = L.GlobalAveragePooling1D()(x)
    x = dense(x, 16, options)
    return keras.Model(x_in, classifier_head(x, inputs.num_classes, options), name="imdb_gap")


@register_model(kind="text", task="imdb",
                description="ids -> Embedding(20000,64) Dropout -> Conv1D(250,3) ReLU -> "
                            "GlobalMaxPool -> Dense250 Dropout -> Dense1 sigmoid (word-trigram CNN)",
                optimizer="adam", learning_rate=1e-3, epochs=6, batch_size=64, dropout=0.3,
                vocab_size=20_000, max_length=400, early_stopping_patience=2,
                monitor="val_loss")
def imdb_cnn(inputs: ModelInputs, options: ModelOptions):
    """The stronger IMDB model: a 1-D CNN detects sentiment phrases anywhere in the review.
    Every op (Gather, Conv, ReduceMax, MatMul) exports to ONNX and TFLite."""
    from core.tf_setup import keras

    L = keras.layers
    x_in = keras.Input(inputs.input_shape, dtype="int32", name="input")
    x = L.Embedding(_require_vocab(inputs, "imdb_cnn"), scaled(64, options))(x_in)
    x = L.Dropout(options.dropout)(x)
    x = L.Conv1D(scaled(250, options), 3, activation="relu", kernel_initializer=options.initializer,
                 kernel_regularizer=regularizer(options))(x)
    x = L.GlobalMaxPooling1D()(x)
    x = dense(x, 250, options)
    return keras.Model(x_in, classifier_head(x, inputs.num_classes, options), name="imdb_cnn")


@register_model(kind="text", task="imdb",
                description="word + word-pair ids -> Embedding(60000,32) -> "
                            "GlobalAveragePooling1D -> Dropout -> Dense1 sigmoid (fastText-style "
                            "bag of bigrams; the stronger IMDB model)",
                optimizer="adam", learning_rate=3e-3, epochs=40, batch_size=128,
                vocab_size=60_000, max_length=800, ngrams=2, early_stopping_patience=4,
                monitor="val_accuracy")
def imdb_bigram(inputs: ModelInputs, options: ModelOptions):
    """The stronger IMDB model: the lecture model's averaged embeddings, fed words *and* word
    pairs (TextTokenizer ngrams=2), so that "not good" and "good" get different vectors
    (Joulin et al. 2017, "Bag of Tricks for Efficient Text Classification"). 800 tokens hold
    about 400 words, the whole of 87% of reviews. One Gather, a mean and a dot product: it
    trains in about 2 minutes on 2 cores and answers in microseconds."""
    from core.tf_setup import keras

    L = keras.layers
    x_in = keras.Input(inputs.input_shape, dtype="int32", name="input")
    x = L.Embedding(_require_vocab(inputs, "imdb_bigram"), scaled(32, options))(x_in)
    x = L.GlobalAveragePooling1D()(x)
    if options.dropout:
        x = L.Dropout(options.dropout)(x)
    return keras.Model(x_in, classifier_head(x, inputs.num_classes, options), name="imdb_bigram")
