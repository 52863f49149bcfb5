import json

import pytest

from core import artifacts as A


def _make(root, variant="base", payload=b"weights", **kw):
    fields = dict(task="fashion_mnist", model="fashion_mlp", variant=variant,
                  lineage={"parent": None, "technique": "train", "params": {"epochs": 1}},
                  input={"name": "input", "shape": [None, 28, 28, 1], "dtype": "float32"},
                  output={"name": "probs", "activation": "softmax"},
                  preprocessing={"type": "image", "scaling": "minmax"},
                  labels=["a", "b"], metrics={"test_accuracy": 0.5})
    fields.update(kw)
    with A.create_variant(root, **fields) as v:
        v.path("model.onnx").write_bytes(payload)
        v.path("sub/vocab.json").write_text("[]")
    return A.find_variant(root, fields["task"], variant)


def test_write_read_round_trip(tmp_path):
    v = _make(tmp_path)
    assert v.name == "base" and v.task == "fashion_mnist" and v.labels == ["a", "b"]
    assert set(v.manifest.files) == {"model.onnx", "sub/vocab.json"}
    assert v.manifest.files["model.onnx"].bytes == 7
    assert v.manifest.schema_version == A.SCHEMA_VERSION
    assert v.input.kind == "image" and (v.input.height, v.input.width, v.input.channels) == (28, 28, 1)
    assert v.output.width == 2 and v.output.name == "probs"
    assert A.read_manifest(v.path) == v.manifest  # what is written reads back the same
    assert v.file("model.onnx").read_bytes() == b"weights"
    assert [x.name for x in A.list_variants(tmp_path)] == ["base"]


def test_checksum_mismatch_names_the_file(tmp_path):
    v = _make(tmp_path)
    v.file("model.onnx").write_bytes(b"tampered")
    with pytest.raises(A.ArtifactError, match=r"model\.onnx: checksum mismatch"):
        A.load_variant(v.path)


def test_missing_listed_file(tmp_path):
    v = _make(tmp_path)
    (v.path / "sub" / "vocab.json").unlink()
    with pytest.raises(A.ArtifactError, match=r"vocab\.json: listed in .* but missing"):
        A.load_variant(v.path)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.pop("schema_version"), "no schema_version"),
    (lambda m: m.update(schema_version=99), "unknown schema_version 99"),
    (lambda m: m.pop("labels"), "missing field.*labels"),
])
def test_bad_manifest_is_rejected(tmp_path, edit, match):
    v = _make(tmp_path)
    m = json.loads((v.path / A.MANIFEST).read_text())
    edit(m)
    (v.path / A.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(A.ArtifactError, match=match):
        A.load_variant(v.path)


def test_interrupted_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with A.create_variant(tmp_path, task="imdb", model="imdb_gap", variant="half",
                              lineage={"parent": None, "technique": "train"},
                              input={"shape": [None, 8], "dtype": "int32"}, output={},
                              preprocessing={"type": "text"}, labels=["n", "p"]) as v:
            v.path("model.onnx").write_bytes(b"partial")
            raise RuntimeError("killed mid-write")
    assert A.list_variants(tmp_path) == []
    assert list((tmp_path / "imdb").iterdir()) == []


def test_overwrite_replaces_atomically_and_keeps_old_on_failure(tmp_path):
    _make(tmp_path, payload=b"v1")
    with pytest.raises(RuntimeError):
        with A.create_variant(tmp_path, task="fashion_mnist", model="m", variant="base",
                              lineage={"parent": None, "technique": "train"},
                              input={"shape": [None, 28, 28, 1]}, output={},
                              preprocessing={"type": "image"}, labels=["a", "b"]) as v:
            v.path("model.onnx").write_bytes(b"v2")
            raise RuntimeError
    assert A.find_variant(tmp_path, "fashion_mnist", "base").file("model.onnx").read_bytes() == b"v1"
    v = _make(tmp_path, payload=b"v3")
    assert v.file("model.onnx").read_bytes() == b"v3"
    assert [p.name for p in (tmp_path / "fashion_mnist").iterdir()] == ["base"]


def test_update_manifest_keeps_checksums_valid(tmp_path):
    v = _make(tmp_path)
    v2 = A.update_manifest(v, metrics={"latency_ms": 1.5})
    assert v2.metrics == {"test_accuracy": 0.5, "latency_ms": 1.5}
    assert A.load_variant(v.path).metrics["latency_ms"] == 1.5


def test_selection_round_trip_and_errors(tmp_path):
    _make(tmp_path)
    with pytest.raises(A.ArtifactError, match="no variant selected"):
        A.selected_variant(tmp_path, "fashion_mnist")
    with pytest.raises(A.ArtifactError, match="known: base"):
        A.select_variant(tmp_path, "fashion_mnist", "nope")
    A.select_variant(tmp_path, "fashion_mnist", "base", reason={"why": "fastest"})
    assert A.selected_variant(tmp_path, "fashion_mnist").name == "base"


def test_invalid_names_and_lineage(tmp_path):
    with pytest.raises(A.ArtifactError, match="invalid variant name"):
        _make(tmp_path, variant="../escape")
    with pytest.raises(A.ArtifactError, match="lineage must have 'technique'"):
        _make(tmp_path, lineage={"parent": None})


def test_runtime_settings_in_the_manifest_reach_every_onnx_session(tmp_path):
    from dataclasses import replace

    from core.runtime import variant_session

    plain = _make(tmp_path)
    assert plain.onnxruntime_options == {}
    settings = {"onnxruntime": {"disabled_optimizers": ["QDQPropagationTransformer"]}}
    tuned = replace(plain, manifest=plain.manifest.replace(runtime=settings))
    assert tuned.onnxruntime_options == {"disabled_optimizers": ["QDQPropagationTransformer"]}
    typo = replace(plain, manifest=plain.manifest.replace(
        runtime={"onnxruntime": {"disable_optimizers": []}}))
    with pytest.raises(A.ArtifactError, match="unknown onnxruntime setting.*disable_optimizers"):
        variant_session(typo)


def test_remove_variant_leaves_nothing_behind(tmp_path):
    _make(tmp_path, variant="old")
    assert A.remove_variant(tmp_path, "fashion_mnist", "old") is True
    assert not (tmp_path / "fashion_mnist" / "old").exists()
    assert list((tmp_path / "fashion_mnist").iterdir()) == []
    assert A.remove_variant(tmp_path, "fashion_mnist", "old") is False


def test_the_typed_manifest_is_frozen(tmp_path):
    v = _make(tmp_path)
    with pytest.raises(Exception):
        v.manifest.task = "other"
    with pytest.raises(TypeError):
        v.manifest.metrics["test_accuracy"] = 1.0


def _as_version_1(m: dict) -> dict:
    """What tinyship wrote before input.kind and output.width existed."""
    m = json.loads(json.dumps(m))
    m["schema_version"] = 1
    del m["input"]["kind"], m["output"]["width"]
    return m


@pytest.mark.parametrize("preprocessing, activation, labels, kind, width", [
    ({"type": "image", "scaling": "minmax"}, "softmax", ["a", "b", "c"], "image", 3),
    ({"type": "text", "max_length": 8}, "sigmoid", ["negative", "positive"], "text", 1),
    ({"type": "vector"}, "sigmoid", ["0", "1"], "vector", 1),
])
def test_a_version_1_manifest_is_migrated_on_read(tmp_path, preprocessing, activation, labels,
                                                  kind, width):
    shape = [None, 28, 28, 1] if kind == "image" else [None, 8]
    v = _make(tmp_path, preprocessing=preprocessing, labels=labels,
              input={"name": "input", "shape": shape, "dtype": "float32"},
              output={"name": "probs", "activation": activation})
    path = v.path / A.MANIFEST
    path.write_text(json.dumps(_as_version_1(json.loads(path.read_text()))))
    old = A.load_variant(v.path)
    assert old.input.kind == kind and old.output.width == width
    assert old.manifest.schema_version == A.SCHEMA_VERSION
    # Written back in the current schema by the next update; checksums stay valid.
    A.update_manifest(old, metrics={"x": 1})
    assert json.loads(path.read_text())["schema_version"] == A.SCHEMA_VERSION
    assert A.load_variant(v.path).metrics["x"] == 1


def test_a_manifest_from_an_unknown_version_names_the_file_and_the_fix(tmp_path):
    v = _make(tmp_path)
    path = v.path / A.MANIFEST
    m = json.loads(path.read_text())
    m["schema_version"] = 7
    path.write_text(json.dumps(m))
    with pytest.raises(A.ArtifactError) as err:
        A.load_variant(v.path)
    assert str(path) in str(err.value) and "make train compress" in str(err.value)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["input"].update(kind="audio"), "input kind 'audio'"),
    (lambda m: m["output"].update(activation="relu"), "activation 'relu'"),
    (lambda m: m["output"].update(width=3), "output width 3 != 2 labels"),
    (lambda m: m["input"].update(shape=[None, 28, 28]), "image input has shape"),
    (lambda m: m.update(labels=None), "labels must be a non-empty list"),
])
def test_an_invalid_manifest_is_refused_with_the_field(tmp_path, edit, match):
    v = _make(tmp_path)
    path = v.path / A.MANIFEST
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))
    with pytest.raises(A.ArtifactError, match=match) as err:
        A.load_variant(v.path)
    assert str(path) in str(err.value)


def test_output_probabilities_for_softmax_and_sigmoid_heads():
    import numpy as np

    from core.manifest import OutputSpec

    softmax = np.array([[0.1, 0.9], [0.7, 0.3]], dtype=np.float32)
    assert OutputSpec("probs", 2, "softmax").probabilities(softmax) is not None
    np.testing.assert_array_equal(OutputSpec("probs", 2).probabilities(softmax), softmax)
    sigmoid = np.array([[0.8], [0.25]], dtype=np.float32)
    np.testing.assert_allclose(OutputSpec("p", 1, "sigmoid").probabilities(sigmoid),
                               [[0.2, 0.8], [0.75, 0.25]], rtol=1e-6)


def test_the_manifest_names_the_tensors_model_onnx_has(tmp_path):
    """The names come from the ONNX graph when the variant is written, whatever the caller
    declared (compress used to keep its parent's output name after re-exporting)."""
    import onnx

    from serve.fixtures import image_mlp_onnx

    model = onnx.load_from_string(image_mlp_onnx(10))
    renames = {"input": "pixels_in", "probs": "scores_out"}
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in (*model.graph.input, *model.graph.output):
        value.name = renames.get(value.name, value.name)
    blob = model.SerializeToString()
    with A.create_variant(tmp_path, task="fashion_mnist", model="m", variant="v",
                          lineage={"parent": None, "technique": "train"},
                          input={"name": "input", "shape": [None, 28, 28, 1]},
                          output={"name": "Identity:0", "activation": "softmax"},
                          preprocessing={"type": "image"}, labels=list("abcdefghij")) as v:
        v.path("model.onnx").write_bytes(blob)
    variant = A.find_variant(tmp_path, "fashion_mnist", "v")
    assert (variant.input.name, variant.output.name) == ("pixels_in", "scores_out")


def test_default_root_follows_artifacts_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ARTIFACTS_DIR", str(tmp_path))
    assert A.default_root() == tmp_path
    monkeypatch.delenv("ARTIFACTS_DIR")
    assert str(A.default_root()) == "artifacts"
