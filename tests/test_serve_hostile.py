"""serve against hostile and broken clients, on a real socket (uvicorn with serve.connection).

Each test reproduces one defect found by attacking the server (issue 13) with the trigger that
exposed it: stalled request heads and bodies, idle connections beyond the cap, invalid HTTP,
bodies over the limit from clients that send everything before reading, clients that leave
mid-request, a bug in a route. Limits are small here (1-2 s timeouts, 24 connections) so the
whole file takes a few seconds.
"""
from __future__ import annotations

import http.client
import json
import logging
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from serve import dataplane
from serve.app import create_app
from serve.connection import ConnectionLimits, ServeConfig
from serve.fixtures import write_fixture_artifacts
from serve.settings import Settings
from tests.test_serve_live import serving

LIMITS = ConnectionLimits(max_connections=24, header_timeout_s=1, body_timeout_s=1,
                          keep_alive_s=5)
MAX_BODY = 1024 * 1024


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return write_fixture_artifacts(tmp_path_factory.mktemp("serve-hostile"))


@pytest.fixture(scope="module")
def server(artifacts):
    app = create_app(Settings(artifacts=artifacts, providers=("cpu",), threads=1,
                              max_body_bytes=MAX_BODY, max_request_rows=256))
    with serving(app, ServeConfig, limits=LIMITS) as port:
        yield f"http://127.0.0.1:{port}", port


def connect(port: int, timeout: float = 5) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(timeout)
    return s


def read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def json_body(raw: bytes) -> dict:
    return json.loads(raw.partition(b"\r\n\r\n")[2])


def metric(url: str, prefix: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix))


def health_ok(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url + "/v2/health/live", timeout=5) as r:
        assert r.status == 200
    return time.perf_counter() - start


# -- stalled clients ---------------------------------------------------------------------------
def test_a_request_head_sent_a_byte_at_a_time_gets_408_and_is_closed(server):
    # Before: a client sending 1 byte/s held its connection for at least 60 s.
    url, port = server
    s = connect(port)
    start = time.monotonic()
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    try:
        for i in range(len(head)):
            s.sendall(head[i:i + 1])
            time.sleep(0.1)
    except OSError:
        pass  # closed under us: the point
    answer = read_all(s)
    assert time.monotonic() - start < LIMITS.header_timeout_s + 2
    assert answer.startswith(b"HTTP/1.1 408"), answer
    body = json_body(answer)
    assert body["code"] == "request_timeout" and body["expected"]


def test_a_connection_that_never_sends_a_request_is_closed_silently(server):
    url, port = server
    s = connect(port)
    start = time.monotonic()
    assert read_all(s) == b""  # closed, and no answer to a request it never sent
    assert LIMITS.header_timeout_s - 0.2 < time.monotonic() - start < LIMITS.header_timeout_s + 2


def test_a_content_length_larger_than_the_body_gets_408_instead_of_hanging(server):
    # Before: the server waited for the missing bytes for ever.
    url, port = server
    s = connect(port)
    body = b'{"text": "good"}'
    s.sendall(b"POST /v1/classify/imdb HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body) + 50, body))
    start = time.monotonic()
    answer = read_all(s)
    assert time.monotonic() - start < LIMITS.body_timeout_s + 2
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert json_body(answer)["code"] == "request_timeout"
    assert metric(url, 'tinyship_requests_total{model="imdb",route="/v1/classify/{task}",'
                       'status="408"}') >= 1
    assert metric(url, 'tinyship_connections_closed_total{reason="body_timeout"}') >= 1


# -- the connection cap ------------------------------------------------------------------------
def test_idle_connections_beyond_the_cap_are_closed_oldest_first_and_probes_still_answer(server):
    # Before: enough idle connections exhausted the file limit and every client failed.
    url, port = server
    idle = [connect(port) for _ in range(3 * LIMITS.max_connections)]
    try:
        time.sleep(0.2)
        assert health_ok(url) < 0.1
        open_now = metric(url, "tinyship_connections_open")
        assert open_now <= LIMITS.max_connections + 1, open_now
        assert metric(url, 'tinyship_connections_closed_total{reason="evicted_idle"}') >= \
            2 * LIMITS.max_connections - 2
        # The newest idle connections are the ones kept: they still serve a request.
        s = idle[-1]
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        for s in idle:
            s.close()


def test_when_every_connection_is_busy_a_new_one_gets_a_json_503(server):
    url, port = server
    busy = []
    try:
        # Requests whose bodies are still coming: busy, not idle, so none can be closed.
        for _ in range(LIMITS.max_connections + 2):
            s = connect(port)
            s.sendall(b"POST /v1/classify/imdb HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            busy.append(s)
        time.sleep(0.2)
        s = connect(port)
        answer = read_all(s)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"retry-after: 1" in answer.lower()
        assert json_body(answer)["code"] == "too_many_connections"
    finally:
        for s in busy:
            s.close()
    time.sleep(0.3)
    assert health_ok(url) < 0.1  # served again as soon as the busy ones are gone


# -- what the HTTP layer answers ---------------------------------------------------------------
def test_invalid_http_gets_a_json_400(server):
    # Before: uvicorn's plain-text "Invalid HTTP request received."
    url, port = server
    s = connect(port)
    s.sendall(b"GARBAGE\x01 / NOT-HTTP\r\n\r\n")
    answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 400") and b"application/json" in answer
    body = json_body(answer)
    assert body["code"] == "bad_http" and body["expected"]


def test_a_client_that_sends_its_whole_body_first_reads_the_413(server):
    # Before: urllib (Connection: close, body sent before reading) saw a connection reset.
    url, port = server
    request = urllib.request.Request(url + "/v1/classify/imdb", data=b"x" * (4 * MAX_BODY),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 413
    assert json.loads(err.value.read())["code"] == "body_too_large"


def test_a_streamed_body_over_the_limit_is_drained_and_the_connection_stays_usable(server):
    url, port = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    chunks = (b"x" * 16384 for _ in range(8 * MAX_BODY // 16384 // 2))  # 4x the limit, chunked
    conn.request("POST", "/v2/models/fashion_mnist/infer", body=chunks,
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["code"] == "body_too_large"
    conn.request("GET", "/v2/health/live")
    assert conn.getresponse().status == 200  # same connection


# -- clients that leave, and bugs --------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/classify/imdb", "/v2/models/imdb/infer"])
def test_a_client_leaving_mid_body_is_counted_as_499_not_as_a_server_error(server, path, caplog):
    # Before: a 500 in /metrics and an error with a traceback in the log.
    url, port = server
    route = "/v1/classify/{task}" if "classify" in path else "/v2/models/{name}/infer"
    label = f'tinyship_requests_total{{model="imdb",route="{route}",status='
    before_499, before_500 = metric(url, label + '"499"}'), metric(url, label + '"500"}')
    with caplog.at_level(logging.INFO):
        s = connect(port)
        s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"te" % path.encode())
        time.sleep(0.1)
        s.close()
        time.sleep(0.3)
    assert metric(url, label + '"499"}') == before_499 + 1
    assert metric(url, label + '"500"}') == before_500
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_bug_answers_json_500_and_the_connection_stays_usable(server, monkeypatch, caplog):
    # Before: Starlette answered, re-raised, and uvicorn closed the connection, so the client's
    # next request on it was reset.
    url, port = server

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")
    monkeypatch.setattr(dataplane, "v2_model_metadata", broken)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    with caplog.at_level(logging.ERROR):
        conn.request("GET", "/v2/models/fashion_mnist")
        r = conn.getresponse()
        body = json.loads(r.read())
    assert r.status == 500 and body == {"error": "internal error (RuntimeError)",
                                        "code": "internal"}
    assert r.getheader("x-request-id") and "a bug" not in json.dumps(body)
    assert any("unhandled error on GET /v2/models/fashion_mnist" in m for m in caplog.messages)
    conn.request("GET", "/v2/health/live")
    assert conn.getresponse().status == 200  # same connection, not reset


# -- input forms decided -----------------------------------------------------------------------
def test_grayscale_pixels_may_carry_a_channel_axis_single_or_batched(server):
    # Four levels, [[[[0]] * 28] * 28], is a batch of one 28x28x1 image (the model's own
    # input shape), answered as a batch; three levels with a last axis of 1 is one image.
    url, _ = server
    img = np.random.default_rng(1).integers(0, 256, (28, 28)).tolist()

    def classify(pixels):
        request = urllib.request.Request(url + "/v1/classify/fashion_mnist?k=10",
                                         data=json.dumps({"pixels": pixels}).encode())
        return json.loads(urllib.request.urlopen(request, timeout=5).read())

    plain = classify(img)["top_k"]
    with_axis = classify([[[v] for v in row] for row in img])["top_k"]
    batch = classify([[[[v] for v in row] for row in img]])["results"]
    assert plain == with_axis == batch[0]["top_k"] and len(batch) == 1


# -- work bounded before parsing ---------------------------------------------------------------
def _post(url: str, path: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url + path, data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("path, body", [
    # 8 MB of short texts once held the event loop 45 ms per request just to parse, then got
    # refused for having too many rows; 3,000 images as pixel lists, 99 ms.
    ("/v1/classify/imdb", json.dumps({"texts": ["good"] * 20000})),
    ("/v1/classify/fashion_mnist", json.dumps({"pixels": [[[0] * 28] * 28] * 300})),
    ("/v2/models/fashion_mnist/infer", json.dumps({"inputs": [{
        "name": "input", "datatype": "FP32", "shape": [300, 28, 28, 1],
        "data": [0] * (300 * 784)}]})),
])
def test_bodies_with_more_rows_than_allowed_are_refused_before_parsing(server, path, body,
                                                                       monkeypatch):
    url, _ = server
    parsed = []
    monkeypatch.setattr(dataplane, "parse_json", lambda b: parsed.append(b) or {})
    monkeypatch.setattr(dataplane, "whole_number_pixels", lambda *a: parsed.append(a))
    status, answer = _post(url, path, body.encode())
    assert status == 413 and answer["code"] == "too_many_rows" and answer["expected"], answer
    assert parsed == []  # refused from byte counts alone


def test_the_size_check_passes_every_request_within_the_row_limit(server):
    # Many commas and escaped quotes inside texts must not count as rows.
    url, _ = server
    texts = ['a "quoted", comma, laden, review, ' * 40] * 200
    status, answer = _post(url, "/v1/classify/imdb", json.dumps({"texts": texts}).encode())
    assert status == 200 and len(answer["results"]) == 200
    status, answer = _post(url, "/v1/classify/fashion_mnist",
                           json.dumps({"pixels": [[[255] * 28] * 28] * 256}).encode())
    assert status == 200 and len(answer["results"]) == 256


# -- the abuse benchmark -------------------------------------------------------------------------
def test_the_abuse_benchmark_runs_every_abuser_and_each_gets_refused(server, artifacts):
    from benchmarks.abuse import ABUSERS, AbuseSettings, render_abuse_markdown, run_abuse
    from benchmarks.load import LoadSettings

    url, _ = server
    load = LoadSettings(url=url, task="fashion_mnist", concurrency=(4,), duration_s=1.5,
                        warmup_s=0.3, examples=32, artifacts=str(artifacts))
    settings = AbuseSettings(load=load, rounds=1, slow_bodies=2,
                             idle_connections=3 * LIMITS.max_connections)
    record = run_abuse(settings, progress=lambda line: None)
    abused = record["rounds"][0]["abused"]
    assert set(abused["abusers"]) == set(ABUSERS)
    answers = {name: a["answers"] for name, a in abused["abusers"].items()}
    # HTTP answers only: with a 24-connection cap and 72 idle abusers churning, an abusive
    # request's fresh connection is sometimes the longest idle one and gets closed first.
    statuses = {name: {k for k in a if k.isdigit()} for name, a in answers.items()}
    assert statuses["huge_texts"] == {"413"}, answers
    assert statuses["huge_image"] == {"422"}, answers   # refused from the PNG header
    assert answers["slow_bodies"].get("408"), answers       # the body timeout
    assert answers["idle_connections"].get("closed by server"), answers  # cap and timeout
    for phase in ("clean", "abused"):
        good = record["rounds"][0][phase]["good"]
        assert good["requests"] > 0 and good["errors"] == 0 and good["wrong_answers"] == 0
    assert "| 1 | abused |" in render_abuse_markdown(record)


# -- what errors may say -------------------------------------------------------------------------
def test_load_errors_name_files_relative_to_the_artifact_root(tmp_path):
    # Before: "/abs/path/artifacts/sign_mnist/.../model.onnx: checksum mismatch" in /v1/models
    # and in every 503 of that model.
    from fastapi.testclient import TestClient

    from core.artifacts import selected_variant

    root = write_fixture_artifacts(tmp_path)
    (selected_variant(root, "sign_mnist").path / "model.onnx").write_bytes(b"garbage")
    (root / "imdb" / "selected.json").write_text('{"task": "imdb", "variant": "gone"}')
    app = create_app(Settings(artifacts=root, providers=("cpu",), threads=1))
    with TestClient(app) as client:
        deadline = time.monotonic() + 30
        while not app.state.repository.loading_done:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        answer = client.post("/v1/classify/sign_mnist", json={"pixels": [[0] * 28] * 28}).json()
    texts = [models["sign_mnist"]["error"], models["imdb"]["error"], answer["error"]]
    assert "sign_mnist/fixture_mlp/model.onnx: checksum mismatch" in texts[0], texts
    assert "no variant 'gone'" in texts[1], texts
    assert all(str(tmp_path) not in t and str(root.resolve()) not in t for t in texts), texts


def test_the_size_check_gives_the_same_verdict_whatever_the_reads(artifacts):
    # The fast path counts read by read: an escaped quote split across two reads must not
    # count as a string (which would refuse a legitimate body).
    from serve.model import ServedModel

    model = ServedModel("imdb", artifacts, ("cpu",)).load()
    legit = json.dumps({"texts": ['say \\"yes\\", "no"'] * 200}).encode()
    flood = json.dumps({"texts": ["good"] * 20000}).encode()
    for size in (1, 2, 3, 7, 4096, len(legit)):
        check = dataplane.friendly_size_check(model)
        for i in range(0, len(legit), size):
            check.feed(legit[i:i + size])
        check = dataplane.friendly_size_check(model)
        with pytest.raises(dataplane.TooManyRows):
            for i in range(0, len(flood), size * 1000):
                check.feed(flood[i:i + size * 1000])
