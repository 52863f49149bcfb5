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


def _per_channel(value) -> float | tuple[float, ...]:
    if isinstance(value, (list, tuple, np.ndarray)):
        values = tuple(float(v) for v in value)
        return values[0] if len(values) == 1 else values
    return float(value)


@dataclass(frozen=True)
class ImagePreprocessor:
    """uint8 pixels (height, width[, channels]) -> float32 tensor (N, height, width, channels).

    First a scaling (a row of SCALINGS: pixel * factor + offset), then, when `mean`/`std` are
    not 0/1, (x - mean) / std per channel (a number, or one per channel):
      - "minmax": x / 255, into [0, 1] (the lecture default);
      - "standardize": minmax, then the training set's mean and std (`fit` computes them);
      - "symmetric": x / 127.5 - 1, into [-1, 1] (MobileNet's and EfficientNet's convention);
      - "raw": pixel values as floats 0..255 (models with their own Rescaling layer).
    Grayscale images may come without their channel axis: (28, 28) or (N, 28, 28).
    """

    scaling: str = "minmax"
    mean: float | tuple[float, ...] = 0.0
    std: float | tuple[float, ...] = 1.0
    height: int = IMAGE_SIZE
    width: int = IMAGE_SIZE
    channels: int = 1

    # scaling -> (factor, offset)
    SCALINGS = {"minmax": (1.0 / PIXEL_MAX, 0.0), "standardize": (1.0 / PIXEL_MAX, 0.0),
                "symmetric": (2.0 / PIXEL_MAX, -1.0), "raw": (1.0, 0.0)}

    def __post_init__(self):
        if self.scaling not in self.SCALINGS:
            raise ValueError(
                f"unknown feature scaling {self.scaling!r}; valid: {', '.join(self.SCALINGS)}"
            )
        object.__setattr__(self, "mean", _per_channel(self.mean))
        object.__setattr__(self, "std", _per_channel(self.std))
        for name in ("height", "width", "channels"):
            if not isinstance(getattr(self, name), (int, np.integer)) or getattr(self, name) < 1:
                raise ValueError(f"image {name} must be a positive integer, got "
                                 f"{getattr(self, name)!r}")
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        for name, v in (("mean", mean), ("std", std)):
            if v.ndim and len(v) != self.channels:
                raise ValueError(f"{name} has {len(v)} values for {self.channels} channel(s)")
        if not (std > 0).all():
            raise ValueError(f"std must be > 0, got {self.std}")
        factor, offset = self.SCALINGS[self.scaling]
        # Folded into one multiply-add: x * (factor / std) + (offset - mean) / std.
        object.__setattr__(self, "_scale", np.float32(factor) / std)
        object.__setattr__(self, "_shift", (np.float32(offset) - mean) / std)
        object.__setattr__(self, "_affine", bool((mean != 0).any() or (std != 1).any()
                                                 or offset != 0))

    @classmethod
    def fit(cls, x_train: np.ndarray, scaling: str = "minmax",
            rows: np.ndarray | None = None) -> "ImagePreprocessor":
        """The preprocessor for training pixels (N, H, W) or (N, H, W, C), uint8; "standardize"
        takes its mean and std (per channel for colour) from them. A memory-mapped split (a
        user's image folder, core.userdata) is summed 4,096 images at a time, over `rows`."""
        if isinstance(x_train, np.memmap):
            return cls._fit_streamed(x_train, scaling, rows)
        x = np.asarray(x_train) if rows is None else np.asarray(x_train)[rows]
        height, width = int(x.shape[1]), int(x.shape[2])
        channels = int(x.shape[3]) if x.ndim == 4 else 1
        if scaling == "standardize":
            axes = tuple(range(x.ndim - 1)) if channels > 1 else None
            scaled = x.astype(np.float64) / PIXEL_MAX
            mean, std = scaled.mean(axis=axes), scaled.std(axis=axes)
            return cls("standardize", _per_channel(mean), _per_channel(std), height, width,
                       channels)
        return cls(scaling, height=height, width=width, channels=channels)

    @classmethod
    def _fit_streamed(cls, x: np.memmap, scaling: str, rows) -> "ImagePreprocessor":
        height, width = int(x.shape[1]), int(x.shape[2])
        channels = int(x.shape[3]) if x.ndim == 4 else 1
        if scaling != "standardize":
            return cls(scaling, height=height, width=width, channels=channels)
        rows = np.sort(np.arange(len(x)) if rows is None else np.asarray(rows))
        total = np.zeros(channels)
        squares = np.zeros(channels)
        for i in range(0, len(rows), 4096):
            chunk = x[rows[i:i + 4096]].astype(np.float64).reshape(-1, channels) / PIXEL_MAX
            total += chunk.sum(axis=0)
            squares += (chunk ** 2).sum(axis=0)
        n = len(rows) * height * width
        mean = total / n
        std = np.sqrt(np.maximum(squares / n - mean ** 2, 0.0))
        return cls("standardize", _per_channel(mean), _per_channel(std), height, width, channels)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def __call__(self, pixels) -> np.ndarray:
        """One image or a batch, pixels in 0..255 -> (N, height, width, channels) float32."""
        x = np.asarray(pixels)
        # dtype.kind, not np.issubdtype: this runs on every served request, and issubdtype
        # costs microseconds. b: bool, i/u: integers, f: floats (not complex, object, str).
        kind = x.dtype.kind
        if kind not in "biuf":
            raise PreprocessingError(
                f"pixels must be numbers in 0..255, got an array of {x.dtype}"
            )
        if self.channels == 1:
            if x.ndim == 2:
                x = x[None]
            if x.ndim == 4 and x.shape[-1] == 1:
                x = x[..., 0]
            ok = x.ndim == 3 and x.shape[1:] == (self.height, self.width)
        else:
            if x.ndim == 3:
                x = x[None]
            ok = x.ndim == 4 and x.shape[1:] == self.input_shape
        if not ok:
            raise PreprocessingError(
                f"expected {self.describe_pixels()} (one image or a batch), "
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
        out = np.multiply(x, self._scale, dtype=np.float32)
        if self._affine:
            out += self._shift
        return out[..., None] if self.channels == 1 else out

    def describe_pixels(self) -> str:
        colour = "grayscale" if self.channels == 1 else f"{self.channels}-channel"
        return f"{self.height}x{self.width} {colour} pixels"

    def to_config(self) -> dict:
        return {"type": "image", "scaling": self.scaling, "mean": self.mean,
                "std": self.std, "height": self.height, "width": self.width,
                "channels": self.channels}

    @classmethod
    def from_config(cls, config: dict, directory: str | Path | None = None) -> "ImagePreprocessor":
        # Version-1 manifests have a square grayscale `size`.
        size = int(config.get("size", IMAGE_SIZE))
        return cls(config.get("scaling", "minmax"), config.get("mean", 0.0),
                   config.get("std", 1.0), int(config.get("height", size)),
                   int(config.get("width", size)), int(config.get("channels", 1)))


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


class LazyInputs:
    """Model inputs computed when indexed: rows of a raw split that stays on disk (a user's
    memory-mapped image folder, core.userdata) through the preprocessor, a batch at a time, so
    that training, evaluation and benchmarks never hold the split's float inputs whole.
    Indexing with a slice or an index array gives a numpy batch; `shape`, `dtype` and `len`
    are those of the whole. `np.asarray` computes every row (what a Keras fine-tune on a whole
    split does; compress's recipes bound it with train_limit)."""

    def __init__(self, raw: np.ndarray, preprocess, rows: np.ndarray | None = None):
        self.raw, self.preprocess = raw, preprocess
        self.rows = np.arange(len(raw)) if rows is None else np.asarray(rows)
        first = preprocess(raw[self.rows[:1]]) if len(self.rows) else preprocess(raw[:1])
        self.shape = (len(self.rows), *first.shape[1:])
        self.dtype = first.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[key:key + 1][0] if key >= 0 else self[len(self) + key]
        return self.preprocess(self.raw[self.rows[key]])

    def batches(self, size: int):
        for i in range(0, len(self), size):
            yield self[i:i + size]

    def __iter__(self):
        for batch in self.batches(256):
            yield from batch

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate(list(self.batches(4096))) if len(self) else \
            np.zeros(self.shape, self.dtype)
        return out if dtype is None else out.astype(dtype)


# The manifest's preprocessing "type" -> the class that rebuilds it (`from_config`). An input
# kind with its own preprocessing is one row here.
PREPROCESSORS = {"image": ImagePreprocessor, "text": TextTokenizer, "vector": VectorPreprocessor}


def preprocessor_from_config(config: dict, directory: str | Path | None = None):
    """Rebuild the transform a manifest's `preprocessing` section describes."""
    kind = config.get("type")
    if kind not in PREPROCESSORS:
        raise ValueError(f"unknown preprocessing type {kind!r}; valid: {', '.join(PREPROCESSORS)}")
    return PREPROCESSORS[kind].from_config(config, directory)
