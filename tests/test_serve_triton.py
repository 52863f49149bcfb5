"""Triton's extensions as Triton's own client uses them against a live serve: model
configuration (and the exported config.pbtxt it must equal), statistics, classification."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from serve.app import create_app
from serve.fixtures import write_fixture_artifacts
from serve.settings import Settings
from serve.statistics import InferenceStatistics
from serve.triton_config import output_labels
from tests.test_serve_live import serving
from core.artifacts import selected_variant
from core.runtime import variant_session

TASKS = ("fashion_mnist", "sign_mnist", "imdb")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return write_fixture_artifacts(tmp_path_factory.mktemp("serve-triton"))


@pytest.fixture(scope="module")
def settings(artifacts):
    return Settings(artifacts=artifacts, providers=("cpu",), threads=1, max_request_rows=64)


@pytest.fixture(scope="module")
def server(settings):
    with serving(create_app(settings)) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def client(server):
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(server.removeprefix("http://"))
    yield c
    c.close()


def _inputs(artifacts, task: str, n: int, seed: int = 0) -> np.ndarray:
    variant = selected_variant(artifacts, task)
    rng = np.random.default_rng(seed)
    shape = (n, *variant.input.example_shape)
    if variant.input.numpy_dtype.kind == "i":
        return rng.integers(1, 10, size=shape).astype(variant.input.numpy_dtype)
    return rng.random(shape, dtype=np.float32)


def _expected_top_k(artifacts, task: str, x: np.ndarray, k: int) -> list[list[str]]:
    """What Triton's classification gives for the exported model, computed beside serve:
    ONNX Runtime on the variant, the output tensor's own columns named by labels.txt (a
    sigmoid model's one column is p(positive))."""
    variant = selected_variant(artifacts, task)
    raw = variant_session(variant, providers=("cpu",)).run(None, {variant.input.name: x})[0]
    labels = output_labels(variant)
    out = []
    for row in raw.astype(np.float32):
        order = np.argsort(-row, kind="stable")[:k]
        out.append([f"{float(row[c]):f}:{c}:{labels[c]}" for c in order])
    return out


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_model_config_parses_as_tritons_and_equals_the_exported_config_pbtxt(
        server, client, settings, artifacts, tmp_path):
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    from serve.triton_export import export_triton

    exported, skipped = export_triton(artifacts, tmp_path, settings)
    assert {m.task for m in exported} == set(TASKS) and not skipped
    for task in TASKS:
        config = client.get_model_config(task)
        served = json_format.ParseDict(config, model_config_pb2.ModelConfig())
        written = text_format.Parse((tmp_path / task / "config.pbtxt").read_text(),
                                    model_config_pb2.ModelConfig())
        assert served == written, task
        variant = selected_variant(artifacts, task)
        assert served.name == task and served.backend == "onnxruntime"
        assert served.max_batch_size == settings.max_request_rows == 64
        assert list(served.input[0].dims) == list(variant.input.example_shape)
        assert list(served.output[0].dims) == [variant.output.width]
        assert served.dynamic_batching.preferred_batch_size == [settings.max_batch_size]
        queue_policy = served.dynamic_batching.default_queue_policy
        assert queue_policy.max_queue_size == settings.max_queue_size
        assert served.parameters["intra_op_thread_count"].string_value == "1"
        assert model_config_pb2.ModelInstanceGroup.Kind.Name(
            served.instance_group[0].kind) == "KIND_CPU"
        labels = (tmp_path / task / served.output[0].label_filename).read_text().splitlines()
        assert len(labels) == variant.output.width  # one label per output column
    # The versioned path answers the same; a model that does not exist is a 404 with JSON.
    assert _get(f"{server}/v2/models/imdb/versions/1/config")[1] == \
        client.get_model_config("imdb")
    status, body = _get(f"{server}/v2/models/nope/config")
    assert status == 404 and body["code"] == "unknown_model" and body["expected"]


def test_export_for_gpu_instances_and_kserve_model_format(artifacts, settings, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from serve.triton_export import export_triton

    export_triton(artifacts, tmp_path, settings, instance_kind="gpu", instance_count=2,
                  storage_uri="s3://bucket/repo", runtime_version="24.08-py3")
    config = text_format.Parse((tmp_path / "imdb" / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    group = config.instance_group[0]
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_GPU"
    assert group.count == 2
    kserve = (tmp_path / "kserve-inferenceservice.yaml").read_text()
    for line in ("modelFormat:", "name: triton", "storageUri: s3://bucket/repo",
                 'runtimeVersion: "24.08-py3"', 'nvidia.com/gpu: "1"'):
        assert line in kserve
    assert "predictor:\n    model:" in kserve and "triton:\n" not in kserve


def test_statistics_grow_with_inferences(client, artifacts):
    import tritonclient.http as httpclient

    before = client.get_inference_statistics("fashion_mnist")["model_stats"][0]
    x = _inputs(artifacts, "fashion_mnist", 3)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    for _ in range(2):
        client.infer("fashion_mnist", [inp])
    after = client.get_inference_statistics("fashion_mnist", "1")["model_stats"][0]
    assert after["name"] == "fashion_mnist" and after["version"] == "1"
    assert after["inference_count"] - before["inference_count"] == 6       # rows
    assert after["execution_count"] - before["execution_count"] == 2       # lone requests
    stats, old = after["inference_stats"], before["inference_stats"]
    assert stats["success"]["count"] - old["success"]["count"] == 2
    assert stats["success"]["ns"] > old["success"]["ns"]
    assert stats["compute_infer"]["ns"] > old["compute_infer"]["ns"]
    assert stats["fail"]["count"] == old["fail"]["count"]
    assert after["last_inference"] > 0
    every = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in every} == set(TASKS)


def test_statistics_count_batch_shares_and_failures():
    class Model:
        name, version = "m", "1"

    stats = InferenceStatistics()
    m = stats.of(Model())
    # Three requests merged into one batch of 8 rows: one execution, 8 inferences.
    for rows in (2, 3, 3):
        m.success(rows, 0.001, 0.002, 8)
    m.failure(0.5)
    report = stats.triton("m", "1")
    assert report["inference_count"] == 8 and report["execution_count"] == 1
    assert report["inference_stats"]["success"] == {"count": 3, "ns": 9_000_000}
    assert report["inference_stats"]["queue"]["ns"] == 3_000_000
    assert report["inference_stats"]["fail"] == {"count": 1, "ns": 500_000_000}
    assert stats.triton("other", "1")["inference_count"] == 0


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("task,k", [("fashion_mnist", 3), ("imdb", 2), ("imdb", 1),
                                    ("sign_mnist", 100)])
def test_classification_extension_matches_the_models_top_k(client, artifacts, task, k, binary):
    import tritonclient.http as httpclient

    variant = selected_variant(artifacts, task)
    x = _inputs(artifacts, task, 4, seed=k)
    inp = httpclient.InferInput(variant.input.name, list(x.shape),
                                "INT32" if x.dtype == np.int32 else "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput(variant.output.name, binary_data=binary, class_count=k)
    result = client.infer(task, [inp], outputs=[out])
    got = result.as_numpy(variant.output.name)
    expected = _expected_top_k(artifacts, task, x, k)
    # min(k, output columns): imdb's sigmoid output has one column, whatever k asks.
    assert got.shape == (4, min(k, 1 if task == "imdb" else len(variant.labels)))
    assert result.get_output(variant.output.name)["datatype"] == "BYTES"
    text = [[s.decode() if isinstance(s, bytes) else s for s in row] for row in got]
    assert text == expected


@pytest.mark.parametrize("value", [0, -1, 1001, "3", 2.5, True, None])
def test_classification_parameter_must_be_a_count(server, value):
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "INT32",
                        "data": [1] * 64}],
            "outputs": [{"name": "prob", "parameters": {"classification": value}}]}
    req = urllib.request.Request(server + "/v2/models/imdb/infer", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    answer = json.loads(e.value.read())
    assert e.value.code == 422 and answer["code"] == "invalid_input"
    assert "classification" in answer["error"] and "integer from 1" in answer["expected"]


def test_server_metadata_lists_the_extensions(client):
    extensions = client.get_server_metadata()["extensions"]
    assert {"classification", "model_configuration", "statistics"} <= set(extensions)
