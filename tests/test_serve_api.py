"""serve over HTTP, in process: every endpoint and input form, errors, auth, limits, readiness.

Models are real ONNX fixtures (serve.fixtures: random weights, real manifests), so the tests
need no trained artifacts and no TensorFlow. Budget: a few seconds.
"""
from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import orjson
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from PIL import Image
from starlette.routing import Route

from serve import dataplane
from serve.app import create_app
from serve.fixtures import USER_SHAPE, USER_TASK, write_fixture_artifacts
from serve.settings import Settings
from core.artifacts import selected_variant
from core.runtime import variant_session
from core.tasks import FASHION_LABELS, SIGN_LETTERS

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    # With a user's task beside the built-in ones (non-square colour images).
    return write_fixture_artifacts(tmp_path_factory.mktemp("serve-api"), user_task=True)


def start(app) -> TestClient:
    client = TestClient(app).__enter__()
    deadline = time.monotonic() + 30
    while not app.state.repository.loading_done:
        assert time.monotonic() < deadline, "models did not load within 30 s"
        time.sleep(0.01)
    return client


@pytest.fixture(scope="module")
def client(artifacts):
    c = start(create_app(Settings(artifacts=artifacts, providers=("cpu",), threads=1)))
    yield c
    c.__exit__(None, None, None)


def pixels(n=None):
    shape = (28, 28) if n is None else (n, 28, 28)
    return RNG.integers(0, 256, shape).tolist()


def reference_probs(artifacts, task, x):
    variant = selected_variant(artifacts, task)
    session = variant_session(variant, providers=("cpu",))
    return session.run(None, {"input": variant.preprocessor()(x)})[0]


def png_bytes(size=(300, 200), mode="RGB", color=(250, 250, 250)):
    img = Image.new(mode, size, color)
    img.paste((20, 20, 20) if mode == "RGB" else 20, (100, 50, 200, 150))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# -- friendly API ----------------------------------------------------------------------------
def test_classify_pixels_gives_human_labels_matching_the_model(client, artifacts):
    img = pixels()
    r = client.post("/v1/classify/fashion_mnist", json={"pixels": img})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["variant"] == "fixture_mlp" and len(body["top_k"]) == 3
    probs = reference_probs(artifacts, "fashion_mnist", np.array(img))[0]
    best = int(np.argmax(probs))
    assert body["top_k"][0] == {"label": FASHION_LABELS[best], "class_id": best,
                                "probability": pytest.approx(float(probs[best]), abs=1e-5)}
    assert [p["probability"] for p in body["top_k"]] == sorted(
        (p["probability"] for p in body["top_k"]), reverse=True)
    assert set(body["timing_ms"]) >= {"queue", "inference", "total"}
    assert r.headers["x-request-id"]


def test_classify_batch_of_pixels_and_k(client):
    r = client.post("/v1/classify/sign_mnist?k=5", json={"pixels": pixels(4)})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 4 and all(len(x["top_k"]) == 5 for x in results)
    assert all(p["label"] in SIGN_LETTERS for x in results for p in x["top_k"])
    one = np.array(pixels())
    r = client.post("/v1/classify/sign_mnist", json={"pixels": one[..., None].tolist()})
    assert r.json()["top_k"] == client.post("/v1/classify/sign_mnist",
                                            json={"pixels": one.tolist()}).json()["top_k"]
    r = client.post("/v1/classify/sign_mnist", json={"pixels": one[None, ..., None].tolist()})
    assert len(r.json()["results"]) == 1


def test_classify_base64_and_multipart_images_of_any_size_and_colour(client):
    data = png_bytes()
    r1 = client.post("/v1/classify/fashion_mnist",
                     json={"image_base64": "data:image/png;base64," + base64.b64encode(data).decode()})
    r2 = client.post("/v1/classify/fashion_mnist", files={"file": ("shoe.png", data, "image/png")})
    rgba = png_bytes((40, 90), "RGBA", (0, 0, 0, 0))
    r3 = client.post("/v1/classify/sign_mnist", files={"file": ("hand.png", rgba, "image/png")})
    for r in (r1, r2, r3):
        assert r.status_code == 200, r.text
    assert r1.json()["top_k"] == r2.json()["top_k"]


def test_classify_text_and_texts(client):
    r = client.post("/v1/classify/imdb", json={"text": "A wonderful film, I loved it."})
    assert r.status_code == 200, r.text
    top = r.json()["top_k"]
    assert {p["label"] for p in top} == {"negative", "positive"}
    assert sum(p["probability"] for p in top) == pytest.approx(1.0, abs=1e-5)
    r = client.post("/v1/classify/imdb?k=1", json={"texts": ["Great.", "Awful.", "Fine."]})
    assert r.status_code == 200 and [len(x["top_k"]) for x in r.json()["results"]] == [1, 1, 1]


# Every image task, built-in and imported, with its model's (height, width, channels).
IMAGE_TASKS = {"fashion_mnist": (28, 28, 1), USER_TASK: USER_SHAPE}


@pytest.mark.parametrize("task", IMAGE_TASKS)
def test_every_image_task_answers_alike_on_every_protocol(client, artifacts, task):
    h, w, c = IMAGE_TASKS[task]
    raw = RNG.integers(0, 256, (2, h, w) if c == 1 else (2, h, w, c))
    expected = reference_probs(artifacts, task, raw)
    variant = selected_variant(artifacts, task)
    model = next(m for m in client.get("/v1/models").json()["models"] if m["name"] == task)
    assert model["kind"] == "image" and model["input_shape"] == [h, w, c]
    one = client.post(f"/v1/classify/{task}?k=1", json={"pixels": raw[0].tolist()}).json()
    best = int(expected[0].argmax())
    assert one["top_k"][0] == {"label": variant.labels[best], "class_id": best,
                               "probability": pytest.approx(float(expected[0, best]), abs=1e-5)}
    batch = client.post(f"/v1/classify/{task}?k=1", json={"pixels": raw.tolist()}).json()
    assert [r["top_k"][0]["class_id"] for r in batch["results"]] == list(expected.argmax(1))
    upload = client.post(f"/v1/classify/{task}", files={"file": ("x.png", png_bytes(), "image/png")})
    assert upload.status_code == 200, upload.text
    x = variant.preprocessor()(raw)
    v2 = client.post(f"/v2/models/{task}/infer", json={"inputs": [{
        "name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]})
    assert v2.status_code == 200, v2.text
    np.testing.assert_allclose(np.array(v2.json()["outputs"][0]["data"]).reshape(expected.shape),
                               expected, atol=1e-5)
    tfs = client.post(f"/v1/models/{task}:predict", json={"instances": x.tolist()})
    np.testing.assert_allclose(tfs.json()["predictions"], expected, atol=1e-5)
    wrong = client.post(f"/v1/classify/{task}", json={"pixels": np.zeros((h + 1, w)).tolist()})
    assert wrong.status_code == 422 and f"{h}x{w}" in wrong.json()["error"]


BAD_REQUESTS = [
    # (task, kwargs for client.post, status, words in the error)
    ("fashion_mnist", {"content": b"{not json"}, 400, "not valid JSON"),
    ("fashion_mnist", {"content": b""}, 400, "empty"),
    ("fashion_mnist", {"content": b"[1, 2]"}, 400, "JSON list"),
    ("fashion_mnist", {"content": b'{"pixels": [[NaN]]}'}, 400, "NaN and infinity"),
    ("fashion_mnist", {"content": b'{"pixels": [[1e999]]}'}, 400, "not valid JSON"),
    ("fashion_mnist", {"json": {"pixels": [[1, 2, 3]]}}, 422, "expected 28x28"),
    ("fashion_mnist", {"json": {"pixels": [[1, 2], [3]]}}, 422, "ragged"),
    ("fashion_mnist", {"json": {"pixels": [["a"] * 28] * 28}}, 422, "non-numbers"),
    ("fashion_mnist", {"json": {"pixels": [[None] * 28] * 28}}, 422, "non-numbers"),
    ("fashion_mnist", {"json": {"pixels": [[300] * 28] * 28}}, 422, "0..255"),
    ("fashion_mnist", {"json": {"pixels": [[-1] * 28] * 28}}, 422, "0..255"),
    ("fashion_mnist", {"json": {"pixels": []}}, 422, "expected 28x28"),
    ("fashion_mnist", {"json": {"picture": 1}}, 422, "no image"),
    ("fashion_mnist", {"json": {"image_base64": "!!!"}}, 422, "not valid base64"),
    ("fashion_mnist", {"json": {"image_base64": base64.b64encode(b"not an image").decode()}},
     422, "could not be decoded"),
    ("fashion_mnist", {"files": {"file": ("x.png", b"", "image/png")}}, 422, "empty"),
    ("fashion_mnist", {"files": {"other": ("x.png", b"1", "image/png")}}, 422, "'file'"),
    ("imdb", {"json": {"text": ""}}, 422, "empty"),
    ("imdb", {"json": {"text": "   "}}, 422, "empty"),
    ("imdb", {"json": {"text": "word " * 30_000}}, 422, "characters"),
    ("imdb", {"json": {"text": 5}}, 422, "string"),
    ("imdb", {"json": {"texts": []}}, 422, "non-empty list"),
    ("imdb", {"json": {"pixels": [[0] * 28] * 28}}, 422, "no text"),
    ("imdb", {"files": {"file": ("x.png", b"1", "image/png")}}, 422, "takes text"),
    ("no_such_task", {"json": {"text": "hi"}}, 404, "unknown model"),
]


@pytest.mark.parametrize("task,kwargs,status,words", BAD_REQUESTS,
                         ids=[f"{t}-{w}-{i}" for i, (t, _, __, w) in enumerate(BAD_REQUESTS)])
def test_bad_input_gets_a_4xx_json_error_saying_what_is_expected(client, task, kwargs, status,
                                                                  words):
    r = client.post(f"/v1/classify/{task}", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert words in body["error"] and body["code"] and body.get("expected"), body


@pytest.mark.parametrize("query", ["k=0", "k=abc", "k=5000", "invert=maybe"])
def test_bad_query_parameters(client, query):
    r = client.post(f"/v1/classify/fashion_mnist?{query}", json={"pixels": pixels()})
    assert r.status_code == 422 and "query parameter" in r.json()["error"]


def test_unknown_route_and_method_are_json(client):
    r = client.get("/v9/nothing")
    assert r.status_code == 404 and r.json()["expected"]
    assert client.get("/v1/classify/imdb").status_code == 405


# -- Open Inference Protocol -----------------------------------------------------------------
def test_v2_server_health_and_model_metadata(client):
    assert {"binary_tensor_data", "model_repository"} <= set(client.get("/v2").json()["extensions"])
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2/models/fashion_mnist").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 28, 28, 1]}]
    assert meta["outputs"] == [{"name": "probs", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get("/v2/models/imdb").json()["inputs"][0]["datatype"] == "INT32"
    assert client.get("/v2/models/imdb/versions/1/ready").json()["ready"] is True
    assert client.get("/v2/models/imdb/versions/7").status_code == 404
    assert client.get("/v2/models/nope/ready").status_code == 404


def test_v2_infer_json_and_binary(client, artifacts):
    raw = np.array(pixels(2))
    x = (raw / 255.0).astype(np.float32)[..., None]
    expected = reference_probs(artifacts, "fashion_mnist", raw)
    r = client.post("/v2/models/fashion_mnist/infer", json={
        "id": "req-7", "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 28, 28, 1],
                                   "data": x.ravel().tolist()}]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "req-7" and out["outputs"][0]["shape"] == [2, 10]
    np.testing.assert_allclose(np.array(out["outputs"][0]["data"]).reshape(2, 10), expected,
                               atol=1e-5)
    header = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32",
                                       "shape": [2, 28, 28, 1],
                                       "parameters": {"binary_data_size": x.nbytes}}],
                           "outputs": [{"name": "probs", "parameters": {"binary_data": True}}]})
    r = client.post("/v2/models/fashion_mnist/infer", content=header + x.tobytes(),
                    headers={"Inference-Header-Content-Length": str(len(header)),
                             "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:n])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 2 * 10 * 4
    np.testing.assert_allclose(np.frombuffer(r.content[n:], np.float32).reshape(2, 10),
                               expected, atol=1e-5)


def _v2(datatype="FP32", shape=(1, 28, 28, 1), data=None, name="input"):
    count = int(np.prod(shape))
    return {"inputs": [{"name": name, "datatype": datatype, "shape": list(shape),
                        "data": [0.5] * count if data is None else data}]}


V2_BAD = [
    ("fashion_mnist", _v2(datatype="FP64"), "datatype FP64"),
    ("fashion_mnist", _v2(datatype="BF17"), "not supported"),
    ("fashion_mnist", _v2(shape=(1, 28, 28)), "shape"),
    ("fashion_mnist", _v2(data=[0.5] * 10), "needs 784"),
    ("fashion_mnist", _v2(data=[2.0] * 784), "values span"),
    ("fashion_mnist", _v2(name="pixels"), "unknown input"),
    ("fashion_mnist", _v2(shape=(0, 28, 28, 1), data=[]), "empty batch"),
    ("fashion_mnist", {"inputs": []}, "exactly one input"),
    ("fashion_mnist", {**_v2(), "outputs": [{"name": "logits"}]}, "unknown output"),
    ("imdb", _v2("INT32", (1, 64), [5000] * 64), "values span"),
    ("imdb", _v2("INT32", (1, 64), [1.5] * 64), "fractional"),
]


@pytest.mark.parametrize("task,body,words", V2_BAD, ids=[w for _, __, w in V2_BAD])
def test_v2_bad_requests(client, task, body, words):
    r = client.post(f"/v2/models/{task}/infer", json=body)
    assert r.status_code == 422, r.text
    assert words in r.json()["error"], r.json()


def test_v2_binary_nan_and_wrong_sizes(client):
    x = np.zeros((1, 28, 28, 1), np.float32)
    x[0, 0, 0, 0] = np.nan
    header = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32",
                                       "shape": [1, 28, 28, 1],
                                       "parameters": {"binary_data_size": x.nbytes}}]})
    post = lambda body, n: client.post("/v2/models/fashion_mnist/infer", content=body,  # noqa: E731
                                       headers={"Inference-Header-Content-Length": str(n)})
    r = post(header + x.tobytes(), len(header))
    assert r.status_code == 422 and "NaN" in r.json()["error"]
    r = post(header + x.tobytes()[:100], len(header))
    assert r.status_code == 422 and "binary_data_size" in r.json()["error"]
    assert post(header, 10**6).status_code == 422
    assert post(header, "x").status_code == 422


# -- TensorFlow Serving ----------------------------------------------------------------------
def test_tfserving_predict_instances_and_inputs(client, artifacts):
    raw = np.array(pixels(3))
    x = (raw / 255.0)[..., None].tolist()
    expected = reference_probs(artifacts, "fashion_mnist", raw)
    r = client.post("/v1/models/fashion_mnist:predict", json={"instances": x})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["predictions"], expected, atol=1e-5)
    r = client.post("/v1/models/fashion_mnist:predict", json={"inputs": {"input": x}})
    np.testing.assert_allclose(r.json()["outputs"], expected, atol=1e-5)
    r = client.post("/v1/models/fashion_mnist:predict", json={"instances": [{"input": x[0]}]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1
    status = client.get("/v1/models/imdb").json()["model_version_status"][0]
    assert status["state"] == "AVAILABLE"
    # TF Serving answers bad arguments with 400 (INVALID_ARGUMENT), "error" holding the message.
    for bad in ({"instances": []}, {"rows": 1}, {"instances": [{"x": 1}]},
                {"instances": x, "signature_name": "other"}, {"instances": x, "inputs": x}):
        r = client.post("/v1/models/fashion_mnist:predict", json=bad)
        assert r.status_code == 400 and r.json()["error"] and r.json()["expected"], r.text


# -- the JSON fast path (serve.fastpath) and the FastAPI route answer alike ----------------------
def test_fast_path_and_fastapi_route_give_the_same_answers_and_errors(client, artifacts):
    slow = start(create_app(Settings(artifacts=artifacts, providers=("cpu",), threads=1,
                                     fast_path=False)))
    try:
        requests = [
            ("/v1/classify/fashion_mnist?k=2", {"pixels": pixels()}),
            ("/v1/classify/sign_mnist", {"pixels": pixels(3)}),
            ("/v1/classify/imdb?k=1", {"texts": ["a fine film", "awful"]}),
            ("/v1/classify/fashion_mnist", {"pixels": [[1, 2], [3, 4]]}),    # wrong shape
            ("/v1/classify/fashion_mnist?k=0", {"pixels": pixels()}),        # bad k
            ("/v1/classify/nope", {"pixels": pixels()}),                     # unknown task
            ("/v1/classify/imdb", {"text": ""}),                             # empty text
        ]
        for path, body in requests:
            fast, route = client.post(path, json=body), slow.post(path, json=body)
            assert fast.status_code == route.status_code, (path, fast.text, route.text)
            a, b = fast.json(), route.json()
            a.pop("timing_ms", None), b.pop("timing_ms", None)
            assert a == b, path
            assert fast.headers["content-type"] == "application/json"
            assert fast.headers["x-request-id"]
        for c in (client, slow):  # not JSON: invalid_json from both
            r = c.post("/v1/classify/fashion_mnist", content=b"{nope")
            assert r.status_code == 400 and r.json()["code"] == "invalid_json"
        # The upload form and unknown sub-paths still go through FastAPI.
        assert client.post("/v1/classify/fashion_mnist/extra", json={}).status_code == 404
    finally:
        slow.__exit__(None, None, None)


def test_direct_pixel_reader_takes_only_what_the_general_path_reads_the_same():
    image = np.random.default_rng(1).integers(0, 256, (28, 28))
    image[0, :5] = [0, 9, 10, 99, 255]
    batch = np.random.default_rng(2).integers(0, 256, (3, 28, 28))
    compact = orjson.dumps({"pixels": image.tolist()})
    taken = [compact, json.dumps({"pixels": image.tolist()}).encode(),  # ", " separators
             json.dumps({"pixels": image.tolist()}, indent=2).encode(),
             b" \r\n" + compact + b"\n", orjson.dumps({"pixels": batch.tolist()})]
    for body in taken:
        read = dataplane.whole_number_pixels(body, 28, 28)
        assert read is not None, body[:40]
        assert np.array_equal(read, np.asarray(orjson.loads(body)["pixels"]))

    def edited(old: bytes, new: bytes) -> bytes:
        assert old in compact
        return compact.replace(old, new, 1)

    passed_on = [  # to the general path, which answers them or explains the error
        orjson.dumps({"pixels": (image / 2).tolist()}),            # not whole numbers
        orjson.dumps({"pixels": image.tolist(), "extra": 1}),      # another key
        edited(b"[[0,9,", b"[[00,9,"),                             # leading zero: not JSON
        edited(b"[[0,9,", b"[[0 9,"),                              # space inside a number
        edited(b"[[0,9,", b"[[0,,"),                               # an empty number
        edited(b",255,", b",256,"), edited(b",255,", b",-1,"),     # out of range
        edited(b",99,", b",9e1,"), edited(b",99,", b",null,"),
        compact[:-1], compact + b"x", compact.replace(b"}", b"]"),  # broken JSON
        orjson.dumps({"pixels": image[:, :27].tolist()}),          # wrong sizes
        orjson.dumps({"pixels": image[:27].tolist()}),
        orjson.dumps({"pixels": [image.tolist(), image[:27].tolist()]}),
        orjson.dumps({"pixels": [image.tolist()][:0]}),
        orjson.dumps({"pixels": image[:, :, None].tolist()}),       # channel last: general path
        b'{"pixels\\u0022":' + compact[10:],
    ]
    for body in passed_on:
        assert dataplane.whole_number_pixels(body, 28, 28) is None, body[:40]


# -- operations ------------------------------------------------------------------------------
def test_metrics_count_requests_by_model_and_status(client):
    client.post("/v1/classify/imdb", json={"text": "fine"})
    client.post("/v1/classify/imdb", json={"text": ""})
    text = client.get("/metrics").text
    assert 'tinyship_requests_total{model="imdb",route="/v1/classify/{task}",status="200"}' in text
    assert 'status="422"' in text
    assert 'tinyship_batch_size_bucket{le="1",model="imdb"}' in text
    assert 'tinyship_model_state{model="sign_mnist",state="ready"} 1.0' in text
    assert "tinyship_queue_duration_seconds_count" in text


def test_docs_document_every_endpoint(client):
    spec = client.get("/openapi.json").json()
    for path in ("/v1/classify/{task}", "/v2/models/{name}/infer", "/v2/health/ready",
                 "/v1/models/{name}:predict", "/metrics"):
        assert path in spec["paths"], path
    classify = spec["paths"]["/v1/classify/{task}"]["post"]
    assert {"pixels", "text"} <= set(classify["requestBody"]["content"]["application/json"]
                                     ["examples"])
    assert {p["name"] for p in classify["parameters"]} == {"task", "k", "invert"}
    # Every documented route shows what it answers: an example of its 200 body (of its 400
    # for :regress, which answers nothing else), or (load and unload, whose 200 has no body) a
    # description of it.
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            ok = op["responses"].get("200") or op["responses"]["400"]
            has_example = any("example" in c or "examples" in c
                              for c in ok.get("content", {}).values())
            assert has_example or ok["description"] != "Successful Response", \
                f"{method.upper()} {path}: no example of its answer"
    assert client.get("/docs").status_code == 200
    assert "<canvas" in client.get("/").text


def test_protocol_routes_sit_flat_in_the_app_in_matching_order(client):
    # serve.app._include: a router kept by include_router is matched again on every request.
    assert all(isinstance(r, (APIRoute, Route)) for r in client.app.router.routes)
    routes = [r for r in client.app.router.routes if isinstance(r, APIRoute)]
    assert [(r.path, *sorted(r.methods)) for r in routes] == [
        ("/", "GET"), ("/v1/classify/{task}", "POST"), ("/v1/models", "GET"),
        # Triton's extensions before the V2 routes: /v2/models/stats is not a model "stats".
        ("/v2/models/stats", "GET"), ("/v2/models/{name}/versions/{version}/stats", "GET"),
        ("/v2/models/{name}/stats", "GET"), ("/v2/models/{name}/versions/{version}/config", "GET"),
        ("/v2/models/{name}/config", "GET"),
        ("/v2", "GET"), ("/v2/health/live", "GET"), ("/v2/health/ready", "GET"),
        ("/v2/models/{name}/versions/{version}", "GET"), ("/v2/models/{name}", "GET"),
        ("/v2/models/{name}/versions/{version}/ready", "GET"), ("/v2/models/{name}/ready", "GET"),
        ("/v2/models/{name}/versions/{version}/infer", "POST"),
        ("/v2/models/{name}/infer", "POST"),
        ("/v2/repository/index", "POST"), ("/v2/repository/models/{name}/load", "POST"),
        ("/v2/repository/models/{name}/unload", "POST"),
        *[(base + suffix, method) for method, suffix in
          (("GET", ""), ("GET", "/metadata"), ("POST", ":predict"), ("POST", ":classify"),
           ("POST", ":regress"))
          for base in ("/v1/models/{name}", "/v1/models/{name}/versions/{version}",
                       "/v1/models/{name}/labels/{label}")],
        ("/metrics", "GET"), ("/docs", "GET"), ("/redoc", "GET"), ("/docs-assets/{name}", "GET")]


def test_body_limit_answers_413(artifacts):
    c = start(create_app(Settings(artifacts=artifacts, providers=("cpu",), max_body_bytes=1000)))
    try:
        r = c.post("/v1/classify/fashion_mnist", json={"pixels": pixels()})
        assert r.status_code == 413 and "1,000 bytes" in r.json()["expected"]

        def chunks():  # no Content-Length: the limit is enforced while reading
            for _ in range(10):
                yield b" " * 500
        r = c.post("/v1/classify/imdb", content=chunks())
        assert r.status_code == 413, r.text
    finally:
        c.__exit__(None, None, None)


def test_api_key_protects_everything_but_health(artifacts):
    c = start(create_app(Settings(artifacts=artifacts, providers=("cpu",), api_key="s3cret")))
    try:
        body = {"text": "nice"}
        assert c.get("/v2/health/ready").status_code == 200
        assert c.get("/v2/health/live").status_code == 200
        r = c.post("/v1/classify/imdb", json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.post("/v1/classify/imdb", json=body,
                      headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/metrics").status_code == 401
        assert c.get("/v2/models/imdb").status_code == 401
        ok = c.post("/v1/classify/imdb", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
    finally:
        c.__exit__(None, None, None)


def test_not_ready_before_models_are_loaded_and_warm(artifacts):
    app = create_app(Settings(artifacts=artifacts, providers=("cpu",)), load_models=False)
    with TestClient(app) as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 503
        assert c.get("/v2/models/imdb/ready").status_code == 503
        r = c.post("/v1/classify/imdb", json={"text": "good"})
        assert r.status_code == 503 and "still loading" in r.json()["error"]
        assert 'state="loading"} 1.0' in c.get("/metrics").text
        c.portal.call(app.state.repository.load_all)
        assert c.get("/v2/health/ready").status_code == 200
        assert c.post("/v1/classify/imdb", json={"text": "good"}).status_code == 200


def test_a_corrupt_model_does_not_take_the_others_down(tmp_path):
    root = write_fixture_artifacts(tmp_path)
    variant = selected_variant(root, "sign_mnist")
    (variant.path / "model.onnx").write_bytes(b"garbage")  # checksum no longer matches
    c = start(create_app(Settings(artifacts=root, providers=("cpu",))))
    try:
        assert c.get("/v2/health/ready").status_code == 200
        r = c.post("/v1/classify/sign_mnist", json={"pixels": pixels()})
        assert r.status_code == 503 and "checksum mismatch" in r.json()["error"]
        ready = c.get("/v2/models/sign_mnist/ready")
        assert ready.status_code == 503 and "checksum" in ready.json()["error"]
        assert c.post("/v1/classify/fashion_mnist", json={"pixels": pixels()}).status_code == 200
        assert 'tinyship_model_state{model="sign_mnist",state="failed"} 1.0' in c.get("/metrics").text
        assert c.get("/v1/models/sign_mnist").json()["model_version_status"][0]["state"] == "END"
    finally:
        c.__exit__(None, None, None)


def test_a_missing_selection_is_reported_not_fatal(tmp_path):
    root = write_fixture_artifacts(tmp_path)
    (root / "imdb" / "selected.json").unlink()
    c = start(create_app(Settings(artifacts=root, providers=("cpu",))))
    try:
        r = c.post("/v1/classify/imdb", json={"text": "good"})
        assert r.status_code == 503 and "no variant selected" in r.json()["error"]
        assert c.post("/v1/classify/fashion_mnist", json={"pixels": pixels()}).status_code == 200
    finally:
        c.__exit__(None, None, None)


def test_an_unreadable_onnx_file_with_valid_checksums_fails_only_its_model(tmp_path):
    from serve.fixtures import write_image_variant
    from core.artifacts import create_variant, select_variant

    root = tmp_path
    write_image_variant(root, "fashion_mnist")
    good = selected_variant(root, "fashion_mnist")
    with create_variant(root, task="sign_mnist", model="broken", variant="broken",
                        lineage={"parent": None, "technique": "fixture"},
                        input=good.input, output={"activation": "softmax"},
                        preprocessing=dict(good.manifest.preprocessing),
                        labels=list(SIGN_LETTERS)) as v:
        v.path("model.onnx").write_bytes(b"\x08\x07 not a protobuf")
    select_variant(root, "sign_mnist", "broken")
    c = start(create_app(Settings(artifacts=root, providers=("cpu",))))
    try:
        models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert models["sign_mnist"]["state"] == "failed" and models["sign_mnist"]["error"]
        assert models["imdb"]["state"] == "failed"  # nothing selected for it here
        assert models["fashion_mnist"]["state"] == "ready"
        assert c.get("/v2/health/ready").status_code == 200
        assert c.post("/v1/classify/sign_mnist", json={"pixels": pixels()}).status_code == 503
    finally:
        c.__exit__(None, None, None)


def test_settings_from_environment_and_back():
    env = {"SERVE_PORT": "9000", "SERVE_PROVIDERS": "cpu", "SERVE_CORS_ORIGINS": "http://a,http://b",
           "SERVE_ACCESS_LOG": "yes", "ARTIFACTS_DIR": "/x", "SERVE_MAX_BATCH_SIZE": "1"}
    s = Settings.from_env(env)
    assert (s.port, s.providers, s.cors_origins, s.access_log, str(s.artifacts)) == (
        9000, ("cpu",), ("http://a", "http://b"), True, "/x")
    assert not s.batching and Settings.from_env(s.to_env()) == s
    from serve.settings import SettingsError
    for bad in ({"SERVE_PORT": "eighty"}, {"SERVE_MAX_QUEUE_SIZE": "0"},
                {"SERVE_ACCESS_LOG": "maybe"}, {"SERVE_LOG_LEVEL": "loud"}):
        with pytest.raises(SettingsError, match="SERVE_|log_level|max_queue_size"):
            Settings.from_env(bad)


def test_cors_preflight_and_headers(artifacts):
    c = start(create_app(Settings(artifacts=artifacts, providers=("cpu",), api_key="k",
                                  cors_origins=("http://app.example",))))
    try:
        r = c.options("/v1/classify/imdb", headers={
            "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "http://app.example"
        r = c.post("/v1/classify/imdb", json={"text": "good"},
                   headers={"Origin": "http://app.example", "Authorization": "Bearer k"})
        assert r.status_code == 200 and "x-request-id" in r.headers["access-control-expose-headers"].lower()
    finally:
        c.__exit__(None, None, None)


def test_uploaded_photos_follow_each_datasets_convention():
    from serve.images import decode_image

    # A dark square on a light, wide background (a product photo).
    photo = png_bytes(size=(300, 200))
    fashion = decode_image(photo, 28, 28, 1, "fashion_mnist")
    sign = decode_image(photo, 28, 28, 1, "sign_mnist")
    assert fashion.shape == sign.shape == (28, 28) and fashion.dtype == np.uint8
    # Fashion-MNIST items are bright on black: the light background became dark.
    assert fashion[0, 0] < 30 and fashion[14, 14] > 200
    assert sign[0, 0] > 220 and sign[14, 14] < 60  # Sign-Language photos are kept as they are
    assert decode_image(photo, 28, 28, 1, "fashion_mnist", invert="false")[0, 0] > 220
    # Padded to a square with the border colour, not stretched: top rows are background.
    assert (fashion[:3] < 30).all()


@pytest.mark.parametrize("query", ["k=%C2%B2", "k=" + "9" * 5000, "k=%EF%BC%93"])
def test_odd_k_values_are_4xx_not_500(client, query):
    # "²" and the full-width "３" are digits to str.isdigit(); 5,000 digits overflow int().
    r = client.post(f"/v1/classify/fashion_mnist?{query}", json={"pixels": pixels()})
    assert r.status_code == 422 and "an integer from 1 to 1000" in r.json()["expected"]


def test_integers_beyond_the_input_type_are_refused_not_wrapped(client):
    length = client.get("/v2/models/imdb").json()["inputs"][0]["shape"][1]
    big = [2 ** 40 + 7] * length
    r = client.post("/v2/models/imdb/infer", json={"inputs": [
        {"name": "input", "datatype": "INT32", "shape": [1, length], "data": big}]})
    assert r.status_code == 422 and "int32" in r.json()["expected"], r.text
    r = client.post("/v1/models/imdb:predict", json={"instances": [big]})
    assert r.status_code == 400 and "int32" in r.json()["expected"], r.text  # TF Serving: 400
    r = client.post("/v2/models/imdb/infer", json={"inputs": [
        {"name": "input", "datatype": "INT32", "shape": [4294967296, 4294967296], "data": []}]})
    assert r.status_code == 422 and "values per input" in r.json()["expected"], r.text


def test_a_manifest_with_null_labels_fails_that_model_alone(tmp_path):
    root = write_fixture_artifacts(tmp_path / "a")
    path = root / "sign_mnist" / "fixture_mlp" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["labels"] = None
    path.write_text(json.dumps(manifest))
    c = start(create_app(Settings(artifacts=root, providers=("cpu",), threads=1)))
    try:
        models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert models["fashion_mnist"]["state"] == "ready" and models["imdb"]["state"] == "ready"
        assert models["sign_mnist"]["state"] == "failed"
        assert "labels must be a non-empty list" in models["sign_mnist"]["error"]
    finally:
        c.__exit__(None, None, None)


V2_MALFORMED = [
    ({"outputs": 5}, "outputs is a int"),
    ({"parameters": [1]}, "parameters of the request is a list"),
    ({"tensor_parameters": "x"}, "parameters of the input is a str"),
    ({"outputs": [{"name": "probs", "parameters": 3}]}, "parameters of output"),
]


@pytest.mark.parametrize("extra, words", V2_MALFORMED, ids=[w for _, w in V2_MALFORMED])
def test_malformed_v2_fields_are_4xx_not_500(client, extra, words):
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": [0.0] * 784}
    if "tensor_parameters" in extra:
        tensor["parameters"] = extra.pop("tensor_parameters")
    r = client.post("/v2/models/fashion_mnist/infer", json={"inputs": [tensor], **extra})
    assert r.status_code == 422 and words in r.json()["error"] and r.json()["expected"], r.text


@pytest.mark.parametrize("header", ["x", "9" * 5000, "-5", "1e3"])
def test_odd_inference_header_lengths_are_4xx(client, header):
    r = client.post("/v2/models/fashion_mnist/infer", content=b"{}",
                    headers={"Inference-Header-Content-Length": header,
                             "Content-Type": "application/octet-stream"})
    assert r.status_code == 422 and "is not a number" in r.json()["error"], r.text


def test_an_undecodable_upload_names_no_object_repr(client):
    r = client.post("/v1/classify/fashion_mnist", files={"file": ("x.png", b"GIF89a junk", "image/png")})
    assert r.status_code == 422 and "could not be decoded" in r.json()["error"]
    assert " at 0x" not in r.text and "BytesIO" not in r.text, r.text


def test_rows_per_request_are_bounded_before_any_work(client):
    # 1,000,000 short texts fit the body limit and held the server 10 s; 257 is already refused.
    r = client.post("/v1/classify/imdb", json={"texts": ["good"] * 257})
    assert r.status_code == 413 and "at most 256 rows" in r.json()["expected"], r.text
    assert client.post("/v1/classify/imdb", json={"texts": ["good"] * 256}).status_code == 200
    r = client.post("/v1/classify/fashion_mnist", json={"pixels": np.zeros((300, 28, 28), int).tolist()})
    assert r.status_code == 413 and r.json()["code"] == "too_many_rows", r.text
    x = np.zeros((300, 28, 28, 1), np.float32)
    r = client.post("/v2/models/fashion_mnist/infer", json={"inputs": [
        {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]})
    assert r.status_code == 413, r.text


def test_a_huge_image_is_refused_from_its_header(client):
    buf = io.BytesIO()
    Image.new("L", (6000, 6000)).save(buf, format="PNG")  # 36 Mpx in a few KB
    r = client.post("/v1/classify/fashion_mnist", files={"file": ("big.png", buf.getvalue(), "image/png")})
    # The size comes from the header: the message is written before any pixel is decoded.
    assert r.status_code == 422 and "6000x6000 = 36,000,000 pixels" in r.json()["error"], r.text
