"""Datasets: one loader for every task, from real data, offline.

    from core.data import load
    ds = load("fashion_mnist", "train")          # ds.x uint8 (N,28,28), ds.y int64 (N,)
    ds = load("imdb", "test", data_dir="../shared/data")   # ds.x object array of str

Where the data comes from, first match wins:
  1. a data directory: the `data_dir` argument, else the DATA_DIR environment variable.
     It may hold `<name>.npz` (the layout of ../shared/data) or the original formats:
     Fashion-MNIST/MNIST IDX files (`train-images-idx3-ubyte.gz`, ...), Kaggle's
     `sign_mnist_train.csv`/`sign_mnist_test.csv`, or the `aclImdb/` folder; either directly
     in the directory or in a subfolder named after the dataset.
  2. the Keras download cache (~/.keras/datasets, or $KERAS_HOME/datasets), which
     `download()` fills with `keras.datasets` / `keras.utils.get_file`.
  3. the bundled sample in data/samples/ (a small stratified real subset, see
     data/samples/README.md), so a fresh clone runs offline.

Sign-Language labels: Kaggle's raw labels are 0..24 with 9 (J) absent. Loaders return the
24 contiguous classes 0..23 (A..Y without J); `core.tasks.SIGN_RAW_LABELS` maps back.
TensorFlow-free; only `download()` imports Keras.
"""
from __future__ import annotations

import csv
import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from core.tasks import SIGN_RAW_LABELS

SPLITS = ("train", "test")
REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = REPO_ROOT / "data" / "samples"

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_SIGN_RAW_TO_CLASS = np.full(256, -1, dtype=np.int64)
_SIGN_RAW_TO_CLASS[list(SIGN_RAW_LABELS)] = np.arange(len(SIGN_RAW_LABELS))


class DatasetNotFoundError(FileNotFoundError):
    """No source holds the dataset; the message lists every place looked at."""


class DatasetFormatError(ValueError):
    """A file was found but does not have the expected format."""


@dataclass
class Dataset:
    name: str
    split: str
    x: np.ndarray
    y: np.ndarray
    source: str  # where it was read from, for logs and manifests

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, n: int, seed: int = 0) -> "Dataset":
        """A stratified subset of n examples (for quick runs)."""
        idx = stratified_indices(self.y, n, seed)
        return Dataset(self.name, self.split, self.x[idx], self.y[idx], f"{self.source}[:{n}]")


def stratified_indices(y: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of n examples with class proportions kept, in a seeded random order."""
    y = np.asarray(y)
    if n >= len(y):
        return np.random.default_rng(seed).permutation(len(y))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    quota = np.floor(counts / len(y) * n).astype(int)
    # Hand out what flooring lost to the largest remainders, deterministically.
    short = n - quota.sum()
    order = np.argsort(-(counts / len(y) * n - quota), kind="stable")
    quota[order[:short]] += 1
    picked = [rng.choice(np.flatnonzero(y == c), q, replace=False) for c, q in zip(classes, quota)]
    return rng.permutation(np.concatenate(picked))


def sign_raw_to_class(raw: np.ndarray) -> np.ndarray:
    raw = np.asarray(raw, dtype=np.int64)
    if raw.size and (raw.min() < 0 or raw.max() > 255):
        raise DatasetFormatError(f"sign labels out of range: {raw.min()}..{raw.max()}")
    out = _SIGN_RAW_TO_CLASS[raw]
    if (out < 0).any():
        bad = sorted(set(raw[out < 0].tolist()))
        raise DatasetFormatError(
            f"sign-language labels {bad} are not letters A..Y without J (valid raw labels: "
            f"0..24 except 9)"
        )
    return out


# ---------------------------------------------------------------- format readers

def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not), as used by MNIST and Fashion-MNIST."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetFormatError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DatasetFormatError(f"{path}: header says {dims}, file has {arr.size} values")
    return arr.reshape(dims)


def _read_images_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as d:
        try:
            return d[f"x_{split}"], d[f"y_{split}"].astype(np.int64)
        except KeyError as e:
            raise DatasetFormatError(f"{path}: missing key {e}; expected x_{split}, y_{split}") from None


def _read_imdb_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as d:
        try:
            blob = d[f"{split}_text_utf8"].tobytes()
            off = d[f"{split}_offsets"]
            y = d[f"y_{split}"].astype(np.int64)
        except KeyError as e:
            raise DatasetFormatError(
                f"{path}: missing key {e}; expected {split}_text_utf8, {split}_offsets, y_{split}"
            ) from None
    texts = np.empty(len(off) - 1, dtype=object)
    texts[:] = [blob[off[i] : off[i + 1]].decode("utf-8") for i in range(len(off) - 1)]
    return texts, y


def _read_sign_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[0] != "label" or len(header) != 785:
            raise DatasetFormatError(f"{path}: expected header label,pixel1..pixel784")
        rows = np.array([[int(v) for v in row] for row in reader if row], dtype=np.int64)
    if rows.size == 0:
        return np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64)
    return rows[:, 1:].astype(np.uint8).reshape(-1, 28, 28), rows[:, 0]


def _read_aclimdb(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    texts, labels = [], []
    for label, sub in ((0, "neg"), (1, "pos")):
        d = folder / split / sub
        if not d.is_dir():
            raise DatasetFormatError(f"{folder}: missing {split}/{sub}/ (an aclImdb folder has "
                                     "train/{pos,neg} and test/{pos,neg})")
        # aclImdb files are <id>_<rating>.txt; sort by id for a stable order.
        files = sorted(d.glob("*.txt"), key=lambda p: int(p.stem.split("_")[0]))
        texts += [p.read_text(encoding="utf-8") for p in files]
        labels += [label] * len(files)
    x = np.empty(len(texts), dtype=object)
    x[:] = texts
    return x, np.array(labels, dtype=np.int64)


# ---------------------------------------------------------------- formats
# A format knows where its files sit inside a folder and how to read one split from them.
# `find(folder, dataset, split)` returns the path to read (a file or a folder) or None.

@dataclass(frozen=True)
class Format:
    name: str
    find: Callable[[Path, str, str], Path | None]
    read: Callable[[Path, str], tuple[np.ndarray, np.ndarray]]
    # For the .npz formats: the arrays of one split, as `make_samples` writes them.
    arrays: Callable[[np.ndarray, np.ndarray, str], dict] | None = None


def _in_folder_or_subfolder(base: Path, name: str) -> list[Path]:
    return [base, base / name]


def _find_npz(base: Path, name: str, split: str) -> Path | None:
    path = base / f"{name}.npz"
    return path if path.is_file() else None


def _find_idx(base: Path, name: str, split: str) -> Path | None:
    """The images file, when its labels file lies beside it."""
    for d in _in_folder_or_subfolder(base, name):
        if all((d / f).is_file() for f in _IDX_FILES[split]):
            return d / _IDX_FILES[split][0]
    return None


def _read_idx_pair(images: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    img, lab = (images.parent / f for f in _IDX_FILES[split])
    return read_idx(img), read_idx(lab).astype(np.int64)


def _find_sign_csv(base: Path, name: str, split: str) -> Path | None:
    for d in _in_folder_or_subfolder(base, name):
        for path in (d / f"sign_mnist_{split}.csv",
                     d / f"sign_mnist_{split}" / f"sign_mnist_{split}.csv"):
            if path.is_file():
                return path
    return None


def _find_aclimdb(base: Path, name: str, split: str) -> Path | None:
    for d in _in_folder_or_subfolder(base, name):
        for acl in (d / "aclImdb", d):
            if (acl / split / "pos").is_dir():
                return acl
    return None


def _image_arrays(x, y, split) -> dict:
    return {f"x_{split}": x, f"y_{split}": y.astype(np.uint8)}


def _text_arrays(x, y, split) -> dict:
    blobs = [s.encode("utf-8") for s in x]
    return {f"{split}_text_utf8": np.frombuffer(b"".join(blobs), dtype=np.uint8),
            f"{split}_offsets": np.concatenate([[0], np.cumsum([len(b) for b in blobs])])
            .astype(np.int64),
            f"y_{split}": y.astype(np.uint8)}


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("images_npz", _find_npz, _read_images_npz, _image_arrays),
    Format("text_npz", _find_npz, _read_imdb_npz, _text_arrays),
    Format("idx", _find_idx, _read_idx_pair),
    Format("sign_csv", _find_sign_csv, lambda path, split: _read_sign_csv(path)),
    Format("aclimdb", _find_aclimdb, _read_aclimdb),
)}


# ---------------------------------------------------------------- datasets

def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def _download_keras(loader: str) -> Callable[[], None]:
    def download():
        from core.tf_setup import keras

        getattr(keras.datasets, loader).load_data()
    return download


def _download_aclimdb() -> None:
    # keras.datasets.imdb gives integer sequences with its own vocabulary; we want the raw
    # reviews so that our tokenizer (shared with the server) builds the vocabulary.
    from core.tf_setup import keras

    keras.utils.get_file("aclImdb_v1.tar.gz",
                         "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
                         extract=True, cache_dir=str(keras_cache_dir().parent))


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: the formats it comes in (tried in this order in a data directory, the
    first being the .npz of ../shared/data and of the bundled samples), where the Keras cache
    keeps it, how a user gets it, and how raw labels become class ids."""

    name: str
    formats: tuple[str, ...]
    how_to_provide: str
    keras_cache: tuple[str, str] | None = None   # (path inside the cache, format name)
    download: Callable[[], None] | None = None
    labels: Callable[[np.ndarray], np.ndarray] | None = None
    # Datasets that are not files in a data directory: split -> (x, y, where they came from).
    # The XOR table, and users' own datasets (core.userdata.register).
    reader: Callable[[str], tuple[np.ndarray, np.ndarray, str]] | None = None


def _xor(split: str) -> tuple[np.ndarray, np.ndarray, str]:
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    return x, np.array([0, 1, 1, 0], dtype=np.int64), "builtin: the XOR truth table"


DATASETS: dict[str, DatasetSpec] = {d.name: d for d in (
    DatasetSpec("fashion_mnist", ("images_npz", "idx"),
                "pass --data-dir/DATA_DIR with fashion_mnist.npz or the IDX .gz files, "
                "or run `python -m trainer download fashion_mnist` (keras.datasets)",
                keras_cache=("fashion-mnist", "idx"), download=_download_keras("fashion_mnist")),
    DatasetSpec("mnist", ("images_npz", "idx"),
                "pass --data-dir/DATA_DIR with mnist.npz or the IDX .gz files, "
                "or run `python -m trainer download mnist` (keras.datasets)",
                keras_cache=("mnist.npz", "images_npz"), download=_download_keras("mnist")),
    DatasetSpec("sign_mnist", ("images_npz", "sign_csv"),
                "download sign_mnist_{train,test}.csv from "
                "https://www.kaggle.com/datasets/datamunge/sign-language-mnist "
                "and pass their folder as --data-dir/DATA_DIR (or sign_mnist.npz)",
                labels=sign_raw_to_class),
    DatasetSpec("imdb", ("text_npz", "aclimdb"),
                "pass --data-dir/DATA_DIR with imdb.npz or the aclImdb/ folder, "
                "or run `python -m trainer download imdb` (fetches aclImdb_v1.tar.gz)",
                keras_cache=("aclImdb", "aclimdb"), download=_download_aclimdb),
    DatasetSpec("xor", (), "the XOR truth table", reader=_xor),
)}


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}") from None


# ---------------------------------------------------------------- sources

def _read_first(spec: DatasetSpec, base: Path, split: str, formats=None):
    """(x, y, source) from the first of the dataset's formats found in `base`, else None."""
    for fmt in (FORMATS[f] for f in (formats or spec.formats)):
        path = fmt.find(base, spec.name, split)
        if path is not None:
            x, y = fmt.read(path, split)
            return x, y, str(path)
    return None


def _keras_cache_path(spec: DatasetSpec) -> Path | None:
    return keras_cache_dir() / spec.keras_cache[0] if spec.keras_cache else None


def _from_keras_cache(spec: DatasetSpec, split: str):
    if spec.keras_cache is None:
        return None
    path, fmt = _keras_cache_path(spec), FORMATS[spec.keras_cache[1]]
    # A file in the cache is read as it is; a folder is searched like a data directory.
    if path.is_file():
        x, y = fmt.read(path, split)
        return x, y, str(path)
    return _read_first(spec, path, split, (fmt.name,)) if path.is_dir() else None


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    if data_dir is None:
        data_dir = os.environ.get("DATA_DIR") or None
    # Absolute, so that a manifest's data_source names the same files however the folder was
    # spelled (compress --start-from compares them: ../shared/data == /work/shared/data).
    return Path(os.path.abspath(data_dir)) if data_dir else None


def load(name: str, split: str = "train", data_dir: str | Path | None = None,
         use_keras_cache: bool = True, use_samples: bool = True) -> Dataset:
    """Load a dataset split from the first source that has it (see module docstring)."""
    spec = get_dataset(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if spec.reader is not None:
        x, y, source = spec.reader(split)
        return Dataset(name, split, x, y, source)

    looked: list[str] = []
    found = None
    base = resolve_data_dir(data_dir)
    if base is not None:
        if not base.is_dir():
            raise DatasetNotFoundError(f"data directory {base} does not exist (from "
                                       f"{'--data-dir' if data_dir else 'DATA_DIR'})")
        found = _read_first(spec, base, split)
        looked.append(f"data directory {base} (and {base / name})")
    if found is None and use_keras_cache and spec.keras_cache:
        found = _from_keras_cache(spec, split)
        looked.append(f"Keras cache {_keras_cache_path(spec)}")
    if found is None and use_samples:
        sample = SAMPLES_DIR / f"{name}.npz"
        if sample.is_file():
            x, y, _ = _read_first(spec, SAMPLES_DIR, split, spec.formats[:1])
            found = (x, y, f"bundled sample {sample}")
        looked.append(f"bundled sample {sample}")
    if found is None:
        raise DatasetNotFoundError(
            f"dataset {name!r} ({split}) not found. Looked in: " + "; ".join(looked)
            + (". No data directory was given." if base is None else ".")
            + f" To provide it: {spec.how_to_provide}."
        )
    x, y, source = found
    if spec.labels is not None:
        y = spec.labels(y)
    if len(x) != len(y):
        raise DatasetFormatError(f"{source}: {len(x)} inputs but {len(y)} labels")
    return Dataset(name, split, x, y.astype(np.int64), source)


def download(name: str) -> Path:
    """Fill the Keras cache from the internet (never called by tests)."""
    spec = get_dataset(name)
    if spec.download is None:
        raise ValueError(f"{name!r} cannot be downloaded automatically: {spec.how_to_provide}")
    spec.download()
    return keras_cache_dir()


def make_samples(source_dir: str | Path, out_dir: str | Path = SAMPLES_DIR,
                 sizes: dict[str, tuple[int, int]] | None = None, seed: int = 0) -> dict[str, Path]:
    """Cut the bundled stratified samples from the full `.npz` files (how data/samples was made)."""
    sizes = sizes or SAMPLE_SIZES
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, (n_train, n_test) in sizes.items():
        fmt = FORMATS[get_dataset(name).formats[0]]  # the .npz format
        src = source_dir / f"{name}.npz"
        arrays = {}
        for split, n in (("train", n_train), ("test", n_test)):
            x, y = fmt.read(src, split)
            idx = np.sort(stratified_indices(y, n, seed))
            arrays.update(fmt.arrays(x[idx], y[idx], split))
        path = out_dir / f"{name}.npz"
        np.savez_compressed(path, **arrays)
        written[name] = path
    return written


# (train, test) examples per bundled sample; 5 MB in total at most.
SAMPLE_SIZES = {
    "fashion_mnist": (2000, 1000),
    "mnist": (2000, 1000),
    "sign_mnist": (2000, 600),
    "imdb": (2000, 500),
}
