"""Users' own models: import (Keras and ONNX) -> compress -> benchmark -> select -> serve, on
real data that is not one of the built-in datasets (scikit-learn's digits; the bundled IMDB
sample as a text folder). Accuracies are computed here independently (Pillow conversions and
the model itself) and must equal what the import measured."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.artifacts import find_variant, list_variants, selected_variant
from core.userdata import DataSource, scan
from tests import user_datasets
from tests.conftest import loaded_model

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
SIDE = 16


def own_pixels(path: str) -> np.ndarray:
    """The test's own conversion of a digit PNG to the model's 16x16 grayscale input."""
    with Image.open(path) as img:
        gray = img.convert("L").resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    return np.asarray(gray, np.float32)[..., None] / 255.0


def onnx_predict(variant, x: np.ndarray, dtype=np.float32) -> np.ndarray:
    """The variant's model.onnx on inputs the test prepared itself (ONNX Runtime directly: the
    same model the import measured, so a near-tie cannot differ between two runtimes)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(variant.file("model.onnx")),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.astype(dtype)})[0]


def upscale(x8: np.ndarray) -> np.ndarray:
    """8x8 digits -> 16x16, as a float model input."""
    return np.stack([np.asarray(Image.fromarray(img).resize((SIDE, SIDE),
                                                            Image.Resampling.LANCZOS))
                     for img in x8]).astype(np.float32)[..., None] / 255.0


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The digits as an image folder, CSV and .npz; a CNN trained on them here, saved as
    .keras and .onnx; two models tinyship must refuse."""
    from core.export import export_onnx
    from core.tf_setup import keras, tf

    root = tmp_path_factory.mktemp("import")
    x, y = user_datasets.digits()
    out = {"folder": user_datasets.write_digit_folder(root / "digits"),
           "csv": user_datasets.write_digit_csv(root / "digits.csv"),
           "npz": user_datasets.write_digit_npz(root / "digits.npz")}
    tf.random.set_seed(0)
    model = keras.Sequential([keras.Input((SIDE, SIDE, 1)),
                              keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.MaxPool2D(), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(upscale(x), y, epochs=6, batch_size=32, verbose=0)
    model.save(root / "digits.keras")
    export_onnx(model, root / "digits.onnx")
    out["keras"], out["onnx"], out["model"] = root / "digits.keras", root / "digits.onnx", model

    inputs = [keras.Input((SIDE, SIDE, 1)), keras.Input((4,))]
    merged = keras.layers.Concatenate()([keras.layers.Flatten()(inputs[0]), inputs[1]])
    two = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(merged))
    two.save(root / "two_inputs.keras")
    regression = keras.Sequential([keras.Input((SIDE, SIDE, 1)), keras.layers.Flatten(),
                                   keras.layers.Dense(1)])
    regression.save(root / "regression.keras")
    logits = keras.Sequential([keras.Input((SIDE, SIDE, 1)), keras.layers.Flatten(),
                               keras.layers.Dense(10)])
    logits.save(root / "logits.keras")
    out.update(two=root / "two_inputs.keras", regression=root / "regression.keras",
               logits=root / "logits.keras")
    return out


@pytest.fixture(scope="module")
def imported(files, tmp_path_factory):
    """The Keras model imported from the image folder: (artifact root, variant)."""
    from trainer.importer import import_model

    root = tmp_path_factory.mktemp("artifacts")
    variant = import_model(files["keras"], files["folder"], "digits", artifacts=root,
                           variant="digits_cnn", log=lambda *a: None)
    return root, variant


def test_keras_import_measures_the_accuracy_computed_here(files, imported):
    root, variant = imported
    listing = scan(DataSource.from_dict(dict(variant.extra["import"]["data"])))
    x = np.stack([own_pixels(p) for p in listing.items["test"]])
    own = float(np.mean(onnx_predict(variant, x).argmax(1) == listing.y["test"]))
    assert variant.metrics["test_accuracy"] == pytest.approx(own, abs=1e-12)
    assert own > 0.8
    assert variant.input.example_shape == (SIDE, SIDE, 1)
    assert variant.output.activation == "softmax" and variant.labels == [str(d) for d in range(10)]
    assert {"model.keras", "model.onnx", "model.tflite"} <= set(variant.files)
    assert variant.lineage.technique == "import" and variant.lineage.is_root


@pytest.mark.parametrize("layout", ["csv", "npz"])
def test_onnx_import_from_arrays(files, layout, tmp_path):
    from trainer.importer import import_model

    variant = import_model(files["onnx"], files[layout], "digits_arrays", artifacts=tmp_path,
                           log=lambda *a: None)
    assert variant.files == ["model.onnx"]
    listing = scan(DataSource.from_dict(dict(variant.extra["import"]["data"])))
    assert listing.arrays["test"].shape[1:] == (SIDE, SIDE)  # converted from 8x8 by the import
    # The test's own inputs and labels, straight from scikit-learn's arrays: the npz's test
    # rows are the first ones, the CSV's are the rows its seeded split put in test.
    x, y = user_datasets.digits()
    rows = np.arange(len(listing.y["test"])) if layout == "npz" else \
        np.asarray(listing.items["test"])
    own = float(np.mean(onnx_predict(variant, upscale(x[rows])).argmax(1) == y[rows]))
    assert variant.metrics["test_accuracy"] == pytest.approx(own, abs=1e-12)


def test_import_refuses_what_it_cannot_serve(files, tmp_path):
    from trainer.importer import ModelImportError, import_model

    def attempt(model, data=files["folder"], **kw):
        with pytest.raises(ModelImportError) as e:
            import_model(model, data, "bad", artifacts=tmp_path, log=lambda *a: None, **kw)
        return str(e.value)

    msg = attempt(files["two"])
    assert "2 input(s)" in msg and "[?, 4]" in msg and "supported" in msg
    assert "regression model" in attempt(files["regression"])
    assert "logits" in attempt(files["logits"]) and "softmax" in attempt(files["logits"])
    x, y = user_datasets.digits()
    nine = user_datasets.write_digit_folder(tmp_path / "nine", x[y < 9][:300], y[y < 9][:300])
    msg = attempt(files["keras"], nine)
    assert "10 classes" in msg and "has 9" in msg and "--labels" in msg
    assert not (tmp_path / "bad").exists()  # nothing written for a refused import


def test_cli_import_and_clear_errors(files, tmp_path):
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "trainer", "import", *map(str, args), "--artifacts",
         str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    ok = run("--model", files["onnx"], "--data", files["npz"], "--task", "digits_cli")
    assert ok.returncode == 0, ok.stderr
    assert "10 classes" in ok.stdout and "test accuracy" in ok.stdout
    bad = run("--model", files["regression"], "--data", files["folder"], "--task", "x")
    assert bad.returncode == 2 and "regression model" in bad.stderr
    missing = run("--model", files["onnx"], "--data", tmp_path / "nowhere", "--task", "x")
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr


def test_compress_benchmark_select_serve_an_imported_task(files, imported):
    from compress import cli as compress_cli
    from benchmarks import cli as bench_cli

    root, variant = imported
    recipe = REPO / "compress" / "recipes" / "onnx.json"
    assert compress_cli.main(["run", "--task", "digits", "--model", "digits_cnn",
                              "--artifacts", str(root), "--recipe", str(recipe)]) == 0
    chosen = selected_variant(root, "digits")
    reports = root.parent / "reports"
    assert bench_cli.main(["run", "--quick", "--artifacts", str(root), "--reports",
                           str(reports), "--tasks", "digits", "--runtimes", "onnx,litert"]) == 0
    bench = json.loads((reports / "bench.json").read_text())
    rows = {(r["variant"], r["runtime"]): r for r in bench["results"]}
    assert ("digits_cnn", "litert") in rows and (chosen.name, "onnx") in rows
    assert rows[("digits_cnn", "onnx")]["accuracy"] == pytest.approx(
        variant.metrics["test_accuracy"])

    from fastapi.testclient import TestClient

    from core.runtime import make_session
    from serve.app import create_app
    from serve.settings import Settings

    png = sorted((files["folder"] / "7").glob("*.png"))[0]
    session = make_session(chosen.file("model.onnx"), ("cpu",))
    own = session.run(None, {session.get_inputs()[0].name: own_pixels(str(png))[None]})[0][0]
    with TestClient(create_app(Settings(artifacts=root, providers=("cpu",)))) as client:
        model = loaded_model(client, "digits")
        assert model["state"] == "ready", model
        assert model["kind"] == "image" and model["input_shape"] == [16, 16, 1]
        answer = client.post("/v1/classify/digits?k=10",
                             files={"file": ("7.png", png.read_bytes(), "image/png")}).json()
        assert answer["variant"] == chosen.name
        assert answer["top_k"][0]["class_id"] == int(own.argmax())
        served = {t["class_id"]: t["probability"] for t in answer["top_k"]}
        assert np.allclose([served[i] for i in range(10)], own, atol=1e-5)
        wrong = client.post("/v1/classify/digits", json={"pixels": [[0] * 28] * 28})
        assert wrong.status_code == 422 and "16x16 grayscale" in wrong.json()["error"]
        meta = client.get("/v2/models/digits").json()
        assert meta["inputs"][0]["shape"] == [-1, SIDE, SIDE, 1]


def test_triton_export_includes_the_imported_task(imported, tmp_path):
    from compress import cli as compress_cli
    from serve.triton_export import export_triton

    root, _ = imported
    if not (root / "digits" / "selected.json").exists():
        compress_cli.main(["select", "--task", "digits", "--artifacts", str(root),
                           "--variant", "digits_cnn"])
    exported, skipped = export_triton(root, tmp_path / "repo")
    assert "digits" in {e.task for e in exported}
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse((tmp_path / "repo" / "digits" / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    assert list(config.input[0].dims) == [16, 16, 1]


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    """The bundled IMDB sample as a text folder; a bag-of-words model trained here with the
    project's tokenizer, saved with its vocabulary."""
    from core.preprocessing import TextTokenizer
    from core.tf_setup import keras, tf

    root = tmp_path_factory.mktemp("text")
    folder = user_datasets.write_imdb_folder(root / "reviews", n=400)
    listing = scan(DataSource.detect(folder))
    train = [Path(p).read_text() for p in listing.items["train"]]
    tok = TextTokenizer.fit(train, vocab_size=3000, max_length=128)
    tf.random.set_seed(0)
    model = keras.Sequential([keras.Input((128,), dtype="int32"),
                              keras.layers.Embedding(tok.vocab_size, 16),
                              keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy")
    model.fit(tok(train), listing.y["train"], epochs=8, verbose=0)
    model.save(root / "reviews.keras")
    (root / "vocab.json").write_text(json.dumps(tok.vocabulary))
    return {"folder": folder, "model": model, "keras": root / "reviews.keras",
            "vocab": root / "vocab.json", "tokenizer": tok}


def test_text_model_import(text_files, tmp_path):
    from trainer.importer import ModelImportError, Preprocessing, import_model

    with pytest.raises(ModelImportError, match="--vocabulary"):
        import_model(text_files["keras"], text_files["folder"], "reviews", artifacts=tmp_path,
                     log=lambda *a: None)
    variant = import_model(text_files["keras"], text_files["folder"], "reviews",
                           artifacts=tmp_path, log=lambda *a: None,
                           preprocessing=Preprocessing(vocabulary=str(text_files["vocab"])))
    listing = scan(DataSource.detect(text_files["folder"]))
    texts = [Path(p).read_text() for p in listing.items["test"]]
    probs = onnx_predict(variant, text_files["tokenizer"](texts), np.int32)[:, 0]
    own = float(np.mean((probs > 0.5) == listing.y["test"]))
    assert variant.metrics["test_accuracy"] == pytest.approx(own, abs=1e-12)
    assert variant.output.activation == "sigmoid" and variant.labels == ["neg", "pos"]
    assert find_variant(tmp_path, "reviews", variant.name).has_file("vocab.json")


def test_python_api_mirrors_the_command_line(files, tmp_path):
    import tinyship

    base = tinyship.import_model(files["onnx"], files["npz"], "digits_api", artifacts=tmp_path)
    report = tinyship.compress("digits_api", artifacts=tmp_path)  # an ONNX model: ONNX recipe
    derived = {r["variant"] for r in report["models"][base.name] if r.get("status") == "ok"}
    assert f"{base.name}-onnx-fp16" in derived
    served = tinyship.selected("digits_api", artifacts=tmp_path)
    assert served.name in derived | {base.name}
    bench = tinyship.benchmark(["digits_api"], artifacts=tmp_path, reports=tmp_path / "reports",
                               runtimes=["onnx"])
    assert {r["variant"] for r in bench["results"]} >= {base.name, served.name}
    assert (tmp_path / "reports" / "index.html").is_file()
    assert {v.name for v in tinyship.variants("digits_api", artifacts=tmp_path)} >= derived


def test_h5_and_savedmodel_imports_match_the_keras_file(files, imported, tmp_path):
    from trainer.importer import import_model

    _, keras_variant = imported
    files["model"].save(tmp_path / "digits.h5")
    files["model"].save(tmp_path / "saved", save_format="tf")
    for path in (tmp_path / "digits.h5", tmp_path / "saved"):
        v = import_model(path, files["folder"], "digits", artifacts=tmp_path / "art",
                         log=lambda *a: None)
        assert v.metrics["test_accuracy"] == keras_variant.metrics["test_accuracy"]


def test_zoo_model_trains_on_the_users_folder(files, tmp_path):
    r = subprocess.run([sys.executable, "-m", "trainer", "train", "--model", "fashion_mlp",
                        "--data", str(files["folder"]), "--task", "digits_zoo",
                        "--image-size", "16x16", "--epochs", "3", "--artifacts", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    v = find_variant(tmp_path, "digits_zoo", "fashion_mlp")
    assert v.input.example_shape == (16, 16, 1) and v.metrics["test_accuracy"] > 0.5
    assert json.loads((tmp_path / "digits_zoo" / "task.json").read_text())["source"]["image"] \
        == [16, 16, 1]
    no_task = subprocess.run([sys.executable, "-m", "trainer", "train", "--model", "fashion_mlp",
                              "--data", str(files["folder"]), "--artifacts", str(tmp_path)],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert no_task.returncode == 2 and "--data needs --task" in no_task.stderr


def test_every_technique_runs_on_an_imported_colour_model(files, tmp_path):
    """The compress pipeline on a user's model of non-square RGB input (20x24x3), imported."""
    from compress import pipeline
    from compress.recipe import parse_recipe
    from core.tf_setup import keras, tf
    from core.userdata import read_split
    from trainer.importer import import_model

    shape = (20, 24, 3)
    x, y, _ = read_split(DataSource.detect(files["folder"], image=shape), "train")
    tf.random.set_seed(0)
    L = keras.layers
    model = keras.Sequential([keras.Input(shape), L.Conv2D(8, 3, activation="relu"),
                              L.MaxPool2D(), L.Conv2D(16, 3, activation="relu"), L.Flatten(),
                              L.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x / 255.0, y, epochs=4, batch_size=32, verbose=0)
    model.save(tmp_path / "rgb.keras")
    base = import_model(tmp_path / "rgb.keras", files["folder"], "digits_colour",
                        artifacts=tmp_path / "art", log=lambda *a: None)
    steps = [{"technique": t, **({"params": p} if p else {})} for t, p in (
        ("prune", {"sparsity": 0.5}), ("channels", {"ratio": 0.5}), ("separable", None),
        ("lowrank", {"rank_ratio": 0.5}), ("qat", None), ("tflite", {"mode": "int8"}),
        ("onnx_static", None), ("onnx_dynamic", None), ("onnx_fp16", None))]
    recipe = parse_recipe({"epochs": 1, "train_limit": 600, "parity_size": 300, "steps": steps})
    rows = pipeline.run_model(tmp_path / "art", "digits_colour", base.name, recipe, log=lambda *a: None)
    failed = {r["variant"]: r.get("reason") for r in rows if r["status"] not in ("ok",)}
    assert not failed, failed
    assert len(rows) == 1 + len(steps)
    for v in list_variants(tmp_path / "art", "digits_colour", verify=True):
        assert v.input.example_shape == shape and v.preprocessor().input_shape == shape


def test_training_reads_a_folder_split_lazily(files, tmp_path):
    """A user's image folder is memory-mapped (core.userdata) and the trainer preprocesses it a
    batch at a time: its inputs are LazyInputs, every example is seen once per epoch."""
    from core.preprocessing import ImagePreprocessor
    from core.userdata import define_task, read_split
    from trainer.fit import LazyInputs, _lazy_dataset, evaluate, prepare_data
    from trainer.train import resolved_recipe

    define_task(tmp_path, "digits_lazy", files["folder"], image=(16, 16, 1))
    recipe = resolved_recipe("fashion_mlp", None, {"scaling": "standardize"})
    data = prepare_data("digits_lazy", recipe)
    assert all(isinstance(x, LazyInputs) for x in (data.x_train, data.x_val, data.x_test))
    raw, _, _ = read_split(DataSource.detect(files["folder"], image=(16, 16, 1)), "train")
    assert len(data.x_train) + len(data.x_val) == len(raw)
    eager = ImagePreprocessor.fit(np.asarray(raw)[data.x_train.rows], "standardize")
    assert data.preprocessor.mean == pytest.approx(eager.mean, rel=1e-9)
    assert data.preprocessor.std == pytest.approx(eager.std, rel=1e-9)
    assert data.x_train.shape == (len(data.x_train), 16, 16, 1)
    np.testing.assert_array_equal(data.x_train[:3], eager(np.asarray(raw)[data.x_train.rows[:3]]))

    ds = _lazy_dataset(data.x_train, data.y_train, 64, shuffle_seed=0)
    epochs = [np.concatenate([y.numpy() for _, y in ds]) for _ in range(2)]
    assert all(sorted(e) == sorted(data.y_train) for e in epochs)
    assert not np.array_equal(epochs[0], epochs[1])  # shuffled anew each epoch
    model = files["model"]
    metrics, preds = evaluate(model, data.x_test, data.y_test)
    assert len(preds) == len(data.y_test) and 0 <= metrics["test_accuracy"] <= 1


def test_a_folder_tasks_test_inputs_are_computed_lazily_and_agree(imported):
    """compress and benchmarks evaluate a user's image folder through LazyInputs (rows
    preprocessed when read) and get the accuracy the import measured by streaming the files."""
    from core.evaluate import accuracy, split_inputs
    from core.preprocessing import LazyInputs
    from core.runners import open_runner
    from core.userdata import register_tasks

    root, variant = imported
    register_tasks(root)
    ev = split_inputs(variant, "test")
    assert isinstance(ev.x, LazyInputs) and ev.x.shape[1:] == (SIDE, SIDE, 1)
    with open_runner(variant, "onnx") as runner:
        assert accuracy(runner, ev.x, ev.y) == variant.metrics["test_accuracy"]
    np.testing.assert_array_equal(np.asarray(ev.x)[:5], ev.x[:5])


def test_imported_text_task_is_served_and_preprocessing_reads_yaml(text_files, tmp_path):
    """A text model imported with its vocabulary given in a YAML preprocessing file answers on
    /v1/classify like the model itself."""
    from fastapi.testclient import TestClient

    from core.artifacts import select_variant
    from serve.app import create_app
    from serve.settings import Settings
    from trainer.importer import Preprocessing, import_model

    options = tmp_path / "pre.yaml"
    options.write_text(f"vocabulary: {text_files['vocab']}\nngrams: 1\n")
    variant = import_model(text_files["keras"], text_files["folder"], "reviews", artifacts=tmp_path,
                           log=lambda *a: None, preprocessing=Preprocessing.from_file(options))
    select_variant(tmp_path, "reviews", variant.name)
    review = "A wonderful, moving film with a great cast."
    p = float(onnx_predict(variant, text_files["tokenizer"]([review]), np.int32)[0, 0])
    with TestClient(create_app(Settings(artifacts=tmp_path, providers=("cpu",)))) as client:
        assert loaded_model(client, "reviews")["state"] == "ready"
        answer = client.post("/v1/classify/reviews?k=2", json={"text": review}).json()
    scores = {t["label"]: t["probability"] for t in answer["top_k"]}
    assert scores["pos"] == pytest.approx(p, abs=1e-5) and scores["neg"] == pytest.approx(1 - p, abs=1e-5)
    bad = tmp_path / "bad.yaml"
    bad.write_text("vocab: x.json\n")
    from trainer.importer import ModelImportError

    with pytest.raises(ModelImportError, match="unknown preprocessing option"):
        Preprocessing.from_file(bad)
