import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from core import data
from core.tasks import SIGN_LETTERS, TASKS, get_task


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def no_keras_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_idx_format(tmp_path, name, no_keras_cache):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    y = np.array([0, 1, 2, 3, 4, 5, 9], np.uint8)
    sub = tmp_path / name
    sub.mkdir()
    _write_idx(sub / "t10k-images-idx3-ubyte.gz", x)
    _write_idx(sub / "t10k-labels-idx1-ubyte.gz", y)
    ds = data.load(name, "test", data_dir=tmp_path)
    assert np.array_equal(ds.x, x) and np.array_equal(ds.y, y)
    assert ds.source.endswith("t10k-images-idx3-ubyte.gz")


def test_idx_rejects_wrong_magic(tmp_path):
    p = tmp_path / "bad.gz"
    with gzip.open(p, "wb") as f:
        f.write(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00\x00\x00\x00")
    with pytest.raises(data.DatasetFormatError, match="unsigned-byte IDX"):
        data.read_idx(p)


def test_sign_csv_format_maps_labels(tmp_path, no_keras_cache):
    rows = [[0] + [1] * 784, [10] + [2] * 784, [24] + [255] * 784]
    header = "label," + ",".join(f"pixel{i}" for i in range(1, 785))
    (tmp_path / "sign_mnist_train.csv").write_text(
        header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    ds = data.load("sign_mnist", "train", data_dir=tmp_path)
    assert ds.x.shape == (3, 28, 28) and ds.x.dtype == np.uint8
    # raw 10 is K, which is class 9 once J (raw 9) is dropped; raw 24 (Y) is class 23.
    assert ds.y.tolist() == [0, 9, 23]
    assert [SIGN_LETTERS[c] for c in ds.y] == ["A", "K", "Y"]


def test_sign_label_j_is_rejected():
    with pytest.raises(data.DatasetFormatError, match="not letters A..Y without J"):
        data.sign_raw_to_class(np.array([0, 9]))


def test_aclimdb_folder(tmp_path, no_keras_cache):
    root = tmp_path / "aclImdb" / "test"
    for sub, texts in (("pos", ["Great film<br />loved it"]), ("neg", ["Awful.", "Dull!"])):
        (root / sub).mkdir(parents=True)
        for i, t in enumerate(texts):
            (root / sub / f"{i}_{8 if sub == 'pos' else 2}.txt").write_text(t)
    ds = data.load("imdb", "test", data_dir=tmp_path)
    assert sorted(zip(ds.y.tolist(), ds.x.tolist())) == [
        (0, "Awful."), (0, "Dull!"), (1, "Great film<br />loved it")]


def test_npz_format_and_imdb_offsets(tmp_path, no_keras_cache):
    texts = ["good", "bad movie", "ünïcode ok"]
    blobs = [t.encode() for t in texts]
    np.savez(tmp_path / "imdb.npz",
             train_text_utf8=np.frombuffer(b"".join(blobs), np.uint8),
             train_offsets=np.cumsum([0] + [len(b) for b in blobs]),
             y_train=np.array([1, 0, 1], np.uint8))
    ds = data.load("imdb", "train", data_dir=tmp_path)
    assert ds.x.tolist() == texts and ds.y.tolist() == [1, 0, 1]


def test_keras_cache_is_second_source(tmp_path, monkeypatch):
    home = tmp_path / "kh"
    (home / "datasets").mkdir(parents=True)
    x = np.zeros((3, 28, 28), np.uint8)
    np.savez(home / "datasets" / "mnist.npz", x_train=x, y_train=np.array([1, 2, 3]),
             x_test=x, y_test=np.array([4, 5, 6]))
    monkeypatch.setenv("KERAS_HOME", str(home))
    ds = data.load("mnist", "test")
    assert ds.y.tolist() == [4, 5, 6] and "mnist.npz" in ds.source


def test_missing_dataset_error_names_every_place(tmp_path, no_keras_cache):
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.load("fashion_mnist", "train", data_dir=tmp_path, use_samples=False)
    msg = str(e.value)
    assert "fashion_mnist" in msg and str(tmp_path) in msg and "Keras cache" in msg
    assert "DATA_DIR" in msg and "download" in msg


def test_missing_data_dir_is_an_error(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="does not exist"):
        data.load("mnist", "train", data_dir=tmp_path / "nope")


def test_unknown_names_list_valid_choices():
    with pytest.raises(ValueError, match="valid: fashion_mnist, mnist"):
        data.load("cifar10")
    with pytest.raises(ValueError, match="valid: train, test"):
        data.load("mnist", "validation")


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist", "sign_mnist", "imdb"])
def test_bundled_samples_are_small_real_and_stratified(name, no_keras_cache):
    tr, te = data.load(name, "train"), data.load(name, "test")
    assert "bundled sample" in tr.source
    assert 500 <= len(te) <= len(tr) <= 5000
    n_classes = get_task(name).num_classes
    assert set(tr.y.tolist()) == set(range(n_classes))
    counts = np.bincount(tr.y, minlength=n_classes)
    assert counts.min() > 0.3 * counts.max()  # no class starved


def test_bundled_samples_fit_the_size_budget():
    total = sum(p.stat().st_size for p in data.SAMPLES_DIR.glob("*.npz"))
    assert total <= 5_000_000


def test_xor_truth_table():
    ds = data.load("xor")
    assert ds.x.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]] and ds.y.tolist() == [0, 1, 1, 0]


def test_stratified_indices_keep_proportions():
    y = np.array([0] * 90 + [1] * 10)
    idx = data.stratified_indices(y, 20, seed=3)
    assert len(idx) == 20 and len(set(idx.tolist())) == 20
    assert np.bincount(y[idx]).tolist() == [18, 2]


EXPECTED_FULL = {
    "fashion_mnist": (60_000, 10_000, 10),
    "mnist": (60_000, 10_000, 10),
    "sign_mnist": (27_455, 7_172, 24),
    "imdb": (25_000, 25_000, 2),
}


@pytest.mark.full_data
@pytest.mark.parametrize("name", sorted(EXPECTED_FULL))
def test_full_dataset_counts(name, full_data_dir):
    n_train, n_test, n_classes = EXPECTED_FULL[name]
    tr = data.load(name, "train", data_dir=full_data_dir)
    te = data.load(name, "test", data_dir=full_data_dir)
    assert (len(tr), len(te)) == (n_train, n_test)
    assert set(tr.y.tolist()) == set(te.y.tolist()) == set(range(n_classes))
    if name == "imdb":
        assert np.bincount(tr.y).tolist() == [12_500, 12_500]
        assert np.bincount(te.y).tolist() == [12_500, 12_500]
        assert isinstance(tr.x[0], str)
    else:
        assert tr.x.shape[1:] == (28, 28) and tr.x.dtype == np.uint8


# ---- every row of the dataset and format registries

FILE_DATASETS = [name for name, spec in data.DATASETS.items() if spec.reader is None]


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_every_dataset_has_a_bundled_sample_in_its_first_format(name, no_keras_cache):
    spec = data.get_dataset(name)
    assert data.FORMATS[spec.formats[0]].arrays is not None  # make_samples can write it
    for split in data.SPLITS:
        ds = data.load(name, split)
        assert len(ds) > 0 and ds.source.startswith("bundled sample")
        assert ds.y.min() >= 0 and ds.y.max() < get_task(name).num_classes


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_a_missing_dataset_says_how_to_provide_it(tmp_path, name, no_keras_cache):
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load(name, "test", data_dir=tmp_path, use_samples=False)
    assert data.get_dataset(name).how_to_provide in str(err.value)


@pytest.mark.parametrize("fmt", sorted(data.FORMATS))
def test_no_format_finds_anything_in_an_empty_folder(tmp_path, fmt):
    for name in FILE_DATASETS:
        assert data.FORMATS[fmt].find(tmp_path, name, "train") is None


@pytest.mark.parametrize("fmt", sorted(f for f, v in data.FORMATS.items() if v.arrays))
def test_npz_formats_read_back_what_they_write(tmp_path, fmt):
    f = data.FORMATS[fmt]
    name = next(n for n in FILE_DATASETS if data.get_dataset(n).formats[0] == fmt)
    source = data.load(name, "test").subset(12)
    np.savez(tmp_path / f"{name}.npz", **f.arrays(source.x, source.y, "test"))
    x, y = f.read(f.find(tmp_path, name, "test"), "test")
    assert list(x) == list(source.x) if x.dtype == object else np.array_equal(x, source.x)
    assert np.array_equal(y, source.y)


def test_an_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*fashion_mnist"):
        data.load("cifar")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_reads_a_known_dataset_with_its_labels(name):
    task = TASKS[name]
    assert task.dataset in data.DATASETS and task.num_classes >= 2
    ds = data.load(task.dataset, "test")
    assert set(np.unique(ds.y)) <= set(range(task.num_classes))
