import json

import pytest

from trainer import artifacts as A


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
    assert set(v.manifest["files"]) == {"model.onnx", "sub/vocab.json"}
    assert v.manifest["files"]["model.onnx"]["bytes"] == 7
    assert v.manifest["schema_version"] == A.SCHEMA_VERSION
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
                              lineage={"parent": None, "technique": "train"}, input={},
                              output={}, preprocessing={"type": "text"}, labels=["n", "p"]) as v:
            v.path("model.onnx").write_bytes(b"partial")
            raise RuntimeError("killed mid-write")
    assert A.list_variants(tmp_path) == []
    assert list((tmp_path / "imdb").iterdir()) == []


def test_overwrite_replaces_atomically_and_keeps_old_on_failure(tmp_path):
    _make(tmp_path, payload=b"v1")
    with pytest.raises(RuntimeError):
        with A.create_variant(tmp_path, task="fashion_mnist", model="m", variant="base",
                              lineage={"parent": None, "technique": "train"}, input={},
                              output={}, preprocessing={}, labels=[]) as v:
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

    from trainer.runtime import variant_session

    plain = _make(tmp_path)
    assert plain.onnxruntime_options == {}
    settings = {"onnxruntime": {"disabled_optimizers": ["QDQPropagationTransformer"]}}
    tuned = replace(plain, manifest={**plain.manifest, "runtime": settings})
    assert tuned.onnxruntime_options == {"disabled_optimizers": ["QDQPropagationTransformer"]}
    typo = replace(plain, manifest={**plain.manifest,
                                    "runtime": {"onnxruntime": {"disable_optimizers": []}}})
    with pytest.raises(A.ArtifactError, match="unknown onnxruntime setting.*disable_optimizers"):
        variant_session(typo)


def test_remove_variant_leaves_nothing_behind(tmp_path):
    _make(tmp_path, variant="old")
    assert A.remove_variant(tmp_path, "fashion_mnist", "old") is True
    assert not (tmp_path / "fashion_mnist" / "old").exists()
    assert list((tmp_path / "fashion_mnist").iterdir()) == []
    assert A.remove_variant(tmp_path, "fashion_mnist", "old") is False
