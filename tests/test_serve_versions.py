"""Model versions side by side, the traffic split, reloads without a restart (the repository
poll and Triton's repository extension) and TF Serving's versioned REST surface.

The models are real ONNX fixtures (serve.fixtures); a second variant per image task gives a
second version whose answers differ from the first's. The rollout test runs a real uvicorn
server under concurrent load and switches the selection on disk."""
from __future__ import annotations

import contextlib
import http.client
import json
import re
import threading
import time

import numpy as np
import pytest

from serve.app import create_app
from serve.fixtures import write_fixture_artifacts, write_image_variant
from serve.repository import (TRAFFIC_RESOLUTION, PlanError, parse_plan, read_plan,
                              round_robin)
from serve.settings import Settings
from tests.test_serve_api import start
from tests.test_serve_live import serving
from core.artifacts import find_variant, select_variant
from core.runtime import variant_session

TASK = "fashion_mnist"
SECOND = "fixture_second"  # the second fashion variant: another seed, other answers
RNG = np.random.default_rng(3)


def images(n: int) -> np.ndarray:
    return (RNG.integers(0, 256, (n, 28, 28, 1)) / 255.0).astype(np.float32)


def reference(root, variant: str, x: np.ndarray) -> np.ndarray:
    return variant_session(find_variant(root, TASK, variant), providers=("cpu",)).run(
        None, {"input": x})[0]


def write_versions(root, doc: dict) -> None:
    (root / TASK / "versions.json").write_text(json.dumps(doc))


def settings(root, **changes) -> Settings:
    return Settings(**{"artifacts": root, "providers": ("cpu",), "threads": 1,
                       "repository_poll_s": 0, **changes})


@pytest.fixture()
def root(tmp_path):
    root = write_fixture_artifacts(tmp_path)
    write_image_variant(root, TASK, "mlp", seed=7, name=SECOND, select=False)
    return root


@pytest.fixture()
def two_versions(root):
    write_versions(root, {"versions": {"1": "fixture_mlp", "2": SECOND}, "default": "1",
                          "labels": {"stable": "1", "canary": "2"}})
    c = start(create_app(settings(root)))
    yield c
    c.__exit__(None, None, None)


def v2_infer(client, x, path=f"/v2/models/{TASK}"):
    r = client.post(f"{path}/infer", json={"inputs": [
        {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]})
    assert r.status_code == 200, r.text
    body = r.json()
    return body["model_version"], np.array(body["outputs"][0]["data"]).reshape(len(x), -1)


# -- the declaration ---------------------------------------------------------------------------
@pytest.mark.parametrize("doc, field", [
    ([], "(top level)"),
    ({}, "versions"),
    ({"versions": {"01": "a"}}, "versions.01"),
    ({"versions": {"1": ""}}, "versions.1"),
    ({"versions": {"1": "../x"}}, "versions.1"),
    ({"versions": {"1": "a"}, "default": 1}, "default"),
    ({"versions": {"1": "a"}, "default": "2"}, "default"),
    ({"versions": {"1": "a"}, "traffic": {"2": 1}}, "traffic.2"),
    ({"versions": {"1": "a"}, "traffic": {"1": -0.5}}, "traffic.1"),
    ({"versions": {"1": "a"}, "traffic": {"1": True}}, "traffic.1"),
    ({"versions": {"1": "a"}, "traffic": {"1": 0}}, "traffic"),
    ({"versions": {"1": "a"}, "labels": {"7": "1"}}, "labels.7"),
    ({"versions": {"1": "a"}, "labels": {"stable": "3"}}, "labels.stable"),
    ({"versions": {"1": "a"}, "weights": {}}, "weights"),
])
def test_versions_json_errors_name_the_field(doc, field):
    with pytest.raises(PlanError, match=re.escape(f"field '{field}'")):
        parse_plan(doc, "fashion_mnist/versions.json")


def test_versions_json_defaults_and_its_absence(root):
    plan = parse_plan({"versions": {"2": "b", "10": "c", "1": "a"}})
    assert list(plan.versions) == ["1", "2", "10"] and plan.default == "10"  # the latest
    assert read_plan(root, TASK).versions == {"1": None}  # no file: the selected variant
    (root / TASK / "versions.json").write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        read_plan(root, TASK)


def test_round_robin_gives_exact_shares_spread_out():
    cycle = round_robin({"1": 0.1, "2": 0.9})
    assert len(cycle) == 10 and cycle.count("1") == 1
    assert round_robin({"a": 1, "b": 3}) == ["b", "a", "b", "b"]
    cycle = round_robin({"1": 0.3333, "2": 0.6667, "3": 0})
    assert len(cycle) <= TRAFFIC_RESOLUTION and "3" not in cycle
    assert abs(cycle.count("1") / len(cycle) - 0.3333) < 1e-3


# -- versions side by side ---------------------------------------------------------------------
def test_versions_are_served_side_by_side(two_versions, root):
    c = two_versions
    x = images(3)
    meta = c.get(f"/v2/models/{TASK}").json()
    assert meta["versions"] == ["1", "2"]
    assert c.get(f"/v2/models/{TASK}/versions/2/ready").json()["ready"] is True
    version, out = v2_infer(c, x, f"/v2/models/{TASK}/versions/2")
    assert version == "2" and np.allclose(out, reference(root, SECOND, x), atol=1e-5)
    version, out = v2_infer(c, x)  # the plain path: the default version
    assert version == "1" and np.allclose(out, reference(root, "fixture_mlp", x), atol=1e-5)
    assert not np.allclose(reference(root, SECOND, x), reference(root, "fixture_mlp", x))
    missing = c.get(f"/v2/models/{TASK}/versions/3")
    assert missing.status_code == 404 and "1, 2" in missing.json()["expected"]
    listed = {m["name"]: m for m in c.get("/v1/models").json()["models"]}[TASK]
    assert listed["default_version"] == "1" and listed["variant"] == "fixture_mlp"
    assert [(v["version"], v["variant"]) for v in listed["versions"]] == [
        ("1", "fixture_mlp"), ("2", SECOND)]
    repo = c.app.state.repository  # an empty version (gRPC's unset field) is the default
    assert repo.get(TASK, "", split=False) is repo.get(TASK, "1")
    # A task without versions.json keeps its one version "1".
    assert c.get("/v2/models/imdb").json()["versions"] == ["1"]


def test_tfserving_versions_labels_metadata_and_status(two_versions, root):
    c = two_versions
    x = images(2)
    status = c.get(f"/v1/models/{TASK}").json()["model_version_status"]
    assert [(s["version"], s["state"]) for s in status] == [("1", "AVAILABLE"), ("2", "AVAILABLE")]
    one = c.get(f"/v1/models/{TASK}/labels/canary").json()["model_version_status"]
    assert [s["version"] for s in one] == ["2"]
    want = reference(root, SECOND, x)
    for path in (f"/v1/models/{TASK}/versions/2", f"/v1/models/{TASK}/labels/canary"):
        r = c.post(f"{path}:predict", json={"instances": x.tolist()})
        assert r.status_code == 200 and np.allclose(r.json()["predictions"], want, atol=1e-5)
    r = c.post(f"/v1/models/{TASK}:predict", json={"instances": x.tolist()})
    assert np.allclose(r.json()["predictions"], reference(root, "fixture_mlp", x), atol=1e-5)
    meta = c.get(f"/v1/models/{TASK}/versions/2/metadata").json()
    assert meta["model_spec"] == {"name": TASK, "signature_name": "", "version": "2"}
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["input"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in signature["inputs"]["input"]["tensor_shape"]["dim"]] == [
        "-1", "28", "28", "1"]
    assert signature["outputs"]["probs"]["tensor_shape"]["dim"][1]["size"] == "10"
    imdb = c.get("/v1/models/imdb/metadata").json()["metadata"]["signature_def"]
    assert imdb["signature_def"]["serving_default"]["inputs"]["input"]["dtype"] == "DT_INT32"
    for bad in (f"/v1/models/{TASK}/labels/nope", f"/v1/models/{TASK}/versions/9/metadata"):
        r = c.get(bad)
        assert r.status_code == 404 and set(r.json()) == {"error", "code", "expected"}


def test_tfserving_classify_and_regress(two_versions, root):
    c = two_versions
    x = images(2)
    r = c.post(f"/v1/models/{TASK}/versions/2:classify",
               json={"examples": [{"input": row.ravel().tolist()} for row in x]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    labels = [pair[0] for pair in results[0]]
    assert len(results) == 2 and labels[0] == "T-shirt/top" and len(labels) == 10
    assert np.allclose([[s for _, s in ex] for ex in results], reference(root, SECOND, x),
                       atol=1e-5)
    # context: features shared by every example (the one input, here)
    r = c.post(f"/v1/models/{TASK}:classify",
               json={"context": {"input": x[0].tolist()}, "examples": [{}]})
    assert r.status_code == 200 and len(r.json()["results"]) == 1
    text = c.post("/v1/models/imdb:classify", json={"examples": [{"input": [1] * 64}]})
    assert [p[0] for p in text.json()["results"][0]] == ["negative", "positive"]
    for bad in ({"examples": []}, {"examples": [{"pixels": [1]}]}, {"examples": ["x"]},
                {"context": {"input": x[0].tolist()}, "examples": [{"input": x[0].tolist()}]},
                {"examples": [{"input": [0.5] * 3}]}, {"examples": [{"input": [2.0] * 784}]},
                {"examples": [{"input": x[0].tolist()}], "signature_name": "other"}):
        r = c.post(f"/v1/models/{TASK}:classify", json=bad)
        assert r.status_code == 400 and "error" in r.json(), bad
    r = c.post(f"/v1/models/{TASK}:regress", json={"examples": [{"x": 1.0}]})
    assert r.status_code == 400 and "classifier" in r.json()["error"]
    assert c.post("/v1/models/nope:regress", json={}).status_code == 404


# -- the traffic split -------------------------------------------------------------------------
def test_traffic_split_on_the_plain_path_is_exact_and_in_the_metrics(root):
    write_versions(root, {"versions": {"1": "fixture_mlp", "2": SECOND},
                          "traffic": {"1": 0.25, "2": 0.75}})
    c = start(create_app(settings(root)))
    try:
        pixels = RNG.integers(0, 256, (28, 28)).tolist()
        variants = [c.post(f"/v1/classify/{TASK}", json={"pixels": pixels}).json()["variant"]
                    for _ in range(40)]
        assert variants.count("fixture_mlp") == 10 and variants.count(SECOND) == 30
        # A versioned path is not split.
        assert {v2_infer(c, images(1), f"/v2/models/{TASK}/versions/1")[0] for _ in range(4)} == {"1"}
        metrics = c.get("/metrics").text
        assert (f'tinyship_version_requests_total{{model="{TASK}",variant="fixture_mlp",'
                f'version="1"}} 14.0') in metrics
        assert (f'tinyship_version_requests_total{{model="{TASK}",variant="{SECOND}",'
                f'version="2"}} 30.0') in metrics
        assert c.get(f"/v2/models/{TASK}").json()["versions"] == ["1", "2"]
    finally:
        c.__exit__(None, None, None)


# -- reloading: the repository extension and the poll ------------------------------------------
def test_unload_load_and_index(two_versions, root):
    c = two_versions
    index = c.post("/v2/repository/index").json()
    assert {"name": TASK, "version": "2", "state": "READY", "reason": ""} in index
    assert c.post(f"/v2/repository/models/{TASK}/unload").status_code == 200
    for r in (c.post(f"/v1/classify/{TASK}", json={"pixels": images(1)[0, ..., 0].tolist()}),
              c.get(f"/v2/models/{TASK}"), c.get(f"/v2/models/{TASK}/ready"),
              c.post(f"/v1/models/{TASK}:predict", json={"instances": images(1).tolist()})):
        assert r.status_code == 404 and r.json()["code"] == "model_unloaded"
    index = c.post("/v2/repository/index", json={}).json()
    assert {"name": TASK, "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in index
    assert TASK not in {row["name"] for row in c.post("/v2/repository/index",
                                                      json={"ready": True}).json()}
    assert 'tinyship_model_state{model="fashion_mnist",state="unloaded"} 1.0' in c.get(
        "/metrics").text
    assert c.get("/v2/health/ready").status_code == 200  # the other models still serve
    assert c.post(f"/v2/repository/models/{TASK}/load", json={"parameters": {}}).status_code == 200
    assert v2_infer(c, images(1), f"/v2/models/{TASK}/versions/2")[0] == "2"
    assert c.post("/v2/repository/models/nope/load").status_code == 404
    for bad in (b"[1]", b"{", b'{"parameters": 3}', b'{"other": 1}',
                b'{"parameters": {"config": "{}"}}'):
        r = c.post(f"/v2/repository/models/{TASK}/load", content=bad)
        assert r.status_code == 400 and set(r.json()) >= {"error", "code"}, bad
    assert c.post("/v2/repository/index", json={"ready": "yes"}).status_code == 400


def test_a_failed_reload_keeps_the_loaded_versions_serving(two_versions, root):
    c = two_versions
    write_versions(root, {"versions": {"1": "fixture_mlp", "2": "no_such_variant"}})
    r = c.post(f"/v2/repository/models/{TASK}/load")
    assert r.status_code == 400 and r.json()["code"] == "load_failed"
    assert "no_such_variant" in r.json()["error"]
    assert v2_infer(c, images(1), f"/v2/models/{TASK}/versions/2")[0] == "2"  # still SECOND
    rows = [row for row in c.post("/v2/repository/index").json() if row["name"] == TASK]
    assert all(row["state"] == "READY" and "no_such_variant" in row["reason"] for row in rows)
    write_versions(root, {"versions": {"1": "fixture_mlp"}, "traffic": "x"})
    r = c.post(f"/v2/repository/models/{TASK}/load")
    assert r.status_code == 400 and "field 'traffic'" in r.json()["error"]
    assert c.get(f"/v2/models/{TASK}").json()["versions"] == ["1", "2"]


def test_the_poll_swaps_in_a_new_selection_and_reuses_unchanged_versions(root):
    app = create_app(settings(root))
    c = start(app)
    repo = app.state.repository
    try:
        before = {m.name: m for m in repo.models.values()}
        assert c.portal.call(repo.poll_once) == []  # nothing changed: nothing reloaded
        assert c.post(f"/v1/classify/{TASK}",
                      json={"pixels": images(1)[0, ..., 0].tolist()}).json()["variant"] == "fixture_mlp"
        select_variant(root, TASK, SECOND)
        assert c.portal.call(repo.poll_once) == [TASK]
        answer = c.post(f"/v1/classify/{TASK}", json={"pixels": images(1)[0, ..., 0].tolist()})
        assert answer.json()["variant"] == SECOND
        # What the retired version served stays in the metrics beside the new one's count.
        metrics = c.get("/metrics").text
        for variant in ("fixture_mlp", SECOND):
            assert (f'tinyship_version_requests_total{{model="{TASK}",variant="{variant}",'
                    f'version="1"}} 1.0') in metrics
        assert repo.models["imdb"] is before["imdb"]  # other tasks untouched
        # A new version beside the selected one: the selected version is reused, not reloaded.
        current = repo.get(TASK, "1")
        write_versions(root, {"versions": {"1": SECOND, "2": "fixture_mlp"}, "default": "1"})
        assert c.portal.call(repo.poll_once) == [TASK]
        assert repo.get(TASK, "2").variant.name == "fixture_mlp" and repo.get(TASK, "2").ready
        (root / TASK / "versions.json").write_text("[]")  # broken: the loaded versions stay
        assert c.portal.call(repo.poll_once) == [TASK]
        assert c.portal.call(repo.poll_once) == []  # tried once, not again until it changes
        assert [m.version for m in repo.versions(TASK)] == ["1", "2"]
        assert current.ready
    finally:
        c.__exit__(None, None, None)


# -- on a real server --------------------------------------------------------------------------
@contextlib.contextmanager
def live_server(root, **changes):
    """uvicorn in a thread, as `python -m serve` runs it; yields its port."""
    with serving(create_app(settings(root, **changes))) as port:
        yield port


def test_tritonclient_drives_the_repository_extension(root):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    write_versions(root, {"versions": {"1": "fixture_mlp", "2": SECOND}})
    with live_server(root) as port:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        index = client.get_model_repository_index()
        assert {(m["name"], m["version"], m["state"]) for m in index} >= {
            (TASK, "1", "READY"), (TASK, "2", "READY"), ("imdb", "1", "READY")}
        assert client.get_model_metadata(TASK)["versions"] == ["1", "2"]
        assert client.is_model_ready(TASK, "2")
        client.unload_model(TASK)
        assert not client.is_model_ready(TASK)
        with pytest.raises(InferenceServerException, match="unloaded"):
            client.get_model_metadata(TASK)
        client.load_model(TASK)
        assert client.is_model_ready(TASK) and client.is_model_ready(TASK, "2")
        with pytest.raises(InferenceServerException, match="config"):
            client.load_model(TASK, config="{}")


def test_a_rollout_under_concurrent_load_fails_no_request(root):
    """Three clients send classify and V2 requests while the selection switches to another
    variant: no request fails, and once the poll has swapped, every answer is the new one's."""
    with live_server(root, repository_poll_s=0.1) as port:
        answers, failures, switched_at, swapped = _rollout(root, port)
    assert failures == []
    before = {v for t, v in answers if t < switched_at}
    # A request that picked the old version just before the swap may answer a little later.
    after = {v for t, v in answers if t > swapped + 0.2}
    assert before == {"fixture_mlp", "v2 fixture_mlp"}
    assert after == {SECOND, f"v2 {SECOND}"}


def _rollout(root, port):
    """Three clients (two classify, one V2) hammer the server; the selection switches after
    0.5 s. Returns the (time, variant) answers, the failures, the time of the switch and the
    time of the first answer from the new variant."""
    x = images(1)
    pixels = json.dumps({"pixels": (x[0, ..., 0] * 255).round().astype(int).tolist()})
    tensor = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 28, 28, 1],
                                     "data": x.ravel().tolist()}]})
    # V2 answers carry no variant name: tell the variants apart by their outputs.
    outputs = {name: reference(root, name, x).ravel() for name in ("fixture_mlp", SECOND)}
    stop, switched_at = threading.Event(), []
    answers: list[tuple[float, str]] = []  # (time, variant that answered)
    failures: list[str] = []

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        path, body = ((f"/v1/classify/{TASK}", pixels) if i % 2 == 0
                      else (f"/v2/models/{TASK}/infer", tensor))
        while not stop.is_set():
            try:
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
            except OSError as e:
                failures.append(f"{type(e).__name__}: {e}")
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                continue
            if r.status != 200:
                failures.append(f"{r.status} {data[:200]!r}")
                continue
            doc = json.loads(data)
            if "variant" in doc:
                answers.append((time.monotonic(), doc["variant"]))
                continue
            got = np.array(doc["outputs"][0]["data"])
            answers.append((time.monotonic(), "v2 " + next(
                (n for n, want in outputs.items() if np.allclose(got, want, atol=1e-5)), "?")))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        select_variant(root, TASK, SECOND)
        switched_at.append(time.monotonic())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if any(v.endswith(SECOND) and t > switched_at[0] for t, v in answers):
                break
            time.sleep(0.05)
        swapped = next(t for t, v in answers if v.endswith(SECOND))
        time.sleep(0.8)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    return answers, failures, switched_at[0], swapped
