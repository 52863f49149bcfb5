"""Preprocessing shared by training and serving: one implementation, numpy only.

A model never sees raw data: images pass through `ImagePreprocessor`, text through
`TextTokenizer`. Both serialize to a small dict stored in the artifact manifest (the
tokenizer's vocabulary goes to its own file next to the model), and `from_config`
rebuilds exactly the same transform in the server. tests/test_preprocessing.py checks the
parity between what training fed the model and what the server computes.
"""
from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

IMAGE_SIZE = 28
PIXEL_MAX = 255.0


class PreprocessingError(ValueError):
    """Input that cannot be turned into a model input; the message says what was expected."""


@dataclass(frozen=True)
class ImagePreprocessor:
    """28x28 grayscale uint8 pixels -> float32 tensor of shape (N, 28, 28, 1).

    scaling:
      - "minmax": x / 255, into [0, 1] (the lecture default);
      - "standardize": (x / 255 - mean) / std with the training set's statistics.
    """

    scaling: str = "minmax"
    mean: float = 0.0
    std: float = 1.0
    size: int = IMAGE_SIZE

    SCALINGS = ("minmax", "standardize")

    def __post_init__(self):
        if self.scaling not in self.SCALINGS:
            raise ValueError(
                f"unknown feature scaling {self.scaling!r}; valid: {', '.join(self.SCALINGS)}"
            )
        if self.scaling == "standardize" and not self.std > 0:
            raise ValueError(f"standardize needs std > 0, got {self.std}")

    @classmethod
    def fit(cls, x_train: np.ndarray, scaling: str = "minmax") -> "ImagePreprocessor":
        """Compute the statistics a scaling needs from training pixels (uint8)."""
        if scaling == "standardize":
            scaled = np.asarray(x_train, dtype=np.float64) / PIXEL_MAX
            return cls("standardize", float(scaled.mean()), float(scaled.std()))
        return cls(scaling)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, 1)

    def __call__(self, pixels) -> np.ndarray:
        """Accept (28,28), (N,28,28) or (N,28,28,1) pixels in 0..255; return (N,28,28,1) float32."""
        x = np.asarray(pixels)
        # dtype.kind, not np.issubdtype: this runs on every served request, and issubdtype
        # costs microseconds. b: bool, i/u: integers, f: floats (not complex, object, str).
        kind = x.dtype.kind
        if kind not in "biuf":
            raise PreprocessingError(
                f"pixels must be numbers in 0..255, got an array of {x.dtype}"
            )
        if x.ndim == 2:
            x = x[None]
        if x.ndim == 4 and x.shape[-1] == 1:
            x = x[..., 0]
        if x.ndim != 3 or x.shape[1:] != (self.size, self.size):
            raise PreprocessingError(
                f"expected {self.size}x{self.size} grayscale pixels (one image or a batch), "
                f"got shape {tuple(np.asarray(pixels).shape)}"
            )
        if kind == "f":  # only floats can hold NaN or infinity
            x = x.astype(np.float32, copy=False)
            if not np.isfinite(x).all():
                raise PreprocessingError(
                    "pixels contain NaN or infinity; expected values in 0..255")
        if x.size and (x.min() < 0 or x.max() > PIXEL_MAX):
            raise PreprocessingError(
                f"pixel values must be in 0..255, got min {x.min():g} and max {x.max():g}"
            )
        # Converts integer pixels to float32 in the same pass as the scaling.
        out = np.multiply(x, np.float32(1.0 / PIXEL_MAX), dtype=np.float32)
        if self.scaling == "standardize":
            out = (out - np.float32(self.mean)) * np.float32(1.0 / self.std)
        return out[..., None]

    def to_config(self) -> dict:
        return {"type": "image", "scaling": self.scaling, "mean": self.mean,
                "std": self.std, "size": self.size}

    @classmethod
    def from_config(cls, config: dict, directory: str | Path | None = None) -> "ImagePreprocessor":
        return cls(config.get("scaling", "minmax"), float(config.get("mean", 0.0)),
                   float(config.get("std", 1.0)), int(config.get("size", IMAGE_SIZE)))


_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize_words(text: str) -> list[str]:
    """Lowercase words; IMDB's `<br />` tags are line breaks, not words."""
    return _TOKEN.findall(_BR.sub(" ", text).lower())


def word_ngrams(words: list[str], n: int) -> list[str]:
    """Words with their n-grams up to `n` interleaved, each n-gram right after its last word:
    ["not", "good"], n=2 -> ["not", "good", "not good"]. Interleaving (rather than all words,
    then all pairs) makes truncation to `max_length` cut the end of the review for both."""
    if n == 1:
        return words
    if n == 2 and len(words) >= 2:
        # The same order as the loop below, built with slices, which is several times faster;
        # the server runs this on every review it classifies.
        out = [""] * (2 * len(words) - 1)
        out[0] = words[0]
        out[1::2] = words[1:]
        out[2::2] = [a + " " + b for a, b in zip(words, words[1:])]
        return out
    out = []
    for i, w in enumerate(words):
        out.append(w)
        for k in range(2, min(n, i + 1) + 1):
            out.append(" ".join(words[i - k + 1:i + 1]))
    return out


@dataclass
class TextTokenizer:
    """Words (and optionally word n-grams) -> integer ids, padded/truncated to `max_length`.

    Id 0 is padding, id 1 stands for every out-of-vocabulary token, ids 2.. are the
    `vocab_size - 2` most frequent training tokens (ties broken alphabetically, so a
    vocabulary is reproducible). With `ngrams=2`, word pairs such as "not good" are tokens
    too, each right after its second word (the fastText bag-of-n-grams input: order-free
    models then still see negations). Long reviews keep their first `max_length` tokens.
    """

    vocabulary: list[str] = field(default_factory=list)  # index i -> id i + 2
    max_length: int = 256
    ngrams: int = 1

    PAD_ID = 0
    OOV_ID = 1
    VOCAB_FILE = "vocab.json"

    def __post_init__(self):
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if not 1 <= self.ngrams <= 3:
            raise ValueError(f"ngrams must be 1, 2 or 3, got {self.ngrams}")
        self._index = {w: i + 2 for i, w in enumerate(self.vocabulary)}

    @classmethod
    def fit(cls, texts: Iterable[str], vocab_size: int = 10_000, max_length: int = 256,
            ngrams: int = 1):
        if vocab_size < 3:
            raise ValueError(f"vocab_size must be >= 3 (pad, OOV, one word), got {vocab_size}")
        if not 1 <= ngrams <= 3:
            raise ValueError(f"ngrams must be 1, 2 or 3, got {ngrams}")
        counts = Counter()
        for t in texts:
            counts.update(word_ngrams(tokenize_words(t), ngrams))
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: vocab_size - 2]
        return cls([w for w, _ in ranked], max_length, ngrams)

    @property
    def vocab_size(self) -> int:
        """Size of the id space, pad and OOV included (the Embedding's input_dim)."""
        return len(self.vocabulary) + 2

    def tokens(self, text: str) -> list[str]:
        """The tokens of `text` before truncation (words, or words and n-grams)."""
        return word_ngrams(tokenize_words(text), self.ngrams)

    def encode_one(self, text: str) -> list[int]:
        tokens = self.tokens(text)[: self.max_length]
        return list(map(self._index.get, tokens, itertools.repeat(self.OOV_ID)))

    def __call__(self, texts: Sequence[str] | str) -> np.ndarray:
        """Texts -> int32 array (N, max_length), padded with 0 at the end."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.max_length), dtype=np.int32)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise PreprocessingError(f"text #{i} must be a string, got {type(t).__name__}")
            ids = self.encode_one(t)
            out[i, : len(ids)] = ids
        return out

    def decode(self, ids: Iterable[int]) -> str:
        words = []
        for i in ids:
            i = int(i)
            if i == self.PAD_ID:
                continue
            words.append("<oov>" if i == self.OOV_ID else self.vocabulary[i - 2])
        return " ".join(words)

    def to_config(self) -> dict:
        return {"type": "text", "max_length": self.max_length, "vocab_size": self.vocab_size,
                "ngrams": self.ngrams, "vocab_file": self.VOCAB_FILE, "pad_id": self.PAD_ID,
                "oov_id": self.OOV_ID}

    def save_vocabulary(self, directory: str | Path) -> Path:
        path = Path(directory) / self.VOCAB_FILE
        path.write_text(json.dumps(self.vocabulary, ensure_ascii=False))
        return path

    @classmethod
    def from_config(cls, config: dict, directory: str | Path | None = None) -> "TextTokenizer":
        if directory is None:
            raise ValueError("a text preprocessor needs the artifact directory for its vocabulary")
        path = Path(directory) / config.get("vocab_file", cls.VOCAB_FILE)
        try:
            vocabulary = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"tokenizer vocabulary {path} is missing") from None
        tok = cls(vocabulary, int(config["max_length"]), int(config.get("ngrams", 1)))
        if "vocab_size" in config and tok.vocab_size != int(config["vocab_size"]):
            raise ValueError(
                f"{path}: vocabulary has {tok.vocab_size} ids, manifest says {config['vocab_size']}"
            )
        return tok


class VectorPreprocessor:
    """Identity for small float vectors (the XOR lecture set)."""

    def __call__(self, x) -> np.ndarray:
        return np.asarray(x, dtype=np.float32)

    def to_config(self) -> dict:
        return {"type": "vector"}

    @classmethod
    def from_config(cls, config: dict, directory: str | Path | None = None) -> "VectorPreprocessor":
        return cls()


# The manifest's preprocessing "type" -> the class that rebuilds it (`from_config`). An input
# kind with its own preprocessing is one row here.
PREPROCESSORS = {"image": ImagePreprocessor, "text": TextTokenizer, "vector": VectorPreprocessor}


def preprocessor_from_config(config: dict, directory: str | Path | None = None):
    """Rebuild the transform a manifest's `preprocessing` section describes."""
    kind = config.get("type")
    if kind not in PREPROCESSORS:
        raise ValueError(f"unknown preprocessing type {kind!r}; valid: {', '.join(PREPROCESSORS)}")
    return PREPROCESSORS[kind].from_config(config, directory)
