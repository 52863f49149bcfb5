"""Users' own datasets (core.userdata) and images of any size (core.images, the image
preprocessor), on real data: scikit-learn's digits and the bundled IMDB sample. No TensorFlow."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import data as datasets
from core.data import DatasetFormatError
from core.images import fit_image, read_image
from core.preprocessing import ImagePreprocessor, PreprocessingError, preprocessor_from_config
from core.tasks import TASKS, get_task
from core.userdata import (USER_FORMATS, DataSource, describe, iter_batches, read_split,
                           register_tasks, scan, task_spec, write_task)
from tests import user_datasets

SHAPE = (16, 16, 1)


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory):
    """The digits in every layout that holds images: {format: path}."""
    root = tmp_path_factory.mktemp("digits")
    return {"image_folder": user_datasets.write_digit_folder(root / "folder"),
            "csv": user_datasets.write_digit_csv(root / "digits.csv"),
            "npz": user_datasets.write_digit_npz(root / "digits.npz")}


@pytest.fixture(scope="module")
def imdb_folder(tmp_path_factory):
    return user_datasets.write_imdb_folder(tmp_path_factory.mktemp("imdb") / "reviews", n=200)


def test_every_user_format_is_exercised(digit_files):
    # A new format in the registry needs a real dataset here (text_folder: test_text_folder).
    assert set(USER_FORMATS) == {*digit_files, "text_folder"}


@pytest.mark.parametrize("fmt", ["image_folder", "csv", "npz"])
def test_digits_in_every_layout(digit_files, fmt):
    source = DataSource.detect(digit_files[fmt], image=SHAPE)
    assert source.format == fmt
    listing = scan(source)
    assert listing.kind == "image"
    assert listing.labels == tuple(str(d) for d in range(10))
    assert listing.count("train") + listing.count("test") == 1797
    x, y, report = read_split(source, "test")
    assert x.shape == (listing.count("test"), 16, 16) and x.dtype == np.uint8
    assert set(np.unique(y)) == set(range(10)) and not report.unreadable
    assert x.std() > 20  # real digits, not a blank conversion


def test_folder_images_are_converted_like_uploads(digit_files):
    source = DataSource.detect(digit_files["image_folder"], image=SHAPE)
    first = scan(source).items["test"][0]
    x, _ = next(iter_batches(source, "test", 1))
    assert np.array_equal(x[0], read_image(open(first, "rb").read(), 16, 16, 1))
    # Colour PNGs are made grayscale (ITU-R 601 luma), then resized.
    rgb = np.asarray(Image.open(first))
    expected = np.asarray(Image.fromarray(rgb).convert("L").resize((16, 16),
                                                                   Image.Resampling.LANCZOS))
    assert np.array_equal(x[0], expected)


def test_seeded_split_is_stratified_and_reproducible(digit_files):
    a = scan(DataSource.detect(digit_files["image_folder"], image=SHAPE, seed=3))
    b = scan(DataSource.detect(digit_files["image_folder"], image=SHAPE, seed=3))
    c = scan(DataSource.detect(digit_files["image_folder"], image=SHAPE, seed=4))
    assert a.items == b.items and a.items["test"] != c.items["test"]
    assert not set(a.items["train"]) & set(a.items["test"])
    counts = np.bincount(a.y["test"], minlength=10)
    assert counts.min() >= 30 and counts.max() <= 40  # ~20% of ~180 per class
    assert "seeded 80%/20% split, seed 3" in describe(DataSource.detect(
        digit_files["image_folder"], image=SHAPE, seed=3))


def test_train_and_test_folders_are_the_split(tmp_path):
    x, y = user_datasets.digits()
    user_datasets.write_digit_folder(tmp_path / "train", x[:100], y[:100])
    user_datasets.write_digit_folder(tmp_path / "test", x[100:150], y[100:150])
    listing = scan(DataSource.detect(tmp_path, image=SHAPE))
    assert (listing.count("train"), listing.count("test")) == (100, 50)
    assert listing.split_from == "train/ and test/ folders"


def test_unreadable_image_is_listed_and_the_rest_read(tmp_path):
    x, y = user_datasets.digits()
    root = user_datasets.write_digit_folder(tmp_path / "d", x[:200], y[:200])
    (root / "3" / "broken.png").write_bytes(b"not a png at all")
    (root / "3" / "notes.md").write_text("not an image")
    source = DataSource.detect(root, image=SHAPE, test_fraction=0.5)
    listing = scan(source)
    split = "train" if str(root / "3" / "broken.png") in listing.items["train"] else "test"
    xs, ys, report = read_split(source, split)
    assert len(xs) == listing.count(split) - 1
    assert [p for p, _ in report.unreadable] == [str(root / "3" / "broken.png")]
    assert "1 unreadable" in report.summary() and "broken.png" in report.summary()
    assert any("notes.md" in p for p in listing.ignored)
    assert "skipped 1" in describe(source)


def test_empty_class_one_class_and_unknown_labels_are_refused(tmp_path):
    x, y = user_datasets.digits()
    root = user_datasets.write_digit_folder(tmp_path / "d", x[:50], y[:50])
    (root / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match="'empty' has no examples"):
        scan(DataSource.detect(root, image=SHAPE))
    shutil.rmtree(root / "empty")
    one = user_datasets.write_digit_folder(tmp_path / "one", x[y == 1][:20], y[y == 1][:20])
    with pytest.raises(DatasetFormatError, match="found 1 class .*at least two"):
        scan(DataSource.detect(one, image=SHAPE))
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(str(d) for d in range(9)))  # no "9"
    with pytest.raises(DatasetFormatError, match="9 are not in the labels file"):
        scan(DataSource.detect(root, image=SHAPE, labels_file=str(labels)))


def test_labels_file_names_integer_labels(digit_files, tmp_path):
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(names))
    listing = scan(DataSource.detect(digit_files["csv"], labels_file=str(labels)))
    assert listing.labels == tuple(names)
    assert np.bincount(listing.y["train"]).size == 10


def test_csv_bad_rows_are_listed(tmp_path):
    path = user_datasets.write_digit_csv(tmp_path / "d.csv")
    lines = path.read_text().splitlines()
    lines[5] = lines[5].replace(",", ",x", 1)
    path.write_text("\n".join(lines) + "\n")
    listing = scan(DataSource.detect(path))
    assert listing.count("train") + listing.count("test") == 1796
    assert len(listing.ignored) == 1 and "line 6" in listing.ignored[0]
    with pytest.raises(DatasetFormatError, match="no 'target' column"):
        scan(DataSource.detect(path, label_column="target"))


def test_csv_features_are_vectors(tmp_path):
    from sklearn.datasets import load_iris

    iris = load_iris()
    path = tmp_path / "iris.csv"
    path.write_text("sepal_l,sepal_w,petal_l,petal_w,species\n" + "\n".join(
        ",".join(map(str, [*row, iris.target_names[t]])) for row, t in
        zip(iris.data, iris.target)))
    listing = scan(DataSource.detect(path, label_column="species"))
    assert listing.kind == "vector" and listing.labels == tuple(sorted(iris.target_names))
    assert listing.arrays["train"].shape[1] == 4


def test_text_folder(imdb_folder):
    source = DataSource.detect(imdb_folder)
    assert source.format == "text_folder"
    x, y, report = read_split(source, "test")
    assert scan(source).labels == ("neg", "pos") and scan(source).kind == "text"
    assert len(x) == 200 and isinstance(x[0], str) and set(y) == {0, 1}
    bad = imdb_folder / "train" / "pos" / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    try:
        fresh = DataSource.detect(imdb_folder, seed=1)  # a new source: not the cached scan
        _, _, report = read_split(fresh, "train")
        assert [p for p, _ in report.unreadable] == [str(bad)]
    finally:
        bad.unlink()


def test_user_task_is_registered_and_loaded_like_a_builtin_one(digit_files, tmp_path):
    source = DataSource.detect(digit_files["npz"], image=SHAPE)
    spec = task_spec("my_digits", source)
    write_task(tmp_path, spec)
    try:
        TASKS.pop("my_digits")
        datasets.DATASETS.pop("my_digits")
        assert register_tasks(tmp_path) == ["my_digits"]
        assert get_task("my_digits").labels == tuple(str(d) for d in range(10))
        ds = datasets.load("my_digits", "test")
        assert ds.x.shape[1:] == (16, 16) and len(ds) == 359
        with pytest.raises(ValueError, match="built-in task"):
            write_task(tmp_path, task_spec("mnist", source))
    finally:
        TASKS.pop("my_digits", None)
        datasets.DATASETS.pop("my_digits", None)


# ---------------------------------------------------------------- images and preprocessing

def test_fit_image_pads_to_the_aspect_ratio_and_converts_colour():
    wide = np.zeros((10, 40, 3), np.uint8)
    wide[:, :, 0] = 200  # a red bar on ... its own border colour: padding keeps it red
    out = fit_image(wide, 20, 20, 3)
    assert out.shape == (20, 20, 3) and (out[..., 0] > 190).all()
    gray = fit_image(wide, 8, 8, 1)
    assert gray.shape == (8, 8) and gray.dtype == np.uint8
    rgba = Image.new("RGBA", (5, 5), (0, 0, 0, 0))  # fully transparent: white background
    assert fit_image(rgba, 5, 5, 1).min() == 255


@pytest.mark.parametrize("scaling,lo,hi", [("minmax", 0, 1), ("symmetric", -1, 1),
                                           ("raw", 0, 255)])
def test_colour_preprocessor_scalings(scaling, lo, hi):
    p = ImagePreprocessor(scaling, height=12, width=10, channels=3)
    x = p(np.stack([np.zeros((12, 10, 3)), np.full((12, 10, 3), 255)]))
    assert x.shape == (2, 12, 10, 3) and x.dtype == np.float32
    assert np.isclose(x.min(), lo) and np.isclose(x.max(), hi)
    assert p(np.zeros((12, 10, 3))).shape == (1, 12, 10, 3)
    with pytest.raises(PreprocessingError, match="12x10 3-channel"):
        p(np.zeros((12, 10)))
    assert preprocessor_from_config(p.to_config()) == p


def test_per_channel_standardize_fit_and_roundtrip():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 6, 6, 3)).astype(np.uint8)
    x[..., 2] //= 4
    p = ImagePreprocessor.fit(x, "standardize")
    assert len(p.mean) == 3 and p.mean[2] < p.mean[0]
    out = p(x)
    assert np.allclose(out.reshape(-1, 3).mean(0), 0, atol=1e-4)
    assert np.allclose(out.reshape(-1, 3).std(0), 1, atol=1e-3)
    assert preprocessor_from_config(json.loads(json.dumps(p.to_config()))) == p
    with pytest.raises(ValueError, match="2 values for 3 channel"):
        ImagePreprocessor(mean=(0.1, 0.2), height=6, width=6, channels=3)


def test_version_1_image_config_is_square_grayscale():
    p = preprocessor_from_config({"type": "image", "scaling": "minmax", "size": 28})
    assert p.input_shape == (28, 28, 1)


def test_image_folders_are_decoded_once_to_a_memory_mapped_cache(tmp_path, monkeypatch):
    from core import userdata

    monkeypatch.setenv("TINYSHIP_CACHE", str(tmp_path / "cache"))
    x, y = user_datasets.digits()
    root = user_datasets.write_digit_folder(tmp_path / "d", x[:120], y[:120])
    (root / "4" / "broken.png").write_bytes(b"\x89PNG but not really")
    source = DataSource.detect(root, image=SHAPE, test_fraction=0.5)
    listing = scan(source)
    split = "train" if str(root / "4" / "broken.png") in listing.items["train"] else "test"
    xs, ys, report = read_split(source, split)
    assert isinstance(xs, np.memmap) and len(xs) == len(ys) == listing.count(split) - 1
    assert len(report.unreadable) == 1
    decoded = [np.asarray(b) for b, _ in iter_batches(source, split, 1000)]
    assert np.array_equal(np.asarray(xs), np.concatenate(decoded))
    files = sorted((tmp_path / "cache" / "datasets").glob("*.npy"))
    assert len(files) == 1

    # A later process (here: the caches of this one cleared) maps the file, decodes nothing.
    read_split.cache_clear()
    monkeypatch.setattr(userdata, "iter_batches", lambda *a, **k: pytest.fail("decoded again"))
    again, _, report_again = read_split(source, split)
    assert np.array_equal(again, xs) and report_again.unreadable == report.unreadable
    monkeypatch.undo()
    monkeypatch.setenv("TINYSHIP_CACHE", str(tmp_path / "cache"))
    # A changed file is a new cache entry.
    some = Path(listing.items[split][0])
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(some)
    read_split.cache_clear()
    scan.cache_clear()
    fresh, _, _ = read_split(DataSource.detect(root, image=SHAPE, test_fraction=0.5), split)
    assert len(sorted((tmp_path / "cache" / "datasets").glob("*.npy"))) == 2
    assert fresh[0].max() == 0 or not np.array_equal(fresh, xs)
