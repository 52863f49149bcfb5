"""Users' own datasets and tasks: an image folder, a text folder, a CSV or an .npz becomes a
task that every part of tinyship trains, evaluates, benchmarks and serves like a built-in one.

    source = DataSource.detect("photos/")                  # format from the files
    listing = scan(source)                                  # classes, files, split: no decoding
    for x, y in iter_batches(source, "test", 256): ...      # streamed, uint8 pixels / texts
    x, y, report = read_split(source, "test")               # the whole split (small datasets)

Layouts (the ones Keras, Kaggle and aclImdb use):
  image_folder  <root>/<class>/*.png|jpg|jpeg|bmp|gif|webp, any size, grayscale or colour;
                each image is converted to the task's (height, width, channels) by
                `core.images.fit_image`, the conversion serve runs on uploads
  text_folder   <root>/<class>/*.txt (UTF-8)
  csv           a header row, a label column (`label` by default) and numeric columns; columns
                pixel1..pixelN with N a square are a grayscale image, else a feature vector
                (the layout of Kaggle's Sign Language MNIST)
  npz           x_train, y_train, x_test, y_test
The split comes from `train/` and `test/` subfolders (or `*train*.csv` and `*test*.csv` files)
when there are any, else from a seeded stratified split. Class names are the folder names
(sorted), or the CSV/npz label values, or the lines of a labels file.

A file that cannot be read is counted and listed (`ReadReport`), never silently dropped and
never fatal for the others. A dataset with fewer than two classes or an empty class is refused
with a message that says which and what to do.

A user task is a record `<artifacts>/<task>/task.json` (`write_task`); `register_tasks(root)`
adds every such task to the registries (`core.tasks.TASKS`, `core.data.DATASETS`), after which
`core.data.load(task, split)` reads the user's files. TensorFlow-free.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from core import data as datasets
from core.data import DatasetFormatError
from core.tasks import SERVED_TASKS, TASKS, TaskSpec

# Pillow (core.images) is imported where images are read, not here: the GPU host's latency
# command lists tasks through this module and has numpy and onnxruntime only.
TASK_RECORD = "task.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
TEXT_SUFFIXES = (".txt",)
SPLIT_FOLDERS = ("train", "test")


@dataclass(frozen=True)
class DataSource:
    """Where a user's dataset is and how to read it; stored in the task record."""

    path: str
    format: str
    labels_file: str | None = None
    label_column: str = "label"
    test_fraction: float = 0.2
    seed: int = 0
    # (height, width, channels) every image is converted to: the model's input. None: the
    # size and colour of the first image.
    image: tuple[int, int, int] | None = None

    def __post_init__(self):
        object.__setattr__(self, "path", str(Path(self.path).expanduser().resolve()))
        if self.format not in USER_FORMATS:
            raise ValueError(f"unknown dataset format {self.format!r}; valid: "
                             f"{', '.join(USER_FORMATS)}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be between 0 and 1, got {self.test_fraction}")
        if self.image is not None:
            object.__setattr__(self, "image", tuple(int(v) for v in self.image))

    @classmethod
    def detect(cls, path: str | Path, **options) -> "DataSource":
        """The source for the files at `path`, its format recognised from them."""
        path = Path(path).expanduser()
        if not path.exists():
            raise DatasetFormatError(f"{path}: no such file or folder")
        for fmt in USER_FORMATS.values():
            if fmt.detect(path):
                return cls(str(path), fmt.name, **options)
        raise DatasetFormatError(
            f"{path}: not a dataset tinyship can read. Expected one of: "
            + "; ".join(f"{f.name} ({f.layout})" for f in USER_FORMATS.values()))

    def with_image(self, shape) -> "DataSource":
        return dataclasses.replace(self, image=tuple(shape))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "DataSource":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Listing:
    """What a scan found, before any image or text is decoded."""

    kind: str                           # "image", "text" or "vector"
    labels: tuple[str, ...]
    items: dict[str, list]              # split -> file paths, or the rows' numbers in the file
    y: dict[str, np.ndarray]            # split -> class ids
    split_from: str                     # how train and test were told apart
    ignored: list[str] = field(default_factory=list)   # files that are not of the format
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # csv/npz: split -> x
    image: tuple[int, int, int] | None = None

    def count(self, split: str) -> int:
        return len(self.items[split])


@dataclass
class ReadReport:
    """Files (or rows) that could not be read, with the reason; kept out of the data."""

    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def summary(self, limit: int = 5) -> str:
        if not self.unreadable:
            return "every file was read"
        shown = "; ".join(f"{item} ({why})" for item, why in self.unreadable[:limit])
        more = f"; and {len(self.unreadable) - limit} more" if len(self.unreadable) > limit else ""
        return f"{len(self.unreadable)} unreadable, left out: {shown}{more}"


# ---------------------------------------------------------------- labels and splits

def _read_labels_file(path: str) -> list[str]:
    text = Path(path).read_text(encoding="utf-8")
    try:
        labels = json.loads(text)
    except json.JSONDecodeError:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(labels, list) or not all(isinstance(v, (str, int)) for v in labels):
        raise DatasetFormatError(f"{path}: a labels file is a JSON list or one name per line")
    return [str(v) for v in labels]


def _check_classes(names: list[str], counts: dict[str, int], where: str, what: str) -> None:
    if len(names) < 2:
        raise DatasetFormatError(
            f"{where}: found {len(names)} class{'es' if len(names) != 1 else ''} "
            f"({', '.join(names) or 'none'}); a classifier needs at least two: {what}")
    empty = [n for n in names if counts.get(n, 0) == 0]
    if empty:
        raise DatasetFormatError(
            f"{where}: class{'es' if len(empty) > 1 else ''} {', '.join(map(repr, empty))} "
            f"{'have' if len(empty) > 1 else 'has'} no examples; add some, or remove the class "
            f"(and its line in the labels file)")


def _seeded_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: per class, a seeded shuffle and `fraction` of it (at least one
    example when the class has two or more) to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = max(1, round(len(idx) * fraction)) if len(idx) > 1 else 0
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _split_description(source: DataSource) -> str:
    return (f"seeded {1 - source.test_fraction:.0%}/{source.test_fraction:.0%} split, "
            f"seed {source.seed}")


# ---------------------------------------------------------------- folder formats

def _class_folders(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _split_roots(root: Path) -> dict[str, Path] | None:
    roots = {s: root / s for s in SPLIT_FOLDERS}
    return roots if all(p.is_dir() for p in roots.values()) else None


def _has_files(folder: Path, suffixes) -> bool:
    return any(p.is_file() and p.suffix.lower() in suffixes for p in folder.iterdir())


def _folder_detector(suffixes) -> Callable[[Path], bool]:
    def detect(path: Path) -> bool:
        if not path.is_dir():
            return False
        roots = _split_roots(path)
        classes = _class_folders(roots["train"] if roots else path)
        return bool(classes) and any(_has_files(c, suffixes) for c in classes)
    return detect


def _scan_folder(source: DataSource, suffixes, kind: str, noun: str) -> Listing:
    root = Path(source.path)
    roots = _split_roots(root)
    names_found = sorted({c.name for r in (roots.values() if roots else [root])
                          for c in _class_folders(r)})
    names = _read_labels_file(source.labels_file) if source.labels_file else names_found
    unknown = sorted(set(names_found) - set(names))
    if unknown:
        raise DatasetFormatError(f"{root}: class folder(s) {', '.join(unknown)} are not in the "
                                 f"labels file {source.labels_file}; add them or remove them")
    index = {n: i for i, n in enumerate(names)}
    ignored: list[str] = []

    def files_of(base: Path) -> tuple[list[str], list[int]]:
        items, ys = [], []
        for name in names:
            folder = base / name
            for p in sorted(folder.iterdir()) if folder.is_dir() else []:
                if not p.is_file():
                    continue
                if p.suffix.lower() in suffixes:
                    items.append(str(p))
                    ys.append(index[name])
                elif not p.name.startswith("."):
                    ignored.append(str(p))
        return items, ys

    if roots:
        items, y = {}, {}
        for split, base in roots.items():
            files, ys = files_of(base)
            items[split], y[split] = files, np.asarray(ys, np.int64)
        split_from = "train/ and test/ folders"
    else:
        files, ys = files_of(root)
        ys = np.asarray(ys, np.int64)
        tr, te = _seeded_split(ys, source.test_fraction, source.seed)
        items = {"train": [files[i] for i in tr], "test": [files[i] for i in te]}
        y = {"train": ys[tr], "test": ys[te]}
        split_from = _split_description(source)
    counts = {n: int(sum((y[s] == i).sum() for s in y)) for n, i in index.items()}
    _check_classes(names, counts, str(root),
                   f"put the {noun} of each class in a folder named after it")
    return Listing(kind, tuple(names), items, y, split_from, ignored)


def _scan_images(source: DataSource) -> Listing:
    listing = _scan_folder(source, IMAGE_SUFFIXES, "image", "images")
    listing.image = source.image or _first_image_shape(listing)
    return listing


def _first_image_shape(listing: Listing) -> tuple[int, int, int]:
    from core.images import ImageDecodeError, decode

    for path in (p for s in SPLIT_FOLDERS for p in listing.items[s]):
        try:
            img = decode(path)
        except ImageDecodeError:
            continue
        channels = 1 if img.mode in ("L", "1", "I", "I;16", "LA") else 3
        return (img.height, img.width, channels)
    raise DatasetFormatError("no image of the folder could be read")


def _read_image_file(item: str, listing: Listing) -> np.ndarray:
    from core.images import read_image

    return read_image(item, *listing.image)


def _read_text_file(item: str, listing: Listing) -> str:
    return Path(item).read_text(encoding="utf-8")


def _scan_texts(source: DataSource) -> Listing:
    return _scan_folder(source, TEXT_SUFFIXES, "text", ".txt files")


# ---------------------------------------------------------------- array formats (csv, npz)

def _find_split_csvs(path: Path) -> dict[str, Path] | None:
    if path.is_file():
        return None
    found = {}
    for split in SPLIT_FOLDERS:
        matches = sorted(path.glob(f"*{split}*.csv"))
        if len(matches) == 1:
            found[split] = matches[0]
    return found if len(found) == 2 else None


def _detect_csv(path: Path) -> bool:
    return (path.is_file() and path.suffix.lower() == ".csv") or \
        (path.is_dir() and _find_split_csvs(path) is not None)


_PIXEL_COLUMN = re.compile(r"pixel_?\d+$", re.IGNORECASE)


def _read_csv_file(path: Path, label_column: str):
    """(label values as strings, x float array, unreadable rows)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or label_column not in header:
            raise DatasetFormatError(
                f"{path}: no {label_column!r} column in the header "
                f"({', '.join((header or [])[:6])}{', ...' if header and len(header) > 6 else ''}); "
                f"name the label column with --label-column")
        col = header.index(label_column)
        features = [h for i, h in enumerate(header) if i != col]
        labels, rows, bad = [], [], []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                if len(row) != len(header):
                    raise ValueError(f"{len(row)} values, header has {len(header)}")
                values = [float(v) for i, v in enumerate(row) if i != col]
            except ValueError as e:
                bad.append((f"{path.name} line {line}", str(e)))
                continue
            labels.append(row[col].strip())
            rows.append(values)
    x = np.asarray(rows, np.float32).reshape(len(rows), len(features))
    return labels, x, features, bad


def _scan_csv(source: DataSource) -> Listing:
    path = Path(source.path)
    files = _find_split_csvs(path) or {"all": path}
    read = {s: _read_csv_file(p, source.label_column) for s, p in files.items()}
    features = next(iter(read.values()))[2]
    pixels = all(_PIXEL_COLUMN.match(h) for h in features) and math.isqrt(len(features)) ** 2 \
        == len(features)
    raw = {s: r[0] for s, r in read.items()}
    x = {s: r[1] for s, r in read.items()}
    bad = [b for r in read.values() for b in r[3]]
    listing = _arrays_listing(source, raw, x, f"{path}", split_from="train and test CSV files")
    if pixels or source.image:
        side = math.isqrt(len(features))
        shape = source.image or (side, side, 1)
        listing.kind, listing.image = "image", tuple(shape)
        listing.arrays = {s: _as_images(a, (side, side), shape, str(path))
                          for s, a in listing.arrays.items()}
    listing.ignored = [f"{item}: {why}" for item, why in bad]
    return listing


def _as_images(x: np.ndarray, side: tuple[int, int], shape, where: str) -> np.ndarray:
    if x.size and (x.min() < 0 or x.max() > 255):
        raise DatasetFormatError(f"{where}: pixel values span {x.min():g}..{x.max():g}; "
                                 f"expected 0..255")
    x = np.rint(x).astype(np.uint8)
    if x.ndim == 2:
        x = x.reshape(len(x), *side)
    return _fit_all(x, shape)


def _fit_all(x: np.ndarray, shape) -> np.ndarray:
    """uint8 images of one size -> the task's (height, width, channels)."""
    h, w, c = shape
    want = (h, w) if c == 1 else (h, w, c)
    if x.shape[1:] == want or (c == 1 and x.shape[1:] == (h, w, 1)):
        return x.reshape(len(x), *want)
    from core.images import fit_image

    return np.stack([fit_image(img, h, w, c) for img in x]) if len(x) else \
        np.zeros((0, *want), np.uint8)


def _detect_npz(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".npz"


def _scan_npz(source: DataSource) -> Listing:
    path = Path(source.path)
    with np.load(path, allow_pickle=False) as d:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in d.files]
        if missing:
            raise DatasetFormatError(f"{path}: missing array(s) {', '.join(missing)}; an .npz "
                                     f"dataset has x_train, y_train, x_test, y_test")
        x = {s: d[f"x_{s}"] for s in SPLIT_FOLDERS}
        raw = {s: [str(v) for v in d[f"y_{s}"].tolist()] for s in SPLIT_FOLDERS}
    listing = _arrays_listing(source, raw, x, str(path), split_from="the .npz's train and test arrays")
    sample = x["train"]
    if sample.ndim in (3, 4) or source.image:
        shape = source.image or (sample.shape[1], sample.shape[2],
                                 sample.shape[3] if sample.ndim == 4 else 1)
        listing.kind, listing.image = "image", tuple(int(v) for v in shape)
        listing.arrays = {s: _as_images(a, a.shape[1:3], listing.image, str(path))
                          for s, a in listing.arrays.items()}
    elif sample.dtype.kind in "OUS":
        listing.kind = "text"
    return listing


def _arrays_listing(source: DataSource, raw: dict[str, list[str]], x: dict[str, np.ndarray],
                    where: str, split_from: str) -> Listing:
    """Class ids from label values (sorted numerically when they are all numbers, or in the
    labels file's order), and the split: the given one, or a seeded one of 'all'."""
    values = sorted({v for vs in raw.values() for v in vs},
                    key=lambda v: (0, float(v), v) if _is_number(v) else (1, 0.0, v))
    names = values
    if source.labels_file:
        names = _read_labels_file(source.labels_file)
        # Integer labels 0..K-1 index the file's names; other values must be names in it.
        if all(_is_number(v) and float(v).is_integer() and 0 <= float(v) < len(names)
               for v in values):
            raw = {s: [names[int(float(v))] for v in vs] for s, vs in raw.items()}
            values = sorted({v for vs in raw.values() for v in vs})
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise DatasetFormatError(f"{where}: label value(s) {', '.join(unknown[:5])} are not "
                                     f"in the labels file {source.labels_file}")
    index = {n: i for i, n in enumerate(names)}
    y = {s: np.asarray([index[v] for v in vs], np.int64) for s, vs in raw.items()}
    items = {s: list(range(len(ys))) for s, ys in y.items()}
    if "all" in y:
        tr, te = _seeded_split(y["all"], source.test_fraction, source.seed)
        x = {"train": x["all"][tr], "test": x["all"][te]}
        y = {"train": y["all"][tr], "test": y["all"][te]}
        items = {"train": tr.tolist(), "test": te.tolist()}  # the rows' places in the file
        split_from = _split_description(source)
    counts = {n: int(sum((y[s] == i).sum() for s in y)) for n, i in index.items()}
    _check_classes(list(names), counts, where, "the label column has one value")
    arrays = {s: (a.astype(np.float32) if a.dtype.kind in "fiub" else a) for s, a in x.items()}
    return Listing("vector", tuple(names), items, y, split_from, arrays=arrays)


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------- the format registry

@dataclass(frozen=True)
class UserFormat:
    """One layout of a user's files: how to recognise it, list it, and read one item."""

    name: str
    layout: str
    detect: Callable[[Path], bool]
    scan: Callable[[DataSource], Listing]
    # Folder formats read one file at a time; None: the scan holds the arrays already.
    read_item: Callable[[str, Listing], object] | None = None


USER_FORMATS: dict[str, UserFormat] = {f.name: f for f in (
    UserFormat("image_folder", "a folder with one subfolder of images per class",
               _folder_detector(IMAGE_SUFFIXES), _scan_images, _read_image_file),
    UserFormat("text_folder", "a folder with one subfolder of .txt files per class",
               _folder_detector(TEXT_SUFFIXES), _scan_texts, _read_text_file),
    UserFormat("csv", "a CSV file with a label column (or a folder with *train*.csv and "
               "*test*.csv)", _detect_csv, _scan_csv),
    UserFormat("npz", "an .npz with x_train, y_train, x_test, y_test", _detect_npz, _scan_npz),
)}


# ---------------------------------------------------------------- reading

@functools.lru_cache(maxsize=8)
def scan(source: DataSource) -> Listing:
    """List the dataset (cached per source: compress and benchmarks read a task many times)."""
    return USER_FORMATS[source.format].scan(source)


def _progress(total: int, what: str):
    from tqdm import tqdm

    # On a terminal only: a log file gets the summary line, not a bar redrawn 100 times.
    return tqdm(total=total, desc=what, unit=" files", disable=not sys.stderr.isatty()
                or total < 500, leave=False)


def iter_batches(source: DataSource, split: str, batch_size: int = 256,
                 report: ReadReport | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The split in batches of decoded inputs (uint8 pixels, texts or feature vectors) and
    class ids; a folder dataset is decoded batch by batch, never held whole. Items that cannot
    be read go to `report`."""
    from core.images import ImageDecodeError

    listing = scan(source)
    fmt = USER_FORMATS[source.format]
    items, y = listing.items[split], listing.y[split]
    if fmt.read_item is None:
        x = listing.arrays[split]
        for i in range(0, len(y), batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]
        return
    report = report if report is not None else ReadReport()
    with _progress(len(items), f"reading {split}") as bar:
        for i in range(0, len(items), batch_size):
            xs, ys = [], []
            for item, label in zip(items[i:i + batch_size], y[i:i + batch_size]):
                try:
                    xs.append(fmt.read_item(item, listing))
                    ys.append(label)
                except (ImageDecodeError, UnicodeDecodeError, OSError) as e:
                    report.unreadable.append((item, f"{type(e).__name__}: {e}"))
            bar.update(min(batch_size, len(items) - i))
            if xs:
                yield _stack(xs, listing.kind), np.asarray(ys, np.int64)


def _stack(xs: list, kind: str) -> np.ndarray:
    if kind == "text":
        out = np.empty(len(xs), dtype=object)
        out[:] = xs
        return out
    return np.stack(xs)


def cache_dir() -> Path:
    """Where decoded image folders are kept: $TINYSHIP_CACHE, else ~/.cache/tinyship."""
    return Path(os.environ.get("TINYSHIP_CACHE") or Path.home() / ".cache" / "tinyship")


def _cache_key(source: DataSource, split: str, listing: Listing) -> str:
    """Changes when the source's settings or any of the split's files (name, size, mtime) do."""
    import hashlib

    h = hashlib.sha256(json.dumps([source.to_dict(), split, listing.image]).encode())
    for item in listing.items[split]:
        st = Path(item).stat()
        h.update(f"{item}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:24]


def _read_images_to_cache(source: DataSource, split: str):
    """An image folder's split decoded once into a uint8 .npy beside its labels and read report
    (under `cache_dir()`), written batch by batch and opened memory-mapped: the split is never
    held whole in memory, and every later process (compress's workers, benchmarks, serve's
    tests) maps the file instead of decoding thousands of images again."""
    listing = scan(source)
    base = cache_dir() / "datasets" / _cache_key(source, split, listing)
    x_path, meta_path = base.with_suffix(".npy"), base.with_suffix(".json")
    if not meta_path.is_file():
        base.parent.mkdir(parents=True, exist_ok=True)
        n, report = listing.count(split), ReadReport()
        h, w, c = listing.image
        tmp = base.parent / f".{base.name}.{os.getpid()}.npy"
        x = np.lib.format.open_memmap(tmp, "w+", np.uint8, (n, h, w) if c == 1 else (n, h, w, c))
        ys, filled = [], 0
        for xb, yb in iter_batches(source, split, 512, report):
            x[filled:filled + len(xb)] = xb
            filled += len(xb)
            ys.append(yb)
        if filled == 0:
            tmp.unlink(missing_ok=True)
            raise DatasetFormatError(f"{source.path}: no readable {split} examples "
                                     f"({report.summary()})")
        x.flush()
        del x
        if filled < n:  # unreadable files left out: copy the first `filled` rows
            full = np.load(tmp, mmap_mode="r")
            trimmed = tmp.with_name(f"{tmp.stem}.trim.npy")
            out = np.lib.format.open_memmap(trimmed, "w+", np.uint8, (filled, *full.shape[1:]))
            for i in range(0, filled, 4096):
                out[i:i + 4096] = full[i:min(i + 4096, filled)]
            out.flush()
            del out, full
            os.replace(trimmed, tmp)
        os.replace(tmp, x_path)
        meta_tmp = meta_path.with_name(f".{meta_path.name}.{os.getpid()}")
        meta_tmp.write_text(json.dumps({"y": np.concatenate(ys).tolist(),
                                        "unreadable": report.unreadable}))
        os.replace(meta_tmp, meta_path)
    meta = json.loads(meta_path.read_text())
    report = ReadReport([tuple(u) for u in meta["unreadable"]])
    return np.load(x_path, mmap_mode="r"), np.asarray(meta["y"], np.int64), report


@functools.lru_cache(maxsize=4)
def read_split(source: DataSource, split: str) -> tuple[np.ndarray, np.ndarray, ReadReport]:
    """The whole split: (x, y, what could not be read). An image folder's pixels come
    memory-mapped from the decoded cache (`_read_images_to_cache`); texts and the arrays of a
    CSV or .npz are in memory."""
    if USER_FORMATS[source.format].read_item is not None and scan(source).kind == "image":
        return _read_images_to_cache(source, split)
    report = ReadReport()
    parts = list(iter_batches(source, split, 1024, report))
    if not parts:
        raise DatasetFormatError(f"{source.path}: no readable {split} examples "
                                 f"({report.summary()})")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), report


def describe(source: DataSource) -> str:
    """One paragraph for the import summary: classes, counts, split, what was skipped."""
    listing = scan(source)
    what = {"image": "images", "text": "texts", "vector": "rows"}[listing.kind]
    names = ", ".join(listing.labels[:8]) + (", ..." if len(listing.labels) > 8 else "")
    lines = [f"{source.path} ({source.format}): {sum(map(len, listing.items.values())):,} "
             f"{what} in {len(listing.labels)} classes ({names})",
             f"split ({listing.split_from}): {listing.count('train'):,} train, "
             f"{listing.count('test'):,} test"]
    if listing.image:
        h, w, c = listing.image
        lines.append(f"images converted to {h}x{w}, {'grayscale' if c == 1 else 'RGB'}")
    if listing.ignored:
        lines.append(f"skipped {len(listing.ignored)}: " + "; ".join(listing.ignored[:5])
                     + (" ..." if len(listing.ignored) > 5 else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------- user tasks

def task_spec(name: str, source: DataSource, description: str = "") -> TaskSpec:
    """The task of a user's dataset, its labels and input kind from a scan."""
    listing = scan(source)
    if listing.image and source.image is None:  # the size the first image gave, fixed
        source = source.with_image(listing.image)
    return TaskSpec(name, name, listing.kind, listing.labels,
                    description or f"{source.format} at {source.path}", served=True,
                    source=source.to_dict())


def define_task(root: str | Path, name: str, path: str | Path, description: str = "",
                **options) -> TaskSpec:
    """The user task `name` on the dataset at `path` (options: DataSource's fields), recorded
    under the artifact root and registered in this process."""
    spec = task_spec(name, DataSource.detect(path, **options), description)
    write_task(root, spec)
    return spec


def write_task(root: str | Path, spec: TaskSpec) -> Path:
    """Record a user task under the artifact root, and register it in this process."""
    from core.artifacts import _check_name, _write_json_atomic

    _check_name("task", spec.name)
    if spec.name in TASKS and TASKS[spec.name].source is None:
        raise ValueError(f"{spec.name!r} is a built-in task; choose another name")
    path = Path(root) / spec.name / TASK_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(path, {"name": spec.name, "kind": spec.kind, "labels": list(spec.labels),
                              "description": spec.description, "source": dict(spec.source)})
    register(spec)
    return path


def read_task(path: str | Path) -> TaskSpec:
    try:
        d = json.loads(Path(path).read_text())
        return TaskSpec(d["name"], d["name"], d["kind"], tuple(d["labels"]), d["description"],
                        served=True, source=DataSource.from_dict(d["source"]).to_dict())
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DatasetFormatError(f"{path}: not a task record ({type(e).__name__}: {e}); "
                                 f"import the task again (python -m trainer import)") from None


def register(spec: TaskSpec) -> None:
    """Add a user task to the task and dataset registries of this process."""
    source = DataSource.from_dict(dict(spec.source))
    TASKS[spec.name] = spec

    def reader(split: str):
        x, y, report = read_split(source, split)
        return x, y, f"{source.path} ({source.format}, {split}; {report.summary()})"

    datasets.DATASETS[spec.name] = datasets.DatasetSpec(
        spec.name, (), f"the files at {source.path}", reader=reader)


def served_tasks(root: str | Path) -> tuple[str, ...]:
    """The tasks compress, benchmarks and serve work on by default: the built-in served ones,
    then the user tasks recorded under the artifact root `root` (registered here)."""
    return SERVED_TASKS + tuple(n for n in register_tasks(root) if n not in SERVED_TASKS)


def register_tasks(root: str | Path) -> list[str]:
    """Register every user task recorded under an artifact root; returns their names."""
    root = Path(root)
    names = []
    for path in sorted(root.glob(f"*/{TASK_RECORD}")) if root.is_dir() else []:
        spec = read_task(path)
        register(spec)
        names.append(spec.name)
    return names
