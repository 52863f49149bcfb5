"""End to end on the bundled samples: train -> artifact with every promised file, XOR solved,
runs reproducible with a seed, ensembles of trained variants."""
import json
import shutil

import numpy as np
import pytest

from core.artifacts import load_variant
from tests.conftest import REPO
from trainer.fit import build_model, fit, prepare_data, seed_everything
from trainer.train import resolved_recipe, train_variant

TINY = {"max_train_examples": 300, "epochs": 1, "width": 0.25, "early_stopping_patience": 0}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    train_variant("fashion_mnist", "fashion_mlp", overrides=TINY, artifacts=root)
    train_variant("fashion_mnist", "fashion_mlp", overrides={**TINY, "seed": 1, "width": 0.5},
                  artifacts=root, variant="fashion_mlp-seed1")
    return root


def test_variant_has_every_promised_file_and_manifest_field(trained):
    v = load_variant(trained / "fashion_mnist" / "fashion_mlp")  # verifies checksums
    for name in ("model.keras", "model.onnx", "model.tflite", "history.json", "curves.png",
                 "confusion.png", "summary.txt", "recipe.json"):
        assert v.has_file(name), name
    m = v.manifest
    assert (m.lineage.parent, m.lineage.technique) == (None, "train")
    assert m.lineage.params["width"] == 0.25
    assert m.input.shape == (None, 28, 28, 1) and m.input.dtype == "float32"
    assert m.input.kind == "image" and m.input.channels == 1
    assert m.output.activation == "softmax" and m.output.width == 10
    assert m.preprocessing_type == "image" and len(m.labels) == 10
    assert 0.0 <= m.metrics["test_accuracy"] <= 1.0
    assert "bundled sample" in m.metrics["data_source"]
    assert all(report["ok"] for report in m.extra["export"]["parity"])
    assert json.loads(v.file("recipe.json").read_text()) == v.lineage.to_dict()["params"]
    history = json.loads(v.file("history.json").read_text())
    assert set(history) >= {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "phase"}
    assert history["lr"] == [pytest.approx(1e-3)]


def test_onnx_file_reproduces_the_keras_accuracy(trained):
    from core.export import run_onnx
    from core.data import load

    v = load_variant(trained / "fashion_mnist" / "fashion_mlp")
    test = load("fashion_mnist", "test")
    probs = run_onnx(v.file("model.onnx"), v.preprocessor()(test.x))
    assert np.mean(probs.argmax(1) == test.y) == pytest.approx(v.metrics["test_accuracy"], abs=1e-3)


def test_text_variant_writes_vocabulary(tmp_path):
    v = train_variant("imdb", "imdb_gap", artifacts=tmp_path,
                      overrides={**TINY, "vocab_size": 500, "max_length": 32, "width": 1.0})
    assert v.has_file("vocab.json")
    assert v.input.dtype == "int32" and v.input.shape == (None, 32) and v.input.kind == "text"
    assert v.output.activation == "sigmoid" and v.output.width == 1
    assert v.preprocessor().vocab_size == 500


def test_bigram_model_serves_with_the_tokenizer_it_trained_with(tmp_path):
    from core.export import run_onnx
    from core.data import load

    v = train_variant("imdb", "imdb_bigram", artifacts=tmp_path,
                      overrides={**TINY, "vocab_size": 2000, "max_length": 64, "width": 1.0})
    assert v.manifest.preprocessing["ngrams"] == 2
    data = prepare_data("imdb", resolved_recipe("imdb_bigram", overrides={
        **TINY, "vocab_size": 2000, "max_length": 64, "width": 1.0}), None)
    served = v.preprocessor()  # built from manifest + vocab.json, as serve does
    reviews = list(load("imdb", "test").x[:50])
    assert np.array_equal(served(reviews), data.preprocessor(reviews))
    assert any(" " in token for token in served.vocabulary)  # word pairs are in the vocabulary
    probs = run_onnx(v.file("model.onnx"), data.x_test)
    accuracy = np.mean((probs[:, 0] > 0.5) == data.y_test)
    assert accuracy == pytest.approx(v.metrics["test_accuracy"], abs=1e-3)


def test_xor_mlp_solves_xor(tmp_path):
    v = train_variant("xor", "xor_mlp", artifacts=tmp_path)
    assert v.metrics["test_accuracy"] == 1.0 and v.metrics["n_test"] == 4


def _train_once(seed: int):
    recipe = resolved_recipe("fashion_mlp", overrides={**TINY, "seed": seed, "augment": True,
                                                       "steps_per_epoch": 3})
    seed_everything(recipe)
    data = prepare_data("fashion_mnist", recipe)
    model = build_model("fashion_mlp", data, recipe)
    fit(model, data, recipe, verbose=0)
    return model.get_weights()


def test_same_seed_same_weights():
    first, again, other = _train_once(3), _train_once(3), _train_once(4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize("method", ["average", "vote"])
def test_ensemble_of_trained_variants(trained, method):
    from trainer.ensemble import ensemble_variants

    v = ensemble_variants("fashion_mnist", ["fashion_mlp", "fashion_mlp-seed1"], method=method,
                          artifacts=trained)
    assert v.lineage.technique == "ensemble"
    assert v.lineage.params["members"] == ["fashion_mlp", "fashion_mlp-seed1"]
    assert set(v.extra["member_test_accuracy"]) == {"fashion_mlp", "fashion_mlp-seed1"}
    assert v.has_file("model.onnx") and v.has_file("model.keras")
    from core.export import run_onnx

    probs = run_onnx(v.file("model.onnx"), v.preprocessor()(np.zeros((3, 28, 28), np.uint8)))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_ensemble_rejects_a_single_member(trained):
    from trainer.ensemble import EnsembleError, ensemble_variants

    with pytest.raises(EnsembleError, match="at least 2 members"):
        ensemble_variants("fashion_mnist", ["fashion_mlp"], artifacts=trained)


def test_mirrored_strategy_trains_the_same_code(tmp_path):
    from trainer.train import train_model

    recipe = resolved_recipe("fashion_mlp", overrides={**TINY, "strategy": "mirrored",
                                                       "steps_per_epoch": 2})
    data = prepare_data("fashion_mnist", recipe)
    result = train_model("fashion_mlp", data, recipe)
    assert result.extra["distribute"]["strategy"] == "MirroredStrategy"
    assert result.extra["distribute"]["replicas"] >= 1
    assert 0.0 <= result.metrics["test_accuracy"] <= 1.0


def test_an_up_to_date_variant_is_kept_and_a_changed_job_is_trained_again(trained, tmp_path):
    from trainer.train import up_to_date_variant

    kept = up_to_date_variant("fashion_mnist", "fashion_mlp", overrides=TINY, artifacts=trained)
    assert kept is not None and kept.name == "fashion_mlp"
    assert kept.extra["training_key"]["recipe"]["epochs"] == 1
    # Another recipe, other data or another variant name: it must be trained.
    assert up_to_date_variant("fashion_mnist", "fashion_mlp", overrides={**TINY, "epochs": 2},
                              artifacts=trained) is None
    assert up_to_date_variant("fashion_mnist", "fashion_mlp", overrides=TINY, artifacts=trained,
                              variant="not-trained-yet") is None
    other_data = tmp_path / "data"
    other_data.mkdir()
    shutil.copy(REPO / "data" / "samples" / "fashion_mnist.npz", other_data)
    assert up_to_date_variant("fashion_mnist", "fashion_mlp", overrides=TINY, artifacts=trained,
                              data_dir=other_data) is None
